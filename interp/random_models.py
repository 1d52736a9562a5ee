"""Randomly initialised models in Hugging Face's format, written to a local folder with no
download: GPT-2 (`GPT2LMHeadModel`), GPT-NeoX (`GPTNeoXForCausalLM`, Pythia's class) and
the Llama family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`), each of
a shape you choose. `interp.models.load(folder)` boots them as it would the hub's gpt2,
pythia-70m or Qwen2.5-0.5B, so tests, benchmarks and a first try of an analysis need no
network. The Llama family's bridges load a tokenizer from the folder: a word-level one over
the vocabulary (`t0`, `t1`, ...) is written beside the weights. Each class initialises
its norms to 1 and its biases to 0; `jitter` adds noise to every parameter, so that a test
sees a norm weight or a bias read in the wrong place.

    from interp import models
    from interp.random_models import write_llama

    model = models.load(write_llama("tiny-llama", n_layers=2, n_heads=4, d_model=32,
                                    d_vocab=20, n_ctx=8))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

LLAMA_FAMILY: dict[str, str] = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
"""The kinds `write_llama` writes -> their transformers class prefix."""


def write_gpt2(
    folder: str | Path,
    *,
    n_layers: int,
    n_heads: int,
    d_model: int,
    d_vocab: int,
    n_ctx: int,
    seed: int = 0,
    initializer_range: float = 0.02,
    jitter: float = 0.0,
    **config: Any,
) -> Path:
    """A random GPT-2 (d_mlp = 4 d_model, GELU, learned positions) saved to `folder`;
    `config`: other `GPT2Config` fields. Returns the folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    settings = dict(
        n_layer=n_layers, n_head=n_heads, n_embd=d_model, vocab_size=d_vocab, n_positions=n_ctx,
        initializer_range=initializer_range, bos_token_id=0, eos_token_id=0,
    )
    return _saved(GPT2LMHeadModel, GPT2Config(**{**settings, **config}), folder, seed, jitter)


def write_neox(
    folder: str | Path,
    *,
    n_layers: int,
    n_heads: int,
    d_model: int,
    d_vocab: int,
    n_ctx: int,
    seed: int = 0,
    initializer_range: float = 0.02,
    jitter: float = 0.0,
    **config: Any,
) -> Path:
    """A random GPT-NeoX as in Pythia (rotary embeddings on a quarter of each head,
    attention and MLP in parallel, d_mlp = 4 d_model) saved to `folder`; `config`: other
    `GPTNeoXConfig` fields."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    settings = dict(
        vocab_size=d_vocab, hidden_size=d_model, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, intermediate_size=4 * d_model, max_position_embeddings=n_ctx,
        rotary_pct=0.25, initializer_range=initializer_range, bos_token_id=0, eos_token_id=0,
    )
    return _saved(GPTNeoXForCausalLM, GPTNeoXConfig(**{**settings, **config}), folder, seed,
                  jitter)


def write_llama(
    folder: str | Path,
    kind: str = "llama",
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
    """A random Llama-family model (`kind`: "llama", "mistral" or "qwen2") saved to
    `folder` with a word-level tokenizer: RMSNorm, a gated SiLU MLP of width 2 d_model,
    rotary embeddings, `n_kv_heads` key and value heads shared by the query heads (default
    n_heads / 2: grouped-query attention), untied embeddings; Qwen2 has q, k and v biases.
    `config`: other fields of the class's config (`sliding_window`, `rope_scaling`, ...)."""
    import transformers

    if kind not in LLAMA_FAMILY:
        raise ValueError(f"kind must be one of {sorted(LLAMA_FAMILY)}, got {kind!r}")
    prefix = LLAMA_FAMILY[kind]
    settings = dict(
        vocab_size=d_vocab, hidden_size=d_model, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv_heads or max(1, n_heads // 2),
        intermediate_size=2 * d_model, max_position_embeddings=n_ctx,
        initializer_range=initializer_range, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        tie_word_embeddings=False,
    )
    hf_config = getattr(transformers, f"{prefix}Config")(**{**settings, **config})
    saved = _saved(getattr(transformers, f"{prefix}ForCausalLM"), hf_config, folder, seed,
                   jitter)
    word_tokenizer(d_vocab).save_pretrained(saved)
    return saved


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


def _saved(
    model_class: Any, hf_config: Any, folder: str | Path, seed: int, jitter: float
) -> Path:
    """`model_class(hf_config)` initialised under `seed`, with Gaussian noise of std
    `jitter` added to every parameter, saved to `folder`."""
    folder = Path(folder)
    torch.manual_seed(seed)
    model = model_class(hf_config)
    if jitter:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * jitter)
    model.save_pretrained(folder)
    return folder
