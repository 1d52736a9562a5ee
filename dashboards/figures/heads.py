"""Figures of a `heads` run: a layer x head heatmap of one score, and one head's attention
pattern on example tokens.

Scores are those of `interp.heads` (attention-pattern scores after Olsson et al. 2022,
Clark et al. 2019 and Voita et al. 2019; copying and composition after Elhage et al. 2021;
ablation importance), one row per head as in the run's `head_roles` table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

_DIVERGING = "RdBu"
_SEQUENTIAL = "Viridis"


def score_matrix(frame: pd.DataFrame, score: str) -> np.ndarray:
    """`[layer, head]` values of column `score` of a one-row-per-head table (columns
    `layer`, `head`); heads missing from the table are NaN."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"score_matrix() takes a DataFrame, got {type(frame).__name__}")
    missing = [c for c in ("layer", "head", score) if c not in frame.columns]
    if missing:
        raise ValueError(f"the head table lacks column(s) {missing}")
    if frame.empty:
        raise ValueError("the head table is empty")
    layers = frame["layer"].to_numpy(dtype=int)
    heads = frame["head"].to_numpy(dtype=int)
    if layers.min() < 0 or heads.min() < 0:
        raise ValueError("layer and head indices must be >= 0")
    matrix = np.full((layers.max() + 1, heads.max() + 1), np.nan)
    matrix[layers, heads] = pd.to_numeric(frame[score], errors="coerce").to_numpy(dtype=float)
    return matrix


def head_heatmap(frame: pd.DataFrame, score: str, *, title: str | None = None) -> go.Figure:
    """One score of every head as a layer x head heatmap (layer 0 at the bottom).

    Args:
        frame: One row per head: `layer`, `head`, the `score` column, and optionally
            `roles` (shown in the hover text), e.g. the run's `head_roles` table.
        score: The column to draw.
        title: Figure title; default the score's name.

    Returns:
        A figure with one `go.Heatmap` whose `z` is `[layer, head]` (NaN: no value). A
        score with negative values gets a diverging colour scale centred on 0.
    """
    matrix = score_matrix(frame, score)
    roles = np.full(matrix.shape, "", dtype=object)
    if "roles" in frame.columns:
        roles[frame["layer"].to_numpy(dtype=int), frame["head"].to_numpy(dtype=int)] = (
            frame["roles"].fillna("").astype(str).to_numpy()
        )
    signed = bool(np.nanmin(matrix) < 0) if np.isfinite(matrix).any() else False
    bound = float(np.nanmax(np.abs(matrix))) if signed else None
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(range(matrix.shape[1])),
            y=list(range(matrix.shape[0])),
            customdata=roles,
            colorscale=_DIVERGING if signed else _SEQUENTIAL,
            zmid=0.0 if signed else None,
            zmin=-bound if bound else None,
            zmax=bound if bound else None,
            colorbar={"title": {"text": score}},
            hovertemplate=(
                "L%{y}H%{x}<br>" + score + ": %{z:.3f}<br>roles: %{customdata}<extra></extra>"
            ),
        )
    )
    figure.update_layout(
        title=title if title is not None else score,
        xaxis={"title": "head", "dtick": 1},
        yaxis={"title": "layer", "dtick": 1},
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
        height=max(250, 45 * matrix.shape[0] + 120),
    )
    return figure


def attention_pattern(
    pattern: np.ndarray, tokens: Sequence[str], *, title: str | None = None
) -> go.Figure:
    """One head's attention pattern on one sequence, token strings on both axes.

    Args:
        pattern: `[query, key]` attention weights (rows sum to 1).
        tokens: The sequence's token strings, `len(tokens) == query == key`. Repeated
            tokens are fine: positions, not strings, place the cells.
        title: Figure title.

    Returns:
        A figure with one `go.Heatmap` (`z` is the pattern, queries down the y axis from
        the top, keys along the x axis); the hover names both tokens and positions.
    """
    values = np.asarray(pattern, dtype=float)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"pattern must be a square [query, key] array, got {values.shape}")
    if len(tokens) != values.shape[0]:
        raise ValueError(f"{len(tokens)} token strings for a {values.shape[0]}-position pattern")
    labels = [f"{i}: {token}" for i, token in enumerate(tokens)]
    hover = [[f"{labels[q]} → {labels[k]}" for k in range(len(labels))] for q in range(len(labels))]
    positions = list(range(len(tokens)))
    figure = go.Figure(
        go.Heatmap(
            z=values,
            x=positions,
            y=positions,
            text=hover,
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": {"text": "attention"}},
            hovertemplate="%{text}<br>attention %{z:.3f}<extra></extra>",
        )
    )
    ticks = {"tickmode": "array", "tickvals": positions, "ticktext": list(tokens)}
    figure.update_layout(
        title=title,
        xaxis={"title": "key", "side": "top", "tickangle": -60, **ticks},
        yaxis={"title": "query", "autorange": "reversed", **ticks},
        margin={"l": 60, "r": 20, "t": 90 if title else 70, "b": 20},
        height=max(400, 18 * len(tokens) + 160),
    )
    return figure
