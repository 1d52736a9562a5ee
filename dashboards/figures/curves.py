"""Line plots of logged metrics against a step axis."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

_MARKERS_BELOW = 60
"""Draw points as well as lines when a series has fewer points than this."""


def metric_curves(
    df: pd.DataFrame,
    x: str = "step",
    y: Sequence[str] | None = None,
    log_y: bool = False,
    title: str | None = None,
) -> go.Figure:
    """One line per metric against `x`, e.g. the metrics.jsonl of a run (`Run.metrics()`).

    Args:
        df: One row per logged step; columns `x` and the metrics. A metric missing at some
            steps (logged less often) is drawn through the steps where it has a value.
        x: Column on the horizontal axis.
        y: Metric columns to draw; None draws every numeric column except `x` and "time".
        log_y: Logarithmic vertical axis (only positive values are drawn there).
        title: Figure title.

    Returns:
        A figure with one `go.Scatter` trace per metric, named by its column.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"metric_curves() takes a DataFrame, got {type(df).__name__}")
    if x not in df.columns:
        raise ValueError(f"metric_curves(): no x column {x!r}; columns: {list(df.columns)}")
    if isinstance(y, str):
        y = [y]
    if y is None:
        y = [
            name for name in df.columns
            if name not in (x, "time") and pd.api.types.is_numeric_dtype(df[name])
            and not pd.api.types.is_bool_dtype(df[name])
        ]
    missing = [name for name in y if name not in df.columns]
    if missing:
        raise ValueError(f"metric_curves(): no column(s) {missing}; columns: {list(df.columns)}")
    not_numeric = [name for name in y if not pd.api.types.is_numeric_dtype(df[name])]
    if not_numeric:
        raise ValueError(f"metric_curves(): column(s) {not_numeric} are not numeric")

    figure = go.Figure()
    for name in y:
        series = df[[x, name]].dropna().sort_values(x, kind="stable")
        if log_y:
            series = series[series[name] > 0]
        figure.add_trace(
            go.Scatter(
                x=series[x].to_numpy(),
                y=series[name].to_numpy(),
                name=str(name),
                mode="lines+markers" if len(series) < _MARKERS_BELOW else "lines",
            )
        )
    figure.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y[0] if len(y) == 1 else "value",
        yaxis_type="log" if log_y else "linear",
        hovermode="x unified",
        legend_title_text="metric",
        margin={"l": 40, "r": 20, "t": 50 if title else 20, "b": 40},
    )
    return figure
