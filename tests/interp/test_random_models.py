"""Tests for interp.random_models: the random Hugging Face-format models boot offline as
pretrained bridges of the shape asked for (their forward passes are checked against
`interp.functional` in tests/interp/test_pretrained_layout.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interp import models
from interp.pretrained_layout import architecture_of
from interp.random_models import word_tokenizer, write_gpt2, write_llama, write_neox

SHAPE = dict(n_layers=1, n_heads=4, d_model=32, d_vocab=12, n_ctx=6)


@pytest.mark.parametrize(
    ("write", "kind", "expected"),
    [
        (write_gpt2, None, "GPT2LMHeadModel"),
        (write_neox, None, "GPTNeoXForCausalLM"),
        (write_llama, "llama", "LlamaForCausalLM"),
        (write_llama, "mistral", "MistralForCausalLM"),
        (write_llama, "qwen2", "Qwen2ForCausalLM"),
    ],
)
def test_each_family_boots_with_the_shape_asked_for(tmp_path: Path, write, kind, expected) -> None:
    folder = write(tmp_path, kind, **SHAPE) if kind else write(tmp_path, **SHAPE)
    model = models.load(folder, device="cpu")
    assert type(model.original_model).__name__ == expected
    arch = architecture_of(model)
    assert (arch.n_layers, arch.n_heads, arch.d_model, arch.d_vocab, arch.n_ctx) == (1, 4, 32,
                                                                                      12, 6)
    assert arch.kv_heads == (2 if kind else 4)


def test_key_heads_and_seed_are_honoured(tmp_path: Path) -> None:
    one = models.load(write_llama(tmp_path / "a", n_kv_heads=1, seed=3, **SHAPE), device="cpu")
    again = models.load(write_llama(tmp_path / "b", n_kv_heads=1, seed=3, **SHAPE), device="cpu")
    other = models.load(write_llama(tmp_path / "c", n_kv_heads=1, seed=4, **SHAPE), device="cpu")
    assert architecture_of(one).kv_heads == 1
    weight = "blocks.0.attn.q.weight"
    assert (one.state_dict()[weight] == again.state_dict()[weight]).all()
    assert not (one.state_dict()[weight] == other.state_dict()[weight]).all()


def test_word_tokenizer_maps_words_to_their_ids() -> None:
    tokenizer = word_tokenizer(12)
    assert tokenizer("t3 t11 t0 t10", add_special_tokens=False)["input_ids"] == [3, 11, 0, 10]
    assert tokenizer("t12 what", add_special_tokens=False)["input_ids"] == [0, 0]  # unknown
    assert tokenizer.decode([4, 5]) == "t4 t5"


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"kind must be one of \['llama', 'mistral', 'qwen2'\], "
                                         "got 'gemma'"):
        write_llama(tmp_path, "gemma", **SHAPE)
