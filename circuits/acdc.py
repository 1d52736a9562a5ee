"""ACDC: automatic circuit discovery by pruning edges one at a time (Conmy et al. 2023,
"Towards Automated Circuit Discovery for Mechanistic Interpretability").

Start from the full computational graph (`circuits.graph`). Visit the destinations in
reverse topological order (the logits first, then the last block's MLP input, its heads'
q, k and v inputs, ..., down to the first block). For each destination, try removing each
incoming edge (sources from the latest to the earliest): the edge is ablated
(`circuits.edge_patching`: resample, mean or zero) and the damage is measured; if the
damage grows by less than the threshold tau, the edge stays removed. A destination whose
component no longer feeds anything kept (all its outgoing edges removed) loses its
incoming edges without a test, as ACDC does for nodes cut off from the output.

Damage is the KL divergence of the circuit's next-token distribution at `batch.position`
from the full model's (ACDC's default), or, given a task metric, |m(circuit) - m(full)|.
Each test is one forward pass of the edge-patched model (exact, sequential, as in ACDC),
begun at the destination's own layer: every earlier source still computes what it does
in the full model, so it is read from a cache. The change of damage measured when an edge
was tested is kept as its score.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from circuits.edge_patching import Ablation, EdgePatcher
from circuits.graph import ComputationalGraph
from circuits.patching.engine import PatchMetric, scalar_metric
from interp.metrics import kl_divergence
from interp.runs import Run
from interp.tasks.base import TaskBatch

Damage = Callable[[Tensor, int], float]
"""`(edge mask [n_edges], start stage) -> damage of that circuit` (lower is better); the
forward pass begins at the start stage (`EdgePatcher.stage`), earlier sources cached."""


@dataclass(frozen=True)
class ACDCResult:
    """The circuit ACDC kept and what it measured on the way.

    Attributes:
        graph: The computational graph; `kept[i]` and `scores[i]` belong to `graph.edges[i]`.
        kept: Edges in the circuit, `[n_edges]`.
        scores: Increase of damage measured when the edge was tested (NaN where it was
            removed untested because its destination fed nothing kept).
        threshold: tau.
        objective: `"kl"` or the task metric's name.
        ablation: `"resample"`, `"mean"` or `"zero"`.
        damage: The damage of the final circuit.
        n_tests: Forward passes spent testing edges.
    """

    graph: ComputationalGraph
    kept: Bool[Tensor, " edge"]
    scores: Float[Tensor, " edge"]
    threshold: float
    objective: str
    ablation: str
    damage: float
    n_tests: int

    @property
    def edges(self) -> list[str]:
        """Names of the kept edges, in graph order."""
        return [edge.name for edge, kept in zip(self.graph.edges, self.kept, strict=True) if kept]

    def to_frame(self) -> pd.DataFrame:
        """One row per edge: `edge`, `kept`, `score`."""
        return pd.DataFrame(
            {
                "edge": [edge.name for edge in self.graph.edges],
                "kept": self.kept.tolist(),
                "score": self.scores.tolist(),
            }
        )

    def save(self, run: Run | str | os.PathLike[str], name: str = "acdc") -> None:
        """`artifacts/<name>.safetensors` (kept, scores) and `<name>.json` (the rest)."""
        run = run if isinstance(run, Run) else Run.open(run)
        run.save_tensors(name, {"kept": self.kept.to(torch.uint8), "scores": self.scores})
        run.save_json(
            name,
            {
                "graph": json.loads(self.graph.to_json([])),
                "threshold": self.threshold,
                "objective": self.objective,
                "ablation": self.ablation,
                "damage": self.damage,
                "n_tests": self.n_tests,
                "edges": self.edges,
            },
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "acdc") -> ACDCResult:
        run = run if isinstance(run, Run) else Run.open(run)
        meta = run.load_json(name)
        tensors = run.load_tensors(name)
        graph, _ = ComputationalGraph.from_json(json.dumps(meta["graph"]))
        return cls(
            graph=graph,
            kept=tensors["kept"].bool(),
            scores=tensors["scores"].float(),
            threshold=float(meta["threshold"]),
            objective=str(meta["objective"]),
            ablation=str(meta["ablation"]),
            damage=float(meta["damage"]),
            n_tests=int(meta["n_tests"]),
        )


def damage_function(
    patcher: EdgePatcher,
    batch: TaskBatch,
    objective: str | PatchMetric,
    ablation: Ablation,
) -> tuple[Damage, str]:
    """The damage of a circuit (one edge mask) and the objective's name."""
    batch = batch.to(patcher.device)
    with torch.inference_mode():
        ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, ablation)
        upstream = patcher.source_outputs(batch.clean)
        full_mask = patcher.dense(torch.ones(1, patcher.n_edges, device=patcher.device))
        full_logits = patcher.run(batch.clean, full_mask, None)[0]

    def logits_of(mask: Tensor, start: int) -> Tensor:
        with torch.inference_mode():
            dense = patcher.dense(mask[None])
            return patcher.run(batch.clean, dense, ablated, start=start, upstream=upstream)[0]

    if objective == "kl":

        def kl(mask: Tensor, start: int) -> float:
            logits = logits_of(mask, start)
            return float(kl_divergence(logits, full_logits, batch.position).mean())

        return kl, "kl"
    if not callable(objective):
        raise ValueError(f"objective must be 'kl' or a metric function, got {objective!r}")
    full_value = float(scalar_metric(objective, full_logits, batch))

    def distance(mask: Tensor, start: int) -> float:
        return abs(float(scalar_metric(objective, logits_of(mask, start), batch)) - full_value)

    return distance, getattr(objective, "__name__", "metric")


