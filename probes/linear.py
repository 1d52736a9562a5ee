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
original feature space.
Train/test splits are by example, or by group (e.g. the sentence a token came from) so that
no group is on both sides; `fit_probes_on_split` fits on a split the caller chose.
`fit_probes_over_seeds` repeats split and fit over seeds and reports a Student-t 95% interval
of the mean score per layer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from probes.lbfgs import minimise
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
_CV_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_STD_FLOOR = 1e-8
"""Absolute floor of the standard deviation below which a feature counts as constant."""


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
    mean, std, constant = _standardisation(x_train)
    standardised = ((x_train - mean[:, None]) / std[:, None]).masked_fill(constant[:, None], 0.0)
    y_train = y[train_index]

    if backend == "torch" and kind == "logistic":
        weights, biases = _fit_logistic_torch(standardised, y_train, len(classes), l2, epochs)
    elif backend == "torch":
        weights, biases = _fit_ridge_torch(standardised, y_train, l2)
    else:
        weights, biases = _fit_sklearn(standardised, y_train, kind, len(classes), l2, epochs)
        weights, biases = weights.to(device, dtype), biases.to(device, dtype)

    weights = weights.masked_fill(constant[:, :, None], 0.0)  # a constant feature reads nothing
    directions = weights / std[:, :, None]
    biases = biases - torch.einsum("ld,ldo->lo", mean / std, weights)
    outputs = torch.baddbmm(biases[:, None, :], x, directions)
    train_score = _score(outputs[:, train_index], y_train, kind)
    test_score = _score(outputs[:, test_index], y[test_index], kind)
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


def _standardisation(
    x: Float[Tensor, "layer n d"],
) -> tuple[Float[Tensor, "layer d"], Float[Tensor, "layer d"], Tensor]:
    """Per layer and feature: the mean, the scale to divide by, and whether the feature is
    constant on these rows.

    As sklearn's `StandardScaler`, a feature is constant when its values are all equal, or
    its standard deviation is within rounding error of its mean (at most
    `10 eps |mean| + _STD_FLOOR`, `eps` of the features' dtype): it gets scale 1 and, in the
    caller, a standardised column of exact zeros, so that rounding noise is never blown up
    into a large weight.
    """
    mean = x.mean(dim=1)
    std = x.std(dim=1, correction=0)
    eps = torch.finfo(x.dtype).eps
    constant = (x.amax(dim=1) == x.amin(dim=1)) | (std <= 10 * eps * mean.abs() + _STD_FLOOR)
    return mean, torch.where(constant, torch.ones_like(std), std), constant


