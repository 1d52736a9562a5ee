"""The stages of one of ACDC's tests on the pruning state (`circuits.pruning_state`): a
removed edge's change of its destination's input, carried along the kept edges block by
block, recomputing only the heads and MLPs whose input changed, up to the damage read from
the logits. Each stage returns the `Change` of the outputs it recomputed (a leading
dimension of trials) and appends the tensors a commit would write to `writes`; nothing in
the state is changed here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.graph import HEAD_INPUTS
from circuits.pruning_trials import Seed, seed_rows

if TYPE_CHECKING:
    from circuits.pruning_state import PruningState


@dataclass(frozen=True)
class Change:
    """New outputs of some sources in each of S trials: their indices and `output -
    current` `[S, n, batch, rows, d_model]`, the rows being every position, or the read
    positions (`at_reads`)."""

    sources: np.ndarray
    delta: Tensor
    at_reads: bool
    _at_reads: list[Tensor] = field(default_factory=list, repr=False, compare=False)

    def rows(self, into_reads: bool, reads: Tensor) -> Tensor:
        """`delta` in the rows of an input held at the read positions only (`into_reads`)
        or at every position (taken at the read positions once, then reused)."""
        if self.at_reads or not into_reads:
            return self.delta
        if not self._at_reads:
            self._at_reads.append(self.delta[..., reads, :])
        return self._at_reads[0]


def _updated(
    state: PruningState,
    current: Float[Tensor, "n batch row d_model"],
    weights: list[np.ndarray],
    changes: list[Change],
    into_reads: bool,
) -> Float[Tensor, "trial n batch row d_model"] | None:
    """The inputs of some destinations (currently `current`) after `changes`, carried
    along the kept edges (`weights[i]`: kept `[destination, source]` of `changes[i]`'s
    sources), in each trial; None when no kept edge carries any of them."""
    total: Tensor | None = None
    for change, kept in zip(changes, weights, strict=True):
        if not kept.any():
            continue
        delta = change.rows(into_reads, state.reads)
        if kept.all():  # every destination reads every source: broadcast
            term = delta if delta.shape[1] == 1 else delta.sum(1, keepdim=True)
        elif delta.shape[1] == 1:
            term = delta * state.mix(kept, delta, column=True)
        else:
            term = torch.einsum("tn,snbrd->stbrd", state.mix(kept, delta, False), delta)
        total = term if total is None else total + term
    return None if total is None else current + total


def _kept_from(
    state: PruningState, destinations: np.ndarray, changes: list[Change]
) -> list[np.ndarray]:
    """Kept `[destination, source]` from each change's sources into `destinations`."""
    rows = state.kept[destinations]
    return [rows[:, change.sources] for change in changes]


def _planted(
    current: Float[Tensor, "n batch row d_model"],
    seed: Seed,
    rows: Sequence[int | None],
) -> Float[Tensor, "trial n batch row d_model"]:
    """`current` in each trial, with the input in row `rows[j]` changed by edge j's
    change in trial j and, unless edge j is assumed kept, in every later trial (None:
    edge j feeds none of these inputs); the changes added one at a time, in order, as
    sequential tests add them (and faster on a CPU than `cumsum`). The seed's stage is
    the first one recomputed, so nothing else has changed these inputs."""
    deltas, kept = seed.deltas, seed.kept
    if len(current) == 1 and None not in rows:  # one input, every edge into it
        if len(deltas) == 1:
            return (current + deltas[0])[None]
        planted = current.new_empty((len(deltas), *current.shape[1:]))
        trials = planted.unbind(0)  # views, in one call
        removed = current[0]  # the input with the edges before trial j removed
        for j, delta in enumerate(deltas):
            torch.add(removed, delta, out=trials[j])
            if not kept[j]:
                removed = trials[j]
        return planted[:, None]
    planted = current.expand(len(deltas), *current.shape).clone()
    for j, (row, delta) in enumerate(zip(rows, deltas, strict=True)):
        if row is not None:
            (planted[j, row] if kept[j] else planted[j:, row]).add_(delta)
    return planted


