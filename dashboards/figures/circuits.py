"""Figures of a `circuit` run: the discovered circuit as a graph, ROC curves against a
ground-truth circuit, and faithfulness against circuit size.

Node and edge names are those of `circuits.graph` (parsed here, so drawing never imports
it or torch): sources `"embed"`, `"L{l}H{h}"`, `"mlp{l}"`; destinations `"L{l}H{h}.q"` /
`".k"` / `".v"`, `"mlp{l}"`, `"logits"`; an edge is `"<source>-><destination>"`.
Circuit discovery: ACDC (Conmy et al. 2023), EAP (Syed et al. 2023), EAP-IG (Hanna et al.
2024); faithfulness as in Wang et al. 2022.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

EDGE_TRACE = "edges"
"""Name of the graph figure's hover-marker trace: one point per drawn edge, whose
`customdata` holds the edge names (see `drawn_edges`)."""

_HEAD = re.compile(r"^L(\d+)H(\d+)(?:\.([qkv]))?$")
_MLP = re.compile(r"^mlp(\d+)$")
_INPUT_OFFSET = {"q": -0.2, "k": 0.0, "v": 0.2, None: 0.0}
_EDGE_COLUMNS = ("edge", "source", "destination", "score")


@dataclass(frozen=True)
class NodePlace:
    """Where a node of the computational graph is drawn.

    Attributes:
        component: The node-level name (a head's q/k/v input folded into the head).
        kind: `"embed"`, `"head"`, `"mlp"` or `"logits"`.
        layer: Its block (-1 for the embedding; None for the logits, which sit on top).
        head: The head index (heads only).
        input: `"q"`, `"k"` or `"v"` for a head's input, else None.
    """

    component: str
    kind: str
    layer: int | None
    head: int | None = None
    input: str | None = None


def parse_node(name: str) -> NodePlace:
    """The place of a node named as in `circuits.graph`; a one-line ValueError otherwise."""
    if name in ("embed", "logits"):
        return NodePlace(name, name, -1 if name == "embed" else None)
    head = _HEAD.match(name)
    if head:
        layer, index, part = int(head.group(1)), int(head.group(2)), head.group(3)
        return NodePlace(f"L{layer}H{index}", "head", layer, index, part)
    mlp = _MLP.match(name)
    if mlp:
        return NodePlace(name, "mlp", int(mlp.group(1)))
    raise ValueError(f"not a node name of circuits.graph: {name!r}")


def _layout(places: Iterable[NodePlace], n_layers: int, n_heads: int) -> dict[str, tuple]:
    """Component -> (x, y): rows bottom to top are embed, block 0 heads, block 0 MLP, ...,
    logits; heads left to right by index, MLPs right of the heads."""
    middle = (n_heads - 1) / 2
    out: dict[str, tuple] = {}
    for place in places:
        if place.kind == "embed":
            out[place.component] = (middle, 0.0)
        elif place.kind == "logits":
            out[place.component] = (middle, 2.0 * n_layers + 1)
        elif place.kind == "head":
            out[place.component] = (float(place.head), 2.0 * place.layer + 1)
        else:
            out[place.component] = (float(n_heads), 2.0 * place.layer + 2)
    return out


def _row_ticks(n_layers: int) -> tuple[list[float], list[str]]:
    values, labels = [0.0], ["embed"]
    for layer in range(n_layers):
        values += [2.0 * layer + 1, 2.0 * layer + 2]
        labels += [f"block {layer} attn", f"block {layer} mlp"]
    return [*values, 2.0 * n_layers + 1], [*labels, "logits"]


def _check_edges(edges: pd.DataFrame) -> None:
    if not isinstance(edges, pd.DataFrame):
        raise ValueError(f"circuit_graph() takes a DataFrame, got {type(edges).__name__}")
    missing = [c for c in _EDGE_COLUMNS if c not in edges.columns]
    if missing:
        raise ValueError(f"circuit_graph(): the edge table lacks column(s) {missing}")


def kept_edges(
    edges: pd.DataFrame, threshold: float, acdc_edges: Iterable[str] = ()
) -> pd.DataFrame:
    """The rows of `edges` (columns edge, source, destination, score) with
    |score| >= `threshold` or whose edge is in `acdc_edges`, with a bool `in_acdc` column."""
    _check_edges(edges)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or math.isnan(
        threshold
    ):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    acdc = set(acdc_edges)
    in_acdc = edges["edge"].isin(acdc)
    magnitude = edges["score"].abs().to_numpy(dtype=float)
    above = np.nan_to_num(magnitude, nan=-np.inf) >= threshold
    out = edges[above | in_acdc.to_numpy()].copy()
    out["in_acdc"] = in_acdc[out.index]
    return out


def _edge_category(score: float, threshold: float) -> str:
    """The legend group of a kept edge (one below the threshold is kept for ACDC)."""
    if math.isnan(score) or abs(score) < threshold:
        return "ACDC circuit only"
    return "score < 0" if score < 0 else "score >= 0"


_CATEGORY_STYLE = {
    "score < 0": {"color": "#1f77b4", "dash": "solid"},
    "score >= 0": {"color": "#d62728", "dash": "solid"},
    "ACDC circuit only": {"color": "#7f7f7f", "dash": "dot"},
}


def _segments(rows: pd.DataFrame, places: dict[str, tuple]) -> tuple[list, list]:
    """Line coordinates of `rows`' edges, separated by None, for one Scatter trace."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for source, destination in zip(rows["source"], rows["destination"], strict=True):
        (x0, y0), (x1, y1) = _ends(source, destination, places)
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    return xs, ys


def _ends(source: str, destination: str, places: dict[str, tuple]) -> tuple[tuple, tuple]:
    start = places[parse_node(source).component]
    target = parse_node(destination)
    x1, y1 = places[target.component]
    lift = 0.15 if target.input else 0.0  # q/k/v inputs fan in just below their head
    return start, (x1 + _INPUT_OFFSET[target.input], y1 - lift)


def _edge_hover(row: pd.Series, truth: set[str], with_acdc: bool) -> str:
    score = "none" if math.isnan(row["score"]) else f"{row['score']:.4g}"
    lines = [f"<b>{row['edge']}</b>", f"score: {score}"]
    if with_acdc:
        lines.append(f"in the ACDC circuit: {'yes' if row['in_acdc'] else 'no'}")
    if truth:
        lines.append(f"in the true circuit: {'yes' if row['edge'] in truth else 'no'}")
    return "<br>".join(lines)


def circuit_graph(
    edges: pd.DataFrame,
    threshold: float,
    *,
    acdc_edges: Iterable[str] = (),
    truth_edges: Iterable[str] = (),
    n_layers: int | None = None,
    n_heads: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """The circuit as a network drawing: nodes laid out by layer (bottom to top), one line
    per kept edge, hover showing node and edge names and scores.

    Args:
        edges: One row per edge of the graph: `edge`, `source`, `destination` (names as in
            `circuits.graph`) and `score` (e.g. `EdgeScores.to_frame()`; NaN = no score).
        threshold: Keep the edges with |score| >= threshold ...
        acdc_edges: ... and every edge of this circuit (e.g. ACDC's kept edges), drawn
            dotted when its score is below the threshold.
        truth_edges: The ground-truth circuit, if known (named in the hover text).
        n_layers, n_heads: The model's shape; default the largest seen in `edges`.
        title: Figure title; default says how many edges are drawn.

    Returns:
        A figure with a line trace per edge category, the `EDGE_TRACE` marker trace (one
        point per drawn edge at its midpoint, edge names in `customdata`) and a `nodes`
        trace of the components the drawn edges touch.
    """
    acdc_edges = list(acdc_edges)
    kept = kept_edges(edges, threshold, acdc_edges)
    all_places = [parse_node(n) for n in pd.unique(edges[["source", "destination"]].values.ravel())]
    layers = [p.layer for p in all_places if p.layer is not None and p.kind != "embed"]
    heads = [p.head for p in all_places if p.head is not None]
    n_layers = n_layers if n_layers is not None else (max(layers) + 1 if layers else 0)
    n_heads = n_heads if n_heads is not None else (max(heads) + 1 if heads else 1)
    places = _layout(all_places, n_layers, n_heads)
    truth, acdc = set(truth_edges), set(acdc_edges)

    figure = go.Figure()
    categories = [
_edge_category(float(score), threshold) for score in kept["score"]]
    kept = kept.assign(category=categories)
    for category, style in _CATEGORY_STYLE.items():
        rows = kept[kept["category"] == category]
        if rows.empty:
            continue
        xs, ys = _segments(rows, places)
        figure.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", name=category, hoverinfo="skip",
                line={"color": style["color"], "dash": style["dash"], "width": 1.5},
            )
        )
    _add_edge_markers(figure, kept, places, truth, with_acdc=bool(acdc))
    _add_nodes(figure, kept, places)
    _add_inputs(figure, kept, places)
    ticks, labels = _row_ticks(n_layers)
    shown = f"{len(kept)} of {len(edges)} edges (|score| >= {threshold:.3g}"
    shown += " or in the ACDC circuit)" if acdc else ")"
    figure.update_layout(
        title=title if title is not None else shown,
        xaxis={"visible": False},
        yaxis={"tickvals": ticks, "ticktext": labels, "zeroline": False, "showgrid": False},
        hovermode="closest",
        legend_title_text="edges",
        margin={"l": 40, "r": 20, "t": 50, "b": 20},
        height=min(1400, max(350, 90 * (2 * n_layers + 2))),
    )
    return figure


