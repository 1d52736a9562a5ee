"""Incremental patching where a patch changes one row of the residual stream: `resid_pre`,
`attn_out`, `resid_mid`, `mlp_out` and `resid_post` by layer x position, and one head's `z`
or `q` at one position (`z_by_pos`, `q_by_pos`), which change the attention's output at
that position only.

What follows such a patch in its own block works on rows, so only row p is recomputed up
to the next attention (an `attn_out` or `z_by_pos` patch reruns the MLP at p alone, not at
every position from p on). At that attention the block's input differs from the base run's
at row p only, so the queries, keys and values of every other position are the base run's,
from its cache: only row p goes through the norm and the three projections, and the
attention of each query from p on (whose keys include row p) is recomputed, then everything
after it, as in `incremental_step.Step.layers`. Each copy of a chunk has its own p: the rows
are merged with one `where` over the copies.

On the 2-layer benchmark model this skips about a quarter of the arithmetic of a
`resid_pre` sweep, and most of a `z_by_pos` sweep's (whose patches reran every position
after p through the MLP and the next block's projections).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from interp import functional

if TYPE_CHECKING:
    from circuits.patching.incremental_step import Step
    from circuits.patching.targets import IndexSpace

ONE_ROW_ACTIVATIONS = frozenset({"resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"})
"""The targets whose patch changes one row of the residual stream (layer x position)."""


class _Rows:
    """Each copy's patched position and merges of its one new row into base tensors."""

    def __init__(self, step: Step, along: slice | Tensor, first: int) -> None:
        """`along`: copy k's position as an index of a position axis (a slice, or a view of
        the patcher's index grid, as `Step.indices_along` gives it); `first`: the smallest."""
        self.step = step
        self.along = along
        at = step.values_of(along)
        if first < step.p0:  # the tokens agree up to p0: such a patch changes nothing
            at = at.masked_fill(at < step.p0, -1)
        self.at = at
        """`[K]`: copy k's patched position (-1 where the patch changes nothing)."""

    def of(self, cache: Mapping[str, Tensor], name: str) -> Tensor:
        """Row `positions[k]` of the cached activation `name` for copy k, `[K * batch, 1,
        ...]` (`cache`: the patcher's base or source run)."""
        rows = cache[name][:, self.along]  # [batch, K, ...]
        return rows.transpose(0, 1).flatten(0, 1).unsqueeze(1)

    def merge(self, new: Tensor, base: Tensor, positions: Tensor) -> Tensor:
        """`[K * batch, n, ...]`: the base run's `base` (`[batch, n, ...]`, at `positions`)
        repeated for each copy, with copy k's row at its patched position replaced by
        `new` (`[K * batch, 1, ...]`)."""
        n_copies = self.step.n_copies
        mask = positions[None, :] == self.at[:, None]  # [K, n]
        mask = mask.reshape(n_copies, 1, len(positions), *([1] * (base.ndim - 2)))
        return torch.where(mask, new.unflatten(0, (n_copies, -1)), base).flatten(0, 1)


def run(step: Step, space: IndexSpace, chunk: Sequence[tuple[int, ...]]) -> Tensor | None:
    """The chunk's pass when copy k patches `chunk[k]` of `space` from the source run, if
    that patch changes one row of the residual stream (a target of
    `ONE_ROW_ACTIVATIONS`, or one head's `z` or `q` at one position), else None; returns
    the final residual stream at the read positions, `[K * batch, n_read, d]`."""
    name, layer = space.hook.rsplit("hook_", 1)[1], chunk[0][0]
    if name in ONE_ROW_ACTIVATIONS and space.axes == ("layer", "pos"):
        positions = [index[1] for index in chunk]
        rows = _Rows(step, step.along(positions), min(positions))
        return _after_residual_row(step, rows, name, layer)
    if space.axes == ("layer", "pos", "head") and name in ("z", "q"):
        return _after_heads_at_position(step, space, chunk)
    return None


