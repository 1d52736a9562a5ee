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
  `resid_mid`);
- GPT-J (`GPTJForCausalLM`: gpt-j-6b): attention and MLP in parallel behind one shared
  LayerNorm (`shared_norm`), rotary embeddings on the first `rotary_dim` dimensions of each
  head in adjacent pairs (2i, 2i + 1), no attention biases;
- Llama, Mistral, Qwen2 and Qwen3 (`LlamaForCausalLM`, `MistralForCausalLM`,
  `Qwen2ForCausalLM`, `Qwen3ForCausalLM`: Llama 2 and 3.x, TinyLlama, SmolLM, Mistral 7B
  v0.3, Qwen2, Qwen2.5 and Qwen3, ...): RMSNorm, a gated SiLU MLP, rotary embeddings in
  the rotate-half layout, grouped-query attention, no biases (Qwen2: on q, k and v), and
  in Qwen3 queries and keys RMS-normalised per head before the rotary embedding;
  sliding attention windows (Mistral 7B v0.1, Qwen2's `use_sliding_window`) as the config
  places them; Phi-3 (`Phi3ForCausalLM`: Phi-3 / 3.5 mini and medium, Phi-4-mini) is
  Llama's blocks too, its fused q/k/v and gate/up projections read through the bridge's
  split views (the same memory: writes go through), part of each head rotary where
  `partial_rotary_factor` says, and the 128k models' "longrope" refused;
- Gemma (`GemmaForCausalLM`: gemma-2b, gemma-7b and their instruction-tuned versions):
  Llama's blocks with GELU (tanh) gates, RMSNorms scaled by 1 + weight, embeddings scaled
  by sqrt(d_model) (`hook_embed` holds them scaled, as the bridge's does), the unembedding
  tied to the embedding;
- Gemma 2 (`Gemma2ForCausalLM`: gemma-2-2b, -9b, -27b, the models of Gemma Scope): Gemma's
  blocks with norms after attention and MLP as well (`hook_attn_out` and `hook_mlp_out`
  hold their outputs, as the bridge's do), scores scaled by `query_pre_attn_scalar ** -0.5`
  and soft-capped (`50 tanh(s / 50)`), logits soft-capped (`30 tanh(l / 30)`), and a
  sliding window on every other layer. Its heads no longer add up in the residual stream
  (the norm after attention mixes them), so the edge-level engines refuse it; activation
  patching covers it;
- Gemma 3 (`Gemma3ForCausalLM`: gemma-3-1b and other text stacks of that class): Gemma 2's
  blocks without soft caps, queries and keys normalised per head by 1 + weight (after
  hook_q / hook_k, before the rotary embedding), and local (sliding-window) layers whose
  rotary frequencies differ from the global layers' (`rotary_local_inv_freq`, read from
  the model's per-layer-type buffers); activation patching only, as Gemma 2;
- OPT (`OPTForCausalLM`: opt-125m, -1.3b, -2.7b, ... -66b): GPT-2's pre-LayerNorm blocks
  with a ReLU MLP, learned positions read from row 2 of their table on (`pos_offset`:
  OPT's `OPTLearnedPositionalEmbedding` keeps two rows in front), the unembedding tied to
  the embedding. OPT-350m (post-LayerNorm blocks, `do_layer_norm_before=False`, and an
  embedding narrower than the residual stream) is refused;
- GPT-Neo (`GPTNeoForCausalLM`: gpt-neo-125m, -1.3B, -2.7B and the TinyStories-1M .. 33M
  models): GPT-2's pre-LayerNorm blocks with learned positions and a GELU MLP, attention
  scores not scaled (`attn_scale` 1: no 1 / sqrt(d_head)), no biases on q, k and v (the
  output projection and the MLP have theirs), the unembedding tied to the embedding, and
  the layers `attention_layers` calls "local" masking keys `window_size` (256) or more
  positions back: query i sees keys i - window_size + 1 .. i, exactly the sliding windows
  of `attention_windows`;
- Phi (`PhiForCausalLM`: phi-1, phi-1_5, phi-2): GPT-J's parallel attention and MLP behind
  one shared LayerNorm (`shared_norm`), rotary embeddings on the first
  `partial_rotary_factor` of each head in GPT-NeoX's rotate-half layout, biases on q, k,
  v, the output projection and the GELU MLP, a final LayerNorm, and an unembedding with
  a bias of its own (not tied to the embedding). `qk_layernorm` (LayerNorms with biases
  on each head's queries and keys, which `qk_norm`'s weight-only norms cannot express) is
  refused;
- BLOOM (`BloomForCausalLM`: bloom-560m .. bloom-7b1, bloomz): pre-LayerNorm blocks with
  biases everywhere and a tanh-GELU MLP (`bloom_gelu_forward`, its own constant), a
  LayerNorm on the token embeddings (`embed_norm`: `embed_ln`, whose output `hook_embed`
  holds, as the bridge's does), no position embeddings but ALiBi (`alibi_slopes`: head h
  adds `slope_h * j` to its score of key j; the slopes of Hugging Face's
  `_get_alibi_slopes`, geometric, with its rule for head counts that are no power of 2),
  scores `q.k / sqrt(d_head)`, a final LayerNorm, the unembedding tied to the embedding.
  The bridge's `attn.q`, `attn.k` and `attn.v` are the fused `query_key_value` split per
  head (its rows are laid out `[head, 3, d_head]`), and its attention runs on them, so they
  are read as they are. `apply_residual_connection_post_layernorm` (the residual taken
  after the norm) is refused.

Rotary frequencies are read from the model's own rotary module, so scaled ones are exact
as the class computes them (Llama 3.1 and 3.2's "llama3", "linear", YaRN with its scaled
cos and sin); types whose frequencies change with the sequence length ("dynamic",
"longrope") are refused. Tests check the logits and activations against the bridge's own
forward pass and the patching against TransformerLens's `get_act_patch_*` on
random models of each class written to local folders. Other classes are refused by name
(what they add is not computed here: BERT's and OPT-350m's post-LayerNorm, ...).

This module is the entry point (`architecture_of`, `covers`); the readers of one family's
fields and refusals live in `interp.pretrained_families`, the rotary ones in
`interp.pretrained_rotary`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from interp.models import spec_of
from interp.param_layout import (
    Architecture,
    arch_param_shapes,
    architecture,
    architecture_from_cfg,
    check_layout,
    live_params,
    unsupported_features,
)
from interp.pretrained_families import (
    alibi_slopes,
    attention_windows,
    bloom_differences,
    gpt_neo_differences,
    gpt_neo_fields,
    opt_differences,
    phi_differences,
    position_offset,
    post_norm_fields,
)
from interp.pretrained_rotary import rotary_of

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

COVERED_PRETRAINED: tuple[str, ...] = (
    "GPT2LMHeadModel",
    "GPTNeoXForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "GPTJForCausalLM",
    "OPTForCausalLM",
    "GPTNeoForCausalLM",
    "PhiForCausalLM",
    "BloomForCausalLM",
)
"""Hugging Face model classes whose bridges `architecture_of` reads."""

_POST_NORMED = {"Gemma2ForCausalLM", "Gemma3ForCausalLM"}
"""Covered classes with norms after attention and MLP (Gemma 2 and 3)."""

_GEMMA = {"GemmaForCausalLM", *_POST_NORMED}
"""Covered classes whose norms scale by 1 + weight and whose embeddings by sqrt(d_model)."""

_LLAMA_LIKE = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
               "Phi3ForCausalLM", *_GEMMA}
"""Covered classes with Llama's blocks: RMSNorm, a gated MLP, grouped keys and values
(Qwen3: with per-head query and key norms; Gemma: norms scaled by 1 + weight, embeddings
by sqrt(d_model))."""

_ROTARY = {"GPTNeoXForCausalLM", "GPTJForCausalLM", "PhiForCausalLM"} | _LLAMA_LIKE
"""Covered classes with rotary position embeddings (in the rotate-half layout)."""

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new", "silu": "silu",
                "gelu_pytorch_tanh": "gelu_pytorch_tanh"}
"""Activation names of a TransformerLens config -> the forward pass's (same function; the
two tanh GELUs differ in rounding only, which half precision shows)."""


def architecture_of(model: TransformerBridge) -> Architecture:
    """The `Architecture` of a native model or of a covered pretrained bridge.

    Raises:
        ValueError: one line naming why the forward pass does not cover `model`.
    """
    from transformer_lens.model_bridge import TransformerBridge  # (slow to import)

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
    allowed = {"rope_scaling"} if rotary else set()  # the rope type is read from hf_config
    if name in _LLAMA_LIKE and cfg.normalization_type == "RMS":
        allowed |= {"gated_mlp", "final_rms", "n_key_value_heads (GQA)"}
    post_normed = name in _POST_NORMED
    if post_normed:  # soft caps read from hf_config below
        allowed |= {"attn_scores_soft_cap", "output_logits_soft_cap"}
    reasons = unsupported_features(cfg, allowed)
    gemma = name in _GEMMA
    bloom = name == "BloomForCausalLM"
    positions = "rotary" if rotary else "alibi" if bloom else "standard"
    reasons += _pretrained_differences(cfg, positions, gemma) + _hf_config_differences(hf_config)
    reasons += bloom_differences(hf_config) if bloom else []
    reasons += opt_differences(hf_config) if name == "OPTForCausalLM" else []
    reasons += gpt_neo_differences(hf_config) if name == "GPTNeoForCausalLM" else []
    reasons += phi_differences(hf_config) if name == "PhiForCausalLM" else []
    rope, rope_reason = rotary_of(original, hf_config, int(cfg.d_head), rotary)
    reasons += [rope_reason] if rope_reason else []
    if reasons:  # (a setting both configs carry is named once)
        named = ", ".join(dict.fromkeys(reasons))
        raise ValueError(f"interp.functional does not support this {name}: {named}")
    arch = architecture_from_cfg(
        cfg,
        act_fn="bloom_gelu" if bloom else _ACTIVATIONS[str(cfg.act_fn)],
        **rope,
        rotary_adjacent_pairs=name == "GPTJForCausalLM",  # GPT-J rotates pairs (2i, 2i+1)
        shared_norm=name in ("GPTJForCausalLM", "PhiForCausalLM"),  # one LayerNorm a block
        n_kv_heads=cfg.n_key_value_heads if cfg.n_key_value_heads != cfg.n_heads else None,
        gated_mlp=bool(cfg.gated_mlp),
        qk_norm=name in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"),
        **({"normalization": "RMS1P", "embed_scale": math.sqrt(int(cfg.d_model))} if gemma
           else {}),
        **(post_norm_fields(hf_config) if post_normed else {}),
        **(gpt_neo_fields(hf_config, int(cfg.n_ctx)) if name == "GPTNeoForCausalLM" else
           dict(attention_windows=attention_windows(hf_config, int(cfg.n_layers),
                                                    int(cfg.n_ctx)))),
        pos_offset=position_offset(original) if name == "OPTForCausalLM" else 0,
        **(dict(embed_norm=True, alibi_slopes=alibi_slopes(int(cfg.n_heads))) if bloom
           else {}),
        **_biases(name, hf_config),
    )
    try:
        check_layout(live_params(model), arch_param_shapes(arch), leading=0, what="its weights")
    except ValueError as error:
        raise ValueError(f"interp.functional cannot read this {name}: {error}") from None
    return arch


def _biases(name: str, hf_config: Any) -> dict[str, bool]:
    """Which projections of a covered class have biases, as its Hugging Face config says:
    all of GPT-2's and GPT-NeoX's; Llama's per `attention_bias` and `mlp_bias` (Qwen3's
    attention per `attention_bias`, its MLP none); Qwen2's queries, keys and values only;
    none of Mistral's."""
    if name in ("LlamaForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM", *_GEMMA):
        attention = bool(getattr(hf_config, "attention_bias", False))
        mlp = bool(getattr(hf_config, "mlp_bias", False))  # Qwen3's config has none
        return dict(qkv_bias=attention, out_bias=attention, mlp_bias=mlp)
    if name == "Qwen2ForCausalLM":
        return dict(qkv_bias=True, out_bias=False, mlp_bias=False)
    if name == "MistralForCausalLM":
        return dict(qkv_bias=False, out_bias=False, mlp_bias=False)
    if name == "GPTJForCausalLM":
        return dict(qkv_bias=False, out_bias=False, mlp_bias=True)
    if name == "OPTForCausalLM":
        bias = bool(getattr(hf_config, "enable_bias", True))
        return dict(qkv_bias=bias, out_bias=bias, mlp_bias=bias)
    if name == "GPTNeoForCausalLM":
        return dict(qkv_bias=False, out_bias=True, mlp_bias=True)
    if name in ("PhiForCausalLM", "BloomForCausalLM"):  # every nn.Linear with its bias
        return dict(qkv_bias=True, out_bias=True, mlp_bias=True)
    attention = bool(getattr(hf_config, "attention_bias", True))
    return dict(qkv_bias=attention, out_bias=attention, mlp_bias=True)


def covers(model: TransformerBridge) -> bool:
    """Whether `architecture_of(model)` succeeds."""
    try:
        architecture_of(model)
    except ValueError:
        return False
    return True


def _pretrained_differences(cfg: Any, positions: str, gemma: bool) -> list[str]:
    """Settings of a pretrained model's TransformerLens config that the forward pass does
    not compute (`positions`: the class's position embeddings, "rotary" for `_ROTARY`,
    "alibi" for BLOOM, else "standard"; `gemma`: a Gemma, whose norms' offset weights are
    computed)."""
    differs = {
        f"positional_embedding_type={cfg.positional_embedding_type!r}":
            cfg.positional_embedding_type != positions,
        f"attention_dir={cfg.attention_dir!r}": cfg.attention_dir != "causal",
        "post_embedding_ln": bool(cfg.post_embedding_ln),
        "use_normalization_before_and_after": bool(cfg.use_normalization_before_and_after),
        "use_local_attn": bool(cfg.use_local_attn),
        "use_qk_norm": bool(cfg.use_qk_norm),
        "scale_attn_by_inverse_layer_idx": bool(cfg.scale_attn_by_inverse_layer_idx),
        "scale_embedding": bool(cfg.scale_embedding),
        "rmsnorm_uses_offset": bool(cfg.rmsnorm_uses_offset) and not gemma,
        f"normalization_type={cfg.normalization_type!r}":
            cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre", None),
        f"act_fn={cfg.act_fn!r}": str(cfg.act_fn) not in _ACTIVATIONS,
        "use_attn_scale=False": not cfg.use_attn_scale,
        "mixture of experts": bool(cfg.num_experts),
    }
    return [name for name, present in differs.items() if present]


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
