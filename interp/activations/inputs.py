"""Turning token tensors, datasets and iterables of tensors into validated batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import datasets
import torch
from jaxtyping import Int
from torch import Tensor

from interp.tasks.tokens import pad_id, right_pad

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

TokenSource = Int[Tensor, "n pos"] | datasets.Dataset | Iterable[Tensor]
"""Token ids: one `[n, pos]` tensor, a dataset with a token column, or an iterable of
`[pos]` examples / `[batch, pos]` batches."""


@dataclass(frozen=True)
class _Batch:
    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"] | None


def _count_examples(tokens: TokenSource) -> int | None:
    """The number of examples when it is known up front (tensors and datasets)."""
    return len(tokens) if isinstance(tokens, Tensor | datasets.Dataset) else None


def _batches(
    model: TransformerBridge,
    tokens: TokenSource,
    batch_size: int,
    attention_mask: Tensor | None,
    column: str,
) -> Iterator[_Batch]:
    """Validate `tokens` now (so errors come before any work) and return its batches."""
    if isinstance(tokens, Tensor):
        check_token_tensor(tokens, "tokens", model)
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, "
                f"tokens {tuple(tokens.shape)}"
            )
        return _tensor_batches(tokens, attention_mask, batch_size)
    if attention_mask is not None:
        raise ValueError("attention_mask= is for tensor tokens; a dataset carries its own column")
    if isinstance(tokens, datasets.Dataset):
        if column not in tokens.column_names:
            raise ValueError(f"dataset has no column {column!r}; columns: {tokens.column_names}")
        return _dataset_batches(model, tokens, column, batch_size)
    if isinstance(tokens, str | bytes | Mapping) or not isinstance(tokens, Iterable):
        raise ValueError(
            f"tokens must be a tensor, a Dataset or an iterable of tensors, not "
            f"{type(tokens).__name__}"
        )
    return _iterable_batches(tokens, batch_size, model)


def check_token_tensor(tokens: Tensor, what: str, model: TransformerBridge) -> None:
    """An integer `[n, pos]` tensor of ids inside the model's vocabulary (one host sync)."""
    _check_token_shape(tokens, what)
    _check_vocabulary(tokens, what, model)


def _check_token_shape(tokens: Tensor, what: str) -> None:
    """An integer `[n, pos]` tensor (no host sync)."""
    if (
        tokens.dim() != 2
        or tokens.dtype.is_floating_point
        or tokens.dtype.is_complex
        or tokens.dtype == torch.bool
    ):
        raise ValueError(
            f"{what} must be an integer [n, pos] tensor, got {tokens.dtype} "
            f"of shape {tuple(tokens.shape)}"
        )


def _check_vocabulary(tokens: Tensor, what: str, model: TransformerBridge) -> None:
    """Ids inside the model's vocabulary, when it has one (one host sync)."""
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if tokens.numel() and d_vocab:
        low, high = torch.stack(torch.aminmax(tokens)).tolist()
        if low < 0 or high >= d_vocab:
            raise ValueError(
                f"{what} hold ids {low}..{high}, outside the vocabulary 0..{d_vocab - 1}"
            )


def _tensor_batches(tokens: Tensor, mask: Tensor | None, batch_size: int) -> Iterator[_Batch]:
    for start in range(0, tokens.shape[0], batch_size):
        stop = start + batch_size
        yield _Batch(tokens[start:stop], None if mask is None else mask[start:stop])


def _dataset_batches(
    model: TransformerBridge, dataset: datasets.Dataset, column: str, batch_size: int
) -> Iterator[_Batch]:
    """Rows of `column` in batches; right-padded to the longest row when masks exist."""
    has_mask = "attention_mask" in dataset.column_names
    columns = [column, "attention_mask"] if has_mask else [column]
    length: int | None = None
    if has_mask:
        length = max((len(row) for row in dataset[column]), default=0)
    pad = pad_id(getattr(model, "tokenizer", None))
    selected = dataset.select_columns(columns)
    for start in range(0, len(dataset), batch_size):
        rows = selected[start : start + batch_size]
        ids = [list(map(int, row)) for row in rows[column]]
        lengths = sorted({len(row) for row in ids})
        if length is None:
            length = lengths[0]
        if not has_mask and lengths != [length]:
            raise ValueError(
                f"column {column!r} has rows of lengths {sorted({length, *lengths})}; equal "
                "lengths are needed unless the dataset has an 'attention_mask' column"
            )
        mask = None
        if has_mask:
            masks = [list(map(int, row)) for row in rows["attention_mask"]]
            mask = right_pad(masks, length, 0)
        batch = right_pad(ids, length, pad)
        where = f"column {column!r} rows {start}..{start + len(ids) - 1}"
        _check_vocabulary(batch, where, model)
        yield _Batch(batch, mask)


def _iterable_batches(
    items: Iterable[Tensor], batch_size: int, model: TransformerBridge
) -> Iterator[_Batch]:
    """Examples (`[pos]`) or batches (`[b, pos]`) from an iterable, re-chunked to size.
    Each item's shape and dtype are checked as it comes; the vocabulary once per batch
    (one host sync per batch, not per item)."""
    pending: list[Tensor] = []
    count = 0
    for item in items:
        if not isinstance(item, Tensor):
            raise ValueError(f"the token iterable yielded {type(item).__name__}, not a tensor")
        rows = item.unsqueeze(0) if item.dim() == 1 else item
        _check_token_shape(rows, "each token item")
        pending.append(rows)
        count += rows.shape[0]
        while count >= batch_size:
            joined = _cat_rows(pending)
            yield _checked_batch(joined[:batch_size], model)
            rest = joined[batch_size:]
            pending, count = ([rest] if rest.shape[0] else []), count - batch_size
    if count:
        yield _checked_batch(_cat_rows(pending), model)


def _checked_batch(tokens: Tensor, model: TransformerBridge) -> _Batch:
    """A batch from the token iterable, its ids checked against the vocabulary."""
    _check_vocabulary(tokens, "the token items", model)
    return _Batch(tokens, None)


def _cat_rows(parts: Sequence[Tensor]) -> Tensor:
    lengths = sorted({part.shape[1] for part in parts})
    if len(lengths) > 1:
        raise ValueError(f"token items within a batch must share one length, got {lengths}")
    return torch.cat(list(parts))
