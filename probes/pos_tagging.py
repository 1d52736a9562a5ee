"""Part-of-speech tags for probing studies, offline.

The tagger is the greedy averaged perceptron of Honnibal (2013, "A good part-of-speech
tagger in about 200 lines of Python"), trained by its author on the Wall Street Journal
(Penn Treebank tags). Its trained weights ship inside the PyPI package `textblob-aptagger`
(`pip install 'interp-toolkit[text]'`); that package's own code no longer imports under
current TextBlob, so this module reads the weights file itself (a pickle of plain dicts and
sets, loaded by an unpickler that refuses anything else) and predicts with its own code.

For probes, the 45 Penn Treebank tags are folded into the twelve universal tags of Petrov,
Das & McDonald (2012, "A Universal Part-of-Speech Tagset"): `UNIVERSAL_TAGS`.

Words are split the Penn Treebank way where it matters to the tagger: punctuation marks are
words of their own, and clitics are split off (`don't` -> `do n't`, `it's` -> `it 's`).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PTB_TO_UNIVERSAL",
    "UNIVERSAL_TAGS",
    "PerceptronTagger",
    "TaggedWord",
    "default_tagger",
    "split_words",
    "tag_text",
]

UNIVERSAL_TAGS: tuple[str, ...] = (
    "NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "NUM", "CONJ", "PRT", ".", "X",
)
"""The universal tagset of Petrov et al. (2012); a tag's index here is its class id."""

PTB_TO_UNIVERSAL: dict[str, str] = {
    **dict.fromkeys(["NN", "NNS", "NNP", "NNPS"], "NOUN"),
    **dict.fromkeys(["VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "MD"], "VERB"),
    **dict.fromkeys(["JJ", "JJR", "JJS"], "ADJ"),
    **dict.fromkeys(["RB", "RBR", "RBS", "WRB"], "ADV"),
    **dict.fromkeys(["PRP", "PRP$", "WP", "WP$"], "PRON"),
    **dict.fromkeys(["DT", "PDT", "WDT", "EX"], "DET"),
    "IN": "ADP",
    "CD": "NUM",
    "CC": "CONJ",
    **dict.fromkeys(["RP", "TO", "POS"], "PRT"),
    **dict.fromkeys(
        ["#", "$", "''", "``", ",", ".", ":", "-LRB-", "-RRB-", "(", ")", "!", "?"], "."
    ),
    **dict.fromkeys(["FW", "LS", "SYM", "UH"], "X"),
}
"""Penn Treebank tag -> universal tag (Petrov et al. 2012, the `en-ptb` mapping)."""

_PACKAGE = "textblob_aptagger"
_WEIGHTS_FILE = "trontagger-0.1.0.pickle"
_START = ("-START-", "-START2-")
_END = ("-END-", "-END2-")

# A word (letters, digits, inner hyphens or dots), the part of a word before "n't", a
# clitic, or any other single non-space character (punctuation).
_WORD = re.compile(
    r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.]\w+)*|\S", re.IGNORECASE
)


@dataclass(frozen=True)
class TaggedWord:
    """One word of a text: its characters `text[start:end]`, its Penn Treebank tag and its
    universal tag."""

    word: str
    start: int
    end: int
    tag: str

    @property
    def universal(self) -> str:
        return PTB_TO_UNIVERSAL.get(self.tag, "X")