def _add_edge_markers(
    figure: go.Figure,
    kept: pd.DataFrame,
    places: dict[str, tuple],
    truth: set[str],
    with_acdc: bool,
) -> None:
    ends = [_ends(s, d, places) for s, d in zip(kept["source"], kept["destination"], strict=True)]
    figure.add_trace(
        go.Scatter(
            x=[(a[0] + b[0]) / 2 for a, b in ends],
            y=[(a[1] + b[1]) / 2 for a, b in ends],
            mode="markers",
            name=EDGE_TRACE,
            showlegend=False,
            marker={"size": 6, "color": "rgba(80, 80, 80, 0.35)"},
            customdata=kept["edge"].tolist(),
            hovertext=[_edge_hover(row, truth, with_acdc) for _, row in kept.iterrows()],
            hoverinfo="text",
        )
    )


def _add_nodes(figure: go.Figure, kept: pd.DataFrame, places: dict[str, tuple]) -> None:
    components: dict[str, list[float]] = {}
    for source, destination, score in zip(
        kept["source"], kept["destination"], kept["score"].abs(), strict=True
    ):
        for name in (source, destination):
            components.setdefault(parse_node(name).component, []).append(float(score))
    names = sorted(components, key=lambda n: (places[n][1], places[n][0]))
    figure.add_trace(
        go.Scatter(
            x=[places[n][0] for n in names],
            y=[places[n][1] for n in names],
            mode="markers+text",
            name="nodes",
            showlegend=False,
            text=names,
            textposition="top center",
            marker={"size": 16, "color": "#ffbf00", "line": {"width": 1, "color": "#444"}},
            hovertext=[_node_hover(n, components[n]) for n in names],
            hoverinfo="text",
        )
    )


