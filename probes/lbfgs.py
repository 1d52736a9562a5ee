"""L-BFGS over a batch of independent problems, each with its own history, step and stop.

`fit_probes` trains one probe per layer; the layers' objectives are independent, so a single
L-BFGS over all of them at once (one shared history and line search) converges only as fast
as the worst layer allows and mixes curvature pairs across layers. Here each problem `i` of
the batch keeps its own `m` curvature pairs (Nocedal & Wright 2006, "Numerical
Optimization", algorithm 7.4, the two-loop recursion), its own backtracking Armijo line
search, and stops on its own; every function evaluation still covers the whole batch in one
batched computation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

Objective = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""`(x [k, p], rows [k]) -> (f [k], grad [k, p])`: the objectives of batch rows `rows`
(indices into the batch) at points `x`."""

_ARMIJO = 1e-4
_MAX_BACKTRACKS = 20


def minimise(
    objective: Objective,
    x0: Float[Tensor, "batch p"],
    *,
    max_iter: int = 500,
    history: int = 10,
    tolerance_grad: float = 1e-6,
    tolerance_change: float = 1e-10,
) -> Float[Tensor, "batch p"]:
    """Minimise each row's objective from `x0`; returns the minimisers `[batch, p]`.

    A row stops when its largest gradient entry is below `tolerance_grad`, or when a step
    changes its objective by less than `tolerance_change * max(1, |f|)`.
    """
    batch, p = x0.shape
    x = x0.clone()
    f, g = objective(x, torch.arange(batch, device=x.device))
    s_hist = x.new_zeros(batch, history, p)
    y_hist = x.new_zeros(batch, history, p)
    rho = x.new_zeros(batch, history)
    active = g.abs().amax(dim=1) > tolerance_grad
    for iteration in range(max_iter):
        if not bool(active.any()):
            break
        direction = -_two_loop(g, s_hist, y_hist, rho, min(iteration, history))
        if iteration == 0:  # no curvature yet: a gradient step of length at most 1
            direction = direction / g.abs().sum(dim=1, keepdim=True).clamp_min(1.0)
        slope = (g * direction).sum(dim=1)
        # a direction that is not downhill (curvature lost to round-off): restart on -g
        uphill = slope >= 0
        direction = torch.where(uphill[:, None], -g, direction)
        slope = torch.where(uphill, -(g * g).sum(dim=1), slope)
        direction = direction * active[:, None]
        step = x.new_ones(batch)
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        pending = active.clone()
        for _ in range(_MAX_BACKTRACKS):
            rows = pending.nonzero().squeeze(1)  # only the rows still searching are evaluated
            trial = x[rows] + step[rows, None] * direction[rows]
            f_trial, g_trial = objective(trial, rows)
            accept = f_trial <= f[rows] + _ARMIJO * step[rows] * slope[rows]
            done = rows[accept]
            x_new[done], f_new[done], g_new[done] = trial[accept], f_trial[accept], g_trial[accept]
            pending[done] = False
            if not bool(pending.any()):
                break
            step = torch.where(pending, step * 0.5, step)
        moved = active & ~pending
        s, y = x_new - x, g_new - g
        curvature = (s * y).sum(dim=1)
        keep = moved & (curvature > 1e-10)
        s_hist = torch.where(keep[:, None, None], torch.cat([s_hist[:, 1:], s[:, None]], 1), s_hist)
        y_hist = torch.where(keep[:, None, None], torch.cat([y_hist[:, 1:], y[:, None]], 1), y_hist)
        new_rho = torch.cat([rho[:, 1:], (1.0 / curvature.clamp_min(1e-10))[:, None]], 1)
        rho = torch.where(keep[:, None], new_rho, rho)
        small_change = (f - f_new).abs() <= tolerance_change * f.abs().clamp_min(1.0)
        x, f, g = x_new, f_new, g_new
        active &= moved & ~small_change & (g.abs().amax(dim=1) > tolerance_grad)
    return x


def _two_loop(
    g: Tensor, s_hist: Tensor, y_hist: Tensor, rho: Tensor, n_pairs: int
) -> Float[Tensor, "batch p"]:
    """`H g` for each row, H the L-BFGS inverse-Hessian estimate from its stored pairs
    (the newest pair last; rows with fewer real pairs have zero pairs, which act as none)."""
    q = g.clone()
    alphas = []
    for i in range(s_hist.shape[1] - 1, s_hist.shape[1] - 1 - n_pairs, -1):
        alpha = rho[:, i] * (s_hist[:, i] * q).sum(dim=1)
        q -= alpha[:, None] * y_hist[:, i]
        alphas.append((i, alpha))
    if n_pairs:
        s_last, y_last = s_hist[:, -1], y_hist[:, -1]
        yy = (y_last * y_last).sum(dim=1)
        gamma = torch.where(yy > 0, (s_last * y_last).sum(dim=1) / yy.clamp_min(1e-30), 1.0)
        q *= gamma[:, None]
    for i, alpha in reversed(alphas):
        beta = rho[:, i] * (y_hist[:, i] * q).sum(dim=1)
        q += (alpha - beta)[:, None] * s_hist[:, i]
    return q
