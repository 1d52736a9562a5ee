"""Family-specific readers of a pretrained model's Hugging Face config for
`interp.pretrained_layout.architecture_of`: the `Architecture` fields one covered family
has and the others do not (OPT's position offset, GPT-Neo's unscaled scores and local
windows, Gemma 2 and 3's post-norms and soft caps, BLOOM's ALiBi slopes, the sliding
windows of Mistral, Qwen2 and Gemma), and the settings of OPT, GPT-Neo, Phi and BLOOM that
the forward pass does not compute, named so that the model is refused.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "alibi_slopes",
    "attention_windows",
    "bloom_differences",
    "gpt_neo_differences",
    "gpt_neo_fields",
    "opt_differences",
    "phi_differences",
    "position_offset",
    "post_norm_fields",
]


def opt_differences(hf_config: Any) -> list[str]:
    """What an OPT config sets that the forward pass does not compute: OPT-350m's
    post-LayerNorm blocks and its projections between a narrower embedding and the
    residual stream, a removed final norm, norms without weights."""
    width = getattr(hf_config, "word_embed_proj_dim", None)
    differs = {
        "do_layer_norm_before=False (post-LayerNorm blocks)":
            not getattr(hf_config, "do_layer_norm_before", True),
        f"word_embed_proj_dim={width} (projections in and out of the residual stream)":
            width is not None and width != getattr(hf_config, "hidden_size", width),
        "_remove_final_layer_norm": bool(getattr(hf_config, "_remove_final_layer_norm", False)),
        "layer_norm_elementwise_affine=False":
            not getattr(hf_config, "layer_norm_elementwise_affine", True),
    }
    return [name for name, present in differs.items() if present]


def position_offset(original: Any) -> int:
    """The rows in front of OPT's learned position table (`OPTLearnedPositionalEmbedding
    .offset`, 2 in every OPT)."""
    module = next((m for m in original.modules() if type(m).__name__.endswith(
        "LearnedPositionalEmbedding")), None)
    return int(getattr(module, "offset", 2))


def gpt_neo_differences(hf_config: Any) -> list[str]:
    """What a GPT-Neo config sets that the forward pass does not compute: a local window
    of no key, and Flash Attention 2, whose kernel Hugging Face calls causal with no
    window (its local layers then see every earlier key, unlike the eager attention)."""
    window = getattr(hf_config, "window_size", None)
    implementation = str(getattr(hf_config, "_attn_implementation", None) or "")
    differs = {
        f"window_size={window!r} (local layers that see no key)":
            "local" in hf_config.attention_layers and not (isinstance(window, int)
                                                           and window >= 1),
        f"attn_implementation={implementation!r} (local layers without their window)":
            implementation.startswith("flash_attention"),
    }
    return [name for name, present in differs.items() if present]


def gpt_neo_fields(hf_config: Any, n_ctx: int) -> dict[str, Any]:
    """GPT-Neo's `Architecture` fields: scores not scaled (`GPTNeoSelfAttention._attn`
    multiplies queries by keys and nothing else; TransformerLens's config says
    `attn_scale=-1`, which would read as sqrt(d_head)), and a window of `window_size` keys
    on the layers `attention_layers` calls "local". Hugging Face masks a local layer's
    keys with `tril(causal, -window_size)` taken out of the causal mask, so query i keeps
    keys j with i - window_size < j <= i: the `window_size` latest keys up to itself, what
    `Architecture.attention_windows` means. A window no shorter than the context is no
    window, as for the other classes."""
    window = int(hf_config.window_size)
    windows = tuple(window if kind == "local" and window < n_ctx else None
                    for kind in hf_config.attention_layers)
    return dict(attn_scale=1.0,
                attention_windows=windows if any(w is not None for w in windows) else None)


def phi_differences(hf_config: Any) -> list[str]:
    """What a Phi config sets that the forward pass does not compute: `qk_layernorm`,
    `nn.LayerNorm`s (weight and bias) on each head's queries and keys, where
    `Architecture.qk_norm` has weight-only norms."""
    if getattr(hf_config, "qk_layernorm", False):
        return ["qk_layernorm=True (per-head LayerNorms with biases on queries and keys)"]
    return []


def bloom_differences(hf_config: Any) -> list[str]:
    """What a BLOOM config sets that the forward pass does not compute:
    `apply_residual_connection_post_layernorm`, whose blocks add the attention's and the
    MLP's outputs to their normalised inputs (post-LayerNorm residuals)."""
    if getattr(hf_config, "apply_residual_connection_post_layernorm", False):
        return ["apply_residual_connection_post_layernorm=True (post-LayerNorm residuals)"]
    return []


def alibi_slopes(n_heads: int) -> tuple[float, ...]:
    """ALiBi's slope of each head, as Hugging Face's BLOOM computes them
    (`_get_alibi_slopes`, in float32): for a power of 2, `b^1 .. b^n` with `b = 2^(-8/n)`;
    otherwise those of the largest power of 2 below, then the odd powers of the next
    power of 2's base for the remaining heads."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != n_heads:
        extra = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        remaining = min(closest, n_heads - closest)
        odd = torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra, odd)])
    return tuple(slopes.tolist())


def post_norm_fields(hf_config: Any) -> dict[str, Any]:
    """Gemma 2's and 3's `Architecture` fields: norms after attention and MLP, scores
    scaled by `query_pre_attn_scalar ** -0.5` and soft-capped, logits soft-capped (Gemma 2;
    Gemma 3's configs have no caps)."""
    def cap(value: Any) -> float | None:
        return float(value) if value else None

    return dict(
        post_norms=True,
        attn_scale=math.sqrt(float(hf_config.query_pre_attn_scalar)),
        attn_softcap=cap(getattr(hf_config, "attn_logit_softcapping", None)),
        logit_softcap=cap(getattr(hf_config, "final_logit_softcapping", None)),
    )


def attention_windows(hf_config: Any, n_layers: int, n_ctx: int) -> tuple[int | None, ...] | None:
    """Each layer's sliding attention window (`Architecture.attention_windows`), as the
    config gives it: `sliding_window` on the layers `layer_types` calls
    "sliding_attention" (Gemma 2's every other one; Qwen2's from `max_window_layers` on,
    where `use_sliding_window`), on every layer where it has no `layer_types` (Mistral);
    None for a window as long as the context, and None when no layer has one."""
    window = getattr(hf_config, "sliding_window", None)
    if window is None or getattr(hf_config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(hf_config, "layer_types", None) or ["sliding_attention"] * n_layers
    windows = tuple(
        int(window) if kind == "sliding_attention" and int(window) < n_ctx else None
        for kind in layer_types
    )
    return windows if any(w is not None for w in windows) else None
