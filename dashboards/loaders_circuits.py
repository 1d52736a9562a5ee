"""Cached reads of what a `circuit` run saved (see `circuits.circuit_experiment`), as
DataFrames and numpy arrays: never torch, never a model.

Per-edge tensors are read with `safetensors.numpy`; their order is the graph's edge order,
named by the run's `graph_edges` table (or, for runs made before it was saved, by an EAP
score table, which lists every edge in the same order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from safetensors.numpy import load_file

from dashboards.loaders import CACHE_TTL_S
from interp.runs import Run, RunStore

SCORE_METHODS = ("eap", "eap-ig")
"""Methods whose run saves a score for every edge (`edge_scores_<method>`)."""

_EDGE_COLUMNS = ["edge", "source", "destination"]


@dataclass(frozen=True)
class ACDCCircuit:
    """One ACDC threshold's result.

    Attributes:
        threshold: tau.
        edges: Names of the kept edges.
        scores: Increase of damage measured per edge, `[n_edges]` in graph order (NaN:
            untested), or None when the run's edge list is unknown.
    """

    threshold: float
    edges: list[str]
    scores: np.ndarray | None


@dataclass(frozen=True)
class CircuitRunData:
    """What the Circuits page draws of one run.

    Attributes:
        ref: "experiment/run_id".
        summary: summary.json.
        n_layers, n_heads: The model's shape.
        edge_list: Every edge in graph order (`edge`, `source`, `destination`), or None.
        scores: Method -> one row per edge (`edge`, `source`, `destination`, `score`).
        acdc: One entry per ACDC threshold, in config order.
        acdc_table: The `acdc` table (threshold, n_edges, damage, n_tests), or None.
        faithfulness: The `faithfulness` table (method, size, faithfulness), or None.
        roc: ROC points (method, level, fpr, tpr), or None (no truth, or an older run).
        truth: The true circuit's edges ([] when unknown).
    """

    ref: str
    summary: dict[str, Any]
    n_layers: int
    n_heads: int
    edge_list: pd.DataFrame | None
    scores: dict[str, pd.DataFrame] = field(default_factory=dict)
    acdc: list[ACDCCircuit] = field(default_factory=list)
    acdc_table: pd.DataFrame | None = None
    faithfulness: pd.DataFrame | None = None
    roc: pd.DataFrame | None = None
    truth: list[str] = field(default_factory=list)

    def score_sources(self) -> dict[str, pd.DataFrame]:
        """Every per-edge score the graph can be drawn from: each EAP method, then each
        ACDC threshold ("acdc tau=0.01") whose edges can be named."""
        sources = dict(self.scores)
        if self.edge_list is not None:
            for circuit in self.acdc:
                if circuit.scores is not None:
                    frame = self.edge_list.assign(score=circuit.scores)
                    sources[f"acdc tau={circuit.threshold:g}"] = frame
        return sources


def _has(run: Run, name: str) -> bool:
    return any((run.artifacts_dir / f"{name}{s}").exists() for s in (".parquet", ".csv"))


def _optional_table(run: Run, name: str) -> pd.DataFrame | None:
    return run.load_table(name) if _has(run, name) else None


def _graph_shape(run: Run, names: list[str]) -> tuple[int, int]:
    for name in names:
        if (run.artifacts_dir / f"{name}.json").exists():
            graph = run.load_json(name)["graph"]
            return int(graph["n_layers"]), int(graph["n_heads"])
    raise ValueError(f"run {run.ref} saved no edge scores or ACDC circuits")


def _acdc_circuit(run: Run, index: int, n_edges: int | None) -> ACDCCircuit:
    name = f"acdc_{index}"
    meta = run.load_json(name)
    tensors = load_file(run.artifact_path(f"{name}.safetensors"))
    scores = tensors["scores"].astype(float)
    if n_edges is not None and scores.shape != (n_edges,):
        raise ValueError(f"{name}: {scores.shape[0]} scores for a graph of {n_edges} edges")
    return ACDCCircuit(
        threshold=float(meta["threshold"]),
        edges=[str(e) for e in meta["edges"]],
        scores=scores if n_edges is not None else None,
    )


def read_circuit_run(run: Run) -> CircuitRunData:
    """Everything the Circuits page draws of a finished `circuit` run.

    Raises OSError / ValueError (or the reader's own error) when an artifact the run's
    config says it saved is missing or unreadable.
    """
    methods = [str(m) for m in run.config.get("methods", [])]
    scores = {
        m: run.load_table(f"edge_scores_{m}")[[*_EDGE_COLUMNS, "score"]]
        for m in methods
        if m in SCORE_METHODS
    }
    edge_list = _optional_table(run, "graph_edges")
    if edge_list is None and scores:
        edge_list = next(iter(scores.values()))[_EDGE_COLUMNS]
    n_acdc = len(run.config.get("acdc_thresholds", [])) if "acdc" in methods else 0
    n_edges = None if edge_list is None else len(edge_list)
    names = [f"edge_scores_{m}" for m in scores] + [f"acdc_{i}" for i in range(n_acdc)]
    n_layers, n_heads = _graph_shape(run, names)
    truth_path = run.artifacts_dir / "truth_edges.json"
    return CircuitRunData(
        ref=run.ref,
        summary=run.summary,
        n_layers=n_layers,
        n_heads=n_heads,
        edge_list=edge_list,
        scores=scores,
        acdc=[_acdc_circuit(run, i, n_edges) for i in range(n_acdc)],
        acdc_table=_optional_table(run, "acdc"),
        faithfulness=_optional_table(run, "faithfulness"),
        roc=_optional_table(run, "roc"),
        truth=[str(e) for e in run.load_json("truth_edges")] if truth_path.exists() else [],
    )


@st.cache_data(ttl=CACHE_TTL_S, max_entries=8, show_spinner=False)
def circuit_run(runs_dir: str, ref: str) -> CircuitRunData:
    """`read_circuit_run` of run `ref` in the store at `runs_dir`, cached."""
    return read_circuit_run(RunStore(runs_dir).load(ref))


def clear_caches() -> None:
    """Forget every cached read."""
    circuit_run.clear()