def _fit_logistic_torch(
    x: Float[Tensor, "layer n d"], y: Int[Tensor, " n"], n_classes: int, l2: float, epochs: int
) -> tuple[Float[Tensor, "layer d c"], Float[Tensor, "layer c"]]:
    """All layers' multinomial logistic probes at once from zero: L-BFGS with a history, a
    line search and a stopping test per layer (`probes.lbfgs`), one batched evaluation of
    every layer's loss and gradient (written out, no autograd) per step."""
    n_layers, n, d = x.shape
    one_hot = F.one_hot(y, n_classes).to(x.dtype)

    def objective(flat: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        k = len(rows)
        weights = flat[:, : d * n_classes].view(k, d, n_classes)
        biases = flat[:, -n_classes:]
        xs = x if k == n_layers else x[rows]
        logits = torch.baddbmm(biases[:, None, :], xs, weights)
        log_probs = logits.log_softmax(dim=-1)
        loss = -(log_probs * one_hot).sum(dim=(1, 2)) / n + l2 * weights.pow(2).sum(dim=(1, 2))
        error = (log_probs.exp() - one_hot) / n
        # (error^T x)^T, not x^T error: a bmm with x transposed is ~1.5x slower on CPU
        grad_weights = torch.bmm(error.transpose(1, 2), xs).transpose(1, 2) + 2 * l2 * weights
        grad = torch.cat([grad_weights.reshape(k, -1), error.sum(dim=1)], dim=1)
        return loss, grad

    start = x.new_zeros(n_layers, (d + 1) * n_classes)
    flat = minimise(objective, start, max_iter=epochs, tolerance_grad=1e-6, tolerance_change=1e-10)
    weights = flat[:, : d * n_classes].reshape(n_layers, d, n_classes)
    return weights, flat[:, -n_classes:].clone()


def _fit_ridge_torch(
    x: Float[Tensor, "layer n d"], y: Float[Tensor, "n k"], l2: float
) -> tuple[Float[Tensor, "layer d k"], Float[Tensor, "layer k"]]:
    """Closed-form ridge for every layer: (X^T X / n + l2 I) W = X^T y / n, X centred."""
    n_layers, n, d = x.shape
    y_mean = y.mean(dim=0)
    centred_y = (y - y_mean).expand(n_layers, n, y.shape[1])
    gram = x.transpose(1, 2) @ x / n
    rhs = x.transpose(1, 2) @ centred_y / n
    if l2 > 0:
        # Cholesky, not torch.linalg.solve: the system is symmetric positive definite, and a
        # batched LU solve on CPU with more than one thread fails inside MKL for d > ~150
        # ("Pivots given to lu_solve ...", pytorch/pytorch#142815)
        eye = torch.eye(d, device=x.device, dtype=x.dtype)
        factor, info = torch.linalg.cholesky_ex(gram + l2 * eye)
        if bool(info.any()):
            layer = int(info.nonzero()[0, 0])
            raise ValueError(f"ridge: the regularised Gram matrix of layer {layer} is not "
                             "positive definite; raise l2")
        weights = torch.cholesky_solve(rhs, factor)
    else:
        weights = torch.linalg.pinv(gram, hermitian=True) @ rhs
    # x is centred (standardised on this split), so the intercept is the targets' mean
    return weights, y_mean.expand(n_layers, y.shape[1]).clone()


def _fit_sklearn(
    x: Float[Tensor, "layer n d"],
    y: Tensor,
    kind: str,
    n_classes: int,
    l2: float | None,
    epochs: int,
) -> tuple[Float[Tensor, "layer d n_out"], Float[Tensor, "layer n_out"]]:
    """The same objective per layer with scikit-learn (the reference implementation).

    sklearn's `LogisticRegression` minimises `C * sum CE + ||W||^2 / 2`, so `C = 1/(2 n l2)`
    for several classes. A binary sklearn model has one weight vector `w`, which becomes the
    two columns `[-w/2, w/2]` (the minimiser of our penalty for that decision function) with
    `||W||^2 = ||w||^2 / 2`, so there `C = 1/(n l2)`. `Ridge` minimises
    `||y - Xw||^2 + alpha ||w||^2`, so `alpha = n l2`.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV

    n = x.shape[1]
    scale = 1 if n_classes == 2 else 2  # see the docstring
    x_np = x.detach().cpu().double().numpy()
    y_np = y.detach().cpu().numpy()
    weights, biases = [], []
    for layer in range(x.shape[0]):
        model: Any
        if kind == "logistic":
            if l2 is None:
                cs = [1.0 / (scale * n * value) for value in _CV_L2_GRID]
                model = LogisticRegressionCV(Cs=cs, cv=3, max_iter=epochs, scoring="accuracy")
            else:
                c = 1.0 / (scale * n * l2) if l2 > 0 else 1e12
                model = LogisticRegression(C=c, max_iter=epochs, tol=1e-8)
            with warnings.catch_warnings():  # sklearn's notices of future default changes
                warnings.simplefilter("ignore", FutureWarning)
                model.fit(x_np[layer], y_np)
            coef = torch.from_numpy(model.coef_).T
            intercept = torch.from_numpy(model.intercept_)
            if n_classes == 2:
                coef = torch.cat([-coef / 2, coef / 2], dim=1)
                intercept = torch.cat([-intercept / 2, intercept / 2])
        else:
            if l2 is None:
                model = RidgeCV(alphas=[n * value for value in _CV_L2_GRID])
            else:
                model = Ridge(alpha=n * l2)
            model.fit(x_np[layer], y_np)
            coef = torch.from_numpy(model.coef_).reshape(y_np.shape[1], -1).T
            intercept = torch.as_tensor(model.intercept_, dtype=torch.float64).reshape(-1)
        weights.append(coef)
        biases.append(intercept)
    return torch.stack(weights), torch.stack(biases)


def _score(
    outputs: Float[Tensor, "layer n n_out"], y: Tensor, kind: str
) -> Float[Tensor, " layer"]:
    """Accuracy of argmax predictions (logistic) or R^2 averaged over outputs (ridge)."""
    if kind == "logistic":
        return (outputs.argmax(dim=-1) == y).float().mean(dim=1)
    residual = (y - outputs).pow(2).sum(dim=1)
    total = (y - y.mean(dim=0)).pow(2).sum(dim=0).clamp_min(torch.finfo(outputs.dtype).tiny)
    return (1.0 - residual / total).mean(dim=-1).float()


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
