"""Fixtures of the `interp.activations` tests (test_activations*.py): a tiny native model,
a batch of tokens, and `run_with_cache`'s activations of `HOOKS` on it."""

from __future__ import annotations

import pytest
import torch
from activation_test_helpers import HOOKS, N_EXAMPLES, N_POS
from torch import Tensor
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge


@pytest.fixture(scope="module")
def model() -> TransformerBridge:
    cfg = TransformerBridgeConfig(
        d_model=32,
        d_head=8,
        n_heads=4,
        n_layers=2,
        n_ctx=16,
        d_vocab=50,
        d_vocab_out=50,
        d_mlp=64,
        act_fn="gelu",
        normalization_type="LN",
        attn_only=False,
        seed=0,
    )
    return TransformerBridge.boot_native(cfg)


@pytest.fixture(scope="module")
def tokens() -> Tensor:
    return torch.randint(0, 50, (N_EXAMPLES, N_POS), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(model: TransformerBridge, tokens: Tensor) -> dict[str, Tensor]:
    """`run_with_cache` on the full batch, in eval mode."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=HOOKS)
    model.train(was_training)
    return {name: cache[name].clone() for name in HOOKS}
