"""Figures of activation-patching results: a heatmap over the patched indices (layer x
position, layer x head, or layer x position x head folded into rows), the clean and
corrupted prompts token by token, and an attribution-patching estimate against the exact
result, one point per index.

The values are those a `patching` run saves (`circuits.patching.PatchingResult`: one
metric value per patched index, 1 = clean and 0 = corrupted when normalised), read as
numpy arrays; the layout follows the causal-tracing heatmaps of Meng et al. 2022
("Locating and Editing Factual Associations in GPT", figure 1: layer against token).
The estimates are those of attribution patching (Nanda 2023; Syed, Rager and Conmy 2023)
and of AtP*'s query-key fix (Kramár, Lieberum, Shah and Nanda 2024), saved on the same
scale as the exact values.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = [
    "METHOD_NAMES",
    "attribution_scatter",
    "correlation_text",
    "heatmap_grid",
    "index_labels",
    "patching_heatmap",
    "prompt_table",
]

METHOD_NAMES = {
    "attribution": "attribution patching",
    "attribution_qk_fix": "AtP* (query-key fix)",
    "attribution_ig": "integrated gradients",
}
"""How each estimate's `method` (`PatchingResult.method`) is named in a figure."""


def check_labels(
    shape: tuple[int, ...], axes: Sequence[str], labels: Sequence[Sequence[str]]
) -> None:
    """A one-line ValueError unless there is one axis name and one label list per axis of
    values shaped `shape`, each list as long as its axis."""
    if len(axes) != len(shape) or len(labels) != len(shape):
        raise ValueError(
            f"values {shape} need one axis name and one label list per axis; got "
            f"{len(axes)} names and {len(labels)} label lists"
        )
    for axis, size, names in zip(axes, shape, labels, strict=True):
        if len(names) != size:
            raise ValueError(f"axis {axis!r} has {size} values but {len(names)} labels")