class _PlainDataUnpickler(pickle.Unpickler):
    """Loads dicts, lists, strings, numbers and sets; refuses every other global."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in {("__builtin__", "set"), ("builtins", "set")}:
            return set
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the tagger weights")


class PerceptronTagger:
    """A greedy averaged-perceptron tagger (Honnibal 2013) from its trained weights.

    Args:
        weights: feature -> {tag: weight}.
        tagdict: Words that had one tag in training (case-sensitive) -> that tag.
        classes: The tags.
    """

    def __init__(
        self,
        weights: dict[str, dict[str, float]],
        tagdict: dict[str, str],
        classes: Iterable[str],
    ):
        self.weights = weights
        self.tagdict = tagdict
        self.classes = tuple(sorted(classes))
        if not self.classes:
            raise ValueError("a tagger needs at least one tag")

    @classmethod
    def load(cls, path: str | Path | None = None) -> PerceptronTagger:
        """The weights at `path`, by default those shipped in `textblob-aptagger`."""
        path = Path(path) if path is not None else _shipped_weights()
        with open(path, "rb") as handle:
            loaded = _PlainDataUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
        if not (isinstance(loaded, tuple) and len(loaded) == 3):
            raise ValueError(f"{path} does not hold (weights, tagdict, classes)")
        weights, tagdict, classes = loaded
        return cls(weights, tagdict, classes)

    def tag(self, words: Sequence[str]) -> list[str]:
        """Penn Treebank tags of one sentence's words, left to right."""
        context = [*_START, *(_normalise(word) for word in words), *_END]
        tags: list[str] = []
        prev, prev2 = _START
        for i, word in enumerate(words):
            tag = self.tagdict.get(word)
            if tag is None:
                tag = self._predict(self._features(i + len(_START), word, context, prev, prev2))
            tags.append(tag)
            prev2, prev = prev, tag
        return tags

    def _predict(self, features: list[str]) -> str:
        scores = dict.fromkeys(self.classes, 0.0)
        for feature in features:
            for tag, weight in self.weights.get(feature, {}).items():
                scores[tag] = scores.get(tag, 0.0) + weight
        return max(scores, key=lambda tag: (scores[tag], tag))

    @staticmethod
    def _features(i: int, word: str, context: list[str], prev: str, prev2: str) -> list[str]:
        """The feature names the weights were trained with, for word `context[i]`."""
        return [
            "bias",
            f"i suffix {word[-3:]}",
            f"i pref1 {word[:1]}",
            f"i-1 tag {prev}",
            f"i-2 tag {prev2}",
            f"i tag+i-2 tag {prev} {prev2}",
            f"i word {context[i]}",
            f"i-1 tag+i word {prev} {context[i]}",
            f"i-1 word {context[i - 1]}",
            f"i-1 suffix {context[i - 1][-3:]}",
            f"i-2 word {context[i - 2]}",
            f"i+1 word {context[i + 1]}",
            f"i+1 suffix {context[i + 1][-3:]}",
            f"i+2 word {context[i + 2]}",
        ]


def _normalise(word: str) -> str:
    """The word as the features see it: hyphenated words, years and numbers as classes."""
    if "-" in word and not word.startswith("-"):
        return "!HYPHEN"
    if word.isdigit() and len(word) == 4:
        return "!YEAR"
    if word[:1].isdigit():
        return "!DIGITS"
    return word.lower()


def _shipped_weights() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "part-of-speech tags need the trained tagger in the package textblob-aptagger: "
            "pip install 'interp-toolkit[text]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"textblob-aptagger is installed but has no {path.name}")
    return path


@functools.cache
def default_tagger() -> PerceptronTagger:
    """The shipped tagger, loaded once per process."""
    return PerceptronTagger.load()


def split_words(text: str) -> list[tuple[str, int, int]]:
    """`(word, start, end)` of each word of `text`, split as the tagger expects (see the
    module docstring); a double quote becomes the treebank's opening or closing quote."""
    words = []
    quotes = 0
    for match in _WORD.finditer(text):
        word = match.group()
        if word == '"':
            word = "``" if quotes % 2 == 0 else "''"
            quotes += 1
        words.append((word, match.start(), match.end()))
    return words


def tag_text(text: str, tagger: PerceptronTagger | None = None) -> list[TaggedWord]:
    """The words of one sentence with their tags (by default the shipped tagger's)."""
    tagger = tagger or default_tagger()
    words = split_words(text)
    tags = tagger.tag([word for word, _, _ in words])
    return [TaggedWord(word, start, end, tag)
            for (word, start, end), tag in zip(words, tags, strict=True)]
