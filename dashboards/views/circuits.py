"""The Circuits page: a `circuit` run's discovered circuit as an interactive graph with a
threshold slider, ROC curves against the ground truth, and faithfulness against size.

Reads only what the run saved (`dashboards.loaders_circuits`); never runs a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboards.figures.circuits import (
    circuit_graph,
    faithfulness_curves,
    kept_edges,
    roc_curves,
    threshold_grid,
)
from dashboards.loaders_circuits import CircuitRunData, circuit_run
from dashboards.run_picker import pick_run
from interp.runs.errors import one_line

KIND = "circuit"
SCORE_MEANING = {
    "eap": "EAP score: the estimated change of the metric when the edge is ablated "
    "(negative: the edge helps the metric).",
    "acdc": "ACDC score: how much the damage grew when the edge was removed during the "
    "search (no score: never tested, its destination was already cut off).",
}
DEFAULT_DRAWN = 20
"""The default threshold keeps about this many edges."""
MAX_DRAWN = 3000
"""Above this many kept edges the graph is not drawn (raise the threshold)."""
NO_ACDC = "none"


def render_circuits_page(runs_dir: Path) -> None:
    """Draw the Circuits page for the run store at `runs_dir`."""
    st.header("Circuits")
    info = pick_run(runs_dir, KIND, key="circuits_run")
    if info is None:
        return
    try:
        data = circuit_run(str(runs_dir), info.ref)
    except Exception as error:  # a damaged run must not take the page down
        st.warning(f"Could not read run `{info.ref}`: {one_line(error)}")
        return
    render_summary(data)
    render_graph(data)
    render_roc(data)
    render_faithfulness(data)


def auc_table(summary: dict) -> pd.DataFrame:
    """One row per method with its AUCs and whether it recovered the truth (from summary)."""
    rows = []
    for method in ("eap", "eap-ig", "acdc"):
        entry = summary.get(method)
        if isinstance(entry, dict) and "auc_edge" in entry:
            rows.append(
                {"method": method}
                | {k: entry.get(k) for k in ("auc_edge", "auc_node", "recovers_truth")}
            )
    return pd.DataFrame(rows)


def render_summary(data: CircuitRunData) -> None:
    """Headline numbers: graph size, truth size, AUCs per method."""
    columns = st.columns(3)
    columns[0].metric("edges in the graph", data.summary.get("n_edges", "?"))
    columns[1].metric("true circuit edges", data.summary.get("n_true_edges", "unknown"))
    columns[2].metric("ablation", str(data.summary.get("ablation", "?")))
    table = auc_table(data.summary)
    if not table.empty:
        st.dataframe(table, hide_index=True)


def default_threshold(grid: list[float], scores: np.ndarray, keep: int = DEFAULT_DRAWN) -> float:
    """The largest grid value that keeps at least `keep` edges (or every nonzero one)."""
    magnitude = np.sort(np.nan_to_num(np.abs(scores), nan=0.0))[::-1]
    nonzero = int((magnitude > 0).sum())
    if nonzero == 0:
        return grid[0]
    target = magnitude[min(keep, nonzero) - 1]
    below = [value for value in grid if value <= target * (1 + 1e-9)]
    return below[-1] if below else grid[0]


def render_graph(data: CircuitRunData) -> None:
    """The circuit graph: a score source, a threshold slider, an ACDC overlay."""
    st.subheader("Circuit graph")
    sources = data.score_sources()
    acdc = {f"tau={c.threshold:g} ({len(c.edges)} edges)": c.edges for c in data.acdc}
    if not sources and not acdc:
        st.info("This run saved no edge scores to draw.")
        return
    columns = st.columns(2)
    source = columns[0].selectbox(
        "Edge scores from", list(sources), key=f"circuits_source_{data.ref}"
    ) if sources else None
    overlay = columns[1].selectbox(
        "Also draw the ACDC circuit at",
        [NO_ACDC, *acdc] if sources else list(acdc),
        key=f"circuits_acdc_{data.ref}",
    )
    edges = sources[source] if source is not None else _acdc_only_edges(acdc[overlay])
    scores = edges["score"].to_numpy(dtype=float)
    threshold = _threshold_slider(scores, key=f"circuits_threshold_{data.ref}_{source}")
    if source is not None:
        st.caption(SCORE_MEANING["acdc" if source.startswith("acdc") else "eap"])
    overlay_edges = acdc.get(overlay, [])
    n_kept = len(kept_edges(edges, threshold, overlay_edges))
    if n_kept > MAX_DRAWN:
        st.warning(f"{n_kept} edges pass this threshold; raise it to draw at most {MAX_DRAWN}.")
        return
    st.plotly_chart(
        circuit_graph(
            edges,
            threshold,
            acdc_edges=overlay_edges,
            truth_edges=data.truth,
            n_layers=data.n_layers,
            n_heads=data.n_heads,
        ),
        key=f"circuits_graph_{data.ref}",
    )


def threshold_labels(grid: list[float]) -> list[str]:
    """The slider's label of each threshold: 3 significant digits, more where two
    thresholds would otherwise read alike."""
    for digits in range(3, 18):
        labels = [f"{value:.{digits}g}" for value in grid]
        if len(set(labels)) == len(labels):
            return labels
    return [repr(value) for value in grid]


def _threshold_slider(scores: np.ndarray, key: str) -> float:
    """A slider over a geometric grid of |score| thresholds (0 when no score is nonzero).

    The slider's options are the grid's indices, not the thresholds: Streamlit matches a
    float value to float options within 5e-12, so thresholds that small (tracr runs score
    edges down to 1e-14) would all read as 0."""
    grid = threshold_grid(scores)
    if len(grid) == 1:
        return grid[0]
    labels = threshold_labels(grid)
    index = st.select_slider(
        "Threshold on |score|",
        options=list(range(len(grid))),
        value=grid.index(default_threshold(grid, scores)),
        format_func=labels.__getitem__,
        key=key,
        help="edges with |score| at or above it are drawn (plus the ACDC circuit, if chosen)",
    )
    return grid[index]


def _acdc_only_edges(edges: list[str]) -> pd.DataFrame:
    """The ACDC circuit's edges with no score, for a run whose edge list is unknown."""
    ends = [name.split("->", 1) for name in edges]
    return pd.DataFrame(
        {
            "edge": edges,
            "source": [e[0] for e in ends],
            "destination": [e[1] for e in ends],
            "score": np.nan,
        }
    )


