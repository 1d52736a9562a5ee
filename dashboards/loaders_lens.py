"""Cached reads of what a `lens` run saves (interp/lens_experiment.py), for the Lens page:
three tables saved by `Run.save_table` (parquet, or csv), one row per stage,

- `artifacts/lens_divergence.*`: the mean KL divergence from the model's output to the
  logit lens's and the tuned lens's readouts (`DIVERGENCE_COLUMNS`);
- `artifacts/logit_lens.*` and `artifacts/tuned_lens_readout.*`: both lenses' readouts of
  the held-out task's answer (`LENS_COLUMNS`, as `interp.logit_lens.LogitLens.to_frame`).

The training loss is `metrics.jsonl`, read by `dashboards.loaders.run_metrics`. Tables are
read with pandas: nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboards.figures.direct_effects import LENS_COLUMNS
from dashboards.figures.lens import DIVERGENCE_COLUMNS
from dashboards.loaders import CACHE_TTL_S, read_table

DIVERGENCE_TABLE = "lens_divergence"
LOGIT_TABLE = "logit_lens"
TUNED_TABLE = "tuned_lens_readout"
TABLES = {
    DIVERGENCE_TABLE: DIVERGENCE_COLUMNS,
    LOGIT_TABLE: LENS_COLUMNS,
    TUNED_TABLE: LENS_COLUMNS,
}
"""The tables a `lens` run saves -> the columns the page needs of each."""


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def lens_table(run_dir: str, name: str) -> pd.DataFrame | None:
    """The table `name` (one of `TABLES`) of the run at `run_dir`, or None when the run
    has not saved it (still training, failed, older). A one-line ValueError when it is
    unreadable or lacks a column of `TABLES[name]`."""
    if name not in TABLES:
        raise ValueError(f"a lens run saves no table {name!r}; its tables: {list(TABLES)}")
    return read_table(Path(run_dir) / "artifacts", name, TABLES[name])


def clear_caches() -> None:
    """Forget every cached read."""
    lens_table.clear()
