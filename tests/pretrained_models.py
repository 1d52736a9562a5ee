"""Pretrained-format models written here, with no download: a randomly initialised GPT-2
(Hugging Face `GPT2LMHeadModel`) saved to a local folder, which `interp.models.load` boots
as the hub's gpt2 would be, and the native model with the same weights (a reference built
by construction: same arithmetic, TransformerLens's native hooks)."""

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
