"""One chunk's forward pass of incremental activation patching (`circuits.patching.incremental`):
from a patched activation of one layer on, over K copies of the batch, rerunning only the
layers, positions and heads the patch can change, with the base run's cached activations
for the rest. `IncrementalPatcher.patched_logits` makes one `Step` per chunk."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuits.patching import incremental_rows, incremental_values
from circuits.patching.targets import IndexSpace
from interp import functional

if TYPE_CHECKING:
    from circuits.patching.incremental import IncrementalPatcher


def _activation_name(space: IndexSpace) -> str:
    """`resid_pre`, `z`, `pattern`, ... from the hook name of `space`."""
    return space.hook.rsplit("hook_", 1)[1]


def _consecutive(values: Sequence[int]) -> slice | None:
    """`values` as a slice where they run consecutively (`3, 4, 5`), else None."""
    start = values[0]
    if list(values) == list(range(start, start + len(values))):
        return slice(start, start + len(values))
    return None


def _flat_positions(chunk: Sequence[tuple[int, ...]], sizes: Sequence[int]) -> list[int]:
    """Each index of `chunk` (layer first) as its row-major position over the axes after
    the layer, of `sizes`."""
    strides = [math.prod(sizes[axis + 1 :]) for axis in range(len(sizes))]
    return [
        sum(i * stride for i, stride in zip(index[1:], strides, strict=True)) for index in chunk
    ]


class Step:
    """One chunk's forward pass from the patched activation on (K copies of the batch)."""

    def __init__(self, patcher: IncrementalPatcher, n_copies: int, p0: int, n_before: int):
        self.patcher = patcher
        self.params = patcher.params
        self.arch = patcher.arch
        self.n_copies = n_copies
        self.p0 = p0
        self.read = patcher.read[n_before:]
        """The read positions from p0 on, the queries of the last layer."""
        self.read_rows = slice(n_before, None)
        """Where `read` sits among all read positions: its rows in the last layer's cache
        when that holds the read positions only."""
        self.first_read = patcher.read_positions[n_before]
        self.live = patcher.positions[p0 : patcher.n_pos]

    def repeat(self, tensor: Tensor) -> Tensor:
        """`[batch, ...]` -> `[K * batch, ...]`, copy-major like the patched batch."""
        return tensor.repeat(self.n_copies, *([1] * (tensor.ndim - 1)))

    def base(self, name: str) -> Tensor:
        return self.repeat(self.patcher.base[name])

    def rows(self, layer: int, start: int = 0) -> slice | Tensor:
        """Where the positions layer `layer` computes (`queries(layer)`) sit along an axis
        holding positions `start..`: a slice from p0 on (a view), or the read positions in
        the last layer (a slice too where they are contiguous)."""
        if layer == self.arch.n_layers - 1:
            if self.patcher.read_contiguous:
                return slice(self.first_read - start, self.patcher.read_positions[-1] + 1 - start)
            return self.read - start
        return slice(self.p0 - start, None)

    def cache_rows(self, layer: int) -> slice | Tensor:
        """`rows(layer)` in the base and source runs' q, z, pattern and what follows the
        attention (attn_out, resid_mid, mlp_out, resid_post) of `layer` (the last layer's
        hold the read positions only when the patcher was built with
        `last_layer_at_read`)."""
        if self.patcher.last_layer_at_read and layer == self.arch.n_layers - 1:
            return self.read_rows
        return self.rows(layer)

    def at_rows(self, tensor: Tensor, layer: int, start: int = 0) -> Tensor:
        """`tensor[:, rows(layer, start)]`."""
        return tensor[:, self.rows(layer, start)]

    def queries(self, layer: int) -> Tensor:
        """Positions whose output layer `layer` must compute: all from p0 on, or, in the
        last layer, the read positions."""
        return self.read if layer == self.arch.n_layers - 1 else self.live

    def values_of(self, index: slice | Tensor) -> Tensor:
        """An index along one axis of the copies (`along`, `indices_along`) as a tensor of
        its values, `[K]` (a view of the patcher's `arange` where it is a slice)."""
        return self.patcher.arange(index.stop)[index] if isinstance(index, slice) else index

    def along(self, values: Sequence[int]) -> slice | Tensor:
        """`values` as an index: a slice where they run consecutively (a view, and no
        copy from the host), else a tensor made from them (a copy from the host)."""
        run = _consecutive(values)
        return run if run is not None else torch.tensor(values, device=self.read.device)

    def indices_along(
        self, chunk: Sequence[tuple[int, ...]], sizes: Sequence[int]
    ) -> list[slice | Tensor]:
        """The chunk's indices along each axis after the layer (of `sizes`), each as an
        index of the copies: a slice where its values run consecutively; else the rows of
        the patcher's `index_grid` that the chunk covers, a view made with no copy from the
        host, where the chunk runs consecutively in row-major order (as every chunk that
        `patch` cuts does: `z_by_pos`'s positions and heads); else a tensor made from the
        values."""
        block = _consecutive(_flat_positions(chunk, sizes))
        indices: list[slice | Tensor] = []
        for axis in range(len(sizes)):
            values = [index[1 + axis] for index in chunk]
            run = _consecutive(values)
            if run is not None:
                indices.append(run)
            elif block is not None:
                indices.append(self.patcher.index_grid(tuple(sizes))[block, axis])
            else:
                indices.append(self.along(values))
        return indices

    def patched(self, space: IndexSpace, chunk: Sequence[tuple[int, ...]]) -> Tensor:
        """The hooked activation of the chunk's layer, `[K * batch, ...]`, with copy k
        patched at `chunk[k]` from the source run: one `where` over all copies, selecting
        what the setters of `targets.py` copy (`chunk[k]` along `space.dims`)."""
        name = space.hook_name(chunk[0][0])
        base, source = self.patcher.base[name], self.patcher.source[name]
        dims = space.dims
        if list(dims) != sorted(dims) or len(dims) != len(space.axes) - 1:
            raise ValueError(f"incremental patching has no rule for target {space.name!r}")
        sizes = [base.shape[dim] for dim in dims]
        flat = _flat_positions(chunk, sizes)
        along = self.along(flat)
        wanted = self.patcher.arange(flat[-1] + 1)[along] if isinstance(along, slice) else along
        mask = self.patcher.arange(math.prod(sizes))[None, :] == wanted[:, None]  # [K, flat]
        shape = [self.n_copies] + [1] * base.ndim
        for dim, size in zip(dims, sizes, strict=True):
            shape[1 + dim] = size
        return torch.where(mask.reshape(shape), source, base).flatten(0, 1)

    def run(self, space: IndexSpace, chunk: Sequence[tuple[int, ...]]) -> Tensor:
        """The chunk's forward pass from its patched activation on; returns the final
        residual stream at the read positions, `[K * batch, n_read, d_model]`."""
        name, layer = _activation_name(space), chunk[0][0]
        one_row = incremental_rows.run(self, space, chunk)  # one row of the residual changed
        if one_row is not None:
            return one_row
        if name == "z" and not self.arch.post_norms:  # heads add up in the residual stream
            return self.after_head_outputs_patched(space, chunk)
        if name == "v" and not self.arch.post_norms:  # z is linear in v, the pattern fixed
            return incremental_values.after_values_patched(self, space, chunk)
        return self.enter(name, layer, self.patched(space, chunk))

    def after_head_outputs_patched(
        self, space: IndexSpace, chunk: Sequence[tuple[int, ...]]
    ) -> Tensor:
        """The chunk's pass when copy k patches the `z` of the head of `chunk[k]` at every
        position (`z`; `z_by_pos` is `incremental_rows`'s); returns the final residual
        stream at the read positions.

        The attention output is linear in each head's `z`, so patching head h adds
        `(z_source - z_base)[h] @ W_O[h]` to the base run's `resid_mid`: one
        `d_head x d_model` product per copy instead of the whole `W_O` on a patched copy.
        (`after_attention_added`)."""
        layer = chunk[0][0]
        rows = self.cache_rows(layer)
        name = space.hook_name(layer)
        source, base = self.patcher.source[name], self.patcher.base[name]
        along = self.indices_along(chunk, [base.shape[dim] for dim in space.dims])
        heads = along[space.axes.index("head") - 1]
        change = source[:, rows][:, :, heads] - base[:, rows][:, :, heads]  # [b, q, K, d]
        w_o = self.params[f"blocks.{layer}.attn.o.weight"]  # [d_model, head * d_head]
        w_o = w_o.T.unflatten(0, (self.arch.n_heads, self.arch.d_head))[heads]  # [K, d, m]
        # [K, b * q, d] @ [K, d, m]: one batched product
        added = torch.matmul(change.permute(2, 0, 1, 3).flatten(1, 2), w_o)
        added = added.unflatten(1, change.shape[:2])  # [K, b, q, m]
        return self.after_attention_added(layer, added.flatten(0, 1))

    def after_attention_added(self, layer: int, added: Tensor) -> Tensor:
        """The pass when `added` (`[K * batch, rows, d_model]` at `queries(layer)`) is
        added to the base run's attention output of `layer`, which (no norm after the
        attention) adds it to the residual stream: to `resid_mid`, or, where the MLP does
        not read the attention's output (attention-only, or parallel attention and MLP),
        to `resid_post`, the MLP not rerun."""
        block = f"blocks.{layer}"
        if self.arch.d_mlp is None or self.arch.parallel_attn_mlp:
            return self.after_post(layer, self.plus_base(f"{block}.hook_resid_post", added))
        return self.after_mid(layer, self.plus_base(f"{block}.hook_resid_mid", added))

    def enter(self, name: str, layer: int, full: Tensor) -> Tensor:
        """Continue the forward pass from activation `name` of `layer` (all positions);
        returns the final residual stream at the read positions."""
        block = f"blocks.{layer}"
        if name == "resid_pre":
            return self.layers(layer, full[:, self.p0 :])
        if name == "resid_mid":
            return self.after_mid(layer, self.at_rows(full, layer))
        if name == "attn_out":
            resid_mid = self.plus_base(f"{block}.hook_resid_pre", self.at_rows(full, layer))
            return self.after_mid(layer, resid_mid)
        if name == "mlp_out":
            if self.arch.parallel_attn_mlp:  # no resid_mid: resid_pre + attn_out + mlp_out
                resid_post = self.plus_base(f"{block}.hook_resid_pre", self.at_rows(full, layer))
                resid_post = self.plus_base(f"{block}.hook_attn_out", resid_post)
            else:
                resid_post = self.plus_base(f"{block}.hook_resid_mid", self.at_rows(full, layer))
            return self.after_post(layer, resid_post)
        if name == "resid_post":
            return self.after_post(layer, self.at_rows(full, layer))
        if name == "z":  # (Gemma 2: its norm after the attention mixes the heads)
            return self.after_z(layer, full[:, self.cache_rows(layer)])
        return self.after_z(layer, self.head_outputs(name, layer, full, self.queries(layer)))

    def head_outputs(self, name: str, layer: int, full: Tensor, rows: Tensor) -> Tensor:
        """Each head's `z` at `rows` when the attention's `name` (z, q, k, v or pattern)
        is `full` and everything else is the base run's."""
        cached = self.cache_rows(layer)
        attn = f"blocks.{layer}.attn"
        q, k, v = (self.base(f"{attn}.hook_{part}") for part in ("q", "k", "v"))
        if name == "pattern":
            pattern = full[:, :, cached]
            z, _ = functional.mix_heads(None, None, v, rows, self.arch, pattern=pattern)
            return z
        if name == "v":
            pattern = self.base(f"{attn}.hook_pattern")[:, :, cached]
            z, _ = functional.mix_heads(None, None, full, rows, self.arch, pattern=pattern)
            return z
        if name == "q":
            q = full
        elif name == "k":
            k = full
        else:
            raise ValueError(f"incremental patching has no rule for activation {name!r}")
        z, _ = functional.mix_heads(
            q[:, cached], k, v, rows, self.arch, self.patcher.rope(layer), fused=True,
            qk_norm=functional.qk_norm_of(self.params, attn, self.arch),
            window=self.arch.window(layer),
        )
        return z

    def after_z(self, layer: int, z: Tensor) -> Tensor:
        block = f"blocks.{layer}"
        attn_out = functional.attention_output(self.params, f"{block}.attn", z, self.arch)
        return self.after_mid(layer, self.plus_base(f"{block}.hook_resid_pre", attn_out))

    def plus_base(self, name: str, change: Tensor) -> Tensor:
        """`change` (`[K * batch, rows, d_model]` at `queries(layer)`) plus the base run's
        activation `name` of that layer at those rows (`rows` of a `resid_pre`, whose cache
        covers every position; `cache_rows` of what comes after the attention)."""
        layer = int(name.split(".")[1])
        rows = self.rows(layer) if name.endswith(".hook_resid_pre") else self.cache_rows(layer)
        base = self.patcher.base[name][:, rows]
        return (change.unflatten(0, (self.n_copies, -1)) + base).flatten(0, 1)

    def after_mid(self, layer: int, resid: Tensor) -> Tensor:
        """`resid_pre + attn_out` of `layer` at `queries(layer)` -> the final residual
        stream (with parallel attention and MLP, the MLP's output is the base run's)."""
        if self.arch.parallel_attn_mlp:
            return self.after_post(layer, self.plus_base(f"blocks.{layer}.hook_mlp_out", resid))
        return self.after_post(layer, self.with_mlp(layer, resid))

    def with_mlp(self, layer: int, resid: Tensor) -> Tensor:
        """`resid_mid` -> `resid_post` of `layer` (the identity in attention-only models)."""
        if self.arch.d_mlp is None:
            return resid
        return resid + functional.block_mlp(self.params, layer, resid, self.arch)

    def after_post(self, layer: int, resid: Tensor) -> Tensor:
        if layer == self.arch.n_layers - 1:
            return resid
        return self.layers(layer + 1, resid)

    def layers(self, start: int, resid: Tensor) -> Tensor:
        """Blocks `start..` on the residual stream at positions p0.. (`[K * batch, live,
        d_model]`), reusing the base run's keys and values before p0."""
        for layer in range(start, self.arch.n_layers):
            attn = f"blocks.{layer}.attn"
            rows = self.queries(layer)
            normed = self.norm(f"blocks.{layer}.ln1", resid)
            q = functional.head_projection(
                self.params, attn, "q", self.at_rows(normed, layer, self.p0), self.arch
            )
            k, v = (
                self.with_prefix(
                    f"{attn}.hook_{part}",
                    functional.head_projection(self.params, attn, part, normed, self.arch),
                )
                for part in ("k", "v")
            )
            z, _ = functional.mix_heads(q, k, v, rows, self.arch, self.patcher.rope(layer),
                                        fused=True,
                                        qk_norm=functional.qk_norm_of(self.params, attn,
                                                                      self.arch),
                                        window=self.arch.window(layer))
            attn_out = functional.attention_output(self.params, attn, z, self.arch)
            before = self.at_rows(resid, layer, self.p0)
            if self.arch.parallel_attn_mlp:  # the MLP reads the block's input too
                mlp_out = functional.block_mlp(self.params, layer, before, self.arch)
                resid = mlp_out + attn_out + before  # GPT-NeoX's order, as the forward pass
            else:
                resid = self.with_mlp(layer, before + attn_out)
        return resid

    def with_prefix(self, name: str, live: Tensor) -> Tensor:
        """Keys or values of every position: the base run's before p0, then `live`."""
        if self.p0 == 0:
            return live
        prefix = self.repeat(self.patcher.base[name][:, : self.p0])
        return torch.cat([prefix, live], dim=1)

    def norm(self, prefix: str, resid: Tensor) -> Tensor:
        return functional.normalize(
            self.params, prefix, resid, self.arch.normalization, self.arch.eps
        )
