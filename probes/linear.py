"""Linear probes for every layer at once: logistic (classification) or ridge (regression).

A linear probe asks whether a property is linearly decodable from a layer's activations
(Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes";
Belinkov 2022, "Probing Classifiers: Promises, Shortcomings, and Advances"). `fit_probes`
trains one probe per layer in a single call: the torch backend fits all layers together
(a batched weight `[layer, d, n_out]`, full-batch L-BFGS for the logistic probe, a batched
closed-form solve for ridge); the sklearn backend fits the same objective layer by layer
with scikit-learn and serves as the reference (or cross-validates the penalty).

Both backends standardise each feature with the training split's mean and standard
deviation, so `l2` means the same thing at every layer (a feature constant on the training
split, up to rounding, is set to zero and gets a zero weight). The objectives, per layer, are

    logistic:  mean cross-entropy(x_std @ W + b, y) + l2 * ||W||^2
    ridge:     mean squared error(x_std @ W + b, y) + l2 * ||W||^2

and the directions stored in a `ProbeResult` (`probes.results`) are mapped back to the
original feature space. The per-layer solvers are in `probes.linear_solvers`.
Train/test splits are by example, or by group (e.g. the sentence a token came from) so that
no group is on both sides; `fit_probes_on_split` fits on a split the caller chose.
`fit_probes_over_seeds` repeats split and fit over seeds and reports a Student-t 95% interval
of the mean score per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.linear_solvers import (
    fit_logistic_torch,
    fit_ridge_torch,
    fit_sklearn,
    layer_scores,
    standardisation,
)
from probes.results import (
    ProbeResult,
    ProbeSweep,
    check_features,
    confidence_interval,
    score_bounds,
)

__all__ = [
    "BACKENDS",
    "KINDS",
    "fit_probes",
    "fit_probes_on_split",
    "fit_probes_over_seeds",
    "majority_baseline",
    "split_examples",
]

KINDS = ("logistic", "ridge")
BACKENDS = ("torch", "sklearn")
MIN_EXAMPLES_PER_CLASS = 2


# -- splitting


def split_examples(
    n: int,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Int[Tensor, " n"] | None = None,
    labels: Int[Tensor, " n"] | None = None,
) -> tuple[Int[Tensor, " n_train"], Int[Tensor, " n_test"]]:
    """Random train/test split of `n` examples (sorted index tensors).

    With `groups`, whole groups go to one side (about `test_fraction` of the groups to test),
    so no group is in both. Otherwise, with `labels`, the split is stratified: each class
    sends `round(test_fraction * count)` of its examples (at least one, at most all but
    one) to test. Without either, `round(test_fraction * n)` random examples are the test set.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    generator = torch.Generator().manual_seed(int(seed))
    if groups is not None:
        if not isinstance(groups, Tensor) or groups.shape != (n,):
            shape = tuple(groups.shape) if isinstance(groups, Tensor) else type(groups).__name__
            raise ValueError(f"groups must have shape [{n}], got {shape}")
        names, group_of = torch.unique(groups.cpu(), return_inverse=True)
        if len(names) < 2:
            raise ValueError("groups: need at least 2 distinct groups to split by group")
        order = torch.randperm(len(names), generator=generator)
        n_test = min(max(round(test_fraction * len(names)), 1), len(names) - 1)
        is_test = torch.zeros(len(names), dtype=torch.bool)
        is_test[order[:n_test]] = True
        test_mask = is_test[group_of]
    elif labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != (n,):
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must have shape [{n}], got {shape}")
        test_mask = torch.zeros(n, dtype=torch.bool)
        for value in torch.unique(labels.cpu()):
            members = torch.nonzero(labels.cpu() == value).flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            n_test = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
            test_mask[members[:n_test]] = True
    else:
        if n < 2:
            raise ValueError(f"need at least 2 examples to split, got {n}")
        n_test = min(max(round(test_fraction * n), 1), n - 1)
        test_mask = torch.zeros(n, dtype=torch.bool)
        test_mask[torch.randperm(n, generator=generator)[:n_test]] = True
    indices = torch.arange(n)
    return indices[~test_mask], indices[test_mask]


# -- fitting