def _add_inputs(figure: go.Figure, kept: pd.DataFrame, places: dict[str, tuple]) -> None:
    """A small labelled point where each drawn edge enters a head's q, k or v input."""
    inputs = sorted({d for d in kept["destination"] if parse_node(d).input is not None})
    ends = [_ends(d, d, places)[1] for d in inputs]
    figure.add_trace(
        go.Scatter(
            x=[x for x, _ in ends],
            y=[y for _, y in ends],
            mode="markers+text",
            name="inputs",
            showlegend=False,
            text=[parse_node(d).input for d in inputs],
            textposition="bottom center",
            textfont={"size": 9, "color": "#666"},
            marker={"size": 6, "color": "#999"},
            hovertext=inputs,
            hoverinfo="text",
        )
    )


def _node_hover(name: str, magnitudes: list[float]) -> str:
    scored = [m for m in magnitudes if not math.isnan(m)]
    largest = f"{max(scored):.4g}" if scored else "none"
    return f"<b>{name}</b><br>{len(magnitudes)} drawn edge(s)<br>largest |score|: {largest}"


def drawn_edges(figure: go.Figure) -> list[str]:
    """Names of the edges a `circuit_graph` figure draws."""
    for trace in figure.data:
        if trace.name == EDGE_TRACE:
            return list(trace.customdata) if trace.customdata is not None else []
    raise ValueError("not a circuit_graph figure: it has no 'edges' trace")


