"""Randomly initialised models in Hugging Face's format, written to a local folder with no
download: GPT-2 (`GPT2LMHeadModel`), GPT-NeoX (`GPTNeoXForCausalLM`, Pythia's class),
the Llama family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`,
`Qwen3ForCausalLM`), Gemma 1, 2 and 3, Phi-3, GPT-J, OPT, GPT-Neo (`GPTNeoForCausalLM`,
TinyStories' class), Phi (`PhiForCausalLM`, phi-1 .. phi-2's class) and BLOOM, each of a
shape you choose.
`interp.models.load(folder)` boots them as it would the hub's gpt2, pythia-70m or
Qwen2.5-0.5B, so tests, benchmarks and a first try of an analysis need no network. The
Llama-shaped families' and BLOOM's bridges load a tokenizer from the folder: a word-level
one over the vocabulary (`t0`, `t1`, ...) is written beside the weights. Each class initialises
its norms to 1 and its biases to 0; `jitter` adds noise to every parameter, so that a test
sees a norm weight or a bias read in the wrong place.

    from interp import models
    from interp.random_models import write_model

    model = models.load(write_model("tiny-llama", "llama", n_layers=2, n_heads=4,
                                    d_model=32, d_vocab=20, n_ctx=8))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FAMILIES: dict[str, str] = {
    "gpt2": "GPT2LMHeadModel",
    "neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gptj": "GPTJForCausalLM",
    "opt": "OPTForCausalLM",
    "gpt_neo": "GPTNeoForCausalLM",
    "phi": "PhiForCausalLM",
    "bloom": "BloomForCausalLM",
}
"""The families `write_model` writes -> their transformers model class (every one of them
in `interp.pretrained_layout.COVERED_PRETRAINED`)."""

_LLAMA_SHAPED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"}
"""Families whose configs take Llama's field names."""

_OWN_HEAD_WIDTH = {"qwen3", "gemma", "gemma2", "gemma3"}
"""Families whose configs would otherwise take a head width of 128 or 256."""


