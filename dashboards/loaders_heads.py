"""Cached reads of what a `heads` run saved (see `interp.heads.experiment`), as DataFrames
and numpy arrays: never torch, never a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from safetensors.numpy import load_file

from dashboards.loaders import CACHE_TTL_S
from interp.runs import Run, RunStore

NOT_SCORES = ("layer", "head", "n_roles", "group")
"""Numeric columns of the role table that are not per-head scores."""


@dataclass(frozen=True)
class ExamplePatterns:
    """Every head's attention pattern on a few probe sequences.

    Attributes:
        patterns: `[example, layer, head, query, key]`.
        token_strings: Per example, the strings of its real (unpadded) tokens.
    """

    patterns: np.ndarray
    token_strings: list[list[str]]

    def pattern(self, example: int, layer: int, head: int) -> tuple[np.ndarray, list[str]]:
        """The `[query, key]` pattern of one head on one example (padding cut off) and the
        example's token strings."""
        tokens = self.token_strings[example]
        n = len(tokens)
        return self.patterns[example, layer, head, :n, :n], tokens


@dataclass(frozen=True)
class HeadsRunData:
    """What the Heads page draws of one run.

    Attributes:
        ref: "experiment/run_id".
        summary: summary.json.
        roles: The `head_roles` table: one row per head, roles, group and every score.
        examples: Example attention patterns, or None (a run made before they were saved).
    """

    ref: str
    summary: dict[str, Any]
    roles: pd.DataFrame
    examples: ExamplePatterns | None = field(default=None)

    @property
    def score_columns(self) -> list[str]:
        """The role table's numeric per-head score columns, in table order."""
        return [
            c for c in self.roles.columns
            if c not in NOT_SCORES
            and pd.api.types.is_numeric_dtype(self.roles[c])
            and not pd.api.types.is_bool_dtype(self.roles[c])
        ]

    @property
    def shape(self) -> tuple[int, int]:
        """(n_layers, n_heads)."""
        return int(self.roles["layer"].max()) + 1, int(self.roles["head"].max()) + 1


def _examples(run: Run) -> ExamplePatterns | None:
    path = run.artifacts_dir / "example_patterns.safetensors"
    if not path.exists():
        return None
    patterns = load_file(run.artifact_path("example_patterns.safetensors"))["patterns"]
    strings = run.load_json("example_patterns")["token_strings"]
    if patterns.ndim != 5 or patterns.shape[0] != len(strings):
        raise ValueError(
            f"example_patterns: {patterns.shape} patterns for {len(strings)} token lists"
        )
    return ExamplePatterns(patterns.astype(float), [[str(t) for t in s] for s in strings])


def read_heads_run(run: Run) -> HeadsRunData:
    """Everything the Heads page draws of a finished `heads` run."""
    roles = run.load_table("head_roles")
    missing = [c for c in ("layer", "head", "roles") if c not in roles.columns]
    if missing:
        raise ValueError(f"head_roles lacks column(s) {missing}")
    return HeadsRunData(ref=run.ref, summary=run.summary, roles=roles, examples=_examples(run))


@st.cache_data(ttl=CACHE_TTL_S, max_entries=8, show_spinner=False)
def heads_run(runs_dir: str, ref: str) -> HeadsRunData:
    """`read_heads_run` of run `ref` in the store at `runs_dir`, cached."""
    return read_heads_run(RunStore(runs_dir).load(ref))


def clear_caches() -> None:
    """Forget every cached read."""
    heads_run.clear()
