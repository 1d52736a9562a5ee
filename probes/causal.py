"""Interventions along probe directions, and LEACE concept erasure.

A probe that decodes a property shows that the property is linearly present, not that the
model uses it. Intervening on the direction answers the second question:

- project out a subspace (amnesic probing, Elazar et al. 2021, "Amnesic Probing: Behavioral
  Explanation with Amnesic Counterfactuals"; the nullspace projection of Ravfogel et al.
  2020, "Null It Out: Guarding Protected Attributes by Iterative Nullspace Projection");
- set or add a component along one direction (Nanda et al. 2023, "Emergent Linear
  Representations in World Models of Self-Supervised Sequence Models");
- erase a concept with LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure
  in closed form"): the least-squares edit after which no linear classifier does better
  than a constant.

Elazar et al. compare against projecting out random directions of the same rank: a real
effect must exceed that control, which `intervention_effect` reports next to the effect.
A probe's weights (`ProbeResult.directions[layer]`, `[d, n_out]`) can be the `basis` of a
`project_out` intervention directly, but the weights are the directions a probe reads, not
those the model writes the concept along: `activation_patterns` gives the latter (Haufe et
al. 2014), and projecting those out is the stronger test.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.activations.inputs import check_token_tensor
from interp.heads.ablation import metric_value
from interp.heads.patterns import eval_mode
from interp.tasks.base import TaskBatch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "INTERVENTION_KINDS",
    "Intervention",
    "InterventionResult",
    "LeaceEraser",
    "activation_patterns",
    "add_along",
    "intervention_effect",
    "orthonormal_basis",
    "project_out",
    "run_with_intervention",
    "set_along",
]

_NEEDS = {"project_out": "basis", "set": "direction", "add": "direction", "erase": "eraser"}
INTERVENTION_KINDS = tuple(_NEEDS)
RANK_TOL = 1e-8
"""Relative tolerance below which singular values / eigenvalues count as zero."""

Metric = Callable[[Float[Tensor, "batch pos vocab"], TaskBatch], "float | Tensor"]


# -- directions


def orthonormal_basis(basis: Float[Tensor, "d k"], tol: float = RANK_TOL) -> Float[Tensor, "d r"]:
    """Orthonormal columns spanning `basis`'s column space (`r <= k` its rank), float64.

    QR when `basis` has full column rank; otherwise (QR without pivoting cannot tell which
    of its columns are spurious) the left singular vectors of the nonzero singular values.
    """
    if not isinstance(basis, Tensor) or basis.ndim != 2 or not torch.is_floating_point(basis):
        raise ValueError(f"basis must be a float tensor [d, k], got {_shape(basis)}")
    basis = basis.detach().double()
    if not bool(torch.isfinite(basis).all()):
        raise ValueError("basis contains NaN or infinite values")
    if not bool(basis.any()):
        return basis.new_zeros(basis.shape[0], 0)
    q, r = torch.linalg.qr(basis)
    diagonal = r.diagonal().abs()
    if basis.shape[1] <= basis.shape[0] and bool((diagonal > tol * diagonal.max()).all()):
        return q
    u, s, _ = torch.linalg.svd(basis, full_matrices=False)
    return u[:, s > tol * s[0]]


def _unit(direction: Float[Tensor, " d"]) -> Float[Tensor, " d"]:
    if not isinstance(direction, Tensor) or direction.ndim != 1:
        raise ValueError(f"direction must be a tensor [d], got {_shape(direction)}")
    norm = float(direction.detach().double().norm())
    if not norm > 0 or not math.isfinite(norm):
        raise ValueError(f"direction must have a finite nonzero norm, got {norm}")
    return direction.detach().double() / norm


def _check_d(acts: Tensor, d: int, what: str) -> None:
    """A one-line ValueError unless `acts` is a floating tensor `[..., d]` (an integer one
    would round the edit away: the unit directions cast to integers are zero)."""
    if not isinstance(acts, Tensor) or acts.ndim < 1 or acts.shape[-1] != d:
        raise ValueError(f"{what}: acts {_shape(acts)} must end in d={d}")
    if not acts.is_floating_point():
        raise ValueError(
            f"{what}: acts must be floating point, got {acts.dtype} (cast them, e.g. acts.float())"
        )


def project_out(acts: Float[Tensor, "... d"], basis: Float[Tensor, "d k"]) -> Tensor:
    """`acts` minus its orthogonal projection onto the column space of `basis`
    (Ravfogel et al. 2020; Elazar et al. 2021). Rank-deficient bases are fine."""
    q = orthonormal_basis(basis)
    _check_d(acts, q.shape[0], "project_out")
    q = q.to(acts.device, acts.dtype)
    return acts - (acts @ q) @ q.T


def set_along(acts: Float[Tensor, "... d"], direction: Float[Tensor, " d"], value: float) -> Tensor:
    """`acts` with its component along `unit(direction)` set to `value` (Nanda et al. 2023)."""
    u = _unit(direction)
    _check_d(acts, u.shape[0], "set_along")
    u = u.to(acts.device, acts.dtype)
    return acts + (value - acts @ u)[..., None] * u


def add_along(acts: Float[Tensor, "... d"], direction: Float[Tensor, " d"], alpha: float) -> Tensor:
    """`acts + alpha * unit(direction)` (activation addition along a probe direction)."""
    u = _unit(direction)
    _check_d(acts, u.shape[0], "add_along")
    return acts + alpha * u.to(acts.device, acts.dtype)


# -- LEACE


@dataclass(frozen=True)
class LeaceEraser:
    """The LEACE eraser of Belrose et al. 2023: `r(x) = x - W^+ P W (x - mean)`.

    `W = (Sigma_xx^{1/2})^+` whitens x, `W^+` is its pseudo-inverse, and `P` is the
    orthogonal projector onto the column space of `W Sigma_xz`. Writing `P = Q Q^T` with
    orthonormal `Q [d, r]`, the edit is stored as two factors, so erasing costs `O(d r)`.

    Attributes:
        mean: `[d]` mean of the fitted x (the affine edit is centred there).
        proj_left: `[d, r]` `W^+ Q`: maps the erased coordinates back into x-space.
        proj_right: `[r, d]` `Q^T W`: the whitened coordinates that correlate with z.
            `r` is the rank of `Sigma_xz` (at most the number of classes - 1, or of targets).
    """

    mean: Tensor
    proj_left: Tensor
    proj_right: Tensor

    def __post_init__(self) -> None:
        d, r = self.proj_left.shape if self.proj_left.ndim == 2 else (-1, -1)
        if self.mean.shape != (d,) or self.proj_right.shape != (r, d):
            raise ValueError(
                f"LeaceEraser: need mean [d], proj_left [d, r], proj_right [r, d], got "
                f"{_shape(self.mean)}, {_shape(self.proj_left)}, {_shape(self.proj_right)}"
            )

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        return int(self.proj_left.shape[1])

    @classmethod
    def fit(
        cls,
        x: Float[Tensor, "n d"],
        z: Int[Tensor, " n"] | Float[Tensor, "n k"],
        tol: float = RANK_TOL,
    ) -> LeaceEraser:
        """Fit on samples `x` and concept `z`: integer class ids `[n]` (one-hot encoded) or
        real values `[n, k]` (a 1-D float `z` is one real column). Computed in float64;
        eigenvalues of `Sigma_xx` below `tol * max` and singular values of `W Sigma_xz`
        below `tol * sqrt(max eig Sigma_zz)` count as zero."""
        if not isinstance(x, Tensor) or x.ndim != 2 or not torch.is_floating_point(x):
            raise ValueError(f"x must be a float tensor [n, d], got {_shape(x)}")
        if x.shape[0] < 2:
            raise ValueError(f"LEACE needs at least 2 samples, got {x.shape[0]}")
        zz = _concept_matrix(z, x.shape[0]).to(x.device)
        x64 = x.detach().double()
        mean = x64.mean(0)
        xc, zc = x64 - mean, zz - zz.mean(0)
        sigma_xx, sigma_xz = xc.T @ xc / len(x), xc.T @ zc / len(x)
        eigvals, eigvecs = torch.linalg.eigh(sigma_xx)
        keep = eigvals > tol * eigvals.max().clamp_min(0)
        v, root = eigvecs[:, keep], eigvals[keep].sqrt()
        whiten, unwhiten = (v / root) @ v.T, (v * root) @ v.T  # W and W^+
        u, s, _ = torch.linalg.svd(whiten @ sigma_xz, full_matrices=False)
        z_scale = float(torch.linalg.eigvalsh(zc.T @ zc / len(x)).max().clamp_min(0).sqrt())
        q = u[:, s > tol * z_scale] if z_scale > 0 else u[:, :0]
        return cls(mean=mean, proj_left=unwhiten @ q, proj_right=q.T @ whiten)

    def __call__(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """`x` with the concept erased (same shape, dtype and device; computed in float64)."""
        _check_d(x, self.d, "LeaceEraser")
        mean, left, right = (
            t.to(x.device, torch.float64) for t in (self.mean, self.proj_left, self.proj_right)
        )
        x64 = x.double()
        return (x64 - ((x64 - mean) @ right.T) @ left.T).to(x.dtype)


def activation_patterns(
    x: Float[Tensor, "n d"], z: Int[Tensor, " n"] | Float[Tensor, "n k"]
) -> Float[Tensor, "d k"]:
    """The directions along which a concept is *written* in `x`: the cross-covariance
    `Sigma_xz = E[(x - mean x)(z - mean z)^T]` (one-hot classes for integer `z`), i.e. the
    "activation patterns" of Haufe et al. 2014 ("On the interpretation of weight vectors of
    linear models in multivariate neuroimaging"), as opposed to a probe's weights, the
    directions it *reads*. Weights also cancel noise, so removing them can leave the concept
    in place; removing the span of the patterns removes every direction whose coordinate
    covaries with the concept (LEACE does the same in whitened coordinates)."""
    if not isinstance(x, Tensor) or x.ndim != 2 or not torch.is_floating_point(x):
        raise ValueError(f"x must be a float tensor [n, d], got {_shape(x)}")
    zz = _concept_matrix(z, x.shape[0]).to(x.device)
    x64 = x.detach().double()
    xc, zc = x64 - x64.mean(0), zz - zz.mean(0)
    return (xc.T @ zc / len(x)).to(x.dtype)


def _concept_matrix(z: Tensor, n: int) -> Float[Tensor, "n k"]:
    if not isinstance(z, Tensor) or z.ndim not in (1, 2) or z.shape[0] != n:
        raise ValueError(f"z must be a tensor [n] or [n, k] with n={n}, got {_shape(z)}")
    if z.ndim == 1 and not torch.is_floating_point(z):
        _, classes = torch.unique(z, return_inverse=True)
        return torch.nn.functional.one_hot(classes).double()
    return z.detach().double().reshape(n, -1)


# -- interventions at a hook


@dataclass(frozen=True)
class Intervention:
    """An edit of the activations `[batch, pos, d]` at one hook.

    Attributes:
        kind: `"project_out"` (needs `basis`), `"set"` (`direction`, `value`), `"add"`
            (`direction`, `alpha`) or `"erase"` (`eraser`).
        basis: `[d, k]` the subspace to remove (e.g. `ProbeResult.directions[layer]`).
        direction: `[d]` the direction to set or add along (unit-normalised when used).
        value: The component `set` writes along `unit(direction)`.
        alpha: How far `add` moves along `unit(direction)`.
        eraser: The fitted `LeaceEraser` that `erase` applies.
        positions: Which positions to edit: None (all), an int (the same for every
            example; negative counts from the end) or a `[batch]` tensor, one per example.
    """

    kind: str
    basis: Tensor | None = None
    direction: Tensor | None = None
    value: float = 0.0
    alpha: float = 0.0
    eraser: LeaceEraser | None = None
    positions: int | Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in _NEEDS:
            raise ValueError(
                f"unknown intervention kind {self.kind!r}; expected one of "
                f"{', '.join(INTERVENTION_KINDS)}"
            )
        field, ndim = _NEEDS[self.kind], {"basis": 2, "direction": 1}.get(_NEEDS[self.kind])
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"a {self.kind!r} intervention needs `{field}`")
        if ndim is not None and (not isinstance(value, Tensor) or value.ndim != ndim):
            raise ValueError(f"{field} must be a tensor with {ndim} dim(s), got {_shape(value)}")

    @property
    def operand(self) -> Any:
        """The basis, direction or eraser that this kind of intervention uses."""
        return getattr(self, _NEEDS[self.kind])

    @property
    def d(self) -> int:
        """Width of the activations this intervention edits."""
        return self.operand.d if self.kind == "erase" else int(self.operand.shape[0])

    def edit(self, acts: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The intervention on every vector of `acts` (a new tensor)."""
        if self.kind == "project_out":
            return project_out(acts, self.operand)
        if self.kind == "set":
            return set_along(acts, self.operand, self.value)
        if self.kind == "add":
            return add_along(acts, self.operand, self.alpha)
        return self.operand(acts)

    def apply(self, acts: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        """The activations with `positions` edited and the others copied bit for bit;
        `acts` itself is never modified."""
        if not isinstance(acts, Tensor) or acts.ndim != 3:
            raise ValueError(
                f"Intervention.apply: acts must be [batch, pos, d], got {_shape(acts)}"
            )
        _check_d(acts, self.d, f"{self.kind!r} intervention")
        if self.positions is None:
            return self.edit(acts)
        batch, n_pos, _ = acts.shape
        pos = torch.as_tensor(self.positions, device=acts.device)
        pos = pos.expand(batch) if pos.ndim == 0 else pos
        bad = pos.shape != (batch,) or pos.is_floating_point()
        if bad or bool(((pos < -n_pos) | (pos >= n_pos)).any()):
            raise ValueError(
                f"positions must be an int or a [{batch}] int tensor in [-{n_pos}, {n_pos}), "
                f"got {self.positions if isinstance(self.positions, int) else _shape(pos)}"
            )
        rows, out = torch.arange(batch, device=acts.device), acts.clone()
        out[rows, pos.long()] = self.edit(acts[rows, pos.long()])
        return out

    def random_like(self, generator: torch.Generator) -> Intervention:
        """The control of Elazar et al. 2021: the same intervention along random directions
        of the same rank and norm. `erase` becomes the projection `x - Q Q^T (x - mean)`
        onto a random subspace of the eraser's rank, around its mean."""
        operand = self.operand
        if self.kind == "erase":
            q = _random_basis(operand.d, operand.rank, generator)
            return replace(self, eraser=LeaceEraser(operand.mean, q, q.T))
        if self.kind == "project_out":
            rank = orthonormal_basis(operand).shape[1]
            return replace(self, basis=_random_basis(operand.shape[0], rank, generator))
        random = _random_basis(operand.shape[0], 1, generator)[:, 0] * operand.double().norm()
        return replace(self, direction=random.to(operand.dtype))


def _random_basis(d: int, rank: int, generator: torch.Generator) -> Float[Tensor, "d rank"]:
    """Orthonormal columns spanning a uniformly random `rank`-dim subspace (float64)."""
    gaussian = torch.randn(d, rank, generator=generator, dtype=torch.float64)
    return torch.linalg.qr(gaussian)[0]


def run_with_intervention(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    hook: str,
    intervention: Intervention,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of one forward pass with `intervention` applied at `hook`. The hook is removed
    afterwards, also when the forward pass raises; `tokens` is not modified."""
    _check_hook(model, hook)
    _check_intervention(intervention)
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise ValueError(f"tokens must be a tensor [batch, pos], got {_shape(tokens)}")
    check_token_tensor(tokens, "tokens", model)
    return _run_hooked(model, tokens, hook, intervention)


def _run_hooked(
    model: TransformerBridge, tokens: Tensor, hook: str, intervention: Intervention
) -> Tensor:
    """`run_with_intervention` without its checks."""

    def fn(acts: Tensor, hook: object = None) -> Tensor:  # called as fn(acts, hook=point)
        return intervention.apply(acts)

    with model.hooks(fwd_hooks=[(hook, fn)]):
        return model(tokens)


# -- effect on a metric


@dataclass(frozen=True)
class InterventionResult:
    """A metric before and after an intervention, and after random controls of it.

    Attributes:
        hook: Where the intervention was applied.
        kind: The intervention's kind.
        before: The metric on the plain forward pass.
        after: The metric with the intervention.
        random_mean: Mean of the metric over the random-direction controls (nan if none).
        random_std: Their sample standard deviation (nan with fewer than 2).
        random_values: The metric under each random control.
        seed: Seed of the random directions.
        metric: The metric's name.
    """

    hook: str
    kind: str
    before: float
    after: float
    random_mean: float
    random_std: float
    random_values: tuple[float, ...]
    seed: int
    metric: str = "metric"

    @property
    def effect(self) -> float:
        """`after - before`."""
        return self.after - self.before

    @property
    def random_effect(self) -> float:
        """`random_mean - before`: the change a random intervention of the same rank makes."""
        return self.random_mean - self.before

    def to_dict(self) -> dict[str, object]:
        """Every field plus `effect`, `random_effect` and `n_random`."""
        out: dict[str, object] = asdict(self)
        out["random_values"] = list(self.random_values)
        out.update(
            effect=self.effect, random_effect=self.random_effect, n_random=len(self.random_values)
        )
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row with the columns of `to_dict` (random_values left out)."""
        row = {k: v for k, v in self.to_dict().items() if k != "random_values"}
        return pd.DataFrame([row])


def intervention_effect(
    model: TransformerBridge,
    batch: TaskBatch,
    hook: str,
    intervention: Intervention,
    metric: Metric,
    *,
    n_random: int = 5,
    seed: int = 0,
) -> InterventionResult:
    """The metric on `batch.clean` before and after `intervention` at `hook`, and after
    `n_random` random controls of the same rank and norm (Elazar et al. 2021). A metric
    returning one value per example is averaged. Runs in eval mode without gradients."""
    _check_hook(model, hook)
    _check_intervention(intervention)
    batch = TaskBatch.checked(batch, model)  # the tokens, once for every run below
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random must be an int >= 0, got {n_random!r}")
    parameter = next(iter(model.parameters()), None)
    batch = batch.to(parameter.device if parameter is not None else "cpu")
    generator = torch.Generator().manual_seed(int(seed))
    controls = [intervention.random_like(generator) for _ in range(n_random)]

    def score(edit: Intervention | None) -> float:
        tokens = batch.clean
        logits = model(tokens) if edit is None else _run_hooked(model, tokens, hook, edit)
        return metric_value(metric, logits, batch)

    with eval_mode(model), torch.no_grad():
        before, after = score(None), score(intervention)
        randoms = tuple(score(control) for control in controls)
    return InterventionResult(
        hook=hook,
        kind=intervention.kind,
        before=before,
        after=after,
        random_mean=statistics.fmean(randoms) if randoms else math.nan,
        random_std=statistics.stdev(randoms) if len(randoms) > 1 else math.nan,
        random_values=randoms,
        seed=int(seed),
        metric=getattr(metric, "__name__", "metric"),
    )


def _check_intervention(intervention: object) -> None:
    if not isinstance(intervention, Intervention):
        raise ValueError(f"intervention must be an Intervention, got {type(intervention).__name__}")


def _check_hook(model: TransformerBridge, hook: str) -> None:
    if not isinstance(hook, str) or hook not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook!r} (see model.hook_dict)")


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
