#!/usr/bin/env bash
# Run HERE (a machine that reaches the package registries), in the repository root:
# downloads into .whl/ the wheels the GPU machine lacks (Python 3.12, x86-64; its image
# has torch, transformers, numpy, pandas, scikit-learn, safetensors, networkx, jaxtyping,
# but not transformer-lens, pydantic or datasets). Then name `.whl` in the device tool's
# `carry` and run benchmarks/device/gpu_checks.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
grep -v '^#' benchmarks/device/wheels.txt | while read -r requirement; do
  [ -n "$requirement" ] || continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$requirement"
done
du -sh .whl
ls .whl
