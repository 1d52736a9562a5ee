"""How good is a circuit: faithfulness, KL from the full model, and ROC against the truth.

- Faithfulness of a circuit C (Wang et al. 2022; Hanna et al. 2024):
  `(m(C) - m(empty)) / (m(full) - m(empty))`, 1 when the circuit alone does what the model
  does, 0 when it does no better than the model with every edge ablated.
- KL divergence of the circuit's next-token distribution from the full model's, at
  `batch.position` (the faithfulness loss of ACDC, Conmy et al. 2023).
- Faithfulness against circuit size: the circuits made of the top-k edges of a score.
- ROC against a ground-truth circuit: true and false positive rates over every threshold
  of a score (or over a set of discovered circuits, e.g. ACDC at several thresholds), AUC
  by the trapezoid rule and by ACDC's pessimistic staircase (each step goes right, then up,
  so the area never credits what lies between two measured points), at edge level and at
  node level (q, k and v folded into their head; a node is in a circuit when any edge of
  it is, and its score is the largest |score| of its edges).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.edge_patching import Ablation, EdgePatcher
from circuits.graph import ComputationalGraph
from circuits.patching.metric import CopyMetric, PatchMetric
from interp.metrics import KLReference
from interp.tasks.base import TaskBatch


def masks_of(graph: ComputationalGraph, circuits: Sequence[Iterable[str]]) -> Tensor:
    """`[n_circuits, n_edges]` masks (1 = kept) of circuits given as edge names."""
    masks = torch.zeros(len(circuits), len(graph))
    for row, edges in enumerate(circuits):
        for name in edges:
            graph.edge(name)  # a one-line ValueError for a name the graph lacks
            masks[row, graph.edge_index[name]] = 1.0
    return masks


@dataclass(frozen=True)
class Faithfulness:
    """Metric of circuits next to the full model and the fully ablated one.

    Attributes:
        values: Metric of each circuit, `[n_circuits]`.
        full: Metric with every edge kept.
        empty: Metric with every edge ablated.
    """

    values: Float[Tensor, " circuit"]
    full: float
    empty: float

    @property
    def faithfulness(self) -> Float[Tensor, " circuit"]:
        """`(m(C) - m(empty)) / (m(full) - m(empty))` per circuit."""
        gap = self.full - self.empty
        if abs(gap) <= 1e-6 * max(1.0, abs(self.full), abs(self.empty)):
            raise ValueError("faithfulness is undefined: the full and empty circuits score alike")
        return (self.values - self.empty) / gap


def faithfulness(
    patcher: EdgePatcher,
    batch: TaskBatch,
    masks: Tensor,
    metric: PatchMetric,
    *,
    ablation: Ablation = "resample",
    max_circuits: int = 16,
) -> Faithfulness:
    """The metric of each circuit in `masks` (`[n_circuits, n_edges]`, 1 = kept) with the
    full and empty circuits for scale."""
    masks = _circuit_masks(patcher, masks)
    ends = torch.stack([torch.ones(patcher.n_edges), torch.zeros(patcher.n_edges)])
    values = patcher.evaluate(
        batch,
        torch.cat([ends, masks.float().cpu()]),
        metric,
        ablation=ablation,
        max_circuits=max_circuits,
    )
    return Faithfulness(values=values[2:], full=float(values[0]), empty=float(values[1]))


def circuit_kl(
    patcher: EdgePatcher, batch: TaskBatch, masks: Tensor, *, ablation: Ablation = "resample"
) -> Float[Tensor, " circuit"]:
    """Mean KL(full model || circuit) of next-token distributions at `batch.position`, for
    each circuit of `masks` (`[n_circuits, n_edges]`, 1 = kept)."""
    masks = _circuit_masks(patcher, masks)
    patcher.check_batch(batch)
    kl, _ = circuit_damages(patcher, batch, "kl", ablation)
    return torch.tensor(kl(masks.float()))


def circuit_damages(
    patcher: EdgePatcher,
    batch: TaskBatch,
    objective: str | PatchMetric,
    ablation: Ablation,
) -> tuple[Callable[[Tensor], list[float]], str]:
    """A function from masks `[n_circuits, n_edges]` (1 = kept) to each circuit's damage,
    and the objective's name. The damage is ACDC's (Conmy et al. 2023): the batch's mean
    KL(full model || circuit) at `batch.position` for `objective="kl"`, or
    |m(circuit) - m(full)| for a task metric m. All circuits of a call run in one
    edge-patched forward pass, read back in one transfer."""
    batch = batch.to(patcher.device)
    rows = torch.arange(len(batch), device=patcher.device)
    with torch.inference_mode():
        ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, ablation)
        full_logits = patcher.full_logits(batch.clean)

    def logits_of(masks: Tensor) -> Float[Tensor, "circuit batch pos vocab"]:
        return patcher.run(batch.clean, patcher.dense(masks), ablated)

    if objective == "kl":
        reference = KLReference.of(full_logits[rows, batch.position])

        def kl(masks: Tensor) -> list[float]:
            with torch.inference_mode():
                logits = logits_of(masks)[:, rows, batch.position]
                return reference.divergence(logits).mean(dim=-1).tolist()

        return kl, "kl"
    if not callable(objective):
        raise ValueError(f"objective must be 'kl' or a metric function, got {objective!r}")
    per_copy = CopyMetric(objective, batch)
    with torch.inference_mode():
        full_value = per_copy.one(full_logits)

    def distance(masks: Tensor) -> list[float]:
        with torch.inference_mode():
            return (per_copy(logits_of(masks)) - full_value).abs().tolist()

    return distance, getattr(objective, "__name__", "metric")


def _circuit_masks(patcher: EdgePatcher, masks: object) -> Tensor:
    """`masks` as a `[n_circuits, n_edges]` tensor, or a one-line ValueError."""
    if not isinstance(patcher, EdgePatcher):
        raise ValueError(f"patcher must be an EdgePatcher, got {type(patcher).__name__}")
    return patcher.graph.check_masks(masks)


def _check_finite(values: Tensor, what: str) -> None:
    """A one-line ValueError if floating `values` hold NaN or infinite entries."""
    if values.dtype.is_floating_point and not bool(values.isfinite().all()):
        raise ValueError(f"{what} hold NaN or infinite values")


def _edge_values(graph: ComputationalGraph, values: object, what: str) -> Tensor:
    """`values` as a finite `[n_edges]` tensor of `graph`, or a one-line ValueError."""
    values = torch.as_tensor(values)
    if values.shape != (len(graph),):
        raise ValueError(f"{what} must be [{len(graph)}] (one per edge), got {tuple(values.shape)}")
    _check_finite(values, what)
    return values.detach().cpu()


def top_k_masks(scores: Tensor, sizes: Sequence[int]) -> Tensor:
    """`[len(sizes), n_edges]`: for each k, the k edges of largest |score| kept."""
    scores = torch.as_tensor(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be [n_edges], got {tuple(scores.shape)}")
    _check_finite(scores, "scores")  # argsort would rank NaN first
    order = scores.abs().argsort(descending=True)
    masks = torch.zeros(len(sizes), scores.numel())
    for row, k in enumerate(sizes):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):  # NumPy's ints too
            raise ValueError(f"circuit sizes must be ints, got {k!r}")
        k = int(k)
        if not 0 <= k <= scores.numel():
            raise ValueError(f"circuit size {k} outside 0..{scores.numel()}")
        masks[row, order[:k]] = 1.0
    return masks


@dataclass(frozen=True)
class ROC:
    """Points of a ROC curve, sorted by false positive rate, from (0, 0) to (1, 1).

    Attributes:
        fpr: False positive rates.
        tpr: True positive rates.
    """

    fpr: Float[Tensor, " point"]
    tpr: Float[Tensor, " point"]

    @property
    def auc(self) -> float:
        """Area under the curve by the trapezoid rule."""
        return float(torch.trapezoid(self.tpr, self.fpr))

    @property
    def pessimistic_auc(self) -> float:
        """Area under ACDC's pessimistic staircase: right at the lower TPR, then up."""
        return float(((self.fpr[1:] - self.fpr[:-1]) * self.tpr[:-1]).sum())


