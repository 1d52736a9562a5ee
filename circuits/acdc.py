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
Each test is exact and sequential, as in ACDC, but computed incrementally
(`circuits.pruning_state`): the circuit's activations are held, and a test recomputes only
the component whose input the edge feeds and what that component reaches through kept
edges, at the read positions in the last block. The change of damage measured when an edge
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
from circuits.pruning_state import PruningState, Trial
from interp.metrics import kl_divergence
from interp.runs import Run
from interp.tasks.base import TaskBatch

Damage = Callable[[Tensor], float]
"""`edge mask [n_edges] -> damage of that circuit` (lower is better), from a full
edge-patched forward pass."""


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
        run = Run.open(run)
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
        run = Run.open(run)
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
        full_mask = patcher.dense(torch.ones(1, patcher.n_edges, device=patcher.device))
        full_logits = patcher.run(batch.clean, full_mask, None)[0]

    def logits_of(mask: Tensor) -> Tensor:
        with torch.inference_mode():
            dense = patcher.dense(mask[None].to(patcher.device))
            return patcher.run(batch.clean, dense, ablated)[0]

    if objective == "kl":

        def kl(mask: Tensor) -> float:
            logits = logits_of(mask)
            return float(kl_divergence(logits, full_logits, batch.position).mean())

        return kl, "kl"
    if not callable(objective):
        raise ValueError(f"objective must be 'kl' or a metric function, got {objective!r}")
    full_value = float(scalar_metric(objective, full_logits, batch))

    def distance(mask: Tensor) -> float:
        return abs(float(scalar_metric(objective, logits_of(mask), batch)) - full_value)

    return distance, getattr(objective, "__name__", "metric")


class FullPassTests:
    """The plain ACDC loop's tests: each removal measured by one full edge-patched forward
    pass from the embedding (`incremental=False`; the interface of `PruningState`)."""

    def __init__(
        self,
        patcher: EdgePatcher,
        batch: TaskBatch,
        objective: str | PatchMetric,
        ablation: Ablation,
    ):
        self.measure, _ = damage_function(patcher, batch, objective, ablation)
        self.kept = torch.ones(patcher.n_edges)
        self.damage = self.measure(self.kept)

    def trial(self, edge: int) -> Trial:
        mask = self.kept.clone()
        mask[edge] = 0.0
        return Trial(edge=edge, damage=self.measure(mask), writes=[])

    def commit(self, trial: Trial) -> None:
        self.kept[trial.edge] = 0.0
        self.damage = trial.damage

    def drop_untested(self, edges: list[int]) -> None:
        self.kept[edges] = 0.0


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
        incremental: Hold the circuit's activations and let each test recompute only
            what removing its edge changes (`circuits.pruning_state`; the metric must read
            the logits at `batch.position` only, as every metric of `interp.metrics`
            does). False runs every test as a full edge-patched forward pass from the
            embedding (the plain ACDC loop; the same circuit, for comparison).
    """
    if (
        not isinstance(threshold, int | float)
        or isinstance(threshold, bool)
        or math.isnan(threshold)
    ):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    patcher = EdgePatcher(model)
    graph = patcher.graph
    if incremental:
        tests: PruningState | FullPassTests = PruningState(patcher, batch, ablation, objective)
    else:
        tests = FullPassTests(patcher, batch, objective, ablation)
    kept = torch.ones(len(graph), dtype=torch.bool)
    scores = torch.full((len(graph),), float("nan"))
    incoming: dict[str, list[int]] = {}
    outgoing: dict[str, list[int]] = {}
    for i, edge in enumerate(graph.edges):
        incoming.setdefault(edge.destination.name, []).append(i)
        outgoing.setdefault(edge.source.component, []).append(i)
    n_tests = 0
    destinations = list(reversed(graph.destinations))
    for destination in tqdm(destinations, disable=not progress, desc="ACDC"):
        edges = incoming[destination.name]
        feeds = outgoing.get(destination.component, [])
        if destination.kind != "logits" and not bool(kept[feeds].any()):
            kept[edges] = False
            tests.drop_untested(edges)
            continue
        for i in reversed(edges):
            trial = tests.trial(i)
            n_tests += 1
            scores[i] = trial.damage - tests.damage
            if trial.damage - tests.damage < threshold:
                kept[i] = False
                tests.commit(trial)
    return ACDCResult(
        graph=graph,
        kept=kept,
        scores=scores,
        threshold=float(threshold),
        objective="kl" if objective == "kl" else getattr(objective, "__name__", "metric"),
        ablation=ablation,
        damage=tests.damage,
        n_tests=n_tests,
    )
