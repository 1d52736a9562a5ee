"""Keeping only some positions of each activation (`collect(positions=...)`)."""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

PositionRequest = int | Int[Tensor, " n"] | Int[Tensor, "n k"] | None
"""Positions to keep: one index for every example, one per example (`[n]`), or `k` per
example (`[n, k]`); negative indices count from the end: of the sequence, or, when an
attention mask is given, of each example's real tokens (-1 is its last real token, with
right padding too). None keeps every position."""


class _PositionSelector:
    """Applies a `positions` request to each activation of the current batch."""

    def __init__(self, positions: PositionRequest, n_examples: int | None) -> None:
        if isinstance(positions, bool) or not (
            positions is None or isinstance(positions, int | Tensor)
        ):
            raise ValueError(f"positions must be an int, a tensor or None, got {positions!r}")
        if isinstance(positions, Tensor):
            if positions.dtype.is_floating_point or positions.dtype == torch.bool:
                raise ValueError(f"positions must hold integers, got dtype {positions.dtype}")
            if positions.dim() not in (1, 2):
                raise ValueError(f"positions must be [n] or [n, k], got {tuple(positions.shape)}")
            if n_examples is not None and positions.shape[0] != n_examples:
                raise ValueError(
                    f"positions has {positions.shape[0]} rows but tokens has {n_examples} examples"
                )
        self._positions = positions
        self._offset = 0
        self._batch: Tensor | int | None = None
        self._seq_len = 0

    def start_batch(self, shape: torch.Size, attention_mask: Tensor | None = None) -> None:
        """Take the positions of the next `shape[0]` examples, checked against `shape[1]`;
        with an `attention_mask`, negative ones count back from each example's last real
        token."""
        rows, self._seq_len = int(shape[0]), int(shape[1])
        start, self._offset = self._offset, self._offset + rows
        positions = self._positions
        if positions is None:
            self._batch = None
            return
        if isinstance(positions, int):
            chosen = torch.tensor([positions])
        else:
            if self._offset > positions.shape[0]:
                raise ValueError(f"positions has {positions.shape[0]} rows, fewer than tokens")
            chosen = positions[start : self._offset].long()
        if bool(((chosen < -self._seq_len) | (chosen >= self._seq_len)).any()):
            raise ValueError(f"positions must lie in [-{self._seq_len}, {self._seq_len})")
        if attention_mask is not None and bool((chosen < 0).any()):
            self._batch = _from_real_end(chosen, attention_mask, start)
            return
        chosen = torch.where(chosen < 0, chosen + self._seq_len, chosen)
        self._batch = int(chosen.item()) if isinstance(positions, int) else chosen

    def check_exhausted(self) -> None:
        """Raise when a positions tensor has more rows than there were examples."""
        if isinstance(self._positions, Tensor) and self._positions.shape[0] != self._offset:
            raise ValueError(
                f"positions has {self._positions.shape[0]} rows but tokens had {self._offset}"
            )

    def __call__(self, activation: Tensor, axis: int, name: str) -> Tensor:
        """`activation` with only the chosen positions along `axis`."""
        chosen = self._batch
        if chosen is None:
            return activation
        if activation.dim() < 2 or not -activation.dim() <= axis < activation.dim():
            raise ValueError(f"hook {name!r} of shape {tuple(activation.shape)} has no positions")
        axis = axis % activation.dim()
        if activation.shape[axis] != self._seq_len:
            raise ValueError(
                f"hook {name!r} has {activation.shape[axis]} positions on axis {axis}, "
                f"the tokens have {self._seq_len}; positions cannot be selected"
            )
        if isinstance(chosen, int):
            return activation.select(axis, chosen)
        moved = activation.movedim(axis, 1)
        rows = torch.arange(moved.shape[0], device=moved.device)
        index = chosen.to(moved.device)
        if index.dim() == 1:
            return moved[rows, index]
        return moved[rows[:, None], index].movedim(1, axis)


def _from_real_end(
    chosen: Int[Tensor, "rows ..."], attention_mask: Int[Tensor, "batch pos"], start: int
) -> Int[Tensor, "batch ..."]:
    """Positions per example with negative ones counted back from each example's last real
    token (its last nonzero mask entry): -1 is that token."""
    ones = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    ends = (attention_mask.bool() * ones).amax(dim=1).to(chosen.device)  # last real + 1
    ends = ends.view(-1, *([1] * (chosen.dim() - 1)))
    chosen = chosen.expand(attention_mask.shape[0], *chosen.shape[1:])
    resolved = torch.where(chosen < 0, chosen + ends, chosen)
    if bool((resolved < 0).any()):
        row = int((resolved < 0).nonzero()[0, 0])
        raise ValueError(
            f"positions reach back past the start of example {start + row}, which has "
            f"{int(ends.view(-1)[row])} real tokens (by attention_mask)"
        )
    return resolved
