"""The labelled examples of the three probing studies: what to probe for, on which tokens.

A study turns a model (and its task) into prompts and probe targets; `probes.experiment`
collects the activations once and fits every target's probes on them.

- `modular_study`: the grokking model on `[a, +, b, =]` (Nanda et al. 2023, "Progress measures
  for grokking via mechanistic interpretability"): at the `=` position, `a`, `b`,
  `(a + b) mod p` (classes) and, for each key frequency k, `cos / sin(2 pi k (a + b) / p)`
  (regression). The paper shows the model computes these Fourier features of `a + b`
  before reading the answer off them.
- `induction_study`: a model trained on repeated random tokens (Olsson et al. 2022, "In-context
  learning and induction heads"): at every token, "has this token occurred earlier in the
  context" and "the token that followed its previous occurrence", the two facts an
  induction circuit needs.
- `token_properties_study`: a pretrained BERT-style model on English sentences: each word's
  part of speech (the universal tags of Petrov et al. 2012, from the offline tagger of
  `probes.pos_tagging`), read at its first subword, and properties read from the text
  itself, per token: word-initial subword, capitalised word, punctuation, and the token's
  position.

Token-level targets carry the token ids as `types`, the word types of Hewitt & Liang's
(2019) control tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from probes.data import IGNORE
from probes.pos_tagging import (
    UNIVERSAL_TAGS,
    PerceptronTagger,
    TaggedWord,
    default_tagger,
    tag_text,
)

__all__ = [
    "ProbeTarget",
    "StudyData",
    "induction_study",
    "modular_study",
    "occurrence_labels",
    "token_properties_study",
]


@dataclass(frozen=True)
class ProbeTarget:
    """One property to probe for.

    Attributes:
        name: Its name in tables and summaries.
        labels: Sequence level: `[n]` class ids or `[n, k]` real targets. Token level:
            `[n, pos]` integer class ids or values (ridge targets are read as floats),
            `IGNORE` where a token has no label.
        kind: `"logistic"` (class labels, scored by accuracy) or `"ridge"` (real targets,
            scored by R^2).
        types: Token level: `[n, pos]` the type of each token (its id) for control tasks;
            None where a control task makes no sense.
    """

    name: str
    labels: Tensor
    kind: str
    types: Tensor | None = None


@dataclass(frozen=True)
class StudyData:
    """The prompts of a study and its targets.

    Attributes:
        tokens: `[n, pos]` prompt token ids.
        targets: The properties to probe for.
        position: Sequence-level studies: `[n]` the position each example is read at;
            None for token-level studies (every labelled token is a row).
        attention_mask: `[n, pos]` 1 for real tokens, 0 for padding, or None.
    """

    tokens: Int[Tensor, "n pos"]
    targets: tuple[ProbeTarget, ...]
    position: Int[Tensor, " n"] | None = None
    attention_mask: Int[Tensor, "n pos"] | None = None

    @property
    def token_level(self) -> bool:
        return self.position is None

    def target(self, name: str) -> ProbeTarget:
        for target in self.targets:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.targets)
        raise ValueError(f"unknown probe target {name!r}; this study has: {known}")


def fourier_target_name(frequency: int) -> str:
    return f"fourier_{frequency}"


def modular_study(
    tokens: Int[Tensor, "n 4"], p: int, key_frequencies: Sequence[int]
) -> StudyData:
    """Probes at the `=` position (3) of `[a, +, b, =]` prompts: `a`, `b`, `sum` =
    `(a + b) mod p`, one `fourier_<k>` target `[cos, sin](2 pi k (a + b) / p)` per key
    frequency k, and `fourier_key` with all of them side by side `[n, 2 |K|]`."""
    if tokens.ndim != 2 or tokens.shape[1] != 4:
        shape = tuple(tokens.shape)
        raise ValueError(f"modular prompts must be [n, 4] = [a, op, b, =], got {shape}")
    a, b = tokens[:, 0], tokens[:, 2]
    total = (a + b) % p
    targets = [
        ProbeTarget("a", a, "logistic"),
        ProbeTarget("b", b, "logistic"),
        ProbeTarget("sum", total, "logistic"),
    ]
    waves = []
    for k in key_frequencies:
        if not 1 <= int(k) <= (p - 1) // 2:
            raise ValueError(f"key frequency {k} is not in 1..{(p - 1) // 2} for p = {p}")
        angle = 2 * math.pi * int(k) * total.double() / p
        wave = torch.stack([angle.cos(), angle.sin()], dim=1).float()
        waves.append(wave)
        targets.append(ProbeTarget(fourier_target_name(int(k)), wave, "ridge"))
    if waves:
        targets.append(ProbeTarget("fourier_key", torch.cat(waves, dim=1), "ridge"))
    position = torch.full((tokens.shape[0],), 3, dtype=torch.long)
    return StudyData(tokens=tokens, targets=tuple(targets), position=position)


def occurrence_labels(
    tokens: Int[Tensor, "n pos"], first_position: int = 0
) -> tuple[Int[Tensor, "n pos"], Int[Tensor, "n pos"]]:
    """For each token: 1 if the same id occurred earlier in its row (from `first_position`
    on), else 0; and the id that followed its most recent earlier occurrence (`IGNORE`
    where there is none). Positions before `first_position` (e.g. BOS) are `IGNORE` in both.
    """
    n, n_pos = tokens.shape
    seen = torch.full((n, n_pos), IGNORE, dtype=torch.long)
    following = torch.full((n, n_pos), IGNORE, dtype=torch.long)
    for row in range(n):
        last_seen: dict[int, int] = {}
        ids = tokens[row].tolist()
        for pos in range(first_position, n_pos):
            token = ids[pos]
            earlier = last_seen.get(token)
            seen[row, pos] = int(earlier is not None)
            if earlier is not None:
                following[row, pos] = ids[earlier + 1]
            last_seen[token] = pos
    return seen, following


def induction_study(tokens: Int[Tensor, "n pos"], first_position: int = 1) -> StudyData:
    """Token-level probes on induction prompts: `occurred_before` (0/1) and
    `next_after_previous` (the id after the token's previous occurrence; only tokens that
    occurred before). Position 0 (BOS) is skipped by default."""
    seen, following = occurrence_labels(tokens, first_position)
    types = tokens.clone()
    return StudyData(
        tokens=tokens,
        targets=(
            ProbeTarget("occurred_before", seen, "logistic", types),
            ProbeTarget("next_after_previous", following, "logistic", types),
        ),
    )


_PUNCTUATION = set(".,;:!?'\"()-")


def token_properties_study(
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    pos: bool = True,
    tagger: PerceptronTagger | None = None,
) -> StudyData:
    """Token-level properties of English text under a WordPiece/BPE tokenizer with offsets:
    `pos` (the universal part-of-speech tag of the word, `UNIVERSAL_TAGS` index, at the
    subword where the word starts; other subwords unlabelled), `word_initial` (the token
    starts a word), `capitalised` (its word starts with a capital letter in the original
    text), `punctuation` (it is a punctuation mark) and `position` (its index in the
    sentence, as regression). Special tokens, padding and tokens that are only whitespace are
    unlabelled. A token's span in the text starts after any whitespace it includes (byte-level
    BPE tokenizers such as GPT-2's give `" Paris"` the offsets of the space too).

    Args:
        tokenizer: A Hugging Face fast tokenizer (it must return offsets).
        sentences: One sentence per example.
        pos: Tag parts of speech (needs `pip install 'interp-toolkit[text]'`).
        tagger: The tagger; by default the shipped one (`probes.pos_tagging`).
    """
    if tokenizer is None:
        raise ValueError("the token-properties study needs a model with a tokenizer")
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences must be a non-empty list of strings")
    encoded = tokenizer(list(sentences), return_offsets_mapping=True)
    spans = [_strip_leading_space(text, offsets)
             for text, offsets in zip(sentences, encoded["offset_mapping"], strict=True)]
    rows = [_token_properties(text, offsets)
            for text, offsets in zip(sentences, spans, strict=True)]
    if pos:
        tagger = tagger or default_tagger()
        for text, offsets, props in zip(sentences, spans, rows, strict=True):
            props["pos"] = _word_tags(tag_text(text, tagger), offsets)
    longest = max(len(ids) for ids in encoded["input_ids"])
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    n = len(sentences)
    tokens = torch.full((n, longest), int(pad), dtype=torch.long)
    mask = torch.zeros((n, longest), dtype=torch.long)
    names = (("pos",) if pos else ()) + _PROPERTIES
    labels = {name: torch.full((n, longest), IGNORE, dtype=torch.long) for name in names}
    for i, (ids, props) in enumerate(zip(encoded["input_ids"], rows, strict=True)):
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        for name in names:
            labels[name][i, : len(ids)] = torch.tensor(props[name])
    position = labels.pop("position")
    targets = [ProbeTarget(name, values, "logistic", tokens) for name, values in labels.items()]
    targets.append(ProbeTarget("position", position, "ridge"))
    return StudyData(tokens=tokens, targets=tuple(targets), attention_mask=mask)


_PROPERTIES = ("word_initial", "capitalised", "punctuation", "position")


def _word_tags(words: Sequence[TaggedWord], offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Per token: the universal tag id of the word starting where the token starts, else
    `IGNORE` (later subwords, special tokens, and words no token starts at)."""
    tag_at = {word.start: UNIVERSAL_TAGS.index(word.universal) for word in words}
    return [tag_at.get(start, IGNORE) if start != end else IGNORE for start, end in offsets]