def fit_probes(
    features: Float[Tensor, "layer n d"],
    labels: Int[Tensor, " n"] | Float[Tensor, " n"] | Float[Tensor, "n k"],
    *,
    kind: str = "logistic",
    backend: str = "torch",
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Int[Tensor, " n"] | None = None,
    l2: float | None = 1e-3,
    epochs: int = 500,
    device: str | torch.device | None = None,
) -> ProbeResult:
    """Fit one linear probe per layer and score it on a held-out split.

    The split comes from `split_examples` (by group, else stratified by class for logistic
    probes); the fit is `fit_probes_on_split` on that split.

    Args:
        features: Activations, one row per example at every layer.
        labels: Logistic: integer class labels `[n]`. Ridge: real targets `[n]` or `[n, k]`.
        kind: `"logistic"` (multinomial logistic regression, scored by accuracy) or
            `"ridge"` (ridge regression, scored by R^2).
        backend: `"torch"` (all layers at once) or `"sklearn"` (per layer, the reference).
        test_fraction: Fraction of examples (or of groups) held out for testing.
        seed: Seed of the split.
        groups: Optional group id per example; the split never separates a group.
        l2: Penalty on the standardised-space weights (see the module docstring). `None`
            cross-validates it per layer over a small grid (sklearn backend only).
        epochs: Maximum L-BFGS iterations (torch logistic) or solver iterations (sklearn).
        device: Where the torch backend computes (default: the features' device).
    """
    kind, backend = _check_fit_args(features, labels, kind, backend, l2, epochs)
    n = features.shape[1]
    if groups is not None and (not isinstance(groups, Tensor) or groups.shape != (n,)):
        shape = tuple(groups.shape) if isinstance(groups, Tensor) else type(groups).__name__
        raise ValueError(f"groups must be a tensor of shape [{n}], got {shape}")
    strata = None
    if kind == "logistic" and groups is None:
        strata = _class_targets(labels)[1]
    train_index, test_index = split_examples(
        n, test_fraction=test_fraction, seed=seed, groups=groups, labels=strata
    )
    return fit_probes_on_split(
        features,
        labels,
        train_index,
        test_index,
        kind=kind,
        backend=backend,
        l2=l2,
        epochs=epochs,
        device=device,
    )


def fit_probes_on_split(
    features: Float[Tensor, "layer n d"],
    labels: Int[Tensor, " n"] | Float[Tensor, " n"] | Float[Tensor, "n k"],
    train_index: Int[Tensor, " n_train"],
    test_index: Int[Tensor, " n_test"],
    *,
    kind: str = "logistic",
    backend: str = "torch",
    l2: float | None = 1e-3,
    epochs: int = 500,
    device: str | torch.device | None = None,
    allow_missing_classes: bool = False,
) -> ProbeResult:
    """Fit one linear probe per layer on the examples `train_index`, score on `test_index`.

    `fit_probes` is this on a split from `split_examples`; call it directly to fit on a split
    you chose (the same split for a task and its control task, growing prefixes for an
    online code: `probes.controls`). Arguments as in `fit_probes`.

    Args:
        train_index: `[n_train]` indices (into the `n` examples) to fit on; not empty.
        test_index: `[n_test]` indices to score on; not empty.
        allow_missing_classes: Logistic, torch backend: accept classes that have no training
            example (or a single example in all): they keep an output column, which
            training drives towards probability 0, so they are never predicted. The
            classes are always those of `labels`, not of the training split.
    """
    kind, backend = _check_fit_args(features, labels, kind, backend, l2, epochs)
    n = features.shape[1]
    train_index = _check_index(train_index, n, "train_index")
    test_index = _check_index(test_index, n, "test_index")
    shared = sorted(set(train_index.tolist()) & set(test_index.tolist()))
    if shared:
        raise ValueError(
            f"train_index and test_index share {len(shared)} example(s) (e.g. {shared[:3]}): "
            "the test score would read training rows"
        )
    device = torch.device(device) if device is not None else features.device
    dtype = features.dtype if features.dtype == torch.float64 else torch.float32
    x = features.to(device, dtype)

    if kind == "logistic":
        classes, targets = _class_targets(labels, 1 if allow_missing_classes else None)
        missing = set(range(len(classes))) - set(targets[train_index].tolist())
        if missing and (not allow_missing_classes or backend != "torch"):
            raise ValueError(
                f"the training split has no example of class(es) "
                f"{sorted(classes[i] for i in missing)}; add examples or lower test_fraction"
            )
        y = targets.to(device)
    else:
        if labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"ridge labels must be numbers, got dtype {labels.dtype}")
        classes = []
        y = labels.to(device, dtype)
        y = y[:, None] if y.ndim == 1 else y
        if len(train_index) < 2:
            raise ValueError(f"ridge needs at least 2 training examples, got {len(train_index)}")

    train_index, test_index = train_index.to(device), test_index.to(device)
    x_train = x[:, train_index]
    mean, std, constant = standardisation(x_train)
    standardised = ((x_train - mean[:, None]) / std[:, None]).masked_fill(constant[:, None], 0.0)
    y_train = y[train_index]

    if backend == "torch" and kind == "logistic":
        weights, biases = fit_logistic_torch(standardised, y_train, len(classes), l2, epochs)
    elif backend == "torch":
        weights, biases = fit_ridge_torch(standardised, y_train, l2)
    else:
        weights, biases = fit_sklearn(standardised, y_train, kind, len(classes), l2, epochs)
        weights, biases = weights.to(device, dtype), biases.to(device, dtype)

    weights = weights.masked_fill(constant[:, :, None], 0.0)  # a constant feature reads nothing
    directions = weights / std[:, :, None]
    biases = biases - torch.einsum("ld,ldo->lo", mean / std, weights)
    outputs = torch.baddbmm(biases[:, None, :], x, directions)
    train_score = layer_scores(outputs[:, train_index], y_train, kind)
    test_score = layer_scores(outputs[:, test_index], y[test_index], kind)
    baseline = math.nan
    if kind == "logistic":
        baseline = majority_baseline(y, train_index, test_index)
    return ProbeResult(
        test_score=test_score.cpu(),
        train_score=train_score.cpu(),
        directions=directions.detach().cpu(),
        biases=biases.detach().cpu(),
        kind=kind,
        backend=backend,
        classes=tuple(classes),
        train_index=train_index.cpu(),
        test_index=test_index.cpu(),
        l2=l2,
        majority_baseline=baseline,
    )