def acdc(
    model: TransformerBridge,
    batch: TaskBatch,
    threshold: float,
    *,
    objective: str | PatchMetric = "kl",
    ablation: Ablation = "resample",
    progress: bool = True,
    incremental: bool = True,
) -> ACDCResult:
    """Prune the computational graph of `model` on `batch` with ACDC.

    Args:
        model: A native pre-LayerNorm model (see `circuits.edge_patching`).
        batch: Clean prompts (the circuit's input) and corrupted ones (resample ablation).
        threshold: tau: an edge is removed when removing it raises the damage by less.
        objective: `"kl"` (KL from the full model at `batch.position`) or a task metric
            `(logits, batch) -> scalar`, whose distance from the full model's value is the
            damage.
        ablation: What a removed edge carries: `"resample"`, `"mean"` or `"zero"`.
        progress: A progress bar over destinations.
        incremental: Start each test's forward pass at the destination's own layer, with
            the outputs of every earlier source taken from the full model: exact, since
            in reverse topological order no edge into an earlier destination has been
            touched yet. False runs every test from the embedding (the plain ACDC loop;
            same circuit, for comparison).
    """
    if (
        not isinstance(threshold, int | float)
        or isinstance(threshold, bool)
        or math.isnan(threshold)
    ):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    patcher = EdgePatcher(model)
    graph = patcher.graph
    damage, name = damage_function(patcher, batch, objective, ablation)
    kept = torch.ones(len(graph), dtype=torch.bool, device=patcher.device)
    scores = torch.full((len(graph),), float("nan"))
    incoming: dict[str, list[int]] = {}
    outgoing: dict[str, list[int]] = {}
    for i, edge in enumerate(graph.edges):
        incoming.setdefault(edge.destination.name, []).append(i)
        outgoing.setdefault(edge.source.component, []).append(i)
    current = damage(kept.float(), 0)
    n_tests = 0
    destinations = list(reversed(graph.destinations))
    for destination in tqdm(destinations, disable=not progress, desc="ACDC"):
        edges = incoming[destination.name]
        feeds = outgoing.get(destination.component, [])
        if destination.kind != "logits" and not bool(kept[feeds].any()):
            kept[edges] = False
            continue
        start = patcher.stage(destination) if incremental else 0
        for i in reversed(edges):
            kept[i] = False
            trial = damage(kept.float(), start)
            n_tests += 1
            scores[i] = trial - current
            if trial - current < threshold:
                current = trial
            else:
                kept[i] = True
    return ACDCResult(
        graph=graph,
        kept=kept.cpu(),
        scores=scores,
        threshold=float(threshold),
        objective=name,
        ablation=ablation,
        damage=current,
        n_tests=n_tests,
    )