def _after_residual_row(step: Step, rows: _Rows, name: str, layer: int) -> Tensor:
    """The pass when copy k's activation `name` of `layer` is the source run's at its row."""
    patcher, arch = step.patcher, step.arch
    block = f"blocks.{layer}"
    source = rows.of(patcher.source, f"{block}.hook_{name}")
    if name == "resid_pre":
        return _from_block(step, rows, layer, source)
    if name == "resid_post":
        return _from_block(step, rows, layer + 1, source)
    if name == "mlp_out":
        before = (
            rows.of(patcher.base, f"{block}.hook_resid_pre")
            + rows.of(patcher.base, f"{block}.hook_attn_out")
            if arch.parallel_attn_mlp
            else rows.of(patcher.base, f"{block}.hook_resid_mid")
        )
        return _from_block(step, rows, layer + 1, before + source)
    if name == "attn_out":
        return _after_attention_row(step, rows, layer, source)
    return _after_attention_row(step, rows, layer, source, resid_mid=True)


def _after_attention_row(
    step: Step, rows: _Rows, layer: int, row: Tensor, resid_mid: bool = False
) -> Tensor:
    """The pass from copy k's attention output of `layer` at its row, `row` (or, with
    `resid_mid`, the residual stream after it), through the block's MLP at that row."""
    patcher, arch = step.patcher, step.arch
    block = f"blocks.{layer}"
    if not resid_mid:
        row = rows.of(patcher.base, f"{block}.hook_resid_pre") + row
    if arch.parallel_attn_mlp:  # the MLP read the block's input: its output is the base's
        resid_post = row + rows.of(patcher.base, f"{block}.hook_mlp_out")
    else:
        resid_post = step.with_mlp(layer, row)
    return _from_block(step, rows, layer + 1, resid_post)


def _after_heads_at_position(
    step: Step, space: IndexSpace, chunk: Sequence[tuple[int, ...]]
) -> Tensor:
    """The pass when copy k patches the `z` or `q` of head `chunk[k][2]` at position
    `chunk[k][1]`: the attention's output changes at that row only. A patched `q` changes
    that query's attention: the copies' queries, each at its own position, attend to the
    base run's keys and values as the queries of one attention (no copy of the keys)."""
    patcher, arch, params = step.patcher, step.arch, step.params
    layer = chunk[0][0]
    name = space.hook_name(layer)
    base = patcher.base[name]
    along, head_along = step.indices_along(chunk, [base.shape[dim] for dim in space.dims])
    rows = _Rows(step, along, min(index[1] for index in chunk))
    heads = step.values_of(head_along)
    n_copies = step.n_copies
    is_head = patcher.arange(base.shape[2])[None, :] == heads[:, None]  # [K, head]
    is_head = is_head.reshape(n_copies, 1, 1, -1, 1)
    patched = torch.where(
        is_head,
        rows.of(patcher.source, name).unflatten(0, (n_copies, -1)),
        rows.of(patcher.base, name).unflatten(0, (n_copies, -1)),
    ).flatten(0, 1)  # [K * batch, 1, head, d_head]
    attn = f"blocks.{layer}.attn"
    if name.endswith("hook_q"):  # each copy's query is one query of the base run's keys
        q = patched.unflatten(0, (n_copies, -1)).squeeze(2).transpose(0, 1)  # [b, K, h, d]
        k, v = (patcher.base[f"{attn}.hook_{part}"] for part in ("k", "v"))
        z, _ = functional.mix_heads(
            q, k, v, rows.at.clamp(min=0), arch, patcher.rope(layer), fused=True,
            qk_norm=functional.qk_norm_of(params, attn, arch), window=arch.window(layer),
        )  # (a copy at -1 changes nothing: `merge` ignores its row)
        patched = z.transpose(0, 1).flatten(0, 1).unsqueeze(1)
    attn_out = functional.attention_output(params, attn, patched, arch)
    return _after_attention_row(step, rows, layer, attn_out)


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