def write_model(
    folder: str | Path,
    family: str,
    *,
    n_layers: int,
    n_heads: int,
    d_model: int,
    d_vocab: int,
    n_ctx: int,
    n_kv_heads: int | None = None,
    seed: int = 0,
    initializer_range: float = 0.02,
    jitter: float = 0.0,
    **config: Any,
) -> Path:
    """A random model of `family` (see `FAMILIES`) saved to `folder`, which is returned.

    - "gpt2": d_mlp = 4 d_model, GELU, learned positions;
    - "neox": as in Pythia: rotary embeddings on a quarter of each head, attention and MLP
      in parallel, d_mlp = 4 d_model;
    - "llama", "mistral", "qwen2", "qwen3": RMSNorm, a gated SiLU MLP of width 2 d_model, rotary
      embeddings, `n_kv_heads` key and value heads shared by the query heads (default
      n_heads / 2: grouped-query attention), untied embeddings, a word-level tokenizer
      beside the weights; Qwen2 has q, k and v biases, Qwen3 per-head query and key norms;
    - "gemma": the same blocks with GELU (tanh) gates, norms scaled by 1 + weight,
      embeddings by sqrt(d_model), and the unembedding tied to the embedding;
    - "gemma2", "gemma3": Gemma's blocks with norms after attention and MLP too (and
      soft-capped attention and logits in Gemma 2, per-head query and key norms in Gemma 3);
      "phi3": Llama's blocks with fused projections; "gptj": parallel attention and MLP,
      rotary embeddings on a quarter of each head; "opt": learned positions offset by 2,
      ReLU MLP of width 4 d_model; "gpt_neo": GPT-2's blocks with unscaled attention
      scores, no q/k/v biases, layers alternating global and local (from a global one),
      the local ones seeing the `window_size` latest keys (default 3 / 8 of the context,
      at least 1, so that the window matters on short prompts; the checkpoints' 256 of
      2,048); "phi": GPT-J's parallel blocks behind one shared LayerNorm with rotary
      embeddings on half of each head in the rotate-half layout (phi-1's and phi-1_5's
      `partial_rotary_factor`), biases everywhere, a GELU MLP of width 4 d_model and an
      untied unembedding with a bias; "bloom": ALiBi, a LayerNorm on the embeddings, GELU MLP
      of width 4 d_model (its config's `seq_length` is `n_ctx`, the context its bridge
      reports: ALiBi itself has no table that bounds it).

    `seed` draws the weights (std `initializer_range`), then noise of std `jitter` is
    added to every parameter; `config`: other fields of the class's config
    (`sliding_window`, `rope_scaling`, ...)."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    shape = dict(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_vocab=d_vocab,
                 n_ctx=n_ctx)
    if family in _LLAMA_SHAPED:
        settings = _llama_settings(**shape, n_kv_heads=n_kv_heads or max(1, n_heads // 2))
        if family in _OWN_HEAD_WIDTH:
            settings["head_dim"] = d_model // n_heads
        if family.startswith("gemma"):  # as its checkpoints: the unembedding is the embedding
            settings["tie_word_embeddings"] = True
    else:
        settings = _OTHER_SETTINGS[family](**shape)
    model_class = getattr(transformers, FAMILIES[family])
    hf_config = model_class.config_class(
        **{**settings, "initializer_range": initializer_range, "bos_token_id": 0,
           "eos_token_id": 0, **config}
    )
    torch.manual_seed(seed)
    model = model_class(hf_config)
    if jitter:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * jitter)
    folder = Path(folder)
    model.save_pretrained(folder)
    if family in _LLAMA_SHAPED or family == "bloom":  # bridges that load a tokenizer there
        word_tokenizer(d_vocab).save_pretrained(folder)
    return folder


def _gpt2_settings(n_layers: int, n_heads: int, d_model: int, d_vocab: int,
                   n_ctx: int) -> dict[str, Any]:
    return dict(n_layer=n_layers, n_head=n_heads, n_embd=d_model, vocab_size=d_vocab,
                n_positions=n_ctx)


def _neox_settings(n_layers: int, n_heads: int, d_model: int, d_vocab: int,
                   n_ctx: int) -> dict[str, Any]:
    return dict(vocab_size=d_vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, intermediate_size=4 * d_model,
                max_position_embeddings=n_ctx, rotary_pct=0.25)


def _gptj_settings(n_layers: int, n_heads: int, d_model: int, d_vocab: int,
                   n_ctx: int) -> dict[str, Any]:
    return dict(vocab_size=d_vocab, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                n_positions=n_ctx, rotary_dim=max(2, d_model // n_heads // 4))


def _opt_settings(n_layers: int, n_heads: int, d_model: int, d_vocab: int,
                  n_ctx: int) -> dict[str, Any]:
    return dict(vocab_size=d_vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, ffn_dim=4 * d_model, max_position_embeddings=n_ctx,
                word_embed_proj_dim=d_model, pad_token_id=1)


def _bloom_settings(n_layers: int, n_heads: int, d_model: int, d_vocab: int,
                    n_ctx: int) -> dict[str, Any]:
    return dict(vocab_size=d_vocab, hidden_size=d_model, n_layer=n_layers, n_head=n_heads,
                pad_token_id=0, seq_length=n_ctx)  # (read by TransformerLens as n_ctx)


def _gpt_neo_settings(n_layers: int, n_heads: int, d_model: int, d_vocab: int,
                      n_ctx: int) -> dict[str, Any]:
    kinds = [[["global", "local"], n_layers // 2]] + ([[["global"], 1]] if n_layers % 2 else [])
    return dict(vocab_size=d_vocab, hidden_size=d_model, num_layers=n_layers,
                num_heads=n_heads, max_position_embeddings=n_ctx, attention_types=kinds,
                window_size=max(1, 3 * n_ctx // 8))


def _phi_settings(n_layers: int, n_heads: int, d_model: int, d_vocab: int,
                  n_ctx: int) -> dict[str, Any]:
    return dict(vocab_size=d_vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, intermediate_size=4 * d_model,
                max_position_embeddings=n_ctx, partial_rotary_factor=0.5,
                tie_word_embeddings=False)


_OTHER_SETTINGS = {"gpt2": _gpt2_settings, "neox": _neox_settings, "gptj": _gptj_settings,
                   "opt": _opt_settings, "gpt_neo": _gpt_neo_settings, "phi": _phi_settings,
                   "bloom": _bloom_settings}


def _llama_settings(n_layers: int, n_heads: int, d_model: int, d_vocab: int, n_ctx: int,
                    n_kv_heads: int) -> dict[str, Any]:
    return dict(vocab_size=d_vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                intermediate_size=2 * d_model, max_position_embeddings=n_ctx, pad_token_id=0,
                tie_word_embeddings=False)


def word_tokenizer(vocab_size: int) -> Any:
    """A fast tokenizer whose words are `t0 .. t{vocab_size - 1}` (ids 0.., whitespace
    between words), built with no download. `t0` is every special token (BOS, EOS,
    padding, unknown words): special tokens are matched inside words, and `t0` is the one
    word no other word contains."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=words, bos_token="t0", eos_token="t0", unk_token="t0", pad_token="t0"
    )