def render_roc(data: CircuitRunData) -> None:
    """ROC curves of every method against the ground-truth circuit."""
    st.subheader("ROC against the ground truth")
    if data.roc is None:
        if auc_table(data.summary).empty:
            st.info("This run's source has no ground-truth circuit (only planted models and "
                    "tracr programs have one), so there is no ROC curve.")
        else:
            st.info("This run saved no ROC points (it predates them); its AUCs are above.")
        return
    level = st.radio(
        "Level", ["edge", "node"], horizontal=True, key=f"circuits_roc_level_{data.ref}",
        help="node level folds q, k and v into their head",
    )
    st.plotly_chart(
        roc_curves(data.roc, level=level, title=f"{level}-level ROC"),
        key=f"circuits_roc_{data.ref}",
    )


def render_faithfulness(data: CircuitRunData) -> None:
    """Faithfulness of the top-k circuits of each method, and ACDC's circuits."""
    st.subheader("Faithfulness against circuit size")
    if data.faithfulness is None or data.faithfulness.empty:
        st.info(
            "This run saved no faithfulness curve (it predates the `faithfulness` table)."
            if data.scores
            else "This run has no faithfulness curve (it ran no EAP method)."
        )
    else:
        st.plotly_chart(
            faithfulness_curves(data.faithfulness), key=f"circuits_faithfulness_{data.ref}"
        )
    if data.acdc_table is not None:
        st.caption("ACDC: circuit size and damage at each threshold")
        st.dataframe(data.acdc_table, hide_index=True)
