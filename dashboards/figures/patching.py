"""Figures of activation-patching results: a heatmap over the patched indices (layer x
position, layer x head, or layer x position x head folded into rows) and the clean and
corrupted prompts token by token.

The values are those a `patching` run saves (`circuits.patching.PatchingResult`: one
metric value per patched index, 1 = clean and 0 = corrupted when normalised), read as
numpy arrays; the layout follows the causal-tracing heatmaps of Meng et al. 2022
("Locating and Editing Factual Associations in GPT", figure 1: layer against token).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["heatmap_grid", "patching_heatmap", "prompt_table"]


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
    if len(axes) != array.ndim or len(labels) != array.ndim:
        raise ValueError(
            f"values {array.shape} need one axis name and one label list per axis; got "
            f"{len(axes)} names and {len(labels)} label lists"
        )
    for axis, size, names in zip(axes, array.shape, labels, strict=True):
        if len(names) != size:
            raise ValueError(f"axis {axis!r} has {size} values but {len(names)} labels")
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
