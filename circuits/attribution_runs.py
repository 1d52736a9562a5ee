"""The two runs attribution patching reads (`circuits.attribution.attribute`): the source
run's activations of a target, and the base run's with the graph from them to the metric.

Two ways to make them, with the same values (tests/circuits/test_attribution_engines.py):

- `functional_runs`, through `interp.functional` (the arithmetic of the incremental
  patching engine, equal to the bridge's): no hook bookkeeping, the graph starts at the
  earliest target activation (the weights are detached: nothing before the first patched
  layer is kept for the backward pass), and for the metrics of `interp.metrics` only the
  read positions are unembedded. For the models `interp.functional` covers.
- `hook_runs`, through the bridge's hooks, on any `TransformerBridge` (BERT-style models,
  or a model with hooks of the user's attached, which the functional runs would skip).

Integrated gradients (`integrated_gradient`) run passes with one activation overwritten,
made the same two ways: `hooked_passes`, and `functional_passes`, which with a metric of
`interp.metrics` start at the overwritten layer from the base run's caches
(`incremental_passes`, the incremental patching engine's step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from circuits.attribution_graddrop import LayerGradientGates
from circuits.patching.incremental import IncrementalPatcher
from circuits.patching.incremental_step import Step
from circuits.patching.metric import PatchMetric, at_read_positions, scalar_metric
from interp import functional
from interp.metrics import reads_position_only
from interp.tasks.base import TaskBatch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class AttributionRuns:
    """The source and base activations of the target at each layer and the two metrics."""

    sources: dict[int, Tensor]
    """Layer -> the source run's activation, no graph."""
    bases: dict[int, Tensor]
    """Layer -> the base run's activation, which `base_value`'s graph reads."""
    base_value: Tensor
    """The metric on the base run, 0-d, with its graph."""
    source_value: Tensor
    """The metric on the source run, 0-d float, detached."""


def _not_differentiable() -> ValueError:
    return ValueError("the metric is not differentiable in the model's logits")


def _capture_hook(store: dict[int, Tensor], layer: int) -> Callable[..., Tensor]:
    """A forward hook that records the activation of `layer` and passes it on unchanged.

    The tensor itself (not a copy) is recorded and returned, so that gradients taken with
    respect to it cover every use of it, including a skip connection that reads the same
    tensor (as `hook_resid_mid` does in the bridge).
    """

    def capture(activation: Tensor, *, hook: Any) -> Tensor:
        if not activation.requires_grad:
            activation.requires_grad_(True)  # a leaf: the model's weights are frozen
        store[layer] = activation
        return activation

    return capture


@dataclass(frozen=True)
class RunsWanted:
    """What both ways of making the runs are asked for."""

    hook_names: Mapping[str, int]
    """The target's hook name at each layer -> the layer."""
    base_tokens: Tensor
    source_tokens: Tensor
    batch: TaskBatch
    """The batch the metric reads, `for_autograd`."""
    metric: PatchMetric
    gates: LayerGradientGates | None
    """GradDrop's gates, put on the base run's writes, or None."""


def hook_runs(model: TransformerBridge, wanted: RunsWanted) -> AttributionRuns:
    """Both runs through the bridge and its hooks."""
    hook_names, batch, metric, gates = (wanted.hook_names, wanted.batch, wanted.metric,
                                        wanted.gates)
    base_tokens, source_tokens = wanted.base_tokens, wanted.source_tokens
    with torch.inference_mode():
        source_logits, cache = model.run_with_cache(
            source_tokens, names_filter=lambda name: name in hook_names
        )
        sources = {layer: cache[name].clone() for name, layer in hook_names.items()}
        source_value = scalar_metric(metric, source_logits, batch).detach().float()
    del cache
    captured: dict[int, Tensor] = {}
    hooks = [(name, _capture_hook(captured, layer)) for name, layer in hook_names.items()]
    if gates is not None:
        hooks += gates.hooks()
    with torch.inference_mode(False), torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        base_value = scalar_metric(metric, model(base_tokens), batch)
    if not base_value.requires_grad:
        raise _not_differentiable()
    missing = sorted(set(hook_names.values()) - set(captured))
    if missing:
        raise ValueError(f"the hooks of layers {missing} never ran")
    return AttributionRuns(sources, captured, base_value, source_value)


