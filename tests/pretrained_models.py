"""Pretrained-format models written here, with no download: a randomly initialised GPT-2
(Hugging Face `GPT2LMHeadModel`) and GPT-NeoX (`GPTNeoXForCausalLM`, Pythia's class)
saved to local folders, which `interp.models.load` boots as the hub's gpt2 or
pythia-70m would be, and the native model with a GPT-2's weights (a reference built by
construction: same arithmetic, TransformerLens's native hooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from interp import functional, models

GPT2_SHAPE: dict[str, Any] = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=20, n_positions=8)
"""The shape of the tests' GPT-2: the vocabulary and context of the circuits tests' batch."""


def write_gpt2(folder: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save a random GPT-2 to `folder` (weights drawn with std 0.2 rather than GPT-2's
    0.02, so that patches move the metric well above float rounding)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = {**GPT2_SHAPE, **overrides}
    config = GPT2Config(**shape, initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def write_neox(folder: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save a random GPT-NeoX of `GPT2_SHAPE`'s size to `folder`: parallel attention and
    MLP, rotary embeddings on a quarter of each head's 8 dimensions (as in Pythia), weights
    drawn with std 0.2."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    shape = dict(
        vocab_size=GPT2_SHAPE["vocab_size"], hidden_size=GPT2_SHAPE["n_embd"],
        num_hidden_layers=GPT2_SHAPE["n_layer"], num_attention_heads=GPT2_SHAPE["n_head"],
        intermediate_size=4 * GPT2_SHAPE["n_embd"],
        max_position_embeddings=GPT2_SHAPE["n_positions"],
    )
    config = GPTNeoXConfig(
        **{**shape, **overrides}, rotary_pct=0.25, initializer_range=0.2, bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    return folder


def native_twin(model: TransformerBridge) -> TransformerBridge:
    """The native model computing what the pretrained `model` does, with its weights."""
    arch = functional.architecture_of(model)
    spec = dict(
        n_layers=arch.n_layers,
        d_model=arch.d_model,
        n_heads=arch.n_heads,
        d_head=arch.d_head,
        d_mlp=arch.d_mlp,
        d_vocab=arch.d_vocab,
        d_vocab_out=arch.d_vocab_out,
        n_ctx=arch.n_ctx,
        act_fn=arch.act_fn,
        normalization=arch.normalization,
        attn_only=arch.d_mlp is None,
    )
    twin = models.build(spec, device="cpu")
    functional.load_params(twin, functional.params_of(model))
    return twin.eval()
