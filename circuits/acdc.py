"""ACDC: automatic circuit discovery by pruning edges one at a time (Conmy et al. 2023,
"Towards Automated Circuit Discovery for Mechanistic Interpretability").

Start from the full computational graph (`circuits.graph`). Visit the destinations in
reverse topological order (the logits first, then the last block's MLP input, its heads'
q, k and v inputs, ..., down to the first block). For each destination, try removing each
incoming edge (sources from the latest to the earliest): the edge is ablated
(`circuits.edge_patching`: resample, mean or zero) and the damage is measured; if the
damage grows by less than the threshold tau, the edge stays removed. A destination whose
component no longer feeds anything kept (all its outgoing edges removed) loses its
incoming edges without a test, as ACDC does for nodes cut off from the output; under a
norm after the attention (Gemma 2 and 3) a head's output scales its block-mates' shares
of the normalised output (`circuits.edge_patching`), so a head's incoming edges go untested
only once no head of its block feeds anything kept.

Damage is the KL divergence of the circuit's next-token distribution at `batch.position`
from the full model's (ACDC's default), or, given a task metric, |m(circuit) - m(full)|.
Each test is exact and sequential, as in ACDC, but computed incrementally
(`circuits.pruning_state`): the circuit's activations are held, and a test recomputes only
the component whose input the edge feeds and what that component reaches through kept
edges, at the read positions in the last block. The change of damage measured when an edge
was tested is kept as its score.

Speculation (`speculation=k`, for GPUs, where one small test costs its kernel launches
rather than its arithmetic): up to k edges are tested in one batched computation, trial j
of a batch assuming the decisions on the edges before it. A batch runs over the incoming
edges of one destination, or of all the q, k and v inputs of one block's heads (nothing
tested there feeds another of them). Walking the batch in order, each trial's decision is
ACDC's own as long as every decision before it was the assumed one; at the first that was
not, the trials after it are discarded and the next batch starts after that edge. A
first batch assumes every edge removed; after a wrong assumption the next batch assumes
kept the edges whose removal raised the damage by tau or more in the discarded trials (a
guess that only decides how many trials are used). The circuit and the scores are those
of `speculation=1` (to float rounding); only the number of trials computed grows. By
default the incremental tests speculate `GPU_SPECULATION` edges at a time on a GPU and
test one at a time elsewhere.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from circuits.edge_patching import Ablation, EdgePatcher
from circuits.evaluate import circuit_damages
from circuits.graph import ComputationalGraph, Node
from circuits.patching.metric import PatchMetric
from circuits.pruning_state import PruningState, not_covered
from circuits.pruning_trials import Trial, chain_of_trials, one_stage
from interp.runs import Run
from interp.tasks.base import TaskBatch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

GPU_SPECULATION = 16
"""`acdc`'s default speculation when the model is on a GPU (incremental tests): on the
2-layer induction model of `benchmarks/circuit_discovery.py` it computes 169 trials in 16
batches where one at a time computes 66 trials in 66, and a batch costs its launches, not
its arithmetic."""

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
        n_tests: Edges tested (those with a score): ACDC's tests, the same whatever the
            speculation.
        speculation: Edges tested per batched computation (1: one at a time).
        n_trials: Trials computed: `n_tests` plus the speculative trials discarded after an
            edge was kept (`n_tests` when `speculation` is 1; None, the default, means
            that).
    """

    graph: ComputationalGraph
    kept: Bool[Tensor, " edge"]
    scores: Float[Tensor, " edge"]
    threshold: float
    objective: str
    ablation: str
    damage: float
    n_tests: int
    speculation: int = 1
    n_trials: int | None = None

    def __post_init__(self) -> None:
        if self.n_trials is None:  # one trial per test, as without speculation
            object.__setattr__(self, "n_trials", self.n_tests)

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
                "speculation": self.speculation,
                "n_trials": self.n_trials,
                "edges": self.edges,
            },
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "acdc") -> ACDCResult:
        """What `save` wrote; results saved before speculation existed load with
        `speculation` 1 and `n_trials` = `n_tests`."""
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
            speculation=int(meta.get("speculation", 1)),
            n_trials=int(meta.get("n_trials", meta["n_tests"])),
        )


