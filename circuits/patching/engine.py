"""Activation patching of every index of a target, batched over indices.

Activation patching (Vig et al. 2020, "Causal Mediation Analysis for Interpreting Neural
NLP"; Meng et al. 2022, "Locating and Editing Factual Associations in GPT", as causal
tracing) runs the model on one input while one activation is replaced by its value on
another input, and reads a metric. Denoising patches the clean activation into the
corrupted run; noising patches the corrupted activation into the clean run.

Instead of one forward pass per index (TransformerLens's `patching.py`), a chunk of K
indices is folded into the batch: the base tokens are repeated K times (K*B examples), one
hook per layer writes into copy k the source activation at copy k's index, and the metric
is read on each copy's B examples. On native models and the pretrained classes that
`interp.functional` covers (GPT-2, GPT-NeoX, GPT-J, OPT, GPT-Neo, Phi, BLOOM, Llama, Mistral,
Qwen2, Qwen3, Phi-3, Gemma 1-3) the incremental engine (`circuits.patching.incremental`) also
skips what a patch cannot change: earlier layers, earlier positions, and every position but
the one the metric reads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuits.patching import incremental
from circuits.patching.incremental import IncrementalPatcher
from circuits.patching.metric import (
    CopyMetric,
    PatchMetric,
    at_read_positions,
    nan_metric_error,
    refuse_metric_reading_elsewhere,
)
from circuits.patching.result import PatchingResult
from circuits.patching.targets import (
    IndexSpace,
    check_patchable,
    check_target_exists,
    index_space,
)
from interp import models
from interp.functional import Architecture
from interp.metrics import normalise as normalise_metric
from interp.metrics import reads_position_only
from interp.tasks.base import TaskBatch
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Direction = Literal["denoise", "noise"]
Engine = Literal["incremental", "hooks"]


def model_device(model: TransformerBridge) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _position_labels(batch: TaskBatch, tokenizer: Any | None) -> tuple[str, ...]:
    """Positions by index, or `"i:token"` of the first clean prompt with a tokenizer."""
    n_pos = batch.clean.shape[1]
    if tokenizer is None:
        return tuple(str(i) for i in range(n_pos))
    tokens = tokenizer.convert_ids_to_tokens(batch.clean[0].tolist())
    return tuple(f"{i}:{token}" for i, token in enumerate(tokens))


def axis_labels(
    space: IndexSpace, sizes: Sequence[int], batch: TaskBatch, tokenizer: Any | None
) -> tuple[tuple[str, ...], ...]:
    labels = []
    for axis, size in zip(space.axes, sizes, strict=True):
        if axis == "pos":
            labels.append(_position_labels(batch, tokenizer))
        else:
            labels.append(tuple(str(i) for i in range(size)))
    return tuple(labels)


def _chunk_hooks(
    space: IndexSpace,
    chunk: Sequence[tuple[int, ...]],
    n_examples: int,
    sources: dict[int, Tensor],
) -> list[tuple[str, Callable[..., Tensor]]]:
    """One hook per layer in `chunk`; copy k of the batch gets the source at `chunk[k]`."""
    by_layer: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
    for copy, (layer, *rest) in enumerate(chunk):
        by_layer.setdefault(layer, []).append((copy, tuple(rest)))

    def make_hook(layer: int) -> Callable[..., Tensor]:
        copies = by_layer[layer]
        source = sources[layer]

        def write(activation: Tensor, *, hook: Any) -> Tensor:
            # In place, as TransformerLens does: some bridge hooks (e.g. `hook_resid_mid`)
            # see a tensor that also feeds the skip connection, which a copy would miss.
            patched = activation.clone() if activation.requires_grad else activation
            per_copy = patched.unflatten(0, (len(chunk), n_examples))
            for copy, rest in copies:
                space.setter(per_copy[copy], rest, source)
            return patched

        return write

    return [(space.hook_name(layer), make_hook(layer)) for layer in by_layer]


def _chunks(indices: Sequence[tuple[int, ...]], per_pass: int) -> list[list[tuple[int, ...]]]:
    """`indices` in order, cut into chunks of at most `per_pass` that stay within a layer."""
    chunks: list[list[tuple[int, ...]]] = []
    for _, group in itertools.groupby(indices, key=lambda index: index[0]):
        layer_indices = list(group)
        chunks += [layer_indices[i : i + per_pass] for i in range(0, len(layer_indices), per_pass)]
    return chunks


@dataclass(frozen=True)
class _Sweep:
    """What both engines need for one sweep: the target, how many indices one pass
    patches, the indices cut into chunks, the base and source prompts, the batch and the
    metric."""

    space: IndexSpace
    per_pass: int
    chunks: list[list[tuple[int, ...]]]
    base_tokens: Tensor
    source_tokens: Tensor
    batch: TaskBatch
    metric: PatchMetric
    progress: bool

    def bar(self) -> Any:
        """The chunks, under a progress bar if asked for (an idle bar costs as much as a
        small model's chunk, so none is built otherwise)."""
        if not self.progress:
            return self.chunks
        return tqdm(self.chunks, desc=f"patching {self.space.name}")


SweepValues = tuple[Tensor, Tensor, Tensor]
"""`(values [n_indices], metric of the base run, metric of the source run)`."""


def _hook_sweep(model: TransformerBridge, sweep: _Sweep) -> SweepValues:
    """Every chunk as one forward pass of the bridge, patched by hooks."""
    space, batch = sweep.space, sweep.batch
    n_examples = len(batch)
    hook_names = {space.hook_name(layer): layer for layer in range(model.cfg.n_layers)}
    source_logits, cache = model.run_with_cache(
        sweep.source_tokens, names_filter=lambda name: name in hook_names
    )
    sources = {layer: cache[name].clone() for name, layer in hook_names.items()}
    per_copy = CopyMetric(sweep.metric, batch)
    base_value = per_copy.one(model(sweep.base_tokens))
    source_value = per_copy.one(source_logits)
    values = []
    for chunk in sweep.bar():
        hooks = _chunk_hooks(space, chunk, n_examples, sources)
        tokens = sweep.base_tokens.repeat(len(chunk), 1)
        with model.hooks(fwd_hooks=hooks):
            logits = model(tokens).unflatten(0, (len(chunk), n_examples))
        values.append(per_copy(logits))
    return torch.cat(values).cpu(), base_value, source_value


CPU_METRIC_BUFFER = 2**21
"""Most logits (elements) the incremental engine puts before the metric at once on a CPU.
There a fresh `[copy, batch, pos, vocab]` buffer costs page faults comparable to the
metric calls that reading many copies at once saves; on a GPU filling it is nearly free
and the metric reads every copy of a pass (`max_batch` examples) at once."""


def _incremental_sweep(model: TransformerBridge, sweep: _Sweep, arch: Architecture) -> SweepValues:
    """Every chunk through `IncrementalPatcher`: only what the patch can change is rerun.
    `arch`: the model's, from `incremental.covered_architecture`; the batch's tokens were
    checked against the model (`TaskBatch.check_fits`), so the patcher does not again.

    The metric is read on many copies at once (`CopyMetric`): the patched logits at the
    read positions of consecutive chunks (and of the base and source runs) are gathered
    until they fill a pass of the hook engine (`per_pass` copies), so that the full
    `[copy, batch, pos, vocab]` logits the metric sees never outgrow that pass's logits.
    A metric reading logits this engine does not compute (NaN) is caught once, at the end.
    The library's metrics, which read `batch.position` only, see the logits at the read
    positions alone (`metric.at_read_positions`): no NaN buffer to fill and no probe.
    """
    batch = sweep.batch
    patcher = IncrementalPatcher(
        model,
        sweep.base_tokens,
        sweep.source_tokens,
        batch.position.tolist(),
        last_layer_at_read="pos" not in sweep.space.axes,  # per-position caches not needed
        patterns=incremental.patterns_needed(sweep.space),
        arch=arch,
        validate=False,
    )
    if reads_position_only(sweep.metric):  # the logits at the read positions suffice
        as_read = at_read_positions(batch, patcher.read)
        metric_logits, per_copy_logits = _unchanged, patcher.base_logits.numel()
    else:
        refuse_metric_reading_elsewhere(
            sweep.metric, batch, patcher.full_logits(patcher.base_logits[None])[0],
            "the incremental engine", "pass engine='hooks'",
        )
        as_read, metric_logits = batch, patcher.full_logits
        per_copy_logits = sweep.base_tokens.numel() * patcher.base_logits.shape[-1]
    per_copy = CopyMetric(sweep.metric, as_read)
    per_pass = sweep.per_pass
    if sweep.base_tokens.device.type == "cpu":  # see CPU_METRIC_BUFFER
        per_pass = max(1, min(per_pass, CPU_METRIC_BUFFER // per_copy_logits))
    values: list[Tensor] = []
    pending: list[Tensor] = []  # [copy, batch, n_read, vocab] each, not yet read

    def flush() -> None:
        if pending:
            at_read = pending[0] if len(pending) == 1 else torch.cat(pending)
            values.append(per_copy(metric_logits(at_read)))
            pending.clear()

    def read(at_read: Tensor) -> None:
        """Queue `at_read`'s copies, reading the metric on every `per_pass` of them."""
        while True:
            room = per_pass - sum(len(part) for part in pending)
            if len(at_read) <= room:
                pending.append(at_read)
                return
            if room:
                pending.append(at_read[:room])
                at_read = at_read[room:]
            flush()

    read(patcher.base_logits[None])
    read(patcher.source_logits[None])
    for chunk in sweep.bar():
        read(patcher.patched_logits(sweep.space, chunk))
    flush()
    every = torch.cat(values).cpu()
    if bool(every.isnan().any()):
        vocab = patcher.base_logits.shape[-1]
        raise nan_metric_error(sweep.metric, batch, vocab, "the incremental engine",
                               "pass engine='hooks'")
    return every[2:], every[0], every[1]


def _unchanged(logits: Tensor) -> Tensor:
    return logits


def _resolve_engine(engine: str, model: TransformerBridge) -> tuple[Engine, Architecture | None]:
    """The engine to run and, for the incremental one, the model's architecture (resolved
    once here, for `IncrementalPatcher`)."""
    if engine not in ("auto", "incremental", "hooks"):
        raise ValueError(f"engine must be 'auto', 'incremental' or 'hooks', got {engine!r}")
    if engine == "hooks":
        return "hooks", None
    if models.attached_hooks(model):  # the incremental engine computes the model without them
        if engine == "incremental":
            models.refuse_attached_hooks(model, "engine='incremental'",
                                         "use 'hooks' or 'auto', or remove them")
        return "hooks", None
    arch, reason = incremental.covered_architecture(model)
    if arch is not None:
        return "incremental", arch
    if engine == "incremental":
        raise ValueError(f"engine='incremental' cannot run here: {reason}; use 'hooks' or 'auto'")
    return "hooks", None


def patch(
    model: TransformerBridge,
    batch: TaskBatch,
    target: str,
    metric: PatchMetric,
    *,
    direction: Direction = "denoise",
    max_batch: int = 256,
    normalise: bool = False,
    tokenizer: Any | None = None,
    progress: bool = True,
    engine: str = "auto",
    indices: Iterable[Sequence[int]] | None = None,
) -> PatchingResult:
    """Patch every index of `target` and read `metric` after each patch.

    Args:
        model: Any `TransformerBridge`; run in eval mode, its training flag is restored.
        batch: Clean and corrupted prompts `[batch, pos]` with the fields the metric reads.
        target: A name in `circuits.patching.TARGETS` (`resid_pre`, `z`, `z_by_pos`, ...).
        metric: `(logits [batch, pos, vocab], batch) -> scalar`, e.g.
            `interp.metrics.mean_metric(interp.metrics.logit_diff)`; applied to each
            patched copy's own B examples.
        direction: `"denoise"` puts clean activations into the corrupted run (the
            convention of TransformerLens); `"noise"` puts corrupted ones into the clean run.
        max_batch: Most examples in one forward pass; `max_batch // len(batch)` indices are
            patched per pass (at least one).
        normalise: Rescale to `(value - corrupted) / (clean - corrupted)`.
        tokenizer: Labels positions with token strings of the first clean prompt.
        progress: Show a progress bar over forward passes.
        engine: `"incremental"` reruns only the layers and positions a patch can change
            and computes the logits at `batch.position` only (causal native models of
            `interp.models.build`, and the pretrained classes `interp.functional` covers:
            `incremental.supports`; the metric must read the
            logits at `batch.position`, as every metric of `interp.metrics` does);
            `"hooks"` runs the whole bridge with hooks (any model, any metric, and the
            user's own hooks on the model run too); `"auto"` picks incremental where it
            applies. Both give the same values (see `circuits.patching.incremental`).
        indices: Patch only these indices (each one entry per axis of the target, e.g.
            `(layer, pos, head)` for `z_by_pos`); every other value is NaN. For verifying
            the strongest candidates of an estimate exactly (`circuits.attribution.
            top_indices`), as AtP* does (Kramár et al. 2024). None: every index.

    Returns:
        A `PatchingResult` with `values` shaped `[n_layers, ...]` over the target's axes.
    """
    space = index_space(target)
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    batch = TaskBatch.checked(batch, model)
    if not isinstance(normalise, bool):
        raise ValueError(f"normalise must be a bool, got {normalise!r}")
    check_positive_int("max_batch", max_batch)
    chosen, arch = _resolve_engine(engine, model)
    if chosen == "hooks":  # the incremental engine computes the pattern itself
        check_patchable(space, model)
    else:
        check_target_exists(space, model)
    batch = batch.to(model_device(model))
    n_examples, n_pos = batch.clean.shape
    sizes = space.sizes(model, n_pos)
    source_tokens, base_tokens = (
        (batch.clean, batch.corrupted) if direction == "denoise" else (batch.corrupted, batch.clean)
    )
    every = indices is None
    indices = (list(itertools.product(*(range(n) for n in sizes))) if indices is None
               else chosen_indices(indices, space, sizes))
    per_pass = max(1, max_batch // n_examples)
    sweep = _Sweep(
        space=space,
        per_pass=per_pass,
        chunks=_chunks(indices, per_pass),
        base_tokens=base_tokens,
        source_tokens=source_tokens,
        batch=batch,
        metric=metric,
        progress=progress,
    )
    with torch.inference_mode():
        if arch is not None:  # incremental: a pure function of the weights, no mode to set
            values, base_value, source_value = _incremental_sweep(model, sweep, arch)
        else:
            was_training = model.training
            model.eval()
            try:
                values, base_value, source_value = _hook_sweep(model, sweep)
            finally:
                model.train(was_training)

    grid = values if every else _scattered(values, indices, sizes)
    return build_result(
        grid.reshape(sizes), space, batch, tokenizer, target, direction,
        base_value=base_value, source_value=source_value, normalise=normalise,
    )


def chosen_indices(
    indices: Iterable[Sequence[int]], space: IndexSpace, sizes: Sequence[int]
) -> list[tuple[int, ...]]:
    """`indices` as sorted distinct tuples, or a one-line ValueError naming the first one
    that does not index the target's grid `sizes` (wrong length, not ints, out of range)."""
    chosen = set()
    for index in indices:
        entries = tuple(index) if isinstance(index, Sequence) else (index,)
        if len(entries) != len(sizes) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in entries
        ):
            raise ValueError(
                f"index {index!r} of target {space.name!r} must be {len(sizes)} ints "
                f"({', '.join(space.axes)})"
            )
        if not all(0 <= i < n for i, n in zip(entries, sizes, strict=True)):
            raise ValueError(
                f"index {entries} is outside the grid {tuple(sizes)} "
                f"({', '.join(space.axes)}) of target {space.name!r}"
            )
        chosen.add(entries)
    if not chosen:
        raise ValueError(f"no index of target {space.name!r} was given to patch")
    return sorted(chosen)


def _scattered(
    values: Tensor, indices: Sequence[tuple[int, ...]], sizes: Sequence[int]
) -> Tensor:
    """The values of `indices` in a flat grid of `sizes`, NaN everywhere else."""
    strides = torch.tensor([math.prod(sizes[d + 1:]) for d in range(len(sizes))])
    flat = torch.tensor(indices) @ strides
    grid = torch.full((math.prod(sizes),), float("nan"), dtype=values.dtype)
    grid[flat] = values
    return grid


def build_result(
    grid: Tensor,
    space: IndexSpace,
    batch: TaskBatch,
    tokenizer: Any | None,
    target: str,
    direction: Direction,
    *,
    base_value: Tensor,
    source_value: Tensor,
    normalise: bool,
    method: str = "activation",
) -> PatchingResult:
    """A `PatchingResult` from a grid of metric values (one per index) and the metric on
    the base and source runs; normalised so that clean is 1 and corrupted 0 if asked."""
    clean_value, corrupted_value = (
        (source_value, base_value) if direction == "denoise" else (base_value, source_value)
    )
    if normalise:
        grid = normalise_metric(grid, clean_value.cpu(), corrupted_value.cpu())
    return PatchingResult(
        values=grid,
        axes=space.axes,
        labels=axis_labels(space, tuple(grid.shape), batch, tokenizer),
        metric_clean=float(clean_value),
        metric_corrupted=float(corrupted_value),
        direction=direction,
        target=target,
        normalised=normalise,
        method=method,
    )