def heads_stage(
    state: PruningState, layer: int, changes: list[Change], seed: Seed | None, writes: list
) -> Change | None:
    """Recompute the heads of `layer` whose q, k or v input changed."""
    n_heads, at_reads = state.arch.n_heads, layer == state.last
    kept = _kept_from(state, state.head_rows[layer], changes)  # [part * head, source] each
    touched = np.zeros(n_heads, dtype=bool)
    for block in kept:
        touched |= block.reshape(len(HEAD_INPUTS), n_heads, -1).any(axis=(0, 2))
    if seed is not None:
        touched[[node.head for node in seed.nodes]] = True
    heads = np.flatnonzero(touched)
    if heads.size == 0:
        return None
    index = state.heads(heads)
    proj: dict[str, Tensor] = {}
    for i, part in enumerate(HEAD_INPUTS):
        into_reads = at_reads and part == "q"
        current = state.head_in[layer][part][index]
        rows = [] if seed is None else seed_rows(seed, part, heads)
        if any(row is not None for row in rows):
            new_in = _planted(current, seed, rows)  # type: ignore[arg-type]
        else:
            held = heads + i * n_heads
            new_in = _updated(state, current, [b[held] for b in kept], changes, into_reads)
        if new_in is None:
            proj[part] = state.proj[layer][part][index]
            continue
        proj[part] = state.pieces.project(layer, part, new_in, index)
        writes.append((state.head_in[layer], part, index, new_in))
        writes.append((state.proj[layer], part, index, proj[part]))
    out = state.pieces.attend(layer, index, proj)
    if state.arch.post_norms:  # the block's scale moves: every head gets a new share
        writes.append((state.head_raw[layer], "out", index, out))
        raw = out
        if len(heads) < n_heads:  # the other heads' outputs before the norm, as held
            raw = state.head_raw[layer]["out"].expand(len(out), -1, -1, -1, -1).clone()
            raw[:, index] = out
        out, index, heads = state.pieces.shares(layer, raw), slice(None), np.arange(n_heads)
    writes.append((state.head_out[layer], "out", index, out))
    delta = out - state.head_out[layer]["out"][index]
    return Change(state.head_sources[layer][heads], delta, at_reads)


def mlp_stage(
    state: PruningState, layer: int, changes: list[Change], seed: Seed | None, writes: list
) -> Change | None:
    """Recompute the MLP of `layer` if its input changed."""
    at_reads = layer == state.last
    current = state.mlp_in[layer]["in"][None]
    if seed is not None:
        new_in = _planted(current, seed, [0] * len(seed.deltas))
    else:
        destination = np.array([state.mlp_destination[layer]])
        new_in = _updated(
            state, current, _kept_from(state, destination, changes), changes, at_reads
        )
    if new_in is None:
        return None
    out = state.pieces.mlp(layer, new_in[:, 0])
    writes.append((state.mlp_in[layer], "in", None, new_in[:, 0]))
    writes.append((state.mlp_out[layer], "out", None, out))
    delta = (out - state.mlp_out[layer]["out"])[:, None]
    return Change(np.array([state.mlp_source[layer]]), delta, at_reads)


def logits_stage(
    state: PruningState, changes: list[Change], seed: Seed | None, writes: list, n_trials: int
) -> list[float]:
    """The damage of each trial's circuit, whose logit input these changes give."""
    current = state.logit_in["logits"][None]
    if seed is not None:
        new_in = _planted(current, seed, [0] * len(seed.deltas))
    else:
        destination = np.array([state.logits_destination])
        new_in = _updated(state, current, _kept_from(state, destination, changes), changes, True)
    if new_in is None:
        return [state.damage] * n_trials
    writes.append((state.logit_in, "logits", None, new_in[:, 0]))
    return state.damages(state.pieces.read(new_in[:, 0]))
