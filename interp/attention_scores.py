"""Attention scores from prepared queries and keys: scale, soft cap, ALiBi, causal and
sliding-window masks, and the cached bias tables they use.

`interp.layers` prepares queries and keys (per-head norm, rotary: `rotated_queries_keys`)
and calls `scores_of`, both in `mix_heads` (which turns scores into patterns) and in
`attention_scores` (scores of queries and keys that need not come from one forward pass,
e.g. AtP*'s fix for queries and keys in `circuits.attribution_qk`).
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.param_layout import Architecture

__all__ = [
    "alibi_bias",
    "causal_bias",
    "per_query_head",
    "scores_of",
]

def per_query_head(
    x: Float[Tensor, "batch kv_head pos d_head"], n_heads: int
) -> Float[Tensor, "batch head pos d_head"]:
    """Keys or values of grouped-query attention repeated for each head of their group
    (`x` itself without grouping)."""
    if x.shape[1] == n_heads:
        return x
    return x.repeat_interleave(n_heads // x.shape[1], dim=1)


@functools.lru_cache(maxsize=32)
def causal_bias(
    n_keys: int, device: torch.device, dtype: torch.dtype, window: int | None = None
) -> Float[Tensor, "query key"]:
    """The additive causal mask of `n_keys` positions: 0 where query i may see key j
    (j <= i, and i - j < `window` when there is one), -inf elsewhere; kept per size,
    device, dtype and window (rows are picked by index, so a sweep builds it once). Made
    outside inference mode, so that autograd may save it."""
    with torch.inference_mode(False), torch.no_grad():
        positions = torch.arange(n_keys, device=device)
        hidden = positions[None, :] > positions[:, None]
        if window is not None:
            hidden |= positions[None, :] <= positions[:, None] - window
        return torch.zeros(n_keys, n_keys, device=device, dtype=dtype).masked_fill_(
            hidden, float("-inf")
        )


@functools.lru_cache(maxsize=32)
def alibi_bias(
    arch: Architecture, n_keys: int, device: torch.device, dtype: torch.dtype
) -> Float[Tensor, "head 1 key"] | None:
    """ALiBi's additive bias of keys 0 .. `n_keys` - 1, `slope_h * j` per head h
    (`arch.alibi_slopes`), the same for every query (a per-query offset would not change
    a softmax), made as Hugging Face's BLOOM makes it (float32 products, then the model's
    dtype); None without ALiBi. Kept per size, device and dtype, made outside inference
    mode, so that autograd may save it."""
    if arch.alibi_slopes is None:
        return None
    with torch.inference_mode(False), torch.no_grad():
        slopes = torch.tensor(arch.alibi_slopes, dtype=torch.float32)
        bias = slopes[:, None, None] * torch.arange(n_keys)
        return bias.to(device=device, dtype=dtype)


def scores_of(
    queries: Float[Tensor, "batch head query d_head"],
    keys: Float[Tensor, "batch kv_head key d_head"],
    arch: Architecture,
    alibi: Float[Tensor, "head 1 key"] | None,
    masked_positions: Int[Tensor, " query"] | None,
    window: int | None,
) -> Float[Tensor, "batch head query key"]:
    """Scores of prepared queries and keys (`rotated_queries_keys`): scaled, soft-capped,
    ALiBi's bias added, and -inf at the keys a query at `masked_positions` may not see (no
    mask when None)."""
    keys = per_query_head(keys, queries.shape[1])
    scores = torch.matmul(queries, keys.transpose(-2, -1)) / arch.attn_scale
    if arch.attn_softcap is not None:
        scores = torch.tanh(scores / arch.attn_softcap) * arch.attn_softcap
    if alibi is not None:
        scores = scores + alibi
    if masked_positions is not None:
        key_positions = torch.arange(keys.shape[2], device=keys.device)
        mask = key_positions[None, :] > masked_positions[:, None]
        if window is not None:
            mask = mask | (key_positions[None, :] <= masked_positions[:, None] - window)
        # Every query sees key 0, so no row is all -inf: masked weights come out 0.
        scores = scores.masked_fill(mask, float("-inf"))
    return scores