def damage_function(
    patcher: EdgePatcher,
    batch: TaskBatch,
    objective: str | PatchMetric,
    ablation: Ablation,
) -> tuple[Damage, str]:
    """The damage of a circuit (one edge mask) and the objective's name."""
    damages, name = circuit_damages(patcher, batch, objective, ablation)
    return (lambda mask: damages(mask[None])[0]), name


class FullPassTests:
    """The plain ACDC loop's tests: each removal measured by one full edge-patched forward
    pass from the embedding (`incremental=False`; the interface of `PruningState`). The
    trials of a speculative batch run as one pass of that many circuits (`EdgePatcher.run`
    batches masks), so it costs that many times the memory of one. The circuit's mask is
    held on the model's device and edited there by scalar fills, so that building a
    trial's masks copies nothing from the host."""

    def __init__(
        self,
        patcher: EdgePatcher,
        batch: TaskBatch,
        objective: str | PatchMetric,
        ablation: Ablation,
    ):
        self.measure, _ = circuit_damages(patcher, batch, objective, ablation)
        self.kept = torch.ones(patcher.n_edges, device=patcher.device)
        self.damage = self.measure(self.kept[None])[0]
        if math.isnan(self.damage):  # the full model's logits are real at every position
            raise ValueError("the objective returned NaN on the full model")

    def trial(self, edge: int) -> Trial:
        return self.trials([edge])[0]

    def trials(
        self, edges: Sequence[int], assume_kept: Sequence[bool] | None = None
    ) -> list[Trial]:
        """Trial j: the current circuit without `edges[j]` and the edges before it not
        assumed kept (`PruningState.trials`)."""
        edges = [int(edge) for edge in edges]
        assume_kept = [False] * len(edges) if assume_kept is None else list(assume_kept)
        masks = self.kept.repeat(len(edges), 1)
        for j, edge in enumerate(edges):
            masks[j, edge].fill_(0.0)
            if not assume_kept[j]:
                masks[j + 1 :, edge].fill_(0.0)
        return chain_of_trials(edges, assume_kept, self.measure(masks), [])

    def commit(self, trial: Trial) -> None:
        self._remove([*trial.earlier, trial.edge])
        self.damage = trial.damage

    def drop_untested(self, edges: list[int]) -> None:
        self._remove(edges)

    def _remove(self, edges: Sequence[int]) -> None:
        """Zero `edges` in the mask, one scalar fill each (an index tensor made of them
        would be a blocking copy from the host)."""
        for edge in edges:
            self.kept[edge].fill_(0.0)


def _guessed_kept(
    trials: Sequence[Trial], assumed: Sequence[bool], base: float, threshold: float
) -> list[bool]:
    """For each trial of a speculative batch, whether its edge would be kept by what the
    batch measured: the rise of damage over the trials' own chain of assumptions (the
    damage of the last trial before it assumed removed, or `base`). After a wrong
    assumption these rises are measured in a slightly different circuit; they serve as
    the assumptions of the next batch, which only decide how many of its trials are
    used, never a decision."""
    guesses = []
    chain = base
    for trial, kept in zip(trials, assumed, strict=True):
        guesses.append(not trial.damage - chain < threshold)
        if not kept:
            chain = trial.damage
    return guesses


def _reach(node: Node, post_norms: bool) -> str:
    """The component whose outgoing edges decide whether `node` can still matter: its own
    (ACDC drops the incoming edges of a component that feeds nothing kept, untested), or,
    for a head under a norm after the attention (Gemma 2 and 3), its whole block's heads,
    whose shares of the normalised output its output scales."""
    if post_norms and node.kind == "head":
        return f"L{node.layer}H*"
    return node.component


def _stage_groups(destinations: Sequence[Node]) -> list[list[Node]]:
    """Destinations in reverse topological order (ACDC's), consecutive ones that one batch
    may test together grouped (`one_stage`): the q, k and v inputs of one block's heads
    form a group, every other destination (an MLP, the logits) is one on its own."""
    groups: list[list[Node]] = []
    for node in reversed(destinations):
        if groups and one_stage([groups[-1][-1], node]):
            groups[-1].append(node)
        else:
            groups.append([node])
    return groups


