"""Figures of the direct effects a `patching` run saves for its clean prompts: the direct
logit attribution (`circuits.logit_attribution`, `artifacts/logit_attribution.*`) as a
layer x head heatmap and as bars per component, and the logit lens (`interp.logit_lens`,
`artifacts/logit_lens.*`) as curves over depth (`readout_figure`, which the Lens page also
draws with a tuned lens beside the logit lens), and one head's direct effect on one example
split by the key position it attends to (`head_source_bars`, from the attribution's
`sources` tensor).

The attribution is each component's direct contribution to the logit difference (answer -
wrong), in logits, averaged over the examples: the direct path only (Elhage et al. 2021,
"A Mathematical Framework for Transformer Circuits"), so a component acting through later
ones shows ~0 there. The logit lens reads the residual stream before each block through the
model's final norm and unembedding (nostalgebraist 2020, "interpreting GPT: the logit lens").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.figures.patching import patching_heatmap

__all__ = [
    "component_attribution_bars",
    "head_attribution_heatmap",
    "head_source_bars",
    "logit_lens_figure",
    "ordered_stages",
    "readout_figure",
]

ATTRIBUTION_COLUMNS = ("component", "kind", "layer", "head", "mean", "std")
"""The columns of `artifacts/logit_attribution.*` (`LogitAttribution.to_frame`)."""
LENS_COLUMNS = ("stage", "depth", "logit_diff", "answer_logprob", "answer_rank", "top1")
"""The columns of `artifacts/logit_lens.*` (`LogitLens.to_frame`)."""
TEXT_COLUMNS = ("component", "kind", "stage")
"""Columns that hold names; every other column of the two tables holds numbers."""

VALUE_NAME = "direct effect"
POSITIVE, NEGATIVE = "#2166ac", "#b2182b"
"""Bar colours, the ends of the heatmap's red-white-blue scale."""
LENS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
"""One colour per lens when `readout_figure` draws several."""