def majority_baseline(
    labels: Int[Tensor, " n"],
    train_index: Int[Tensor, " n_train"],
    test_index: Int[Tensor, " n_test"],
) -> float:
    """Accuracy on `test_index` of always answering the most frequent class among
    `train_index` (the smallest label on a tie): the chance level of a logistic probe fitted
    on that split (`ProbeResult.majority_baseline`)."""
    values, counts = torch.unique(labels[train_index], return_counts=True)
    majority = values[counts.argmax()]
    return float((labels[test_index] == majority).float().mean())


# -- sweeps over seeds


def fit_probes_over_seeds(
    features: Float[Tensor, "layer n d"],
    labels: Tensor,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    level: float = 0.95,
    **kwargs: Any,
) -> ProbeSweep:
    """`fit_probes` once per seed (a new split each time); the mean test score and its
    `level` confidence interval per layer, cut to the score's range (accuracy in [0, 1],
    R^2 at most 1). `kwargs` go to `fit_probes` (not `seed`)."""
    if "seed" in kwargs:
        raise ValueError("fit_probes_over_seeds takes `seeds`, not `seed`")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    results = [fit_probes(features, labels, seed=seed, **kwargs) for seed in seeds]
    scores = torch.stack([result.test_score for result in results])
    mean, low, high = confidence_interval(scores, level=level, bounds=score_bounds(results[0].kind))
    return ProbeSweep(
        scores=scores,
        seeds=seeds,
        mean=mean,
        low=low,
        high=high,
        level=level,
        kind=results[0].kind,
        backend=results[0].backend,
    )


# -- checks


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


def _check_fit_args(
    features: Tensor, labels: Tensor, kind: str, backend: str, l2: float | None, epochs: int
) -> tuple[str, str]:
    """The checks `fit_probes` and `fit_probes_on_split` share; returns (kind, backend)."""
    kind, backend = _check_choice(kind, KINDS, "kind"), _check_choice(backend, BACKENDS, "backend")
    check_features(features)
    n = features.shape[1]
    if not isinstance(labels, Tensor) or labels.ndim not in (1, 2) or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor with {n} rows (one per example), got {shape}")
    if labels.dtype.is_floating_point and not bool(labels.isfinite().all()):
        raise ValueError("labels hold NaN or infinite values")
    if l2 is None and backend == "torch":
        raise ValueError("l2=None (cross-validated penalty) needs backend='sklearn'")
    if l2 is not None and not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return kind, backend


def _check_index(index: Tensor, n: int, what: str) -> Int[Tensor, " m"]:
    """`index` as a CPU long tensor of positions in `0..n-1`, not empty."""
    if not isinstance(index, Tensor) or index.ndim != 1 or torch.is_floating_point(index):
        shape = tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__
        raise ValueError(f"{what} must be a 1-d integer tensor, got {shape}")
    if index.dtype == torch.bool:
        raise ValueError(f"{what} must hold example indices, not a bool mask (use mask.nonzero())")
    if len(index) == 0:
        raise ValueError(f"{what} is empty")
    index = index.cpu().long()
    if int(index.min()) < 0 or int(index.max()) >= n:
        raise ValueError(f"{what} must hold indices in 0..{n - 1}")
    return index


def _class_targets(
    labels: Tensor, min_count: int | None = None
) -> tuple[list[int], Int[Tensor, " n"]]:
    """The sorted class values and each example's class index; checks there are at least two
    classes and `min_count` (default `MIN_EXAMPLES_PER_CLASS`) examples of each."""
    min_count = MIN_EXAMPLES_PER_CLASS if min_count is None else min_count
    if labels.ndim != 1:
        raise ValueError(f"logistic labels must be [n], got shape {tuple(labels.shape)}")
    if torch.is_floating_point(labels):
        if not bool((labels == labels.round()).all()):
            raise ValueError("logistic labels must be integer class ids (use kind='ridge')")
        labels = labels.long()
    values, targets, counts = torch.unique(
        labels.cpu().long(), return_inverse=True, return_counts=True
    )
    if len(values) < 2:
        raise ValueError(f"logistic probes need at least 2 classes, got {len(values)}")
    if int(counts.min()) < min_count:
        rare = values[counts < min_count].tolist()
        raise ValueError(
            f"too few examples of class(es) {rare}: each class needs at least {min_count}"
        )
    return values.tolist(), targets