def _strip_leading_space(
    text: str, offsets: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Each token's `(start, end)` in `text` with the whitespace it starts with left out (a
    token that is only whitespace becomes empty, `start == end`, as special tokens are)."""
    spans = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        spans.append((start, end))
    return spans


def _word_start(text: str, start: int) -> int:
    """Where the word holding the character at `start` begins: back to the last whitespace or
    punctuation mark before it. A punctuation mark is a word of its own."""
    if text[start] in _PUNCTUATION:
        return start
    while start > 0 and not text[start - 1].isspace() and text[start - 1] not in _PUNCTUATION:
        start -= 1
    return start


def _token_properties(text: str, offsets: Sequence[tuple[int, int]]) -> dict[str, list[int]]:
    """Per token of one sentence: the `_PROPERTIES`, `IGNORE` for special tokens and tokens
    with an empty span. `offsets`: each token's span without its leading whitespace."""
    props: dict[str, list[int]] = {name: [] for name in _PROPERTIES}
    previous_end = -1
    for index, (start, end) in enumerate(offsets):
        if start == end:  # a special token ([CLS], [SEP], ...) or only whitespace
            for name in _PROPERTIES:
                props[name].append(IGNORE)
            continue
        word_initial = start != previous_end or text[start] in _PUNCTUATION
        props["word_initial"].append(int(word_initial))
        props["capitalised"].append(int(text[_word_start(text, start)].isupper()))
        props["punctuation"].append(int(all(c in _PUNCTUATION for c in text[start:end])))
        props["position"].append(index)
        previous_end = end
    return props
