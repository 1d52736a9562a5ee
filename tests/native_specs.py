"""Small native model specs covering every architecture option `interp.functional` runs:
each norm kind, attention-only, rotary, SoLU, bidirectional (shared by the tests of
`interp.functional` and `interp.param_layout`)."""

from __future__ import annotations

from typing import Any

from interp.models import ModelSpec

BASE: dict[str, Any] = dict(n_layers=1, d_model=16, n_heads=2, d_vocab=11, n_ctx=6, d_mlp=24)

SPECS: dict[str, ModelSpec] = {
    # d_head 5 != d_model / n_heads = 8, and d_vocab_out != d_vocab
    "ln-relu-1layer": ModelSpec(**BASE, d_head=5, d_vocab_out=7, normalization="LN"),
    "none-gelu-2layers": ModelSpec(
        **{**BASE, "n_layers": 2}, act_fn="gelu", normalization=None, d_vocab_out=9
    ),
    "ln-attn-only-2layers": ModelSpec(
        **{**BASE, "n_layers": 2}, d_head=3, normalization="LN", attn_only=True
    ),
    "rms-gelu-new-rotary": ModelSpec(
        **BASE, act_fn="gelu_new", normalization="RMS", positional_embedding="rotary"
    ),
    "lnpre-solu-ln": ModelSpec(**BASE, act_fn="solu_ln", normalization="LNPre"),
    "rmspre-silu": ModelSpec(**BASE, act_fn="silu", normalization="RMSPre"),
    "bidirectional-none": ModelSpec(**BASE, normalization=None, attention="bidirectional"),
}
