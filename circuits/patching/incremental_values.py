"""Incremental patching of a head's values (`v` by head, `v_by_pos` by position and head):
for a fixed attention pattern each head's output is linear in its values, so patching the
values of head h (at position p) adds `pattern_h @ (v_source - v_base)_h` (for one position:
`pattern_h[:, p] * (v_source - v_base)_h[p]`) to that head's `z`, and that times `W_O[h]` to
the attention's output: no attention is recomputed, and no other head. Under grouped-query
attention the patched key-value head serves every query head of its group, each with its
own pattern. Models with a norm after the attention (Gemma 2 and 3), where the output is not
linear in `z`, take the general path (`incremental_step.Step.enter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from circuits.patching.incremental_step import Step
    from circuits.patching.targets import IndexSpace


def after_values_patched(step: Step, space: IndexSpace, chunk: Sequence[tuple[int, ...]]) -> Tensor:
    """The chunk's pass when copy k patches the values of key-value head `chunk[k][-1]`
    (at position `chunk[k][1]` for `v_by_pos`); returns the final residual stream at the
    read positions."""
    patcher, arch = step.patcher, step.arch
    layer = chunk[0][0]
    name = space.hook_name(layer)
    source, base = patcher.source[name], patcher.base[name]  # [b, pos, kv_head, d_head]
    along = step.indices_along(chunk, [base.shape[dim] for dim in space.dims])
    kv = step.values_of(along[space.axes.index("head") - 1])  # [K]
    group = arch.n_heads // base.shape[2]
    heads = kv[:, None] * group + patcher.arange(group)[None, :]  # [K, g] query heads
    change = source[:, :, kv] - base[:, :, kv]  # [b, key, K, d]
    if "pos" in space.axes:  # only the patched position's value changes
        at = step.values_of(along[space.axes.index("pos") - 1])
        change = change * (patcher.positions[:, None] == at[None, :])[None, :, :, None]
    pattern = patcher.base[f"blocks.{layer}.attn.hook_pattern"][:, :, step.cache_rows(layer)]
    pattern = pattern[:, heads]  # [b, K, g, query, key]
    z_change = torch.einsum("bkgqt,btkd->kgbqd", pattern, change.to(pattern.dtype))
    w_o = step.params[f"blocks.{layer}.attn.o.weight"]  # [d_model, head * d_head]
    w_o = w_o.T.unflatten(0, (arch.n_heads, arch.d_head))[heads]  # [K, g, d, m]
    added = torch.einsum("kgbqd,kgdm->kbqm", z_change.to(w_o.dtype), w_o)
    return step.after_attention_added(layer, added.flatten(0, 1))

