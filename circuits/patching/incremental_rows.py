"""Incremental patching of one position of the residual stream: `resid_pre`, `attn_out`,
`resid_mid`, `mlp_out` and `resid_post` by layer x position.

Such a patch changes one row of the residual stream, at its position p. What follows it in
its own block works on rows, so only row p is recomputed up to the next attention (an
`attn_out` patch reruns the MLP at p alone, not at every position from p on). At that
attention, the block's input differs from the base run's at row p only, so the queries,
keys and values of every other position are the base run's, from its cache: only row p goes
through the norm and the three projections, and the attention of each query from p on
(whose keys include row p) is recomputed, then everything after it, as in
`incremental_step.Step.layers`. Each copy of a chunk has its own p: the rows are merged
with one `where` over the copies.

What this skips, per copy, is the norm and the query, key and value projections of the
positions after p in the first block the patch reaches (and in a parallel block, its MLP
there too): on the 2-layer benchmark model about a quarter of the arithmetic of a
`resid_pre` sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from interp import functional

if TYPE_CHECKING:
    from circuits.patching.incremental_step import Step

ONE_ROW_ACTIVATIONS = frozenset({"resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"})
"""The targets whose patch changes one row of the residual stream (layer x position)."""


class _Rows:
    """Each copy's patched position and merges of its one new row into base tensors."""

    def __init__(self, step: Step, positions: Sequence[int]) -> None:
        self.step = step
        patcher = step.patcher
        self.along = step.along(positions)
        """The chunk's positions as an index of a position axis (a slice where consecutive)."""
        at = (
            patcher.arange(self.along.stop)[self.along]
            if isinstance(self.along, slice)
            else self.along
        )
        if min(positions) < step.p0:  # the tokens agree up to p0: such a patch changes nothing
            at = at.masked_fill(at < step.p0, -1)
        self.at = at
        """`[K]`: copy k's patched position (-1 where the patch changes nothing)."""

    def of(self, cache: Mapping[str, Tensor], name: str) -> Tensor:
        """Row `positions[k]` of the cached activation `name` for copy k, `[K * batch, 1, d]`
        (`cache`: the patcher's base or source run)."""
        rows = cache[name][:, self.along]  # [batch, K, d]
        return rows.transpose(0, 1).flatten(0, 1).unsqueeze(1)

    def merge(self, new: Tensor, base: Tensor, positions: Tensor) -> Tensor:
        """`[K * batch, n, ...]`: the base run's `base` (`[batch, n, ...]`, at `positions`)
        repeated for each copy, with copy k's row at its patched position replaced by
        `new` (`[K * batch, 1, ...]`)."""
        n_copies = self.step.n_copies
        mask = positions[None, :] == self.at[:, None]  # [K, n]
        mask = mask.reshape(n_copies, 1, len(positions), *([1] * (base.ndim - 2)))
        return torch.where(mask, new.unflatten(0, (n_copies, -1)), base).flatten(0, 1)


def run(step: Step, name: str, layer: int, chunk: Sequence[tuple[int, ...]]) -> Tensor:
    """The chunk's pass when copy k patches activation `name` (one of
    `ONE_ROW_ACTIVATIONS`) of `layer` at position `chunk[k][1]` from the source run;
    returns the final residual stream at the read positions, `[K * batch, n_read, d]`."""
    rows = _Rows(step, [index[1] for index in chunk])
    patcher, arch = step.patcher, step.arch
    block = f"blocks.{layer}"
    source = rows.of(patcher.source, f"{block}.hook_{name}")
    if name == "resid_pre":
        return _from_block(step, rows, layer, source)
    if name == "resid_post":
        return _from_block(step, rows, layer + 1, source)

    def base(activation: str) -> Tensor:
        return rows.of(patcher.base, f"{block}.hook_{activation}")

    if name == "mlp_out":
        before = base("resid_pre") + base("attn_out") if arch.parallel_attn_mlp else base(
            "resid_mid"
        )
        return _from_block(step, rows, layer + 1, before + source)
    resid_mid = base("resid_pre") + source if name == "attn_out" else source
    if arch.parallel_attn_mlp:  # the MLP read the block's input: its output is the base's
        resid_post = resid_mid + base("mlp_out")
    else:
        resid_post = step.with_mlp(layer, resid_mid)
    return _from_block(step, rows, layer + 1, resid_post)


def _from_block(step: Step, rows: _Rows, layer: int, new: Tensor) -> Tensor:
    """The pass from the input of block `layer` (past the last block: the final residual
    stream), which differs from the base run's at copy k's patched row only, where it is
    `new` (`[K * batch, 1, d_model]`)."""
    patcher, arch, params = step.patcher, step.arch, step.params
    last = arch.n_layers - 1
    queries = step.queries(min(layer, last))
    if layer > last:  # the final residual stream at the read positions
        final = patcher.base[f"blocks.{last}.hook_resid_post"][:, step.cache_rows(last)]
        return rows.merge(new, final, queries)
    block, attn = f"blocks.{layer}", f"blocks.{layer}.attn"
    before = rows.merge(new, patcher.base[f"{block}.hook_resid_pre"][:, step.rows(layer)], queries)
    normed = step.norm(f"{block}.ln1", new)
    cached = step.cache_rows(layer)

    def projected(part: str, at: slice | Tensor, positions: Tensor) -> Tensor:
        row = functional.head_projection(params, attn, part, normed, arch)
        return rows.merge(row, patcher.base[f"{attn}.hook_{part}"][:, at], positions)

    q = projected("q", cached, queries)
    k, v = (projected(part, slice(None), patcher.positions) for part in ("k", "v"))
    z, _ = functional.mix_heads(
        q, k, v, queries, arch, patcher.rope(layer), fused=True,
        qk_norm=functional.qk_norm_of(params, attn, arch), window=arch.window(layer),
    )
    attn_out = functional.attention_output(params, attn, z, arch)
    if arch.parallel_attn_mlp:  # the MLP reads the block's input: new at the patched row only
        mlp_row = functional.block_mlp(params, layer, new, arch)
        mlp_out = rows.merge(mlp_row, patcher.base[f"{block}.hook_mlp_out"][:, cached], queries)
        resid = mlp_out + attn_out + before  # GPT-NeoX's order, as the forward pass
    else:
        resid = step.with_mlp(layer, before + attn_out)
    return step.after_post(layer, resid)
