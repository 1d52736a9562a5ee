"""The per-layer solvers behind `probes.linear`: standardisation, the torch fits of every
layer at once (logistic by L-BFGS, ridge in closed form), the scikit-learn reference fit,
and the per-layer score.

The fits take standardised training features `[layer, n, d]` and return weights and biases in
that standardised space; `probes.linear.fit_probes_on_split` maps them back to the original
features.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from probes.lbfgs import minimise

_CV_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_STD_FLOOR = 1e-8
"""Absolute floor of the standard deviation below which a feature counts as constant."""


def standardisation(
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


def fit_logistic_torch(
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


def fit_ridge_torch(
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


def fit_sklearn(
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


def layer_scores(
    outputs: Float[Tensor, "layer n n_out"], y: Tensor, kind: str
) -> Float[Tensor, " layer"]:
    """Accuracy of argmax predictions (logistic) or R^2 averaged over outputs (ridge)."""
    if kind == "logistic":
        return (outputs.argmax(dim=-1) == y).float().mean(dim=1)
    residual = (y - outputs).pow(2).sum(dim=1)
    total = (y - y.mean(dim=0)).pow(2).sum(dim=0).clamp_min(torch.finfo(outputs.dtype).tiny)
    return (1.0 - residual / total).mean(dim=-1).float()