def _roc_from_points(points: list[tuple[float, float]]) -> ROC:
    points = sorted({(0.0, 0.0), (1.0, 1.0), *points})
    # keep, for each FPR, the best TPR (a monotone curve through measured points)
    fpr = torch.tensor([p[0] for p in points], dtype=torch.float64)
    tpr = torch.tensor([p[1] for p in points], dtype=torch.float64)
    tpr = torch.cummax(tpr, dim=0).values
    return ROC(fpr=fpr, tpr=tpr)


def _rates(predicted: Tensor, truth: Tensor) -> tuple[float, float]:
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("ROC needs a ground truth with both members and non-members")
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    return fp / negatives, tp / positives


def roc_of_scores(scores: Tensor, truth: Tensor) -> ROC:
    """ROC of `|scores|` as a detector of `truth` (bool, same shape), over every threshold.

    Threshold t predicts every entry with `|score| >= t` (so entries of equal score enter
    together; a NaN score never does). One sort and two cumulative sums give the rates at
    every distinct |score| at once, in O(n log n).
    """
    if scores.shape != truth.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and truth {tuple(truth.shape)} differ")
    magnitude = scores.detach().abs().double().reshape(-1).cpu()
    truth = truth.detach().bool().reshape(-1).cpu()
    if magnitude.numel() == 0:
        return _roc_from_points([])
    positives = int(truth.sum())
    negatives = truth.numel() - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC needs a ground truth with both members and non-members")
    known = ~magnitude.isnan()
    values, order = magnitude[known].sort(descending=True)
    hits = truth[known][order]
    # the last entry of each run of equal |score|: where that threshold's prediction ends
    ends = torch.ones_like(hits)
    ends[:-1] = values[1:] != values[:-1]
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    fpr = torch.cat([zero, (~hits).cumsum(0)[ends].double() / negatives, one])
    tpr = torch.cat([zero, hits.cumsum(0)[ends].double() / positives, one])
    # both rates grow with each threshold, so the points are already in order: drop repeats
    points = torch.stack([fpr, tpr], dim=1).unique_consecutive(dim=0)
    return ROC(fpr=points[:, 0].contiguous(), tpr=points[:, 1].contiguous())


