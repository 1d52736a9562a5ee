"""Side by side: all layers' probes at once in torch against scikit-learn layer by layer.

    python benchmarks/probing.py [--quick] [--device cpu|cuda|auto]

Features shaped like a 12-layer model's residual stream at 13 read points (embedding and
after each block), d_model 256, 8,000 examples, with a planted class signal (8 classes)
whose strength grows with depth, so the probes' accuracies span chance to near perfect.
Two lines, both through `probes.fit_probes` on the same split and penalty:

1. Logistic probes: the torch backend (one batched L-BFGS over all layers; on `--device`)
   against the sklearn backend (`LogisticRegression`, lbfgs, one layer after another).
   max |diff| is the largest per-layer difference in test accuracy; the acceptance of
   issue 7 asks for agreement within 1 point (0.01) and >= 5x on CPU.
2. Ridge probes (4 real targets): the batched closed-form solve against sklearn's `Ridge`
   per layer; max |diff| is the largest per-layer difference in test R^2.

On CUDA the scikit-learn side of each line is one unwarmed call (its fits run on the host
either way; its logistic fits take ~36 s on the H200 machine's host); on a CPU both sides
are warmed up and timed twice. Each line is printed as soon as it is measured.

A last `#` line gives the load average: timings on a small CPU are noisy when anything else
runs. `--quick`: 3 layers, 600 examples, d 32 (CI runs it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from _common import compare, load_line, parse_args
from torch import Tensor

from probes.linear import fit_probes


def planted_features(
    n_layers: int, n: int, d: int, n_classes: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """`[layer, n, d]` Gaussian features whose class means separate more with depth, the
    class labels `[n]`, and 4 real targets `[n, 4]` linear in the last layer's signal."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=generator)
    means = torch.randn(n_classes, d, generator=generator)
    strength = torch.linspace(0.0, 0.6, n_layers)
    noise = torch.randn(n_layers, n, d, generator=generator)
    features = noise + strength[:, None, None] * means[labels][None]
    mixing = torch.randn(d, 4, generator=generator) / d**0.5
    targets = (features[-1] @ mixing) + 0.3 * torch.randn(n, 4, generator=generator)
    return features, labels, targets


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("torch all-layer probes vs scikit-learn layer by layer", argv)
    if args.quick:
        n_layers, n, d, repeats = 3, 600, 32, 1
    else:
        n_layers, n, d, repeats = 13, 8000, 256, 2
    features, labels, targets = planted_features(n_layers, n, d, n_classes=8)
    shape = f"{n_layers} layers x {n} examples x d {d}"
    device = args.device

    def logistic(backend: str) -> Tensor:
        return fit_probes(
            features, labels, kind="logistic", backend=backend, l2=1e-3, epochs=500,
            device=device if backend == "torch" else None,
        ).test_score

    def ridge(backend: str) -> Tensor:
        return fit_probes(
            features, targets, kind="ridge", backend=backend, l2=1e-3,
            device=device if backend == "torch" else None,
        ).test_score

    # On CUDA scikit-learn's side runs once, unwarmed: its logistic fits take ~36 s a call
    # on the H200's host, and three calls would not fit the GPU lease's step limit.
    once = device.type == "cuda"
    if once:  # imported before its one timed call
        import sklearn.linear_model  # noqa: F401
    logistic_line = compare(
        f"logistic probes, 8 classes, {shape}, torch all layers vs sklearn per layer "
        f"(test accuracy)",
        lambda: logistic("torch"), lambda: logistic("sklearn"),
        device=device, repeats=repeats, reference_once=once,
    )
    print(logistic_line.line(), flush=True)
    ridge_line = compare(
        f"ridge probes, 4 targets, {shape}, torch all layers vs sklearn per layer (test R^2)",
        lambda: ridge("torch"), lambda: ridge("sklearn"), device=device, repeats=repeats,
        reference_once=once,
    )
    print(ridge_line.line(), flush=True)
    print(load_line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
