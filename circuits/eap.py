"""Edge attribution patching: a score for every edge from forward and backward passes.

EAP (Syed, Rager and Conmy 2023, "Attribution Patching Outperforms Automated Circuit
Discovery") estimates, for every edge s -> d at once, how the metric changes when the edge
is ablated, to first order around the full model:

    score(s -> d) = sum over batch and positions of (ablated_s - out_s) . d metric / d input_d

from one clean forward pass (recording each source's output), the ablated sources'
outputs, and one backward pass to every destination's input.

EAP-IG (Hanna, Pezzelle and Belinkov 2024, "Have Faith in Faithfulness") replaces the
gradient by its mean over m points on the straight line from the ablated input embedding
to the clean one (integrated gradients, Sundararajan et al. 2017), which tracks the
effect of an ablation better where the model is far from linear.

Both run on `circuits.edge_patching.EdgePatcher` (native pre-LayerNorm models), so each
head's q, k and v input has its own gradient.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.edge_patching import Ablation, EdgePatcher
from circuits.graph import ComputationalGraph
from circuits.patching.engine import PatchMetric, scalar_metric
from interp.runs import Run
from interp.tasks.base import TaskBatch

Method = Literal["eap", "eap-ig"]


@dataclass(frozen=True)
class EdgeScores:
    """One score per edge of a graph: the estimated change of the metric when the edge is
    ablated (negative: the edge helps the metric).

    Attributes:
        graph: The computational graph; `scores[i]` belongs to `graph.edges[i]`.
        scores: `[n_edges]`.
        method: `"eap"`, `"eap-ig"`, or another method's name.
        ablation: What an ablated edge carries (`"resample"`, `"mean"`, `"zero"`).
        metric_full: The metric of the full model on the clean prompts.
    """

    graph: ComputationalGraph
    scores: Float[Tensor, " edge"]
    method: str
    ablation: str
    metric_full: float

    def __post_init__(self) -> None:
        if self.scores.shape != (len(self.graph),):
            raise ValueError(
                f"EdgeScores: {tuple(self.scores.shape)} scores for {len(self.graph)} edges"
            )

    def to_frame(self) -> pd.DataFrame:
        """One row per edge: `edge`, `source`, `destination`, `score`, `abs_score`."""
        return pd.DataFrame(
            {
                "edge": [edge.name for edge in self.graph.edges],
                "source": [edge.source.name for edge in self.graph.edges],
                "destination": [edge.destination.name for edge in self.graph.edges],
                "score": self.scores.tolist(),
                "abs_score": self.scores.abs().tolist(),
            }
        )

    def top(self, k: int) -> list[str]:
        """The `k` edges of largest |score|."""
        order = self.scores.abs().argsort(descending=True)[:k]
        return [self.graph.edges[int(i)].name for i in order]

    def save(self, run: Run | str | os.PathLike[str], name: str = "edge_scores") -> None:
        """`artifacts/<name>.safetensors` (the scores) and `<name>.json` (the rest)."""
        run = run if isinstance(run, Run) else Run.open(run)
        run.save_tensors(name, {"scores": self.scores.detach().cpu().contiguous()})
        run.save_json(
            name,
            {
                "graph": json.loads(self.graph.to_json([])),
                "method": self.method,
                "ablation": self.ablation,
                "metric_full": self.metric_full,
            },
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "edge_scores") -> EdgeScores:
        """The scores written by `save(run, name)`."""
        run = run if isinstance(run, Run) else Run.open(run)
        meta = run.load_json(name)
        graph, _ = ComputationalGraph.from_json(json.dumps(meta["graph"]))
        return cls(
            graph=graph,
            scores=run.load_tensors(name)["scores"].float(),
            method=str(meta["method"]),
            ablation=str(meta["ablation"]),
            metric_full=float(meta["metric_full"]),
        )


def _gradient_scores(
    patcher: EdgePatcher,
    batch: TaskBatch,
    metric: PatchMetric,
    clean_outputs: Tensor,
    ablated: Tensor,
    alphas: list[float],
) -> Float[Tensor, "dest source"]:
    """sum over batch, positions of (ablated_s - clean_s) . mean over alpha of the gradient
    at destination d's input, with the embedding at ablated + alpha (clean - ablated)."""
    difference = ablated - clean_outputs  # [batch, pos, source, d_model]
    full = patcher.dense(torch.ones(1, patcher.n_edges, device=patcher.device))
    n_dest, n_src = full.shape[1:]
    total = torch.zeros(n_dest, n_src, device=patcher.device)
    for alpha in alphas:
        embed = ablated[:, :, 0] + alpha * (clean_outputs[:, :, 0] - ablated[:, :, 0])
        inputs: list[tuple[Tensor | list[int], int, Tensor]] = []
        with torch.enable_grad():
            embed = embed.detach().requires_grad_(True)  # so that every input has a graph
            logits = patcher.run(batch.clean, full, None, inputs=inputs, embed_override=embed)
            value = scalar_metric(metric, logits[0], batch)
            grads = torch.autograd.grad(value, [tensor for *_, tensor in inputs])
        for (rows, n_sources, _), grad in zip(inputs, grads, strict=True):
            part = torch.einsum("bpsd,bpnd->ns", difference[:, :, :n_sources], grad[0])
            total[torch.as_tensor(rows, device=patcher.device), :n_sources] += part
    return total / len(alphas)


def edge_attribution(
    model: TransformerBridge,
    batch: TaskBatch,
    metric: PatchMetric,
    *,
    method: Method = "eap",
    ablation: Ablation = "resample",
    steps: int = 5,
) -> EdgeScores:
    """EAP or EAP-IG scores of every edge of `model`'s computational graph.

    Args:
        model: A native pre-LayerNorm model (see `circuits.edge_patching`); its weights
            and gradients are left untouched.
        batch: Clean prompts (the model's input) and corrupted ones (for resample ablation).
        metric: `(logits [batch, pos, vocab], batch) -> scalar` (or `[batch]`, averaged),
            differentiable, e.g. `interp.metrics.mean_metric(logit_diff)`.
        method: `"eap"` (the gradient at the clean input) or `"eap-ig"` (its mean over
            `steps` points from the ablated embedding to the clean one, endpoints
            `1/steps .. 1`).
        ablation: What an ablated edge carries: `"resample"`, `"mean"` or `"zero"`.
        steps: Interpolation points of EAP-IG (Hanna et al. use 5 or more).

    Returns:
        `EdgeScores`: score i estimates metric(circuit without edge i) - metric(model).
    """
    if method not in ("eap", "eap-ig"):
        raise ValueError(f"method must be 'eap' or 'eap-ig', got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    patcher = EdgePatcher(model)
    batch = batch.to(patcher.device)
    with torch.no_grad():
        clean_outputs = patcher.source_outputs(batch.clean)
        ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, ablation)
        full_logits = patcher.run(
            batch.clean, patcher.dense(torch.ones(1, patcher.n_edges, device=patcher.device)), None
        )
        metric_full = float(scalar_metric(metric, full_logits[0], batch))
    alphas = [1.0] if method == "eap" else [k / steps for k in range(1, steps + 1)]
    dense = _gradient_scores(patcher, batch, metric, clean_outputs, ablated, alphas)
    scores = dense[patcher.edge_destinations, patcher.edge_sources].detach().cpu()
    return EdgeScores(patcher.graph, scores, method, ablation, metric_full)
