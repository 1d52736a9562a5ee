"""Cached reads of what a `probe` run saved (probes/probe_experiment.py), as DataFrames:
never torch, never a model.

- `probe_layers`: one row per (variant, target, layer): hook, mean, low, high, n_seeds,
  metric, and where computed control_mean, selectivity, mdl_bits, compression.
- `probe_interventions` (only when the config asked for interventions): one row per
  (variant, target, intervention): before, after, random_mean, random_std, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from dashboards.figures.probes import INTERVENTION_COLUMNS, LAYER_COLUMNS
from dashboards.loaders import CACHE_TTL_S
from interp.runs import Run, RunStore

LAYERS_TABLE = "probe_layers"
INTERVENTIONS_TABLE = "probe_interventions"
OPTIONAL_COLUMNS = ("control_mean", "selectivity", "mdl_bits", "compression")
"""Columns a run saves only for the controls it computed; read as NaN when absent."""


@dataclass(frozen=True)
class ProbeRunData:
    """What the Probes page draws of one run.

    Attributes:
        ref: "experiment/run_id".
        summary: summary.json.
        layers: The `probe_layers` table, with every `OPTIONAL_COLUMNS` column present.
        interventions: The `probe_interventions` table, or None (the run made none).
    """

    ref: str
    summary: dict[str, Any]
    layers: pd.DataFrame
    interventions: pd.DataFrame | None

    @property
    def targets(self) -> list[str]:
        """The probed targets, in table order."""
        return list(dict.fromkeys(self.layers["target"].astype(str)))

    @property
    def variants(self) -> list[str]:
        """The model variants, in table order."""
        return list(dict.fromkeys(self.layers["variant"].astype(str)))


def _has_table(run: Run, name: str) -> bool:
    return any((run.artifacts_dir / f"{name}{s}").exists() for s in (".parquet", ".csv"))


def _checked(table: pd.DataFrame, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}")
    return table


def read_probe_run(run: Run) -> ProbeRunData:
    """Everything the Probes page draws of a finished `probe` run. Raises ValueError when
    a table lacks a column the page needs (or the reader's own error when unreadable)."""
    layers = _checked(run.load_table(LAYERS_TABLE), LAYERS_TABLE, LAYER_COLUMNS)
    if layers.empty:
        raise ValueError(f"{LAYERS_TABLE} is empty")
    layers = layers.assign(**{c: float("nan") for c in OPTIONAL_COLUMNS if c not in layers})
    interventions = None
    if _has_table(run, INTERVENTIONS_TABLE):
        interventions = _checked(
            run.load_table(INTERVENTIONS_TABLE), INTERVENTIONS_TABLE, INTERVENTION_COLUMNS
        )
    return ProbeRunData(
        ref=run.ref, summary=run.summary, layers=layers, interventions=interventions
    )


@st.cache_data(ttl=CACHE_TTL_S, max_entries=8, show_spinner=False)
def probe_run(runs_dir: str, ref: str) -> ProbeRunData:
    """`read_probe_run` of run `ref` in the store at `runs_dir`, cached."""
    return read_probe_run(RunStore(runs_dir).load(ref))


def clear_caches() -> None:
    """Forget every cached read."""
    probe_run.clear()
