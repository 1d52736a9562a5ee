"""Path patching: the effect of one path sender -> receiver, every other path held fixed.

Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect Object
Identification in GPT-2 small", appendix B. Activation patching replaces a component's
output and lets the change flow everywhere downstream; path patching lets it reach only
chosen receivers, directly (through the residual stream, not through other heads).

Two inputs: the base run on `x_base` and the source run on `x_source`. Direction
`"noise"` (the paper's default) has base = clean and source = corrupted; `"denoise"` has
base = corrupted and source = clean. Senders are heads (`"L{l}H{h}"`), MLP outputs
(`"mlp{l}"`) or the embedding (`"embed"`, the whole input residual of block 0: token and
position embeddings). Receivers are the query, key or value input of a head
(`"L{l}H{h}.q"`, `".k"`, `".v"`), the input of an MLP (`"mlp{l}"`), or the final residual
stream (`"logits"`). The names, their `Node`s, the hooks that carry each node and which
sender reaches which receiver are in `circuits.path_nodes` (`Node`, `parse_node` and
`reaches` are re-exported here).

The method, with TransformerLens hooks:

1. Cache the senders' outputs on the source run and every head's output
   (`blocks.{l}.attn.hook_z`) on the base run.
2. Run 2, on `x_base`: the senders' outputs are set to their source values and every other
   head's `z` is frozen at its base value, so no effect travels through another head.
   MLPs and LayerNorms are recomputed (the paper's convention); `freeze_mlps=True` freezes
   the outputs of non-sender MLPs at their base values too. The receivers' inputs are
   cached: `blocks.{l}.attn.hook_q/k/v[:, :, h]` for a head (patching the projected query
   is the same as patching the head's query input with its LayerNorm recomputed) and
   `blocks.{l}.mlp.hook_pre` for an MLP (its projected input, before the activation;
   gated MLPs also `hook_pre_linear`, the up projection).
   For the `"logits"` receiver, run 2's logits are the answer and there is no run 3.
3. Run 3, on `x_base`: the receivers' inputs are set to their run-2 values and everything
   else is computed normally. The metric is read on its logits.

Hook positions: head `(l, h)` sends `blocks.{l}.attn.hook_z[:, :, h]`, MLP `l` sends
`blocks.{l}.hook_mlp_out`, the embedding sends `blocks.0.hook_resid_pre`. A sender can
only reach a receiver after it: a head of layer l feeds MLP l and everything from layer
l + 1 on, never another head of layer l; MLP l feeds layer l + 1 on (with parallel
attention and MLP, `cfg.parallel_attn_mlp`, heads of layer l do not feed MLP l). A path
whose senders reach no receiver has no effect: its value is the base metric, returned
without the patched runs. With no senders at all, runs 2 and 3 still happen with every
head frozen at its base value, which must give the base metric exactly: a check that
freezing takes effect on a bridge (the hooked `hook_z` is a view of the output
projection's input, so writing into it in place reaches the projection).

Every patch is written in place into the hooked activation (as TransformerLens does), since
some bridge hooks see a tensor that also feeds the skip connection. The sender sweep
(`path_patch_senders`) folds K senders into the batch like `circuits.patching.patch`: the
base tokens are repeated K times, copy k has its own sender patched in run 2 and its own
receiver values in run 3. For grouped-query attention, a `.k` or `.v` receiver patches the
key/value head that head `h` reads, which the other query heads of its group share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from circuits.graph import parallel_blocks
from circuits.patching.engine import Direction, build_result, model_device
from circuits.patching.metric import CopyMetric, PatchMetric, scalar_metric
from circuits.patching.result import PatchingResult
from circuits.patching.targets import index_space
from circuits.path_nodes import (
    Node,
    NodeKind,
    Role,
    _parse_nodes,
    _parse_receivers,
    _reaches_any,
    _receiver_patches,
    _sender_hook,
    _sender_index,
    parse_node,
    reaches,
)
from interp.metrics import normalise as normalise_metric
from interp.tasks.base import TaskBatch
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "Node",
    "NodeKind",
    "PathPatchValue",
    "Role",
    "parse_node",
    "path_patch",
    "path_patch_senders",
    "reaches",
]

Hook = tuple[str, Callable[..., Tensor]]


@dataclass(frozen=True)
class PathPatchValue:
    """The metric after patching one path, with the unpatched runs' values for scale.

    Attributes:
        value: The metric after patching the path (not normalised).
        metric_clean: The metric on the unpatched clean run.
        metric_corrupted: The metric on the unpatched corrupted run.
        direction: `"noise"` (base clean, source corrupted) or `"denoise"` (the reverse).
    """

    value: float
    metric_clean: float
    metric_corrupted: float
    direction: str

    def __float__(self) -> float:
        return self.value

    @property
    def normalised(self) -> float:
        """`(value - corrupted) / (clean - corrupted)`: 1 = clean run, 0 = corrupted run."""
        return float(normalise_metric(self.value, self.metric_clean, self.metric_corrupted))


def _freeze_hooks(model: TransformerBridge, freeze_mlps: bool) -> list[str]:
    """Hooks whose base values are held fixed in run 2: every head's z (and MLP outputs)."""
    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    if freeze_mlps and not getattr(model.cfg, "attn_only", False):
        names += [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
    return names


def _check_hooks(
    model: TransformerBridge,
    frozen_names: Sequence[str],
    source_names: Sequence[str],
    receivers: Sequence[Node],
) -> None:
    """A one-line ValueError naming any hook the patches need that the model lacks."""
    names = {*frozen_names, *source_names}
    names.update(name for node in receivers for name, _ in _receiver_patches(node, model))
    missing = sorted(names - set(model.hook_dict))
    if missing:
        raise ValueError(f"path patching needs hooks this model lacks: {missing}")


def _writer(
    n_copies: int,
    n_examples: int,
    frozen: Tensor | None,
    patches: Sequence[tuple[int, tuple[Any, ...], Tensor]],
) -> Callable[..., Tensor]:
    """A hook that sets every copy to `frozen`, then copy k at `index` to `value[index]`.

    The activation is `[n_copies * n_examples, ...]`; `frozen` and each `value` are
    `[n_examples, ...]`. Written in place, as TransformerLens does: some bridge hooks
    (e.g. `hook_resid_mid`) see a tensor that also feeds the skip connection.
    """

    def write(activation: Tensor, *, hook: Any) -> Tensor:
        per_copy = activation.unflatten(0, (n_copies, n_examples))
        if frozen is not None:
            per_copy[:] = frozen
        for copy, index, value in patches:
            per_copy[copy][index] = value[index]
        return activation

    return write


def _run2_hooks(
    copies: Sequence[Sequence[Node]],
    n_examples: int,
    base: dict[str, Tensor],
    source: dict[str, Tensor],
    frozen_names: Sequence[str],
) -> list[Hook]:
    """Run 2's writes: frozen components at base values, each copy's senders at source."""
    patches: dict[str, list[tuple[int, tuple[Any, ...], Tensor]]] = {}
    for copy, senders in enumerate(copies):
        for node in senders:
            name = _sender_hook(node)
            patches.setdefault(name, []).append((copy, _sender_index(node), source[name]))
    names = list(dict.fromkeys([*frozen_names, *patches]))
    return [
        (
            name,
            _writer(
                len(copies),
                n_examples,
                base[name] if name in frozen_names else None,
                patches.get(name, []),
            ),
        )
        for name in names
    ]


def _capture_hooks(names: Sequence[str], store: dict[str, Tensor]) -> list[Hook]:
    """Hooks that keep a copy of each named activation in `store`."""

    def make(name: str) -> Callable[..., None]:
        def capture(activation: Tensor, *, hook: Any) -> None:
            store[name] = activation.clone()

        return capture

    return [(name, make(name)) for name in names]


def _run3_hooks(
    patches: Sequence[tuple[str, tuple[Any, ...]]], captured: dict[str, Tensor]
) -> list[Hook]:
    """Run 3's writes: each receiver's input set to its run-2 value (every copy at once)."""
    indices: dict[str, list[tuple[Any, ...]]] = {}
    for name, index in patches:
        indices.setdefault(name, []).append(index)

    def make(name: str) -> Callable[..., Tensor]:
        value = captured[name]

        def write(activation: Tensor, *, hook: Any) -> Tensor:
            for index in indices[name]:
                activation[index] = value[index]
            return activation

        return write

    return [(name, make(name)) for name in indices]


@dataclass(frozen=True)
class _Runs:
    """What one batch of path patching needs from the unpatched runs."""

    batch: TaskBatch
    base_tokens: Int[Tensor, "batch pos"]
    base: dict[str, Tensor]
    source: dict[str, Tensor]
    base_value: Tensor
    source_value: Tensor


def _cache_runs(
    model: TransformerBridge,
    batch: TaskBatch,
    metric: PatchMetric,
    direction: Direction,
    base_names: Sequence[str],
    source_names: Sequence[str],
) -> _Runs:
    """Base and source runs: their metric values and the named activations (cloned)."""
    batch = batch.to(model_device(model))
    source_tokens, base_tokens = (
        (batch.clean, batch.corrupted) if direction == "denoise" else (batch.corrupted, batch.clean)
    )
    wanted_base, wanted_source = set(base_names), set(source_names)
    base_logits, base_cache = model.run_with_cache(
        base_tokens, names_filter=lambda name: name in wanted_base
    )
    source_logits, source_cache = model.run_with_cache(
        source_tokens, names_filter=lambda name: name in wanted_source
    )
    return _Runs(
        batch=batch,
        base_tokens=base_tokens,
        base={name: base_cache[name].clone() for name in wanted_base},
        source={name: source_cache[name].clone() for name in wanted_source},
        base_value=scalar_metric(metric, base_logits, batch).detach().float(),
        source_value=scalar_metric(metric, source_logits, batch).detach().float(),
    )


def _patched_values(
    model: TransformerBridge,
    runs: _Runs,
    copies: Sequence[Sequence[Node]],
    receivers: Sequence[Node],
    metric: PatchMetric,
    frozen_names: Sequence[str],
) -> list[float]:
    """The metric after patching each copy's senders into `receivers`, in one batch."""
    n_examples = len(runs.batch)
    tokens = runs.base_tokens.repeat(len(copies), 1)
    run2 = _run2_hooks(copies, n_examples, runs.base, runs.source, frozen_names)
    if receivers[0].kind == "logits":
        with model.hooks(fwd_hooks=run2):
            logits = model(tokens)
    else:
        captured: dict[str, Tensor] = {}
        patches = [patch for node in receivers for patch in _receiver_patches(node, model)]
        names = list(dict.fromkeys(name for name, _ in patches))
        with model.hooks(fwd_hooks=[*run2, *_capture_hooks(names, captured)]):
            model(tokens)
        with model.hooks(fwd_hooks=_run3_hooks(patches, captured)):
            logits = model(tokens)
    per_copy = logits.unflatten(0, (len(copies), n_examples))
    return CopyMetric(metric, runs.batch)(per_copy).tolist()


def _check_common(
    model: TransformerBridge, batch: TaskBatch, direction: str, freeze_mlps: bool
) -> None:
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    TaskBatch.checked(batch, model)
    if not isinstance(freeze_mlps, bool):
        raise ValueError(f"freeze_mlps must be a bool, got {freeze_mlps!r}")


def _clean_and_corrupted(runs: _Runs, direction: str) -> tuple[float, float]:
    base, source = float(runs.base_value), float(runs.source_value)
    return (source, base) if direction == "denoise" else (base, source)


def path_patch(
    model: TransformerBridge,
    batch: TaskBatch,
    senders: Sequence[str],
    receivers: Sequence[str],
    metric: PatchMetric,
    *,
    direction: Direction = "noise",
    freeze_mlps: bool = False,
) -> PathPatchValue:
    """The metric after patching the path from all `senders` together into all `receivers`.

    Args:
        model: Any `TransformerBridge`; run in eval mode, its training flag is restored.
        batch: Clean and corrupted prompts `[batch, pos]` with the fields the metric reads;
            never modified.
        senders: Node names: `"embed"`, `"L{l}H{h}"`, `"mlp{l}"`. Empty: every head frozen
            at its base value, which must give the base metric.
        receivers: Node names: `"L{l}H{h}.q"` / `.k` / `.v`, `"mlp{l}"`, or `"logits"`
            (alone).
        metric: `(logits [batch, pos, vocab], batch) -> scalar` (or `[batch]`, averaged).
        direction: `"noise"`: base clean, source corrupted (Wang et al.'s default);
            `"denoise"`: base corrupted, source clean.
        freeze_mlps: Also freeze non-sender MLP outputs at base values in run 2 (default:
            MLPs recomputed, as in the paper).

    Returns:
        A `PathPatchValue`: `value` (also `float(result)`), the clean and corrupted metric
        values, and `normalised` (1 = clean, 0 = corrupted).
    """
    _check_common(model, batch, direction, freeze_mlps)
    sender_nodes = _parse_nodes(senders, model, "sender")
    receiver_nodes = _parse_receivers(receivers, model)
    parallel = parallel_blocks(model)
    frozen_names = _freeze_hooks(model, freeze_mlps)
    source_names = list(dict.fromkeys(_sender_hook(node) for node in sender_nodes))
    _check_hooks(model, frozen_names, source_names, receiver_nodes)
    runnable = not sender_nodes or _reaches_any(sender_nodes, receiver_nodes, parallel)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            runs = _cache_runs(
                model, batch, metric, direction, frozen_names if runnable else (), source_names
            )
            value = float(runs.base_value)
            if runnable:
                (value,) = _patched_values(
                    model, runs, [sender_nodes], receiver_nodes, metric, frozen_names
                )
    finally:
        model.train(was_training)
    clean, corrupted = _clean_and_corrupted(runs, direction)
    return PathPatchValue(value, clean, corrupted, direction)


def path_patch_senders(
    model: TransformerBridge,
    batch: TaskBatch,
    receivers: Sequence[str],
    metric: PatchMetric,
    *,
    direction: Direction = "noise",
    freeze_mlps: bool = False,
    normalise: bool = False,
    max_batch: int = 256,
    tokenizer: Any | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Which heads feed `receivers`: path patching with every head as the single sender.

    Heads that cannot reach any receiver (same or later layer) get the base metric without
    a forward pass. The others are folded into the batch, `max_batch // len(batch)` senders
    (at least one) per pair of forward passes (run 2 and run 3).

    Args:
        model, batch, metric, direction, freeze_mlps: As for `path_patch`.
        receivers: Receiver node names, patched together (see `path_patch`).
        normalise: Rescale to `(value - corrupted) / (clean - corrupted)`.
        max_batch: Most examples in one forward pass.
        tokenizer: Unused by the head axes; accepted for the patching API's shape.
        progress: Show a progress bar over forward passes.

    Returns:
        A `PatchingResult` with `values [n_layers, n_heads]`, axes `("layer", "head")`,
        `method="path"` and `target="path->" + "+".join(receivers)`.
    """
    _check_common(model, batch, direction, freeze_mlps)
    check_positive_int("max_batch", max_batch)
    receiver_nodes = _parse_receivers(receivers, model)
    parallel = parallel_blocks(model)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    heads = [
        Node(f"L{layer}H{head}", "head", layer, head)
        for layer in range(n_layers)
        for head in range(n_heads)
    ]
    reachable = [node for node in heads if _reaches_any([node], receiver_nodes, parallel)]
    frozen_names = _freeze_hooks(model, freeze_mlps)
    source_names = list(dict.fromkeys(_sender_hook(node) for node in reachable))
    _check_hooks(model, frozen_names, source_names, receiver_nodes)
    per_pass = max(1, max_batch // len(batch))
    chunks = [reachable[i : i + per_pass] for i in range(0, len(reachable), per_pass)]
    target = "path->" + "+".join(node.name for node in receiver_nodes)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            runs = _cache_runs(model, batch, metric, direction, frozen_names, source_names)
            values = torch.full((n_layers, n_heads), float(runs.base_value))
            for chunk in tqdm(chunks, disable=not progress, desc=f"path patching {target}"):
                copies = [[node] for node in chunk]
                chunk_values = _patched_values(
                    model, runs, copies, receiver_nodes, metric, frozen_names
                )
                for node, value in zip(chunk, chunk_values, strict=True):
                    values[node.layer, node.head] = value
    finally:
        model.train(was_training)

    return build_result(
        values,
        index_space("z"),
        runs.batch,
        tokenizer,
        target,
        direction,
        base_value=runs.base_value,
        source_value=runs.source_value,
        normalise=normalise,
        method="path",
    )