class _GradientCache(dict[str, Tensor]):
    """A cache for `interp.functional.forward` that makes each activation it is given under
    a name of `wanted` require grad as it is recorded: the forward pass goes on from that
    same tensor, so that the graph starts there (the weights being detached)."""

    def __init__(self, wanted: set[str]) -> None:
        super().__init__()
        self.wanted = wanted

    def __setitem__(self, name: str, value: Tensor) -> None:
        if name in self.wanted and not value.requires_grad:
            value.requires_grad_(True)
        super().__setitem__(name, value)


def functional_runs(
    model: TransformerBridge, arch: functional.Architecture, wanted: RunsWanted
) -> AttributionRuns:
    """Both runs through `interp.functional` on `model`'s weights (`arch`: its
    architecture); the tokens were checked against the model."""
    hook_names, metric, gates = wanted.hook_names, wanted.metric, wanted.gates
    base_tokens, source_tokens = wanted.base_tokens, wanted.source_tokens
    params, read, batch = _functional_inputs(model, metric, wanted.batch)
    with torch.inference_mode():
        cache: dict[str, Tensor] = {}
        source_logits = functional.forward(params, source_tokens, arch, cache=cache,
                                           validate=False, **read)
        sources = {layer: cache[name].clone() for name, layer in hook_names.items()}
        source_value = scalar_metric(metric, source_logits, batch).detach().float()
    del cache
    with torch.inference_mode(False), torch.enable_grad():
        base = _GradientCache(set(hook_names))
        logits = functional.forward(params, base_tokens, arch, cache=base, validate=False,
                                    **read)
        base_value = scalar_metric(metric, logits, batch)
    if not base_value.requires_grad:
        raise _not_differentiable()
    if gates is not None:
        gates.gate_cache(base)
    bases = {layer: base[name] for name, layer in hook_names.items()}
    return AttributionRuns(sources, bases, base_value, source_value)


def _functional_inputs(
    model: TransformerBridge, metric: PatchMetric, batch: TaskBatch
) -> tuple[dict[str, Tensor], dict[str, Tensor], TaskBatch]:
    """`model`'s weights, detached; `functional.forward`'s `logit_positions` (the read
    positions alone, for the metrics of `interp.metrics`) and the batch the metric then
    reads (positions remapped to them), all normal tensors, which autograd may save."""
    read: dict[str, Tensor] = {}
    with torch.inference_mode(False):
        params = {name: tensor.detach() for name, tensor in functional.live_params(model).items()}
        if reads_position_only(metric):  # unembed the read positions alone
            read["logit_positions"] = torch.unique(batch.position)
            batch = at_read_positions(batch, read["logit_positions"])
    return params, read, batch


PatchedPass = Callable[[Tensor, str, Tensor], Tensor]
"""`(tokens, hook name, activation)` -> the logits of a pass with that activation written
at the hook, with the graph from it."""


@dataclass
class Passes:
    """How integrated gradients run a pass with one activation written, and the batch the
    metric reads on its logits."""

    run: PatchedPass
    batch: TaskBatch


def hooked_passes(model: TransformerBridge, batch: TaskBatch) -> Passes:
    """Passes through the bridge, the activation written by a hook, in place (as patching
    writes: a bridge's skip connection may read the tensor the hook saw, `hook_resid_mid`,
    not the one it returns)."""

    def run(tokens: Tensor, name: str, activation: Tensor) -> Tensor:
        def write(seen: Tensor, *, hook: Any) -> Tensor:
            return seen.copy_(activation)

        with model.hooks(fwd_hooks=[(name, write)]):
            return model(tokens)

    return Passes(run, batch)