def threshold_grid(scores: Sequence[float] | np.ndarray, n: int = 41) -> list[float]:
    """Thresholds for a slider over |scores|: 0, then `n` geometric steps from the smallest
    nonzero |score| to the largest (scores span orders of magnitude), ascending."""
    magnitude = np.abs(np.asarray(scores, dtype=float))
    positive = magnitude[np.isfinite(magnitude) & (magnitude > 0)]
    if positive.size == 0:
        return [0.0]
    low, high = float(positive.min()), float(positive.max())
    if low == high:
        return [0.0, high]
    return [0.0, *np.geomspace(low, high, n).tolist()]


def trapezoid_auc(fpr: Sequence[float] | np.ndarray, tpr: Sequence[float] | np.ndarray) -> float:
    """Area under a ROC curve given by points sorted by FPR, by the trapezoid rule."""
    x, y = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def roc_curves(
    points: pd.DataFrame, *, level: str | None = None, title: str | None = None
) -> go.Figure:
    """True against false positive rate of each method, against a ground-truth circuit.

    Args:
        points: Columns `method`, `fpr`, `tpr` (one row per point, in curve order, as
            `circuits.evaluate.ROC` gives them), and `level` ("edge"/"node") if `level` is
            given.
        level: Draw only the rows of this level.
        title: Figure title.

    Returns:
        One `go.Scatter` per method, named `"<method> (AUC 0.987)"` (trapezoid rule); the
        chance diagonal is a layout shape, not a trace.
    """
    if not isinstance(points, pd.DataFrame):
        raise ValueError(f"roc_curves() takes a DataFrame, got {type(points).__name__}")
    needed = ["method", "fpr", "tpr"] + (["level"] if level is not None else [])
    missing = [c for c in needed if c not in points.columns]
    if missing:
        raise ValueError(f"roc_curves(): the table lacks column(s) {missing}")
    rows = points if level is None else points[points["level"] == level]
    figure = go.Figure()
    for method, curve in rows.groupby("method", sort=False):
        auc = trapezoid_auc(curve["fpr"], curve["tpr"])
        figure.add_trace(
            go.Scatter(
                x=curve["fpr"].to_numpy(), y=curve["tpr"].to_numpy(),
                name=f"{method} (AUC {auc:.3f})", mode="lines+markers",
                line={"shape": "linear"},
                hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<extra>" + str(method) + "</extra>",
            )
        )
    figure.add_shape(
        type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dash", "color": "gray", "width": 1}
    )
    figure.update_layout(
        title=title,
        xaxis={"title": "false positive rate", "range": [-0.02, 1.02]},
        yaxis={"title": "true positive rate", "range": [-0.02, 1.02]},
        legend_title_text="method",
        margin={"l": 40, "r": 20, "t": 50 if title else 20, "b": 40},
    )
    return figure


def faithfulness_curves(
    frame: pd.DataFrame, *, log_x: bool = True, title: str | None = None
) -> go.Figure:
    """Faithfulness of the top-k-edge circuit of each method against its size k.

    Args:
        frame: Columns `method`, `size`, `faithfulness` (the run's `faithfulness` table).
        log_x: Logarithmic size axis.
        title: Figure title.

    Returns:
        One `go.Scatter` per method; faithfulness 1 (the full model) is a dashed line.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"faithfulness_curves() takes a DataFrame, got {type(frame).__name__}")
    missing = [c for c in ("method", "size", "faithfulness") if c not in frame.columns]
    if missing:
        raise ValueError(f"faithfulness_curves(): the table lacks column(s) {missing}")
    figure = go.Figure()
    for method, curve in frame.groupby("method", sort=False):
        curve = curve.sort_values("size", kind="stable")
        figure.add_trace(
            go.Scatter(
                x=curve["size"].to_numpy(), y=curve["faithfulness"].to_numpy(),
                name=str(method), mode="lines+markers",
            )
        )
    figure.add_hline(y=1.0, line={"dash": "dash", "color": "gray", "width": 1})
    figure.update_layout(
        title=title,
        xaxis={"title": "circuit size (edges)", "type": "log" if log_x else "linear"},
        yaxis_title="faithfulness",
        legend_title_text="method",
        hovermode="x unified",
        margin={"l": 40, "r": 20, "t": 50 if title else 20, "b": 40},
    )
    return figure
