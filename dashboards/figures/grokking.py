"""Figures of grokking runs: training curves of several models overlaid, the Fourier
spectrum of the embedding and the key frequencies over training.

After Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability"
(ICLR 2023): figure 1 (train and test loss on log axes), figure 3a (the norm of each
Fourier frequency of the embedding `W_E[:p]`) and figure 6 (restricted and excluded
loss, weight norm). The Fourier norms are computed here in numpy, so drawing a spectrum
never imports torch; they match `interp.grokking.fourier.frequency_norms`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

__all__ = [
    "embedding_frequency_norms",
    "fourier_basis",
    "frequency_spectrum",
    "key_frequency_timeline",
    "training_curves",
]

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
"""Line styles of the metrics drawn together (one colour per model, one dash per metric)."""


def _check_modulus(p: int) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 3 or p % 2 == 0:
        raise ValueError(f"p must be an odd integer >= 3 (a prime modulus), got {p!r}")


def fourier_basis(p: int) -> tuple[np.ndarray, list[str]]:
    """The orthonormal real Fourier basis of functions on Z_p (Nanda et al. 2023, 3.1).

    Row 0 is the constant `1 / sqrt(p)`; rows `2k - 1` and `2k` are `cos(2 pi k x / p)` and
    `sin(2 pi k x / p)` for k = 1..(p-1)/2, each scaled to unit norm by `sqrt(2 / p)`.

    Returns:
        basis: `[p, p]` float64 (basis vector, residue x); `basis @ basis.T` is the identity.
        labels: `["const", "cos 1", "sin 1", ..., "cos K", "sin K"]`, K = (p-1)/2.
    """
    _check_modulus(p)
    n_freq = (p - 1) // 2
    x = np.arange(p, dtype=np.float64)
    k = np.arange(1, n_freq + 1, dtype=np.float64)
    angles = 2 * math.pi * k[:, None] * x[None, :] / p  # [n_freq, p]
    basis = np.empty((p, p), dtype=np.float64)
    basis[0] = 1.0 / math.sqrt(p)
    basis[1::2] = np.cos(angles) * math.sqrt(2.0 / p)
    basis[2::2] = np.sin(angles) * math.sqrt(2.0 / p)
    labels = ["const"] + [f"{wave} {freq}" for freq in range(1, n_freq + 1)
                          for wave in ("cos", "sin")]
    return basis, labels


def embedding_frequency_norms(embedding: np.ndarray, p: int) -> np.ndarray:
    """The norm of each Fourier frequency of the embedding of the numbers 0..p-1.

    With `C = basis @ W_E[:p]` (`[p, d_model]`, `fourier_basis(p)`), the norm of frequency
    k is `sqrt(|C[2k-1]|^2 + |C[2k]|^2)`: cos and sin together, so it does not depend on
    the phase (figure 3a of Nanda et al. 2023). The constant term is no frequency and is
    left out.

    Args:
        embedding: `W_E`, `[d_vocab, d_model]` with `d_vocab >= p` (rows p.. are the
            operator and "=" tokens, ignored).
        p: The modulus.

    Returns:
        `[(p - 1) / 2]` float64 norms; entry `k - 1` is frequency k.
    """
    _check_modulus(p)
    matrix = np.asarray(embedding)
    if matrix.ndim != 2 or matrix.shape[0] < p:
        raise ValueError(
            f"embedding must be [d_vocab >= {p}, d_model], got shape {tuple(matrix.shape)}"
        )
    if not np.issubdtype(matrix.dtype, np.number) or not np.isfinite(matrix).all():
        raise ValueError("embedding must hold finite numbers")
    basis, _ = fourier_basis(p)
    squared = ((basis @ matrix[:p].astype(np.float64)) ** 2).sum(axis=1)  # [p]
    return np.sqrt(squared[1::2] + squared[2::2])


def _colour(index: int) -> str:
    palette = qualitative.Plotly
    return palette[index % len(palette)]


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{where}() takes a DataFrame, got {type(frame).__name__}")
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{where}(): no column(s) {missing}; columns: {list(frame.columns)}")


def _positive_series(
    steps: pd.Series, values: pd.Series, log_x: bool, log_y: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) sorted by step, without missing values, and without values that a
    log axis cannot show (steps <= 0 when `log_x`, values <= 0 when `log_y`)."""
    x = pd.to_numeric(steps, errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if log_x:
        keep &= x > 0
    if log_y:
        keep &= y > 0
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def training_curves(
    metrics: pd.DataFrame,
    columns: Sequence[str],
    group: str = "series",
    log_x: bool = True,
    log_y: bool = True,
    title: str | None = None,
    y_title: str | None = None,
) -> go.Figure:
    """Metrics of several models against the epoch: one colour per model, one dash per
    metric (figure 1 of Nanda et al. 2023 draws train and test loss on log-log axes).

    Args:
        metrics: One row per (epoch, model): columns "step" (the epoch), `group` (which
            model, e.g. "seed 0") and `columns`. Rows where a metric is missing (logged
            less often) are skipped for that metric.
        columns: The metrics to draw, e.g. `["train_loss", "test_loss"]`.
        group: Column naming the model of each row.
        log_x, log_y: Logarithmic axes; only positive values are drawn on a log axis.
        title, y_title: Figure and vertical-axis titles.

    Returns:
        A figure with one `go.Scatter` per (model, metric), named "<model> <metric>".
    """
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not columns:
        raise ValueError("training_curves() needs at least one metric column")
    _check_columns(metrics, ["step", group, *columns], "training_curves")
    figure = go.Figure()
    for index, (name, rows) in enumerate(metrics.groupby(group, sort=True)):
        for number, column in enumerate(columns):
            x, y = _positive_series(rows["step"], rows[column], log_x, log_y)
            figure.add_trace(go.Scatter(
                x=x, y=y, name=f"{name} {column}", legendgroup=str(name), mode="lines",
                line={"color": _colour(index), "dash": _DASHES[number % len(_DASHES)]},
                hovertemplate=f"{name} {column}<br>epoch %{{x}}<br>%{{y:.4g}}<extra></extra>",
            ))
    figure.update_layout(
        title=title, xaxis_title="epoch", yaxis_title=y_title or ", ".join(columns),
        xaxis_type="log" if log_x else "linear", yaxis_type="log" if log_y else "linear",
        legend_title_text="model and metric", margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    return figure


def frequency_spectrum(
    norms: Mapping[str, np.ndarray],
    key_frequencies: Mapping[str, Sequence[int]] | None = None,
    title: str | None = None,
) -> go.Figure:
    """The Fourier norm of each frequency, one group of bars per model (figure 3a of
    Nanda et al. 2023), with each model's key frequencies marked by a star.

    Args:
        norms: Per model (e.g. "seed 0"), `[(p-1)/2]` norms; entry `k - 1` is frequency k
            (`embedding_frequency_norms`). All must have the same length.
        key_frequencies: Per model, the key frequencies (1-based) to mark; models missing
            here get no marks.
        title: Figure title.

    Returns:
        A figure with one `go.Bar` per model, named by its key, and one `go.Scatter` of
        star markers per model with key frequencies (named "<model> key frequencies").
    """
    if not norms:
        raise ValueError("frequency_spectrum() needs the norms of at least one model")
    arrays = {str(name): np.asarray(values, dtype=np.float64) for name, values in norms.items()}
    lengths = {array.shape for array in arrays.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"frequency_spectrum(): norms must be 1-d of one length, got {lengths}")
    n_freq = len(next(iter(arrays.values())))
    frequencies = np.arange(1, n_freq + 1)
    keys = {str(name): list(freqs) for name, freqs in (key_frequencies or {}).items()}
    figure = go.Figure()
    for index, (name, values) in enumerate(arrays.items()):
        figure.add_trace(go.Bar(
            x=frequencies, y=values, name=name, marker_color=_colour(index),
            hovertemplate=f"{name}<br>frequency %{{x}}<br>norm %{{y:.4g}}<extra></extra>",
        ))
    for index, (name, values) in enumerate(arrays.items()):
        marked = [k for k in keys.get(name, []) if 1 <= int(k) <= n_freq]
        if not marked:
            continue
        figure.add_trace(go.Scatter(
            x=marked, y=[values[int(k) - 1] for k in marked], mode="markers",
            name=f"{name} key frequencies", marker={"symbol": "star", "size": 12,
                                                    "color": _colour(index)},
            hovertemplate=f"{name}: key frequency %{{x}}<extra></extra>",
        ))
    figure.update_layout(
        title=title, barmode="group", xaxis_title="frequency k", yaxis_title="norm",
        xaxis={"tickmode": "linear", "dtick": 1 if n_freq <= 30 else 5},
        legend_title_text="model", margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    return figure


def key_frequency_timeline(
    metrics: pd.DataFrame, group: str = "series", title: str | None = None
) -> go.Figure:
    """Which frequencies are key at each logged epoch, one colour per model.

    Args:
        metrics: Rows with columns "step", `group` and "key_frequencies" (a list of ints,
            or None/NaN where the progress measures were not logged).
        group: Column naming the model of each row.
        title: Figure title.

    Returns:
        A figure with one `go.Scatter` of points (epoch, frequency) per model.
    """
    _check_columns(metrics, ["step", group, "key_frequencies"], "key_frequency_timeline")
    figure = go.Figure()
    for index, (name, rows) in enumerate(metrics.groupby(group, sort=True)):
        points = [(int(step), int(freq)) for step, freqs in
                  zip(rows["step"], rows["key_frequencies"], strict=True)
                  if isinstance(freqs, (list, tuple, np.ndarray)) for freq in freqs]
        figure.add_trace(go.Scatter(
            x=[step for step, _ in points], y=[freq for _, freq in points], mode="markers",
            name=str(name), marker={"color": _colour(index), "size": 7},
            hovertemplate=f"{name}<br>epoch %{{x}}<br>frequency %{{y}}<extra></extra>",
        ))
    figure.update_layout(
        title=title, xaxis_title="epoch", yaxis_title="key frequency k",
        legend_title_text="model", margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    return figure
