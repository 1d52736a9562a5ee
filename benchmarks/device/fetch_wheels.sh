#!/usr/bin/env bash
# Run HERE (a machine that reaches the package registries), in the repository root:
# downloads into .whl/ the wheels the GPU machine lacks (Python 3.12, x86-64; its image
# has torch, transformers, numpy, pandas, scikit-learn, safetensors, networkx, jaxtyping,
# huggingface-hub, accelerate, einops, rich, pyarrow, xxhash, fsspec, pyyaml, but not
# transformer-lens, pydantic or datasets: benchmarks/device/wheels.txt lists them). The
# project itself is installed there from the carried source tree (gpu_checks.sh). Then
# name `.whl` in the device tool's `carry` and run benchmarks/device/gpu_checks.sh there.
#
# .whl/ is made anew each time (a stale second version of a wheel would stop the install
# there); it is ~5 MB, well inside the 64 MiB that a call carries.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl.new
mkdir -p .whl.new
trap 'rm -rf .whl.new' EXIT  # left behind, it would travel with the working tree
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
grep -v '^#' benchmarks/device/wheels.txt | while read -r requirement; do
  [ -n "$requirement" ] || continue
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl.new "$requirement"
done
rm -rf .whl
mv .whl.new .whl
du -sh .whl
ls .whl