def heatmap_grid(
    values: np.ndarray, axes: Sequence[str], labels: Sequence[Sequence[str]]
) -> tuple[np.ndarray, list[str], list[str], str, str]:
    """The 2-d grid a heatmap draws from a 2-d or 3-d patching result.

    A 2-d result `[a0, a1]` is drawn as it is: rows `a0`, columns `a1`. A 3-d result
    `[a0, a1, a2]` (e.g. `z_by_pos`: layer, pos, head) keeps `a1` on the columns and folds
    `a0` and `a2` into the rows, `"<a0> <i> <a2> <j>"` in `a0`-major order.

    Args:
        values: `[n_0, n_1]` or `[n_0, n_1, n_2]`.
        axes: One name per axis, e.g. `("layer", "pos")`.
        labels: Per axis, one label per index.

    Returns:
        grid `[rows, columns]`, row labels, column labels, row-axis title, column-axis title.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (2, 3):
        raise ValueError(f"a patching heatmap needs 2-d or 3-d values, got {array.ndim}-d")
    check_labels(array.shape, axes, labels)
    columns = [str(label) for label in labels[1]]
    if array.ndim == 2:
        return array, [str(label) for label in labels[0]], columns, axes[0], axes[1]
    grid = array.transpose(0, 2, 1).reshape(-1, array.shape[1])
    rows = [f"{axes[0]} {outer} {axes[2]} {inner}" for outer in labels[0] for inner in labels[2]]
    return grid, rows, columns, f"{axes[0]}, {axes[2]}", axes[1]


def patching_heatmap(
    values: np.ndarray,
    axes: Sequence[str],
    labels: Sequence[Sequence[str]],
    title: str | None = None,
    value_name: str = "metric",
    zmid: float = 0.0,
) -> go.Figure:
    """A heatmap of the metric after patching each index, its value shown on hover.

    The colour scale is red-white-blue, white at `zmid`: pass the result's baseline (the
    value of a patch that changes nothing: 0 when denoising normalised, 1 when noising
    normalised, else the unpatched metric of the run patched into), so that white means
    no effect and the colour shows which way each patch moves the metric. Rows run top to
    bottom from the first layer.

    Args:
        values: The result's values, `[layer, pos]`, `[layer, head]` or
            `[layer, pos, head]` (see `heatmap_grid` for how 3-d values are laid out).
        axes: The result's axis names.
        labels: The result's labels, one list per axis.
        title: Figure title.
        value_name: What the values are, for the colour bar and hover text.
        zmid: The value drawn white.

    Returns:
        A figure with one `go.Heatmap` whose hover text reads "<row>, <column>: value".
    """
    grid, rows, columns, row_title, column_title = heatmap_grid(values, axes, labels)
    figure = go.Figure(go.Heatmap(
        z=grid, x=columns, y=rows, colorscale="RdBu", zmid=float(zmid),
        colorbar={"title": {"text": value_name}},
        hovertemplate=(
            f"{row_title} %{{y}}<br>{column_title} %{{x}}<br>{value_name} %{{z:.4g}}"
            "<extra></extra>"
        ),
    ))
    figure.update_layout(
        title=title, xaxis_title=column_title, yaxis_title=row_title,
        xaxis={"type": "category"},
        yaxis={"type": "category", "autorange": "reversed"},
        margin={"l": 40, "r": 20, "t": 50 if title else 20, "b": 40},
    )
    return figure


def prompt_table(clean: Sequence[str], corrupted: Sequence[str]) -> pd.DataFrame:
    """The clean and corrupted prompt of one example side by side, token by token.

    Args:
        clean: The clean prompt's tokens as strings, `[pos]`.
        corrupted: The corrupted prompt's tokens, `[pos]` (the same length).

    Returns:
        A DataFrame with rows "clean" and "corrupted" and one column per position
        (named by the position's index), holding the tokens as text.
    """
    if len(clean) != len(corrupted):
        raise ValueError(
            f"clean and corrupted prompts differ in length: {len(clean)} vs {len(corrupted)}"
        )
    return pd.DataFrame(
        [[str(token) for token in clean], [str(token) for token in corrupted]],
        index=["clean", "corrupted"],
        columns=[str(pos) for pos in range(len(clean))],
    )


def index_labels(axes: Sequence[str], labels: Sequence[Sequence[str]]) -> list[str]:
    """One label per index of a result, in the order of its flattened values (the last axis
    fastest): `"layer 0, pos 3:tok, head 1"`."""
    return [
        ", ".join(f"{axis} {label}" for axis, label in zip(axes, index, strict=True))
        for index in itertools.product(*labels)
    ]


def correlation_text(correlation: float | str | None) -> str:
    """The correlation as a run's summary records it, for a title: `"Pearson r = 0.923"`,
    `"correlation undefined"` (the summary's `"undefined: ..."`, a constant grid), or
    `"correlation not recorded"` (no entry)."""
    if isinstance(correlation, int | float) and not isinstance(correlation, bool):
        return f"Pearson r = {float(correlation):.3f}"
    if isinstance(correlation, str) and correlation.startswith("undefined"):
        return "correlation undefined"
    return "correlation not recorded"


def attribution_scatter(
    exact: np.ndarray,
    estimate: np.ndarray,
    axes: Sequence[str],
    labels: Sequence[Sequence[str]],
    method: str,
    correlation: float | str | None = None,
    target: str | None = None,
    value_name: str = "metric",
) -> go.Figure:
    """The attribution-patching estimate of every index against its exact patching value.

    Points on the dashed line y = x are indices the estimate gets right; points off it are
    where the first-order estimate misses (e.g. a saturated softmax for plain attribution
    patching of queries and keys, which AtP*'s fix repairs).

    Args:
        exact: The exact result's values (activation patching), any shape.
        estimate: The estimate's values for the same target (the same shape and scale).
        axes: The results' axis names, e.g. `("layer", "pos", "head")`.
        labels: Per axis, one label per index (shown on hover).
        method: The estimate's method, a key of `METHOD_NAMES` (another is shown as it is).
        correlation: The summary's `attribution_correlation` entry of the target: a float,
            a string "undefined: ..." or None (see `correlation_text`).
        target: The target's name, for the title.
        value_name: What the values are, for the axis titles and hover text.

    Returns:
        A figure with two `go.Scatter` traces: the points (one per index, hover text the
        index's labels) and the line y = x over the range of both.
    """
    x = np.asarray(exact, dtype=np.float64)
    y = np.asarray(estimate, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"the estimate {y.shape} and the exact result {x.shape} differ in shape")
    check_labels(x.shape, axes, labels)
    name = METHOD_NAMES.get(method, method)
    both = np.concatenate([x.reshape(-1), y.reshape(-1)])
    finite = both[np.isfinite(both)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    figure = go.Figure([
        go.Scatter(
            x=x.reshape(-1), y=y.reshape(-1), mode="markers", name="index",
            text=index_labels(axes, labels), marker={"size": 7, "opacity": 0.8},
            hovertemplate=(
                f"%{{text}}<br>exact {value_name} %{{x:.4g}}<br>{name} %{{y:.4g}}"
                "<extra></extra>"
            ),
        ),
        go.Scatter(
            x=[low, high], y=[low, high], mode="lines", name="y = x",
            line={"dash": "dash", "color": "grey"}, hoverinfo="skip",
        ),
    ])
    title = f"{name} against exact patching ({correlation_text(correlation)})"
    figure.update_layout(
        title=f"{target}: {title}" if target else title,
        xaxis_title=f"exact patching: {value_name}",
        yaxis_title=f"{name}: {value_name}",
        showlegend=False,
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    return figure
