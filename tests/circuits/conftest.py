"""Fixtures shared by the patching and attribution tests: a tiny LayerNorm model and a
batch whose clean and corrupted prompts differ at positions 2 and 4 only; a batch for the
MiniLM package model (cat / dog)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from interp import models
from interp.tasks.base import TaskBatch


@pytest.fixture(scope="module")
def model() -> TransformerBridge:
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8, seed=0)
    return models.build(spec, device="cpu")


@pytest.fixture(scope="module")
def rotary() -> TransformerBridge:
    """The `model` fixture's shape with rotary position embeddings (Su et al. 2021)."""
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8, seed=5,
                positional_embedding="rotary")
    return models.build(spec, device="cpu")


@pytest.fixture(scope="module")
def batch() -> TaskBatch:
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 20, (3, 6), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 2] = (corrupted[:, 2] + 7) % 20
    corrupted[:, 4] = (corrupted[:, 4] + 3) % 20
    return TaskBatch(
        clean=clean,
        corrupted=corrupted,
        answer=torch.tensor([1, 2, 3]),
        wrong=torch.tensor([4, 5, 6]),
        position=torch.tensor([5, 5, 4]),
    )


@pytest.fixture(scope="module")
def minilm_batch(minilm) -> TaskBatch:
    tokenizer = minilm.tokenizer
    clean = tokenizer("the cat sat on the mat", return_tensors="pt")["input_ids"]
    corrupted = tokenizer("the dog sat on the mat", return_tensors="pt")["input_ids"]
    clean2 = tokenizer("a cat ran to the door", return_tensors="pt")["input_ids"]
    corrupted2 = tokenizer("a dog ran to the door", return_tensors="pt")["input_ids"]
    assert clean.shape == corrupted.shape == clean2.shape == corrupted2.shape
    cat, dog = tokenizer.convert_tokens_to_ids(["cat", "dog"])
    return TaskBatch(
        clean=torch.cat([clean, clean2]),
        corrupted=torch.cat([corrupted, corrupted2]),
        answer=torch.tensor([cat, cat]),
        wrong=torch.tensor([dog, dog]),
        position=torch.tensor([3, 3]),
    )
