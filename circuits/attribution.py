"""Attribution patching: a first-order estimate of activation patching for every index at once.

Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At Industrial
Scale"; Syed, Rager and Conmy 2023, "Attribution Patching Outperforms Automated Circuit
Discovery") replaces the forward pass per patched index of activation patching by a
linear approximation around the base run:

    metric(base with a := a_source) - metric(base)  ~  (a_source - a_base) . d metric / d a

evaluated on the base run. One forward pass with gradients on the base run, one forward
pass without on the source run and one backward pass give the estimate for every index of
a target: the elementwise product is summed over the dimensions the index does not keep
(d_model for `resid_pre` by layer x pos; pos and d_head for `z` by layer x head; the whole
query x key grid for `pattern`) and over the batch (the patch covers every example).

Returned values are `metric(base) + estimate`, so they sit on the same scale as the values
of `circuits.patching.patch` for the same target and can be compared index by index. The
estimate is exact where the metric is linear in the activation (e.g. a logit difference
read from the last residual stream of a model without a final norm).

Two refinements: `qk_fix=True` (AtP*, Kramár et al. 2024; `circuits.attribution_qk`)
computes the attention pattern under a query or key patch exactly and linearises only from
the pattern on; `ig_steps=m` (integrated gradients, Sundararajan et al. 2017, on one layer's
activation at a time) averages the gradient over m points of the line from the base to the
source activation instead of reading it at the base, at the cost of one forward and backward
pass over m copies of the batch per layer (from that layer on, with a metric of
`interp.metrics` on a model `interp.functional` covers: `circuits.attribution_runs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.attribution_graddrop import LayerGradientGates, grad_drop_scores
from circuits.attribution_qk import attribute_qk_fixed
from circuits.attribution_runs import (
    RunsWanted,
    functional_passes,
    functional_runs,
    hook_runs,
    hooked_passes,
    integrated_gradient,
)
from circuits.patching.engine import Direction, build_result, model_device
from circuits.patching.metric import PatchMetric
from circuits.patching.result import PatchingResult
from circuits.patching.targets import IndexSpace, check_patchable, index_space
from interp import functional, models
from interp.tasks.base import TaskBatch
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

METHOD = "attribution"
"""The `PatchingResult.method` of attribution-patching results."""

IG_METHOD = "attribution_ig"
"""The `PatchingResult.method` of attribution patching with integrated gradients."""

GRAD_DROP_METHOD = "attribution_graddrop"
"""The `PatchingResult.method` of GradDrop scores (`circuits.attribution_graddrop`)."""


AttributionEngine = Literal["auto", "functional", "hooks"]


def _attribution_engine(
    engine: str, model: TransformerBridge, space: IndexSpace
) -> functional.Architecture | Literal["hooks"]:
    """The model's architecture where the runs go through `interp.functional`, else
    "hooks"; `engine="functional"` where it cannot is a one-line ValueError."""
    if engine not in ("auto", "functional", "hooks"):
        raise ValueError(f"engine must be 'auto', 'functional' or 'hooks', got {engine!r}")
    if engine == "hooks":
        return "hooks"
    try:
        arch, reason = functional.architecture_of(model), None
    except ValueError as error:
        arch, reason = None, str(error)
    if arch is not None and space.hook.endswith("hook_pattern"):
        # (interp.functional records the pattern after mixing the values with it)
        arch, reason = None, "the pattern target needs the bridge's hooks"
    if arch is not None and models.attached_hooks(model):
        arch, reason = None, "hooks are attached to the model, which it would not run"
    if arch is None:
        if engine == "functional":
            raise ValueError(f"engine='functional' cannot run here: {reason}; use 'hooks' or "
                             "'auto'")
        return "hooks"
    return arch


def _reduce(product: Float[Tensor, "batch ..."], space: IndexSpace) -> Float[Tensor, "..."]:
    """Sum `product` over every dimension except the ones `space` indexes, in axis order."""
    keep = space.dims
    if not keep or max(keep) >= product.ndim:
        raise ValueError(
            f"target {space.name!r} has no attribution layout for an activation of shape "
            f"{tuple(product.shape)}"
        )
    summed = [d for d in range(product.ndim) if d not in keep]
    remaining = sorted(keep)  # dims left after the sum, in increasing order
    return product.sum(dim=summed).permute(*(remaining.index(d) for d in keep))


def attribute(
    model: TransformerBridge,
    batch: TaskBatch,
    target: str,
    metric: PatchMetric,
    *,
    direction: Direction = "denoise",
    normalise: bool = False,
    tokenizer: Any | None = None,
    qk_fix: bool = False,
    ig_steps: int | None = None,
    max_batch: int = 256,
    grad_drop: bool = False,
    engine: AttributionEngine = "auto",
) -> PatchingResult:
    """Estimate activation patching of every index of `target` from two forwards and a backward.

    For index i of the target, the value is
    `metric(base) + sum over unindexed dims and batch of (a_source - a_base)[i] * grad[i]`
    with `grad = d metric(base) / d a_base`: the first-order Taylor estimate of the value
    `circuits.patching.patch` computes exactly for the same arguments.

    Args:
        model: Any `TransformerBridge`; run in eval mode, its training flag is restored.
            Parameter gradients (`.grad`) are left untouched.
        batch: Clean and corrupted prompts `[batch, pos]` with the fields the metric reads.
        target: A name in `circuits.patching.TARGETS` (`resid_pre`, `z`, `pattern`, ...).
        metric: `(logits [batch, pos, vocab], batch) -> scalar` (or `[batch]`, averaged);
            must be differentiable, e.g. `interp.metrics.mean_metric(logit_diff)`.
        direction: `"denoise"`: base = corrupted run, source = clean activations;
            `"noise"`: base = clean run, source = corrupted activations.
        normalise: Rescale to `(value - corrupted) / (clean - corrupted)`.
        tokenizer: Labels positions with token strings of the first clean prompt.
        qk_fix: For the query and key targets (`q`, `k`, `q_by_pos`, `k_by_pos`):
            compute the patched attention pattern exactly and linearise from there
            (AtP*, Kramár et al. 2024: `circuits.attribution_qk`), which plain
            attribution misses where attention saturates. A ValueError for other targets.
        ig_steps: Integrated gradients (Sundararajan et al. 2017) along the straight line
            from the base to the source activation of each layer in turn, `ig_steps`
            midpoints: the gradient is averaged over the line instead of read at its
            start. Complete per layer: the estimates of all a layer's indices sum to the
            metric change of patching the whole layer (to the midpoint rule's error).
            Costs one forward and backward pass over `ig_steps` copies of the batch per
            layer (module docstring). None: plain attribution patching.
        max_batch: With `ig_steps`, the most examples in one pass: `max_batch //
            len(batch)` steps at a time (at least one).
        grad_drop: AtP*'s GradDrop (Kramár et al. 2024; `circuits.attribution_graddrop`):
            instead of the estimate, a score for ranking indices that plain attribution
            misses where effects along different paths cancel: the mean magnitude of the
            estimates under the gradient with each layer's writes to the residual stream
            dropped in turn (one backward pass per layer). Values are `metric(base) +
            score`, the score >= 0 whatever the effect's sign, so `top_indices` ranks by
            it; compare it with `|exact - baseline|`, not with the signed values.
        engine: How the runs are made (`circuits.attribution_runs`), those of
            `ig_steps` too: `"functional"` through `interp.functional` (the incremental
            patching engine's arithmetic; no hook bookkeeping, and no graph before the
            first target layer), `"hooks"` through the bridge's hooks, on any bridge;
            `"auto"` takes the first where the model allows it (a covered architecture, no
            hooks of the user's attached) and the target is not `pattern`.

    Returns:
        A `PatchingResult` laid out as `patch` lays it out for `target` (`values`
        `[n_layers, ...]`), with `method="attribution"` (`"attribution_qk_fix"` with
        `qk_fix`, `"attribution_ig"` with `ig_steps`, `"attribution_graddrop"` with
        `grad_drop`).
    """
    chosen = [name for name, on in (("qk_fix", qk_fix), ("ig_steps", ig_steps is not None),
                                    ("grad_drop", grad_drop)) if on]
    if len(chosen) > 1:
        raise ValueError(
            f"choose one of qk_fix, ig_steps and grad_drop, not {' and '.join(chosen)}"
        )
    if qk_fix:
        return attribute_qk_fixed(model, batch, target, metric, direction=direction,
                                  normalise=normalise, tokenizer=tokenizer)
    if ig_steps is not None:
        check_positive_int("ig_steps", ig_steps)
    check_positive_int("max_batch", max_batch)
    space = index_space(target)
    check_patchable(space, model)
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    batch = TaskBatch.checked(batch, model).to(model_device(model))
    n_pos = batch.clean.shape[1]
    sizes = space.sizes(model, n_pos)
    n_layers = sizes[0]
    hook_names = {space.hook_name(layer): layer for layer in range(n_layers)}
    gates = LayerGradientGates(model, n_layers) if grad_drop else None

    engine = _attribution_engine(engine, model, space)
    was_training = model.training
    model.eval()
    try:
        grad_batch = batch.for_autograd()
        base_tokens, source_tokens = (
            (grad_batch.corrupted, grad_batch.clean) if direction == "denoise"
            else (grad_batch.clean, grad_batch.corrupted)
        )
        wanted = RunsWanted(hook_names, base_tokens, source_tokens, grad_batch, metric, gates)
        runs = (functional_runs(model, engine, wanted)
                if isinstance(engine, functional.Architecture) else hook_runs(model, wanted))
        sources, captured, base_value = runs.sources, runs.bases, runs.base_value
        layers = sorted(captured)
        if gates is not None:
            dropped_grads = gates.gradients(base_value, [captured[layer] for layer in layers])
        elif ig_steps is None:
            grads = torch.autograd.grad(
                base_value, [captured[layer] for layer in layers], allow_unused=True
            )
        else:  # each layer in turn
            passes = (hooked_passes(model, grad_batch) if engine == "hooks"
                      else functional_passes(model, engine, wanted))
            grads = tuple(
                integrated_gradient(passes, space.hook_name(layer), captured[layer].detach(),
                                    sources[layer], base_tokens, metric, ig_steps, max_batch)
                for layer in layers
            )
        rows = []
        with torch.no_grad():
            for at, layer in enumerate(layers):
                base_activation = captured[layer].detach()
                difference = sources[layer].to(base_activation.dtype) - base_activation

                def estimate(grad: Tensor | None, difference: Tensor = difference) -> Tensor:
                    if grad is None:  # the metric does not depend on this activation
                        return torch.zeros(sizes[1:])
                    return _reduce((difference * grad).float(), space).cpu()

                if gates is None:
                    rows.append(estimate(grads[at]))
                else:
                    rows.append(grad_drop_scores(
                        [estimate(by_layer[at]) for by_layer in dropped_grads], n_layers
                    ))
        base_value = base_value.detach().float()
    finally:
        model.train(was_training)

    grid = torch.stack(rows) + base_value.cpu()
    if tuple(grid.shape) != tuple(sizes):
        raise ValueError(
            f"target {target!r}: attribution grid {tuple(grid.shape)} does not match the "
            f"index space {tuple(sizes)}"
        )
    return build_result(
        grid, space, batch, tokenizer, target, direction,
        base_value=base_value, source_value=runs.source_value, normalise=normalise,
        method=GRAD_DROP_METHOD if grad_drop else METHOD if ig_steps is None else IG_METHOD,
    )


def correlation(approx: PatchingResult, exact: PatchingResult) -> float:
    """Pearson correlation of two results over every index both have a value for (e.g.
    attribution vs `patch`; NaN marks an index `patch(indices=...)` did not patch).

    Raises ValueError where the two cover different targets or shapes, or where either is
    constant or fewer than two indices remain (the correlation is then undefined).
    """
    if approx.target != exact.target or approx.values.shape != exact.values.shape:
        raise ValueError(
            f"cannot correlate {approx.target!r} {tuple(approx.values.shape)} with "
            f"{exact.target!r} {tuple(exact.values.shape)}"
        )
    x = approx.values.detach().double().reshape(-1).cpu()
    y = exact.values.detach().double().reshape(-1).cpu()
    both = x.isfinite() & y.isfinite()  # (NaN: an index `patch(indices=...)` left out)
    x, y = x[both], y[both]
    if len(x) < 2:
        raise ValueError("cannot correlate: fewer than two indices have both values")
    x, y = x - x.mean(), y - y.mean()
    scale = x.norm() * y.norm()
    if float(scale) == 0.0:
        raise ValueError("cannot correlate: one of the results is constant over its indices")
    return float((x * y).sum() / scale)


def top_indices(result: PatchingResult, k: int) -> list[tuple[int, ...]]:
    """The `k` indices of `result` whose values move the metric most (largest |value -
    baseline|, NaN last), strongest first: the candidates to verify exactly with
    `circuits.patching.patch(..., indices=top_indices(estimate, k))`, AtP*'s workflow
    (Kramár et al. 2024: a cheap estimate of every index, exact patching of the few that
    matter)."""
    check_positive_int("k", k)
    effects = (result.values.detach().double() - result.baseline).abs().reshape(-1)
    effects = torch.nan_to_num(effects, nan=-1.0)
    order = torch.argsort(effects, descending=True, stable=True)[:k]
    shape = tuple(result.values.shape)
    return [tuple(int(i) for i in torch.unravel_index(flat, shape)) for flat in order]