def acdc(
    model: TransformerBridge,
    batch: TaskBatch,
    threshold: float,
    *,
    objective: str | PatchMetric = "kl",
    ablation: Ablation = "resample",
    progress: bool = True,
    incremental: bool | None = None,
    speculation: int | None = None,
) -> ACDCResult:
    """Prune the computational graph of `model` on `batch` with ACDC.

    Args:
        model: A pre-LayerNorm model that `functional.architecture_of` covers (native,
            GPT-2, GPT-NeoX, the Llama family, Gemma 1-3; see `circuits.edge_patching`).
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
            does). False runs every test as a full
            edge-patched forward pass from the embedding (the plain ACDC loop; the same
            circuit, for comparison). None (the default): incremental, except on models
            the pruning state does not hold (a bias under a norm after the attention:
            `pruning_state.not_covered`), which take full passes.
        speculation: How many edges to test in one batched computation, trial j assuming
            the decisions on the j - 1 before it (see the module's docstring): the same
            circuit and scores, in fewer but larger computations,
            which pays on a GPU; a CPU does the same arithmetic, and more of it. With
            `incremental=False` the batch is one full pass of that many circuits. None
            (the default): `GPU_SPECULATION` for incremental tests of a model on a GPU,
            else 1.
    """
    if (
        not isinstance(threshold, numbers.Real)  # NumPy's scalars too
        or isinstance(threshold, bool)
        or math.isnan(threshold)
    ):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    threshold = float(threshold)
    if speculation is not None and (
        isinstance(speculation, bool) or not isinstance(speculation, int) or speculation < 1
    ):
        raise ValueError(f"speculation must be an int >= 1, got {speculation!r}")
    patcher = EdgePatcher(model)
    patcher.check_batch(batch)
    if incremental is None:
        incremental = not_covered(patcher) is None
    if not isinstance(incremental, bool):
        raise ValueError(f"incremental must be a bool or None, got {incremental!r}")
    if speculation is None:
        speculation = GPU_SPECULATION if incremental and patcher.device.type == "cuda" else 1
    graph = patcher.graph
    if incremental:
        tests: PruningState | FullPassTests = PruningState(patcher, batch, ablation, objective)
    else:
        tests = FullPassTests(patcher, batch, objective, ablation)
    # bookkeeping in numpy: a test's few updates cost no tensor dispatches
    kept = np.ones(len(graph), dtype=bool)
    scores = np.full(len(graph), np.nan, dtype=np.float32)
    incoming: dict[str, list[int]] = {}
    outgoing: dict[str, list[int]] = {}
    for i, edge in enumerate(graph.edges):
        incoming.setdefault(edge.destination.name, []).append(i)
        outgoing.setdefault(_reach(edge.source, patcher.arch.post_norms), []).append(i)
    n_tests = n_trials = 0
    bar = tqdm(total=len(graph.destinations), disable=not progress, desc="ACDC")
    for group in _stage_groups(graph.destinations):
        order: list[int] = []  # the group's edges in ACDC's order
        for destination in group:
            edges = incoming[destination.name]
            feeds = outgoing.get(_reach(destination, patcher.arch.post_norms), [])
            # (what a head of the group feeds lies in later stages: decided already)
            if destination.kind != "logits" and not kept[feeds].any():
                kept[edges] = False
                tests.drop_untested(edges)
            else:
                order += reversed(edges)
        start = 0
        guesses = np.zeros(len(order), dtype=bool)  # edges the next trials assume kept
        while start < len(order):
            assumed = guesses[start : start + speculation].tolist()
            trials = tests.trials(order[start : start + speculation], assumed)
            n_trials += len(trials)
            accepted: Trial | None = None
            damage = base = tests.damage
            for j, trial in enumerate(trials):  # a decision holds while those before it did
                start += 1
                n_tests += 1
                scores[trial.edge] = trial.damage - damage
                removed = trial.damage - damage < threshold  # (a NaN damage keeps the edge)
                if removed:
                    kept[trial.edge] = False
                    accepted, damage = trial, trial.damage
                if removed == assumed[j]:  # the trials after it assumed otherwise
                    later = _guessed_kept(trials, assumed, base, threshold)[j + 1 :]
                    guesses[start : start + len(later)] = later
                    break
            if accepted is not None:
                tests.commit(accepted)
        bar.update(len(group))
    bar.close()
    return ACDCResult(
        graph=graph,
        kept=torch.from_numpy(kept),
        scores=torch.from_numpy(scores),
        threshold=float(threshold),
        objective="kl" if objective == "kl" else getattr(objective, "__name__", "metric"),
        ablation=ablation,
        damage=tests.damage,
        n_tests=n_tests,
        speculation=speculation,
        n_trials=n_trials,
    )
