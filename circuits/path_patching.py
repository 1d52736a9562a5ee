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
stream (`"logits"`).

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

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from circuits.patching.engine import (
    Direction,
    PatchMetric,
    build_result,
    model_device,
    scalar_metric,
)
from circuits.patching.result import PatchingResult
from circuits.patching.targets import index_space
from interp.metrics import normalise as normalise_metric
from interp.tasks.base import TaskBatch

NodeKind = Literal["embed", "head", "mlp", "logits"]
Role = Literal["sender", "receiver"]
Hook = tuple[str, Callable[..., Tensor]]

_EMBED_HOOK = "blocks.0.hook_resid_pre"
_SENDER_FORMS = "'embed', 'L{layer}H{head}' or 'mlp{layer}'"
_RECEIVER_FORMS = "'L{layer}H{head}.q', '.k', '.v', 'mlp{layer}' or 'logits'"
_HEAD_PATTERN = re.compile(r"L(\d+)H(\d+)")
_HEAD_INPUT_PATTERN = re.compile(r"L(\d+)H(\d+)\.([qkv])")
_MLP_PATTERN = re.compile(r"mlp(\d+)")


@dataclass(frozen=True)
class Node:
    """A sender or receiver of path patching.

    Attributes:
        name: The name it was parsed from, e.g. `"L1H0.v"`.
        kind: `"embed"`, `"head"`, `"mlp"` or `"logits"`.
        layer: The block it belongs to (-1 for the embedding, `n_layers` for the logits).
        head: The head index (heads only).
        input: Which input of a receiver head is patched: `"q"`, `"k"` or `"v"`.
    """

    name: str
    kind: NodeKind
    layer: int
    head: int | None = None
    input: Literal["q", "k", "v"] | None = None

    @property
    def order(self) -> int:
        """Position in the forward pass: the embedding, then attention l, MLP l, ..., logits."""
        if self.kind == "embed":
            return -1
        return 2 * self.layer + (1 if self.kind == "mlp" else 0)


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


def _check_range(name: str, role: Role, what: str, index: int, size: int) -> None:
    if index >= size:
        raise ValueError(f"{role} {name!r}: {what} {index} is out of range (the model has {size})")


def parse_node(name: str, model: TransformerBridge, role: Role) -> Node:
    """The node called `name`, checked against `model`; a one-line ValueError if invalid.

    Senders: `"embed"`, `"L{l}H{h}"` (head h of layer l), `"mlp{l}"` (MLP output of layer l).
    Receivers: `"L{l}H{h}.q"`, `".k"`, `".v"` (that input of the head), `"mlp{l}"` (the MLP's
    input), `"logits"` (the final residual stream).
    """
    if role not in ("sender", "receiver"):
        raise ValueError(f"role must be 'sender' or 'receiver', got {role!r}")
    forms = _SENDER_FORMS if role == "sender" else _RECEIVER_FORMS
    if not isinstance(name, str):
        raise ValueError(f"{role} names must be strings like {forms}, got {name!r}")
    cfg = model.cfg
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)
    if role == "sender" and name == "embed":
        return Node(name, "embed", -1)
    if role == "receiver" and name == "logits":
        return Node(name, "logits", n_layers)
    head_pattern = _HEAD_PATTERN if role == "sender" else _HEAD_INPUT_PATTERN
    if match := head_pattern.fullmatch(name):
        layer, head = int(match.group(1)), int(match.group(2))
        _check_range(name, role, "layer", layer, n_layers)
        _check_range(name, role, "head", head, n_heads)
        head_input = match.group(3) if role == "receiver" else None
        return Node(name, "head", layer, head, head_input)  # type: ignore[arg-type]
    if match := _MLP_PATTERN.fullmatch(name):
        layer = int(match.group(1))
        _check_range(name, role, "layer", layer, n_layers)
        if getattr(cfg, "attn_only", False):
            raise ValueError(f"{role} {name!r}: the model is attention-only and has no MLPs")
        return Node(name, "mlp", layer)
    raise ValueError(f"unknown {role} {name!r}; expected {forms}")