def check_table(frame: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    """`frame` if it has `columns` and those of them not in `TEXT_COLUMNS` hold numbers;
    a one-line ValueError naming `what` otherwise."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} needs a DataFrame, got {type(frame).__name__}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the columns {missing}")
    for column in columns:
        if column not in TEXT_COLUMNS and not pd.api.types.is_numeric_dtype(frame[column]):
            raise ValueError(f"{what}: column {column!r} does not hold numbers")
    return frame


def _indices(values: pd.Series, what: str, name: str) -> np.ndarray:
    """Layer or head numbers as ints; a ValueError if one is negative or not whole."""
    array = values.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(array) & (array >= 0) & (array == np.round(array))):
        raise ValueError(f"{what}: every head needs a whole, non-negative {name}")
    return array.astype(int)


def head_attribution_heatmap(frame: pd.DataFrame) -> go.Figure:
    """The heads' mean direct effects as a layer x head grid, white at 0.

    Args:
        frame: A `logit_attribution` table; its rows of kind "head" are drawn.

    Returns:
        A figure with one `go.Heatmap` (rows: layers from the top, columns: heads; cells no
        row names are blank) whose hover text reads "layer, head: value".
    """
    what = "head_attribution_heatmap"
    check_table(frame, ("kind", "layer", "head", "mean"), what)
    heads = frame[frame["kind"] == "head"]
    if heads.empty:
        raise ValueError(f"{what}: the table has no rows of kind 'head'")
    layers, indices = _indices(heads["layer"], what, "layer"), _indices(heads["head"], what, "head")
    if len(set(zip(layers, indices, strict=True))) != len(heads):
        raise ValueError(f"{what}: a (layer, head) appears more than once")
    grid = np.full((layers.max() + 1, indices.max() + 1), np.nan)
    grid[layers, indices] = heads["mean"].to_numpy(dtype=np.float64)
    labels = ([str(n) for n in range(grid.shape[0])], [str(n) for n in range(grid.shape[1])])
    return patching_heatmap(
        grid, ("layer", "head"), labels, value_name=VALUE_NAME, zmid=0.0,
        title="Direct effect of each head on the logit difference",
    )


def _forward_key(kind: str, layer: int) -> tuple[float, int]:
    """Where a component sits in the forward pass: the embedding, then per layer its heads
    and its MLP, then the attention biases and the unembedding (and anything unknown)."""
    order = {"embed": (-1, 0), "head": (layer, 0), "mlp": (layer, 1),
             "bias": (np.inf, 0), "unembed": (np.inf, 1)}
    return order.get(kind, (np.inf, 2))


def component_attribution_bars(frame: pd.DataFrame) -> go.Figure:
    """A bar per component that is not a head, and per layer one bar "heads {layer}" for the
    sum of its heads' mean direct effects, in forward order.

    Args:
        frame: A `logit_attribution` table.

    Returns:
        A figure with one `go.Bar` (blue above 0, red below) whose hover text gives each
        bar's value (and a single component's std over the examples).
    """
    what = "component_attribution_bars"
    check_table(frame, ("component", "kind", "layer", "mean", "std"), what)
    bars: list[tuple[tuple[float, int], str, float, str]] = []
    for row in frame[frame["kind"] != "head"].itertuples(index=False):
        layer = int(row.layer) if np.isfinite(row.layer) else -1
        bars.append((_forward_key(str(row.kind), layer), str(row.component), float(row.mean),
                     f"{row.component}: {row.mean:+.4g} (std {row.std:.3g} over examples)"))
    heads = frame[frame["kind"] == "head"]
    for layer, group in heads.groupby(_indices(heads["layer"], what, "layer"), sort=True):
        total = float(group["mean"].sum())
        bars.append((_forward_key("head", int(layer)), f"heads {layer}", total,
                     f"the {len(group)} heads of layer {layer}: sum {total:+.4g}"))
    if not bars:
        raise ValueError(f"{what}: the table has no rows")
    bars.sort(key=lambda bar: bar[0])  # stable: ties keep the table's order
    _, labels, values, hover = zip(*bars, strict=True)
    figure = go.Figure(go.Bar(
        x=list(labels), y=list(values), hovertext=list(hover),
        hovertemplate="%{hovertext}<extra></extra>",
        marker={"color": [POSITIVE if value >= 0 else NEGATIVE for value in values]},
    ))
    figure.update_layout(
        title="Direct effect of each component on the logit difference (heads summed per layer)",
        xaxis={"type": "category", "title": "component (forward order)"},
        yaxis_title=f"{VALUE_NAME} (logits)",
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    return figure


def head_source_bars(
    values: Sequence[float] | np.ndarray, tokens: Sequence[str], head_name: str,
    example: int | None = None,
) -> go.Figure:
    """One head's direct effect on one example, split by the key position it attends to:
    a bar per position (its attention weight times that position's value through `W_O`,
    read along the answer - wrong unembedding direction through the final norm).

    Args:
        values: The head's contribution from each position, `sources[example, layer,
            head, :n]` (in logits).
        tokens: The example's token strings at those positions (as many as `values`).
        head_name: The head, e.g. "L1H0", for the title.
        example: The example's number, for the title.

    Returns:
        A figure with one `go.Bar` (blue above 0, red below) whose x labels are
        "i:token" in position order and whose heights are `values`.
    """
    heights = np.asarray(values, dtype=np.float64).ravel()
    if len(heights) != len(tokens):
        raise ValueError(
            f"head_source_bars: {len(heights)} values but {len(tokens)} tokens"
        )
    labels = [f"{index}:{token}" for index, token in enumerate(tokens)]
    figure = go.Figure(go.Bar(
        x=labels, y=heights.tolist(),
        hovertemplate="position %{x}<br>direct effect %{y:+.4g}<extra></extra>",
        marker={"color": [POSITIVE if value >= 0 else NEGATIVE for value in heights]},
    ))
    where = f" on example {example}" if example is not None else ""
    figure.update_layout(
        title=f"Where {head_name} reads from{where}: its direct effect by key position",
        xaxis={"type": "category", "categoryorder": "array", "categoryarray": labels,
               "title": "key position (i:token)"},
        yaxis_title=f"{VALUE_NAME} (logits)",
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    return figure


def ordered_stages(
    frame: pd.DataFrame, columns: Sequence[str], what: str
) -> tuple[pd.DataFrame, list[str]]:
    """A per-stage table (`columns`, among them "stage" and "depth") checked and sorted by
    depth, and its stage names in that order; a one-line ValueError naming `what` when it
    has no rows or a stage or depth appears twice."""
    check_table(frame, columns, what)
    if frame.empty:
        raise ValueError(f"{what}: the table has no rows")
    ordered = frame.sort_values("depth", kind="stable")
    stages = [str(stage) for stage in ordered["stage"]]
    if len(set(stages)) != len(stages):
        raise ValueError(f"{what}: a stage appears more than once")
    if ordered["depth"].duplicated().any():
        raise ValueError(f"{what}: a depth appears more than once")
    return ordered, stages


def stage_axis(stages: Sequence[str]) -> dict[str, object]:
    """A category x axis holding `stages` in the order given (depth order)."""
    return {"type": "category", "categoryorder": "array", "categoryarray": list(stages),
            "title": "stage"}


def readout_figure(
    readouts: Mapping[str, pd.DataFrame], what: str = "readout_figure", title: str | None = None
) -> go.Figure:
    """Lens readouts over depth: per lens, the mean logit difference (left axis) and the
    fraction of examples whose answer is the top token (right axis, 0 to 1, dotted) at each
    stage, one colour per lens when there are several.

    Args:
        readouts: Lens name -> its `logit_lens` table (`LENS_COLUMNS`), drawn in the order
            of `depth`; every table must hold the same stages at the same depths. A lone
            lens may be named "": its traces are then plain "logit diff" and "top-1".
        what: The name ValueErrors start with.
        title: Figure title.

    Returns:
        A figure with two `go.Scatter` traces per lens, "<lens> logit diff" (hover also
        gives the answer's mean log-probability and rank) and "<lens> top-1" (on `y2`).
    """
    if not readouts:
        raise ValueError(f"{what}: no readout to draw")
    several = len(readouts) > 1
    traces, axis = [], None
    for index, (lens, frame) in enumerate(readouts.items()):
        where = f"{what}: the {lens} table" if lens else what
        ordered, stages = ordered_stages(frame, LENS_COLUMNS, where)
        depths = ordered["depth"].tolist()
        if axis is None:
            axis = (stages, depths)
        elif (stages, depths) != axis:
            raise ValueError(
                f"{what}: the {lens} table's stages {stages} at depths {depths} differ from "
                f"the {next(iter(readouts))} table's {axis[0]} at {axis[1]}"
            )
        name = f"{lens} " if lens else ""
        line = {"color": LENS_COLOURS[index % len(LENS_COLOURS)]} if several else {}
        traces += [
            go.Scatter(
                x=stages, y=ordered["logit_diff"].to_numpy(dtype=np.float64),
                name=f"{name}logit diff", legendgroup=lens or None, mode="lines+markers",
                line=line,
                customdata=ordered[["answer_logprob", "answer_rank"]].to_numpy(dtype=np.float64),
                hovertemplate=(
                    f"{name}stage %{{x}}<br>logit diff %{{y:.4g}}<br>answer log-prob "
                    "%{customdata[0]:.4g}<br>answer rank %{customdata[1]:.3g}<extra></extra>"
                ),
            ),
            go.Scatter(
                x=stages, y=ordered["top1"].to_numpy(dtype=np.float64), name=f"{name}top-1",
                legendgroup=lens or None, yaxis="y2", mode="lines+markers",
                line={**line, "dash": "dot"},
                hovertemplate=(
                    f"{name}stage %{{x}}<br>answer is top-1 in %{{y:.0%}} of examples"
                    "<extra></extra>"
                ),
            ),
        ]
    assert axis is not None
    figure = go.Figure(traces)
    figure.update_layout(
        title=title,
        xaxis=stage_axis(axis[0]),
        yaxis={"title": "logit diff (answer - wrong)"},
        yaxis2={"title": "top-1 fraction", "overlaying": "y", "side": "right",
                "range": [0, 1.05]},
        legend={"orientation": "h", "y": -0.2},
        margin={"l": 40, "r": 40, "t": 50, "b": 40},
    )
    return figure


def logit_lens_figure(frame: pd.DataFrame) -> go.Figure:
    """The logit lens over depth: the mean logit difference (left axis) and the fraction of
    examples whose answer is the top token (right axis, 0 to 1) at each stage.

    Args:
        frame: A `logit_lens` table; its stages are drawn in the order of `depth`.

    Returns:
        A figure with two `go.Scatter` traces, "logit diff" (hover also gives the answer's
        mean log-probability and rank) and "top-1" (`readout_figure` of this one lens).
    """
    return readout_figure(
        {"": frame}, what="logit_lens_figure",
        title="Logit lens: the residual stream before each block, read as the output",
    )
