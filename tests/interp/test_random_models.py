"""Tests for interp.random_models: the random Hugging Face-format models boot offline as
pretrained bridges of the shape asked for (their forward passes are checked against
`interp.functional` in tests/interp/test_pretrained_layout.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interp import models
from interp.pretrained_layout import COVERED_PRETRAINED, architecture_of
from interp.random_models import FAMILIES, word_tokenizer, write_model

SHAPE = dict(n_layers=1, n_heads=4, d_model=32, d_vocab=12, n_ctx=6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_boots_with_the_shape_asked_for(tmp_path: Path, family: str) -> None:
    model = models.load(write_model(tmp_path, family, **SHAPE), device="cpu")
    assert type(model.original_model).__name__ == FAMILIES[family]
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab) == (1, 4, 32, 12)
    if FAMILIES[family] not in COVERED_PRETRAINED:
        with pytest.raises(ValueError, match=f"this model is a {FAMILIES[family]}"):
            architecture_of(model)
        return
    arch = architecture_of(model)
    assert (arch.n_layers, arch.n_heads, arch.d_model, arch.d_vocab, arch.n_ctx) == (1, 4, 32,
                                                                                      12, 6)
    assert arch.kv_heads == (
        4 if family in ("gpt2", "neox", "gptj", "opt", "gpt_neo", "phi", "bloom") else 2
    )


def test_key_heads_and_seed_are_honoured(tmp_path: Path) -> None:
    def written(name: str, seed: int):
        folder = write_model(tmp_path / name, "llama", n_kv_heads=1, seed=seed, **SHAPE)
        return models.load(folder, device="cpu")

    one, again, other = written("a", 3), written("b", 3), written("c", 4)
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
    with pytest.raises(ValueError, match=r"family must be one of \['bloom', 'gemma', 'gemma2', .*"
                                         r"'qwen3'\], got 'bert'"):
        write_model(tmp_path, "bert", **SHAPE)


def test_jitter_moves_the_constant_norms_and_biases(tmp_path: Path) -> None:
    plain = models.load(write_model(tmp_path / "plain", "qwen2", **SHAPE), device="cpu")
    noisy = models.load(write_model(tmp_path / "noisy", "qwen2", jitter=0.1, **SHAPE),
                        device="cpu")
    for name in ("blocks.0.ln1.weight", "blocks.0.attn.q.bias"):  # made 1 and 0 by the class
        constant = plain.state_dict()[name]
        assert bool((constant == constant[0]).all())
        moved = noisy.state_dict()[name] - constant
        assert 0.05 < float(moved.std()) < 0.2


def test_gpt_neo_alternates_global_and_local_layers(tmp_path: Path) -> None:
    """From a global layer on, as the checkpoints; local layers see 3 / 8 of the context
    by default (the checkpoints' 256 of 2,048 would be no window in a short test model)."""
    model = models.load(write_model(tmp_path, "gpt_neo", **dict(SHAPE, n_layers=3, n_ctx=8)),
                        device="cpu")
    assert model.original_model.config.attention_layers == ["global", "local", "global"]
    assert architecture_of(model).attention_windows == (None, 3, None)
