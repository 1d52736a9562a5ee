"""Which models `interp.functional` computes exactly, native or pretrained, and their
`Architecture`: the one gate of every engine built on the pure forward pass (incremental
activation patching, edge patching and so EAP, EAP-IG and ACDC).

`architecture_of(model)` resolves a native model's spec (`interp.param_layout.architecture`)
or reads a pretrained bridge's TransformerLens config into the same `Architecture`, after
checking that nothing in it lies outside what the forward pass computes and that the
bridge's weights (`live_params`, where GPT-2's `Conv1D` weights are seen transposed) have
exactly the layout `arch_param_shapes` gives. Anything else raises one line naming what
does not fit; the hook-based paths (`engine="hooks"` patching, path patching, caching)
still run on every bridge.

Pretrained architectures covered:

- GPT-2 (`GPT2LMHeadModel`: gpt2, gpt2-medium, -large, -xl, distilgpt2 and any
  checkpoint of that class): pre-LayerNorm blocks of causal attention and a GELU MLP with
  learned absolute positions, the model of Wang et al. 2022's IOI circuit;
- GPT-NeoX (`GPTNeoXForCausalLM`: the Pythia suite of Biderman et al. 2023, with its
  training checkpoints): rotary embeddings on part of each head (`rotary_pct`) in the
  rotate-half layout, attention and MLP in parallel on the block's input (so no
  `resid_mid`); a `rope_type` other than "default" is refused.

Tests check the logits and activations against the bridge's own forward pass and the
patching against TransformerLens's `get_act_patch_*` on random models of both classes
written to local folders. Others (Llama: RMSNorm, gated MLP, grouped keys; OPT: offset
positions; BERT: post-LayerNorm) are refused with their reasons.
"""

from __future__ import annotations

import math
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from interp.models import spec_of
from interp.param_layout import (
    Architecture,
    arch_param_shapes,
    architecture,
    check_layout,
    live_params,
    unsupported_features,
)

COVERED_PRETRAINED: tuple[str, ...] = ("GPT2LMHeadModel", "GPTNeoXForCausalLM")
"""Hugging Face model classes whose bridges `architecture_of` reads."""

_ROTARY = {"GPTNeoXForCausalLM"}
"""Covered classes with rotary position embeddings (GPT-NeoX's rotate-half layout)."""

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "silu": "silu",
                "gelu_pytorch_tanh": "gelu_new"}
"""Activation names of a TransformerLens config -> the forward pass's (same function)."""


def architecture_of(model: TransformerBridge) -> Architecture:
    """The `Architecture` of a native model or of a covered pretrained bridge.

    Raises:
        ValueError: one line naming why the forward pass does not cover `model`.
    """
    if not isinstance(model, TransformerBridge):
        raise ValueError(f"model must be a TransformerBridge, got {type(model).__name__}")
    if getattr(model, "_weights_processed", False):
        raise ValueError(
            "interp.functional reads a bridge's own weights, and TransformerLens has "
            "processed this one's (process_weights / enable_compatibility_mode: LayerNorm "
            "folded, weights centred); boot a fresh one"
        )
    spec = spec_of(model)
    if spec is not None:
        return architecture(spec)
    cfg = model.cfg
    original = getattr(model, "original_model", None)
    name = str(getattr(cfg, "architecture", None) or type(original).__name__)
    if name not in COVERED_PRETRAINED:
        raise ValueError(
            f"interp.functional covers native models and {', '.join(COVERED_PRETRAINED)}; "
            f"this model is a {name}"
        )
    hf_config = getattr(original, "config", None)
    rotary = name in _ROTARY
    reasons = [r for r in unsupported_features(cfg) if not (rotary and r == "rope_scaling")]
    reasons += _pretrained_differences(cfg, rotary) + _hf_config_differences(hf_config)
    rotary_dim, rotary_base, rope_reason = _rotary_of(hf_config, int(cfg.d_head), rotary)
    reasons += [rope_reason] if rope_reason else []
    if reasons:
        raise ValueError(f"interp.functional does not support this {name}: {', '.join(reasons)}")
    arch = Architecture(
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
        d_mlp=None if cfg.attn_only else int(cfg.d_mlp),
        d_vocab=int(cfg.d_vocab),
        d_vocab_out=int(cfg.d_vocab_out),
        n_ctx=int(cfg.n_ctx),
        act_fn=_ACTIVATIONS[str(cfg.act_fn)],
        normalization=cfg.normalization_type,
        rotary=rotary,
        rotary_dim=rotary_dim,
        rotary_base=rotary_base,
        eps=float(cfg.eps),
        attn_scale=(
            float(cfg.attn_scale) if (cfg.attn_scale or 0) > 0 else math.sqrt(int(cfg.d_head))
        ),
        causal=True,
        parallel_attn_mlp=bool(cfg.parallel_attn_mlp),
        rotary_adjacent_pairs=False,
    )
    try:
        check_layout(live_params(model), arch_param_shapes(arch), leading=0, what="its weights")
    except ValueError as error:
        raise ValueError(f"interp.functional cannot read this {name}: {error}") from None
    return arch


