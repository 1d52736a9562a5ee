"""`collect`: run a model over a dataset in batches, keeping only the requested hooks.

Each requested `HookPoint` gets one forward hook that detaches its activation, optionally
picks positions and casts it, and copies it off the accelerator; nothing else the model
computes is retained. From the second batch on, each forward pass ends as soon as the last
requested hook has fired, so asking for early layers costs only early layers.

Why not `model.run_with_cache(names_filter=...)` per batch: measured on CPU it costs the same
time as these hooks when the whole model runs, but it always runs the whole model, keeps the
cache on the model's device, and on Hugging Face backed bridges asks the model for
`output_attentions`, so every layer's attention pattern is materialised in the output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.activations.early_stop import _EarlyStop, _StopForward
from interp.activations.hooks import (
    HookRequest,
    _capture_hooks,
    _check_fired,
    _drop_silent,
    _requested_order,
    _resolve_hooks,
)
from interp.activations.inputs import TokenSource, _Batch, _batches, _count_examples
from interp.activations.model_state import _eval_mode, _model_device, _moved_to
from interp.activations.positions import PositionRequest, _PositionSelector
from interp.activations.storage import ActivationSet, _MemoryCollector, _ShardWriter
from interp.models import resolve_device

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def collect(
    model: TransformerBridge,
    tokens: TokenSource,
    hooks: HookRequest,
    *,
    batch_size: int = 32,
    positions: PositionRequest = None,
    dtype: torch.dtype | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    shard_size: int = 4096,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    store_device: str | torch.device = "cpu",
    attention_mask: Int[Tensor, "n pos"] | None = None,
    column: str = "clean",
    stop_early: bool = True,
    progress: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> ActivationSet:
    """Run `model` over `tokens` in batches and keep the activations of `hooks` only.

    Args:
        model: The bridge to run. It is put in eval mode for the call (its training flags
            are restored afterwards) and runs under `torch.inference_mode()`.
        tokens: Token ids. A `[n, pos]` tensor; a `datasets.Dataset` whose `column` holds
            one token list per row (rows must share one length, unless the dataset has an
            `attention_mask` column: then rows are right-padded with the tokenizer's pad id
            to the longest row and the mask is padded with zeros); or an iterable of `[pos]`
            examples or `[batch, pos]` batches (re-batched to `batch_size`).
        hooks: Hook names (e.g. `["blocks.0.attn.hook_pattern"]`) or a predicate over the
            names in `model.hook_dict`. An unknown name raises ValueError with suggestions.
            Hooks a predicate matches but that never fire (gated off or unused by this
            architecture) are dropped with a warning; a named one that never fires raises.
        batch_size: Examples per forward pass.
        positions: Keep only these positions: an int for every example, an `[n]` tensor
            (one per example; the position axis disappears, so `[batch, pos, d]` becomes
            `[batch, d]` and a pattern `[batch, head, q, k]` becomes `[batch, head, k]`),
            or an `[n, k]` tensor (the position axis keeps `k` entries). For attention
            patterns and scores the query position is selected. Negative positions count
            from the end; with an attention mask (`attention_mask` or a dataset's mask
            column), from each example's last real token, so -1 is the last real token
            of right-padded examples too.
        dtype: Cast floating activations to this dtype (e.g. `torch.float16`) before they
            leave the device.
        out_dir: Write safetensors shards and an index here instead of keeping the set in
            memory; then RAM holds at most one shard plus one batch of activations, and
            briefly the shard being written.
        shard_size: Examples per shard on disk.
        overwrite: Replace an existing set in `out_dir` (otherwise that raises).
        device: Where the forward pass runs: None for wherever the model is, `"auto"` for
            CUDA when available, or a device. The model is moved there for the call and
            moved back afterwards.
        store_device: Where in-memory activations are kept (default CPU). Sets written to
            disk are always gathered on CPU.
        attention_mask: `[n, pos]` mask for tensor `tokens`, sliced per batch like them.
        column: The token column of a dataset.
        stop_early: End each forward pass as soon as the last requested hook has fired
            (learned on the first batch, which runs the whole model).
        progress: Show a tqdm progress bar over examples.
        forward_kwargs: Extra keyword arguments for `model.forward`, the same every batch.

    Returns:
        An `ActivationSet` whose `names` are the requested hooks, each `[n, ...]` with the
        shape the hook has under `model.run_with_cache` (less the position axis if
        `positions` selects one per example).
    """
    sizes = (batch_size, shard_size)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(
            f"batch_size and shard_size must be ints >= 1, got {batch_size!r}, {shard_size!r}"
        )
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.float16), not {dtype}")
    extra = dict(forward_kwargs or {})
    reserved = sorted({"input", "attention_mask", "return_type", "stop_at_layer"} & set(extra))
    if reserved:
        raise ValueError(f"forward_kwargs may not set {reserved}; collect sets them itself")
    store = torch.device("cpu") if out_dir is not None else torch.device(store_device)
    if out_dir is not None and store.type != "cpu":
        raise ValueError(f"sets written to disk are gathered on CPU, got store_device={store}")
    targets = _resolve_hooks(model, hooks)
    batches = _batches(model, tokens, batch_size, attention_mask, column)
    total = _count_examples(tokens)
    selector = _PositionSelector(positions, total)
    early_stop = _EarlyStop(enabled=stop_early)
    captured: dict[str, Tensor] = {}
    run_device = _model_device(model) if device is None else resolve_device(device)
    sink: _ShardWriter | _MemoryCollector = (  # last: a writer stages files from here on
        _ShardWriter(Path(out_dir), shard_size=shard_size, overwrite=overwrite)
        if out_dir is not None
        else _MemoryCollector()
    )
    try:
        with (
            _moved_to(model, run_device),
            _eval_mode(model),
            _capture_hooks(targets, captured, selector, dtype, store, early_stop),
            torch.inference_mode(),
            tqdm(total=total, unit="ex", disable=not progress, desc="collect") as bar,
        ):
            for number, batch in enumerate(batches):
                selector.start_batch(batch.tokens.shape, batch.attention_mask)
                early_stop.start_batch()
                _forward(model, batch, run_device, extra, captured)
                if number == 0:
                    targets = _drop_silent(targets, captured, named=not callable(hooks))
                    early_stop.arm()
                _check_fired(targets, captured, number, batch.tokens.shape[0])
                sink.add({t.key: captured[t.key] for t in targets})
                captured.clear()
                bar.update(batch.tokens.shape[0])
            selector.check_exhausted()
        if sink.n_examples == 0:
            raise ValueError("tokens held no examples")
        storage = {name: t.key for t in targets for name in t.names}
        names = [name for name in _requested_order(hooks, storage) if name in storage]
        return sink.finish(tuple(names), storage)
    except BaseException:
        if isinstance(sink, _ShardWriter):
            sink.abort()  # an earlier set in out_dir stays as it was
        raise


def _forward(
    model: TransformerBridge,
    batch: _Batch,
    device: torch.device,
    extra: Mapping[str, Any],
    captured: dict[str, Tensor],
) -> None:
    """One forward pass on `batch`; `captured` ends up holding what the hooks kept."""
    captured.clear()
    kwargs = dict(extra)
    if batch.attention_mask is not None:
        kwargs["attention_mask"] = batch.attention_mask.to(device)
    with suppress(_StopForward):
        model(batch.tokens.to(device), return_type=None, **kwargs)
