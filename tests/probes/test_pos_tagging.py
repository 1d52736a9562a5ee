"""The offline part-of-speech tagger against sentences tagged by hand (Penn Treebank
conventions), its word splitting, and its refusals."""

from __future__ import annotations

import pickle

import pytest

from probes import pos_tagging
from probes.pos_tagging import (
    PTB_TO_UNIVERSAL,
    UNIVERSAL_TAGS,
    PerceptronTagger,
    default_tagger,
    split_words,
    tag_text,
)

# Tagged by hand, Penn Treebank conventions (relative "that" is WDT, "tomorrow" NN).
GOLD = [
    "The/DT old/JJ man/NN gave/VBD his/PRP$ daughter/NN a/DT red/JJ bicycle/NN for/IN "
    "her/PRP$ birthday/NN ./.",
    "Birds/NNS sing/VBP loudly/RB in/IN the/DT early/JJ morning/NN ./.",
    "We/PRP will/MD visit/VB three/CD museums/NNS and/CC a/DT small/JJ castle/NN "
    "tomorrow/NN ./.",
    "Did/VBD they/PRP really/RB finish/VB the/DT difficult/JJ exam/NN before/IN noon/NN ?/.",
    "My/PRP$ brother/NN quickly/RB painted/VBD the/DT fence/NN while/IN I/PRP watched/VBD ./.",
    "This/DT is/VBZ the/DT house/NN that/WDT Jack/NNP built/VBD in/IN 1985/CD ./.",
    "Nobody/NN knew/VBD why/WRB the/DT train/NN stopped/VBD suddenly/RB between/IN two/CD "
    "stations/NNS ./.",
    "She/PRP has/VBZ been/VBN reading/VBG an/DT interesting/JJ book/NN about/IN ancient/JJ "
    "Rome/NNP ./.",
    "Children/NNS often/RB ask/VBP questions/NNS that/WDT adults/NNS can/MD not/RB "
    "answer/VB ./.",
    "The/DT company/NN sold/VBD more/JJR cars/NNS this/DT year/NN than/IN ever/RB before/RB ./.",
]


def _gold() -> list[tuple[list[str], list[str]]]:
    pairs = [[token.rsplit("/", 1) for token in line.split()] for line in GOLD]
    return [([w for w, _ in pair], [t for _, t in pair]) for pair in pairs]


def test_tags_agree_with_hand_tagged_sentences() -> None:
    tagger = default_tagger()
    words_total = same_ptb = same_universal = 0
    for words, gold in _gold():
        tags = tagger.tag(words)
        words_total += len(words)
        same_ptb += sum(a == b for a, b in zip(tags, gold, strict=True))
        same_universal += sum(
            PTB_TO_UNIVERSAL[a] == PTB_TO_UNIVERSAL[b] for a, b in zip(tags, gold, strict=True)
        )
    # a greedy WSJ tagger on short everyday sentences: a few errors (e.g. "sing" read as a
    # gerund from its suffix), most of them inside one universal class
    assert same_ptb / words_total >= 0.9
    assert same_universal / words_total >= 0.95
    words, gold = _gold()[0]
    assert tagger.tag(words) == gold


def test_text_is_split_the_treebank_way_with_character_spans() -> None:
    text = 'He said "it\'s fine," but can\'t stay in well-known Paris until 3.5 pm.'
    words = split_words(text)
    assert [w for w, _, _ in words] == [
        "He", "said", "``", "it", "'s", "fine", ",", "''", "but", "ca", "n't", "stay", "in",
        "well-known", "Paris", "until", "3.5", "pm", ".",
    ]
    for word, start, end in words:
        if word not in ("``", "''"):
            assert text[start:end] == word
    tagged = tag_text(text)
    assert [(w.word, w.tag) for w in tagged if w.word in ("ca", "n't", "'s")] == [
        ("'s", "VBZ"), ("ca", "MD"), ("n't", "RB")
    ]
    assert {w.universal for w in tagged} <= set(UNIVERSAL_TAGS)


def test_every_tag_of_the_shipped_tagger_has_a_universal_class() -> None:
    tagger = default_tagger()
    assert len(tagger.classes) == 45
    assert set(tagger.classes) <= set(PTB_TO_UNIVERSAL)
    assert set(PTB_TO_UNIVERSAL.values()) == set(UNIVERSAL_TAGS)


def test_weights_holding_anything_but_plain_data_are_refused(tmp_path) -> None:
    path = tmp_path / "weights.pickle"
    path.write_bytes(pickle.dumps(({"bias": {"NN": 1.0}}, {}, {"NN"}, print)))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        PerceptronTagger.load(path)
    path.write_bytes(pickle.dumps(({"bias": {"NN": 1.0}}, {}, {"NN"})))
    assert PerceptronTagger.load(path).tag(["anything"]) == ["NN"]
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="weights, tagdict, classes"):
        PerceptronTagger.load(path)


def test_a_missing_tagger_package_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setattr(pos_tagging.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"interp-toolkit\[text\]"):
        PerceptronTagger.load()
