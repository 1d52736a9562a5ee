"""Cached reads of the run store for the dashboard pages.

Every reader goes through `interp.runs` (never a training loop) and is cached with
`st.cache_data`, bounded in entries and kept only a few seconds, so new runs and new metric
lines show up on the next rerun. `clear_caches()` forgets everything (the Refresh button).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboards.figures.direct_effects import check_table
from interp.runs import RunStore
from interp.runs.errors import one_line

CACHE_TTL_S = 5
"""Seconds a cached read is reused before the store is read again."""

PAGE_LOADERS = (
    "dashboards.run_picker",
    "dashboards.loaders_grokking",
    "dashboards.loaders_patching",
    "dashboards.loaders_circuits",
    "dashboards.loaders_probes",
    "dashboards.loaders_heads",
    "dashboards.loaders_lens",
)
"""Modules with cached readers of their own; each has a `clear_caches()`."""


@st.cache_data(ttl=CACHE_TTL_S, max_entries=8, show_spinner=False)
def runs_table(runs_dir: str) -> pd.DataFrame:
    """`RunStore(runs_dir).table()`: one row per run, corrupt folders included."""
    return RunStore(runs_dir).table()


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def run_metrics(runs_dir: str, ref: str) -> pd.DataFrame:
    """The metrics.jsonl of run `ref` ("experiment/run_id") as a DataFrame."""
    return RunStore(runs_dir).load(ref).metrics()


@st.cache_data(ttl=CACHE_TTL_S, max_entries=16, show_spinner=False)
def compare_runs(runs_dir: str, refs: tuple[str, ...], only_differences: bool) -> pd.DataFrame:
    """`RunStore.compare(refs)`: configs and summaries side by side, one column per run."""
    return RunStore(runs_dir).compare(refs, only_differences=only_differences)


def read_table(folder: Path, name: str, columns: tuple[str, ...]) -> pd.DataFrame | None:
    """`<folder>/<name>.parquet`, else `<name>.csv` (as `Run.load_table` reads them), None
    when neither exists; a one-line ValueError when the one read is unreadable or lacks
    `columns` (or those of them that hold numbers do not: `check_table`). Not cached: the
    pages' cached readers call it."""
    for suffix, read in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = folder / f"{name}{suffix}"
        if not path.exists():
            continue
        try:
            table = read(path)
        except Exception as error:  # pyarrow and the csv parser raise their own types
            raise ValueError(f"{path.name} is unreadable: {one_line(error)}") from None
        return check_table(table, columns, path.name)
    return None


def clear_caches() -> None:
    """Forget every cached read of every page, so the next rerun reads the store afresh."""
    runs_table.clear()
    run_metrics.clear()
    compare_runs.clear()
    for name in PAGE_LOADERS:  # imported here: they import this module's CACHE_TTL_S
        importlib.import_module(name).clear_caches()