def covers(model: TransformerBridge) -> bool:
    """Whether `architecture_of(model)` succeeds."""
    try:
        architecture_of(model)
    except ValueError:
        return False
    return True


def _pretrained_differences(cfg: Any, rotary: bool) -> list[str]:
    """Settings of a pretrained model's TransformerLens config that the forward pass does
    not compute (`rotary`: the class is one of `_ROTARY`)."""
    differs = {
        f"positional_embedding_type={cfg.positional_embedding_type!r}":
            cfg.positional_embedding_type != ("rotary" if rotary else "standard"),
        f"attention_dir={cfg.attention_dir!r}": cfg.attention_dir != "causal",
        "post_embedding_ln": bool(cfg.post_embedding_ln),
        "use_normalization_before_and_after": bool(cfg.use_normalization_before_and_after),
        "use_local_attn": bool(cfg.use_local_attn),
        "use_qk_norm": bool(cfg.use_qk_norm),
        "scale_attn_by_inverse_layer_idx": bool(cfg.scale_attn_by_inverse_layer_idx),
        "scale_embedding": bool(cfg.scale_embedding),
        "rmsnorm_uses_offset": bool(cfg.rmsnorm_uses_offset),
        f"normalization_type={cfg.normalization_type!r}":
            cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre", None),
        f"act_fn={cfg.act_fn!r}": str(cfg.act_fn) not in _ACTIVATIONS,
        "use_attn_scale=False": not cfg.use_attn_scale,
        "mixture of experts": bool(cfg.num_experts),
    }
    return [name for name, present in differs.items() if present]


def _rotary_of(hf_config: Any, d_head: int, rotary: bool) -> tuple[int, float, str | None]:
    """Rotary width and base of a GPT-NeoX config (`rope_parameters` in transformers 5,
    `rotary_pct` / `rotary_emb_base` before), and the reason it is refused, if any."""
    if not rotary:
        return d_head, 10000.0, None
    rope = dict(getattr(hf_config, "rope_parameters", None) or {})
    kind = rope.get("rope_type", "default")
    if kind != "default":
        return d_head, 10000.0, f"rope_type={kind!r}"
    factor = rope.get("partial_rotary_factor", getattr(hf_config, "rotary_pct", 1.0))
    base = rope.get("rope_theta", getattr(hf_config, "rotary_emb_base", 10000.0))
    rotary_dim = int(d_head * float(factor))
    if rotary_dim < 2 or rotary_dim % 2:
        return d_head, 10000.0, f"rotary width {rotary_dim} (not a positive even number)"
    return rotary_dim, float(base), None


def _hf_config_differences(hf_config: Any) -> list[str]:
    """GPT-2 options of the Hugging Face config that TransformerLens's config leaves out."""
    if hf_config is None:
        return []
    differs = {
        "scale_attn_weights=False": not getattr(hf_config, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": bool(
            getattr(hf_config, "scale_attn_by_inverse_layer_idx", False)
        ),
        "add_cross_attention": bool(getattr(hf_config, "add_cross_attention", False)),
    }
    return [name for name, present in differs.items() if present]
