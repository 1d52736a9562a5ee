"""The studies' labels, checked on prompts whose answers are known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from interp.tasks import Induction, ModularArithmetic
from probes.data import IGNORE
from probes.studies import (
    induction_study,
    modular_study,
    occurrence_labels,
    token_properties_study,
)

I = IGNORE  # noqa: E741


def test_occurrence_labels_by_hand() -> None:
    tokens = torch.tensor([[9, 1, 2, 1, 3, 2, 1]])
    seen, following = occurrence_labels(tokens, first_position=1)
    assert seen.tolist() == [[I, 0, 0, 1, 0, 1, 1]]
    # 1 at pos 3: its earlier 1 (pos 1) was followed by 2; 2 at pos 5: followed by 1 (pos 3);
    # 1 at pos 6: its most recent earlier 1 (pos 3) was followed by 3
    assert following.tolist() == [[I, I, I, 2, I, 1, 3]]


def test_induction_study_agrees_with_the_task_targets() -> None:
    task = Induction(d_vocab=20, half_len=6, max_gap=3, n_examples=16, seed=2)
    batch = task.batch()
    study = induction_study(batch.clean, first_position=1)
    following = study.target("next_after_previous").labels
    seen = study.target("occurred_before").labels
    repeated = batch.targets != IGNORE
    # at each repeated token the token after its previous occurrence is the task's answer
    assert torch.equal(following[repeated], batch.targets[repeated])
    assert bool((seen[repeated] == 1).all())
    assert bool((seen[:, 0] == IGNORE).all()) and study.token_level
    with pytest.raises(ValueError, match="unknown probe target 'nope'"):
        study.target("nope")


def test_modular_study_targets() -> None:
    task = ModularArithmetic(p=7, frac_train=0.5)
    batch = task.batch()
    study = modular_study(batch.clean, 7, [2, 3])
    assert [t.name for t in study.targets] == [
        "a", "b", "sum", "fourier_2", "fourier_3", "fourier_key"
    ]
    assert torch.equal(study.target("sum").labels, batch.answer)
    row = 3 * 7 + 5  # a = 3, b = 5, a + b = 1 mod 7
    assert study.target("fourier_2").labels[row].tolist() == pytest.approx(
        [math.cos(2 * math.pi * 2 / 7), math.sin(2 * math.pi * 2 / 7)], abs=1e-6
    )
    assert study.target("fourier_key").labels.shape == (49, 4)
    assert bool((study.position == 3).all())
    with pytest.raises(ValueError, match="key frequency 4"):
        modular_study(batch.clean, 7, [4])


def test_token_properties_read_from_the_text(minilm_path: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    study = token_properties_study(tokenizer, ["The Kettle whistled, unbelievably loud.", "Go!"])
    # [CLS] the kettle whistled , un ##bel ##ie ##va ##bly loud . [SEP]
    first = {t.name: t.labels[0].tolist() for t in study.targets}
    assert first["word_initial"] == [I, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, I]
    assert first["capitalised"] == [I, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, I]
    assert first["punctuation"] == [I, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, I]
    assert first["position"] == [I, *range(1, 12), I]
    assert study.attention_mask[1].tolist() == [1, 1, 1, 1] + [0] * 9
    assert study.target("word_initial").types is not None
    with pytest.raises(ValueError, match="tokenizer"):
        token_properties_study(None, ["x"])


def test_part_of_speech_is_read_at_each_word_s_first_subword(minilm_path: str) -> None:
    from transformers import AutoTokenizer

    from probes.pos_tagging import UNIVERSAL_TAGS

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    study = token_properties_study(tokenizer, ["A very tall giraffe whistled."])
    # [CLS] a very tall gi ##raf ##fe whistled . [SEP]
    tag = {name: UNIVERSAL_TAGS.index(name) for name in UNIVERSAL_TAGS}
    assert study.target("pos").labels[0].tolist() == [
        I, tag["DET"], tag["ADV"], tag["ADJ"], tag["NOUN"], I, I, tag["VERB"], tag["."], I
    ]
    assert study.target("pos").kind == "logistic"
    without = token_properties_study(tokenizer, ["The old man sang."], pos=False)
    assert [t.name for t in without.targets] == [
        "word_initial", "capitalised", "punctuation", "position"
    ]


def test_punctuation_after_a_capitalised_word_is_not_capitalised(minilm_path: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    study = token_properties_study(tokenizer, ["Hello, Paris is big."], pos=False)
    # [CLS] hello , paris is big . [SEP]: the comma is a word of its own, not part of "Hello"
    assert study.target("capitalised").labels[0].tolist() == [I, 1, 0, 1, 0, 0, 0, I]
    assert study.target("punctuation").labels[0].tolist() == [I, 0, 1, 0, 0, 0, 1, I]


def _byte_level_bpe(trim_offsets: bool):
    """A GPT-2-style byte-level BPE tokenizer trained here (no download): a word after a
    space is one token that includes the space (`ĠParis`); with `trim_offsets=False`, as in
    GPT-2's own tokenizer.json, the token's offsets include the space too."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["Hello, Paris is big.", "The cat sat on the mat.", "Paris is big, hello."]
    bpe.train_from_iterator(corpus * 20, trainer)
    bpe.post_processor = tokenizers.processors.ByteLevel(trim_offsets=trim_offsets)
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


def test_offsets_that_include_the_leading_space_give_the_same_labels() -> None:
    from probes.pos_tagging import UNIVERSAL_TAGS

    sentence = "Hello, Paris is big."
    untrimmed, trimmed = _byte_level_bpe(False), _byte_level_bpe(True)
    encoded = untrimmed([sentence], return_offsets_mapping=True)
    assert untrimmed.convert_ids_to_tokens(encoded["input_ids"][0]) == [
        "Hello", ",", "ĠParis", "Ġis", "Ġbig", "."
    ]
    assert encoded["offset_mapping"][0][2] == (6, 12)  # " Paris": the space is included
    study = token_properties_study(untrimmed, [sentence])
    labels = {t.name: t.labels[0].tolist() for t in study.targets}
    assert labels["word_initial"] == [1, 1, 1, 1, 1, 1]
    assert labels["capitalised"] == [1, 0, 1, 0, 0, 0]
    assert labels["punctuation"] == [0, 1, 0, 0, 0, 1]
    # every token starts a word, so every token has a tag: the tags of trimmed offsets
    assert I not in labels["pos"]
    assert labels["pos"][1] == labels["pos"][5] == UNIVERSAL_TAGS.index(".")
    reference = token_properties_study(trimmed, [sentence])
    for target in reference.targets:
        assert study.target(target.name).labels.tolist() == target.labels.tolist(), target.name
