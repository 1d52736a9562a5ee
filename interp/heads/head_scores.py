"""`HeadScores`: the attention-pattern scores of every head, and the names they go by.

The result of `interp.heads.patterns` (computed by `interp.heads.pattern_sums`): one
`[layer, head]` tensor per score in `SCORE_NAMES`, the offset profile, and how they were
computed; `to_frame()` gives one row per head, `save` / `load` a run's artifacts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from interp.runs import Run

MASS_SCORES: tuple[str, ...] = (
    "previous_token",
    "next_token",
    "duplicate_token",
    "induction",
    "first_token",
    "special_token",
)
"""Scores that are the attention mass a query puts on its target keys."""

DETECTOR_SCORES: tuple[str, ...] = ("tl_previous_token", "tl_duplicate_token", "tl_induction")
"""TransformerLens `detect_head` scores, by its formula."""

SCORE_NAMES: tuple[str, ...] = (
    *MASS_SCORES,
    "entropy",
    "confidence",
    "positional_prev",
    "positional_next",
    *DETECTOR_SCORES,
)
"""Every score in `HeadScores.values`, in column order."""

DEFAULT_OFFSETS: tuple[int, ...] = tuple(range(-8, 9))
"""Relative offsets (key - query) of the default offset profile."""
PROFILE_KEY = "offset_profile"
"""Key of the offset profile among the saved tensors (and among the accumulated sums)."""
_SCORE_PREFIX = "score."


@dataclass(frozen=True)
class HeadScores:
    """Attention-pattern scores of every head.

    Attributes:
        values: Score name -> `Float[Tensor, "layer head"]` (names in `SCORE_NAMES`; NaN
            where no query had a valid target).
        offsets: Relative offsets (key - query) of the profile's last axis.
        offset_profile: `Float[Tensor, "layer head offset"]`, mean attention at each offset.
        settings: How the scores were computed (causal, special token ids, detector options,
            number of sequences), saved with them.
    """

    values: dict[str, Tensor]
    offsets: tuple[int, ...]
    offset_profile: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("HeadScores: values is empty")
        shapes = {tuple(v.shape) for v in self.values.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"HeadScores: every score must be [layer, head]; got {shapes}")
        expected = (*next(iter(shapes)), len(self.offsets))
        if tuple(self.offset_profile.shape) != expected:
            raise ValueError(
                f"HeadScores: offset_profile is {tuple(self.offset_profile.shape)}, "
                f"expected {expected} (layer, head, offset)"
            )

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.values.values())).shape[0])

    @property
    def n_heads(self) -> int:
        return int(next(iter(self.values.values())).shape[1])

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.values:
            raise KeyError(f"no score {name!r}; have {sorted(self.values)}")
        return self.values[name]

    def to_frame(self, *, profile: bool = False) -> pd.DataFrame:
        """One row per head: columns `layer`, `head`, one column per score; with `profile`,
        also `offset_{d:+d}` columns holding the offset profile."""
        layers, heads = torch.meshgrid(
            torch.arange(self.n_layers), torch.arange(self.n_heads), indexing="ij"
        )
        columns: dict[str, Any] = {
            "layer": layers.reshape(-1).tolist(),
            "head": heads.reshape(-1).tolist(),
        }
        ordered = [n for n in SCORE_NAMES if n in self.values]
        ordered += [n for n in self.values if n not in ordered]
        for name in ordered:
            columns[name] = self.values[name].detach().cpu().double().reshape(-1).tolist()
        if profile:
            flat = self.offset_profile.detach().cpu().double().reshape(-1, len(self.offsets))
            for j, offset in enumerate(self.offsets):
                columns[f"offset_{offset:+d}"] = flat[:, j].tolist()
        return pd.DataFrame(columns)

    def save(self, run: Run | str | os.PathLike[str], name: str = "head_scores") -> None:
        """Write `artifacts/<name>.safetensors` (tensors) and `artifacts/<name>.json`."""
        run = Run.open(run)
        tensors = {_SCORE_PREFIX + key: value for key, value in self.values.items()}
        tensors[PROFILE_KEY] = self.offset_profile
        run.save_tensors(name, tensors)
        run.save_json(
            name,
            {"scores": list(self.values), "offsets": list(self.offsets), "settings": self.settings},
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "head_scores") -> HeadScores:
        """The scores written by `save(run, name)`."""
        run = Run.open(run)
        meta = run.load_json(name)
        tensors = run.load_tensors(name)
        return cls(
            values={key: tensors[_SCORE_PREFIX + key] for key in meta["scores"]},
            offsets=tuple(int(d) for d in meta["offsets"]),
            offset_profile=tensors[PROFILE_KEY],
            settings=dict(meta.get("settings", {})),
        )