class _WritingCache(dict[str, Tensor]):
    """A cache for `interp.functional.forward` that overwrites, in place, the activation
    recorded under `name` with `activation` before the pass goes on from it."""

    def __init__(self, name: str, activation: Tensor) -> None:
        super().__init__()
        self.name, self.activation = name, activation

    def __setitem__(self, name: str, value: Tensor) -> None:
        if name == self.name:
            value.copy_(self.activation)  # (no graph before it: the weights are detached)
        super().__setitem__(name, value)


def functional_passes(
    model: TransformerBridge, arch: functional.Architecture, wanted: RunsWanted
) -> Passes:
    """Passes through `interp.functional` on `model`'s weights (detached). For the metrics
    of `interp.metrics` (which read `batch.position` only) on a causal model, from the
    written activation on (`incremental_passes`); else whole passes with the activation
    written as it is recorded."""
    if reads_position_only(wanted.metric) and arch.causal:
        return incremental_passes(model, arch, wanted)
    params, read, batch = _functional_inputs(model, wanted.metric, wanted.batch)

    def run(tokens: Tensor, name: str, activation: Tensor) -> Tensor:
        return functional.forward(params, tokens, arch, cache=_WritingCache(name, activation),
                                  validate=False, **read)

    return Passes(run, batch)


def incremental_passes(
    model: TransformerBridge, arch: functional.Architecture, wanted: RunsWanted
) -> Passes:
    """Passes that start at the written activation: the incremental patching engine's
    step (`circuits.patching.incremental_step.Step`) from the base run's caches, so the
    layers before it are not rerun for every copy, and the last layer and the unembedding
    run at the read positions alone. Only for metrics that read `batch.position` alone."""
    with torch.inference_mode(False), torch.no_grad():  # (normal tensors: autograd saves some)
        patcher = IncrementalPatcher(
            model, wanted.base_tokens, wanted.source_tokens, wanted.batch.position.tolist(),
            arch=arch, validate=False,
        )
        batch = at_read_positions(wanted.batch, patcher.read)
    n_examples = len(wanted.base_tokens)

    def run(tokens: Tensor, name: str, activation: Tensor) -> Tensor:
        step = Step(patcher, len(activation) // n_examples, 0, 0)
        layer, short = int(name.split(".")[1]), name.rsplit("hook_", 1)[1]
        return functional.unembed(patcher.params, step.enter(short, layer, activation), arch)

    return Passes(run, batch)


def integrated_gradient(
    passes: Passes,
    hook_name: str,
    base: Tensor,
    source: Tensor,
    tokens: Tensor,
    metric: PatchMetric,
    steps: int,
    max_batch: int,
) -> Tensor:
    """The gradient of the metric at `hook_name`, averaged over the activations
    `base + alpha (source - base)` written there for alpha at the midpoints of `steps`
    equal parts of [0, 1], `[batch, ...]` like `base`. Each pass runs several alphas as
    copies of the batch (at most `max_batch` examples); the metric is read on each copy's
    own examples and the copies' values summed, so each copy's gradient is its own."""
    n_examples = len(tokens)
    per_pass = max(1, max_batch // n_examples)
    alphas = (torch.arange(steps, device=base.device, dtype=torch.float64) + 0.5) / steps
    difference = source.to(base.dtype) - base
    total = torch.zeros_like(base)
    for chunk in alphas.split(per_pass):
        with torch.inference_mode(False), torch.enable_grad():
            shape = (len(chunk),) + (1,) * base.ndim
            points = (base + chunk.to(base.dtype).view(shape) * difference).flatten(0, 1)
            points.requires_grad_(True)
            logits = passes.run(tokens.repeat(len(chunk), 1), hook_name, points)
            value = sum(scalar_metric(metric, copy, passes.batch)
                        for copy in logits.split(n_examples))
            (grad,) = torch.autograd.grad(value, points, allow_unused=True)
        if grad is not None:  # (None: the metric does not read this activation)
            total += grad.unflatten(0, (len(chunk), n_examples)).sum(0)
    return total / steps
