"""The Runs page: every run in the store, filters, side-by-side comparison, metric curves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import loaders
from dashboards.figures import metric_curves

HIDDEN_COLUMNS = ("path",)
"""Columns of `RunStore.table()` the page does not show."""


def render_runs_page(runs_dir: Path) -> None:
    """Draw the Runs page for the run store at `runs_dir`."""
    st.header("Runs")
    if not runs_dir.is_dir():
        st.info(
            f"No runs folder at `{runs_dir}`. Run an experiment first "
            "(`interp run experiments/quickstart.yaml --runs-dir DIR`) or pick another "
            "folder in the sidebar."
        )
        return
    table = loaders.runs_table(str(runs_dir))
    if table.empty:
        st.info(f"No runs in `{runs_dir}` yet.")
        return

    shown = newest_first(filter_runs(table))
    st.caption(f"{len(shown)} of {len(table)} runs in `{runs_dir}`")
    st.dataframe(
        arrow_safe(shown.drop(columns=[c for c in HIDDEN_COLUMNS if c in shown.columns])),
        hide_index=True,
        column_config={
            "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss"),
            "ended": st.column_config.DatetimeColumn("ended", format="YYYY-MM-DD HH:mm:ss"),
            "duration_s": st.column_config.NumberColumn("duration (s)", format="%.1f"),
            "error": st.column_config.TextColumn("error", width="large"),
        },
    )
    refs = [f"{e}/{r}" for e, r in zip(shown["experiment"], shown["run_id"], strict=True)]
    if refs:
        render_comparison(runs_dir, refs)
        render_metrics(runs_dir, refs)


def filter_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Multiselects for experiment, kind and status; an empty selection keeps everything."""
    columns = st.columns(3)
    kept = table
    for column, name in zip(columns, ("experiment", "kind", "status"), strict=True):
        options = sorted(str(v) for v in table[name].dropna().unique())
        chosen = column.multiselect(name.capitalize(), options, key=f"runs_filter_{name}")
        if chosen:
            kept = kept[kept[name].astype(str).isin(chosen) & kept[name].notna()]
    return kept


def newest_first(table: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by start time, newest first; runs with no start time (corrupt) last."""
    return table.sort_values(
        ["started", "run_id"], ascending=False, na_position="last", kind="stable"
    )


def render_comparison(runs_dir: Path, refs: list[str]) -> None:
    """Configs and summaries of the chosen runs side by side."""
    st.subheader("Compare")
    chosen = st.multiselect(
        "Runs to compare", refs, key="runs_compare", placeholder="choose two or more runs"
    )
    if not chosen:
        return
    only_differences = st.checkbox("Only rows that differ", key="runs_compare_diff")
    try:
        frame = loaders.compare_runs(str(runs_dir), tuple(chosen), only_differences)
    except (ValueError, OSError) as error:
        st.warning(str(error))
        return
    st.dataframe(as_text(frame), width="stretch")


def render_metrics(runs_dir: Path, refs: list[str]) -> None:
    """Curves of the metrics one run logged (its metrics.jsonl)."""
    st.subheader("Metrics")
    ref = st.selectbox("Run", refs, key="runs_metrics_run")
    if ref is None:
        return
    try:
        metrics = loaders.run_metrics(str(runs_dir), ref)
    except (ValueError, OSError) as error:
        st.warning(str(error))
        return
    if "seed" in metrics.columns and metrics["seed"].nunique() > 1:
        # runs that train several seeds together log one line per (step, seed)
        seeds = sorted(metrics["seed"].dropna().unique().tolist())
        seed = st.selectbox("Seed", seeds, key=f"runs_metrics_seed_{ref}")
        metrics = metrics[metrics["seed"] == seed]
    numeric = [
        name for name in metrics.columns
        if name not in ("step", "time", "seed") and pd.api.types.is_numeric_dtype(metrics[name])
        and not pd.api.types.is_bool_dtype(metrics[name])
    ]
    if metrics.empty or not numeric:
        st.caption(f"{ref} logged no numeric metrics.")
        return
    series = st.multiselect("Metrics", numeric, default=numeric[:4], key=f"runs_metrics_y_{ref}")
    log_y = st.checkbox("Log scale", key="runs_metrics_log")
    if series:
        st.plotly_chart(metric_curves(metrics, x="step", y=series, log_y=log_y, title=ref))


def arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every column of mixed value types (e.g. a summary key that is a number
    in one run and a string in another) turned into display text, so Arrow can send it."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype != object:
            continue
        kinds = {type(v) for v in out[name] if _cell_text(v) != ""}
        if kinds and kinds <= {int, float}:
            out[name] = pd.to_numeric(out[name])
        elif len(kinds) > 1 or kinds - {str, bool}:
            out[name] = out[name].map(_cell_text)
    return out


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as display text (mixed types per row cannot go to Arrow as they are)."""
    return frame.map(_cell_text)


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
