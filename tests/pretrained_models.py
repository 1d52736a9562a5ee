"""The tests' pretrained-format models, with no download: randomly initialised GPT-2,
GPT-NeoX (Pythia's class) and Llama-family models of one small shape
(`interp.random_models`), saved to local folders, which `interp.models.load` boots as the
hub's gpt2, pythia-70m or Qwen2.5-0.5B would be; and the native model with a GPT-2's
weights (a reference built by construction: same arithmetic, TransformerLens's native
hooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from interp import functional, models, random_models

SHAPE: dict[str, int] = dict(n_layers=2, n_heads=4, d_model=32, d_vocab=20, n_ctx=8)
"""The shape of the tests' pretrained models: the vocabulary and context of the circuits
tests' batch."""

STD = 0.2
"""Weights are drawn with std 0.2 rather than the classes' 0.02, so that patches move the
metric well above float rounding, and every parameter (norms and biases too, which the
classes make constant) gets noise of that std, so that no weight is read in the wrong place
unseen."""

NOISY = dict(initializer_range=STD, jitter=STD)


def write_gpt2(folder: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save a random GPT-2 of `SHAPE` to `folder`."""
    return random_models.write_model(folder, "gpt2", **SHAPE, seed=seed, **NOISY, **overrides)


def write_neox(folder: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save a random GPT-NeoX of `SHAPE` to `folder`: parallel attention and MLP, rotary
    embeddings on a quarter of each head's 8 dimensions (as in Pythia)."""
    return random_models.write_model(folder, "neox", **SHAPE, seed=seed, **NOISY, **overrides)


def write_llama(folder: Path, kind: str = "llama", *, seed: int = 0, **overrides: Any) -> Path:
    """Save a random Llama-family model of `SHAPE` to `folder`: 4 query heads sharing 2
    key and value heads, a gated MLP of width 64; Qwen2 adds q, k and v biases."""
    return random_models.write_model(folder, kind, **SHAPE, seed=seed, **NOISY, **overrides)


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