def _parse_nodes(names: Sequence[str], model: TransformerBridge, role: Role) -> list[Node]:
    """Parsed nodes in the given order, duplicates dropped."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"{role}s must be a list of node names, got {names!r}")
    nodes: dict[str, Node] = {}
    for name in names:
        nodes.setdefault(name, parse_node(name, model, role))
    return list(nodes.values())


def _parse_receivers(names: Sequence[str], model: TransformerBridge) -> list[Node]:
    receivers = _parse_nodes(names, model, "receiver")
    if not receivers:
        raise ValueError("path patching needs at least one receiver")
    if len(receivers) > 1 and any(node.kind == "logits" for node in receivers):
        raise ValueError("the 'logits' receiver cannot be combined with other receivers")
    return receivers


def reaches(sender: Node, receiver: Node, *, parallel_attn_mlp: bool = False) -> bool:
    """Whether `sender`'s output is read, through the residual stream, by `receiver`."""
    if parallel_attn_mlp and sender.kind == "head" and receiver.kind == "mlp":
        return sender.layer < receiver.layer
    return sender.order < receiver.order


def _reaches_any(senders: Sequence[Node], receivers: Sequence[Node], parallel: bool) -> bool:
    return any(
        reaches(s, r, parallel_attn_mlp=parallel) for s in senders for r in receivers
    )


def _sender_hook(node: Node) -> str:
    if node.kind == "embed":
        return _EMBED_HOOK
    if node.kind == "head":
        return f"blocks.{node.layer}.attn.hook_z"
    return f"blocks.{node.layer}.hook_mlp_out"


def _sender_index(node: Node) -> tuple[Any, ...]:
    """Where in a `[batch, ...]` sender activation this node's output lies."""
    if node.kind == "head":
        return (slice(None), slice(None), node.head)
    return (Ellipsis,)


def _receiver_patches(node: Node, model: TransformerBridge) -> list[tuple[str, tuple[Any, ...]]]:
    """The hooks that carry a receiver's input, each with the index of the receiver in it.

    A head's q, k or v at `blocks.{l}.attn.hook_{q,k,v}[:, :, h]` (for grouped-query
    attention, the key/value head that h reads); an MLP's projected input at
    `blocks.{l}.mlp.hook_pre`, and also at `hook_pre_linear` for gated MLPs, whose input
    goes through a gate and an up projection.
    """
    if node.kind == "head":
        head = int(node.head or 0)
        n_kv = getattr(model.cfg, "n_key_value_heads", None)
        if node.input in ("k", "v") and n_kv:
            head //= int(model.cfg.n_heads) // int(n_kv)
        return [(f"blocks.{node.layer}.attn.hook_{node.input}", (slice(None), slice(None), head))]
    if node.kind == "mlp":
        names = [f"blocks.{node.layer}.mlp.hook_pre"]
        if f"blocks.{node.layer}.mlp.hook_pre_linear" in model.hook_dict:
            names.append(f"blocks.{node.layer}.mlp.hook_pre_linear")
        return [(name, (Ellipsis,)) for name in names]
    return []


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
    return [
        float(scalar_metric(metric, per_copy[copy], runs.batch).detach().float())
        for copy in range(len(copies))
    ]


def _check_common(batch: TaskBatch, direction: str, freeze_mlps: bool) -> None:
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    if not isinstance(batch, TaskBatch):
        raise ValueError(f"batch must be a TaskBatch, got {type(batch).__name__}")
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
    _check_common(batch, direction, freeze_mlps)
    sender_nodes = _parse_nodes(senders, model, "sender")
    receiver_nodes = _parse_receivers(receivers, model)
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
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
    _check_common(batch, direction, freeze_mlps)
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    receiver_nodes = _parse_receivers(receivers, model)
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
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
