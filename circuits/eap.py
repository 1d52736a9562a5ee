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

Both run on `circuits.edge_patching.EdgePatcher` (pre-LayerNorm models: native, GPT-2,
GPT-NeoX, GPT-J, OPT, GPT-Neo, Phi, BLOOM, Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma), so each
head's q, k and v input has its own gradient.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.edge_patching import Ablation, EdgePatcher
from circuits.graph import ComputationalGraph
from circuits.patching.metric import PatchMetric, scalar_metric
from interp.runs import Run
from interp.tasks.base import TaskBatch
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

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
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        order = self.scores.abs().argsort(descending=True)[:int(k)]
        return [self.graph.edges[int(i)].name for i in order]

    def save(self, run: Run | str | os.PathLike[str], name: str = "edge_scores") -> None:
        """`artifacts/<name>.safetensors` (the scores) and `<name>.json` (the rest)."""
        run = Run.open(run)
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
        run = Run.open(run)
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
    ablated: Tensor,
    alphas: list[float],
) -> tuple[Float[Tensor, "dest source"], float]:
    """sum over batch, positions of (ablated_s - clean_s) . mean over alpha of the gradient
    at destination d's input, with the embedding at ablated + alpha (clean - ablated); and
    the metric of the full model. The run at alpha = 1 is the clean run: it also gives the
    clean sources' outputs and the metric, so no other forward pass is needed."""
    if 1.0 not in alphas:
        raise ValueError("the interpolation must end at the clean input (alpha = 1)")
    full = patcher.dense(torch.ones(1, patcher.n_edges, device=patcher.device))
    clean_embed, ablated_embed = patcher.embed(batch.clean), ablated[:, :, 0]
    sums: list[Tensor] = []
    groups: list[tuple[Tensor | list[int], int]] = []
    clean_outputs, metric_full = None, float("nan")
    for alpha in sorted(alphas):
        embed = (ablated_embed + alpha * (clean_embed - ablated_embed)).detach()
        inputs: list[tuple[Tensor | list[int], int, Tensor]] = []
        record: list[Tensor] = []
        with torch.inference_mode(False), torch.enable_grad():
            embed = embed.clone().requires_grad_(True)  # every destination input has a graph
            logits = patcher.run(
                batch.clean, full, None, inputs=inputs, record=record, embed_override=embed
            )
            value = scalar_metric(metric, logits[0], batch)
            if not value.requires_grad:
                raise ValueError("the metric is not differentiable in the model's logits")
            grads = torch.autograd.grad(value, [tensor for *_, tensor in inputs])
        if not sums:
            sums = [grad[0].detach() for grad in grads]
            groups = [(rows, n_sources) for rows, n_sources, _ in inputs]
        else:
            for total, grad in zip(sums, grads, strict=True):
                total += grad[0]
        if alpha == 1.0:
            clean_outputs = torch.stack([out[0].detach() for out in record], dim=2)
            metric_full = float(value.detach())
    assert clean_outputs is not None
    # (ablated - clean) as [source, batch * pos * d_model], laid out once for every group
    difference = (ablated - clean_outputs).permute(2, 0, 1, 3).flatten(1)
    n_dest, n_src = full.shape[1:]
    scores = torch.zeros(n_dest, n_src, device=patcher.device)
    for (rows, n_sources), grad in zip(groups, sums, strict=True):
        per_destination = grad.permute(2, 0, 1, 3).flatten(1)  # [n, batch * pos * d_model]
        part = per_destination @ difference[:n_sources].T
        scores[torch.as_tensor(rows, device=patcher.device), :n_sources] = part / len(alphas)
    return scores, metric_full


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
        model: A pre-LayerNorm model that `functional.architecture_of` covers (native,
            GPT-2, GPT-NeoX, the Llama family, Gemma; see `circuits.edge_patching`); its
            weights and gradients are left untouched.
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
    check_positive_int("steps", steps)
    patcher = EdgePatcher(model)
    patcher.check_batch(batch)
    batch = batch.to(patcher.device).for_autograd()
    with torch.no_grad():
        ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, ablation)
    alphas = [1.0] if method == "eap" else [k / steps for k in range(1, steps + 1)]
    dense, metric_full = _gradient_scores(patcher, batch, metric, ablated, alphas)
    scores = dense[patcher.edge_destinations, patcher.edge_sources].detach().cpu()
    return EdgeScores(patcher.graph, scores, method, ablation, metric_full)