def roc_of_circuits(masks: Tensor, truth: Tensor) -> ROC:
    """ROC through discovered circuits (rows of `masks`, e.g. ACDC at several thresholds)."""
    masks, truth = masks.detach().cpu(), truth.detach().cpu()
    return _roc_from_points([_rates(row.bool(), truth.bool()) for row in masks])


def node_view(
    graph: ComputationalGraph, edge_values: Tensor, reduce: str = "max"
) -> tuple[list[str], Tensor]:
    """Per component (q/k/v folded into heads; a source and a destination of the same
    component merged): the largest |value| of the edges touching it (`reduce="max"`), or
    whether any is nonzero (`"any"`, for masks). Returns component names and values."""
    if reduce not in ("max", "any"):
        raise ValueError(f"reduce must be 'max' or 'any', got {reduce!r}")
    names = sorted(
        {n for edge in graph.edges for n in (edge.source.component, edge.destination.component)}
    )
    index = {name: i for i, name in enumerate(names)}
    ends = torch.tensor(
        [
            [index[edge.source.component] for edge in graph.edges],
            [index[edge.destination.component] for edge in graph.edges],
        ]
    )
    magnitude = edge_values.detach().abs().double().cpu()
    values = torch.zeros(len(names), dtype=torch.float64)
    for side in ends:
        values = values.scatter_reduce(0, side, magnitude, reduce="amax")
    return names, (values > 0 if reduce == "any" else values)


def roc(
    graph: ComputationalGraph,
    truth_edges: Iterable[str],
    scores: Tensor | None = None,
    circuits: Tensor | None = None,
    level: str = "edge",
) -> ROC:
    """ROC of edge `scores` (or of discovered `circuits`) against `truth_edges`, at edge or
    node level."""
    if (scores is None) == (circuits is None):
        raise ValueError("give exactly one of scores (per edge) or circuits (masks)")
    if scores is not None:
        scores = _edge_values(graph, scores, "scores")
    else:
        circuits = graph.check_masks(circuits, "circuits")
    truth = masks_of(graph, [list(truth_edges)])[0].bool()
    if level == "edge":
        if scores is not None:
            return roc_of_scores(scores, truth)
        return roc_of_circuits(circuits, truth)
    if level != "node":
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")
    _, node_truth = node_view(graph, truth.float(), reduce="any")
    if scores is not None:
        _, node_scores = node_view(graph, scores)
        return roc_of_scores(node_scores, node_truth)
    rows = [node_view(graph, row.float(), reduce="any")[1] for row in circuits]
    return roc_of_circuits(torch.stack(rows), node_truth)
