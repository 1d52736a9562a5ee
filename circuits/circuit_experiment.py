"""Experiment kind `circuit`: discover a circuit with EAP, EAP-IG and ACDC, and score it.

    kind: circuit
    source: {planted: induction}        # or {tracr: reverse}, or {model: ..., task: ...}
    methods: [eap, eap-ig, acdc]
    ablation: resample
    eap_ig_steps: 5
    acdc_thresholds: [0.001, 0.01, 0.03, 0.1, 0.3]
    acdc_objective: kl
    acdc_speculation: null              # edges per batched test (null: 16 on a GPU, else 1)
    sizes: [1, 2, 4, 8, 16, 32]         # circuit sizes of the faithfulness curve

Saved per method: EAP / EAP-IG scores (`artifacts/edge_scores_<method>.*` and a table), each
ACDC threshold's circuit (`artifacts/acdc_<i>.*`) and a table of all of them, and the
faithfulness-against-size curve of each score (`tables/faithfulness.parquet`), and the
graph's edge list in graph order (`artifacts/graph_edges.parquet`: edge, source,
destination), which names the per-edge tensors. Where the source has a ground truth
(planted models, tracr programs), the summary holds the ROC AUC of each method at edge and
node level, by trapezoid and by ACDC's pessimistic staircase, and whether some threshold
recovers the true edge set exactly; the true edges are saved (`artifacts/truth_edges.json`)
and so are the ROC curves' points (`artifacts/roc.parquet`: method, level, fpr, tpr).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pandas as pd
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationInfo,
    model_validator,
)

from circuits.acdc import ACDCResult, acdc
from circuits.eap import edge_attribution
from circuits.edge_patching import Ablation, EdgePatcher
from circuits.evaluate import faithfulness, masks_of, roc, top_k_masks
from circuits.graph import ComputationalGraph
from circuits.patching.metric import PatchMetric
from circuits.planted import PLANTED, planted
from circuits.tracr_models import PROGRAMS, load_tracr, tracr_program
from interp import models
from interp.experiments import ExperimentConfig, ExperimentKind, RunContext, saves_no_model
from interp.metrics import METRICS, mean_metric
from interp.model_checks import check_metric, check_model_and_task
from interp.model_refs import ModelRef, resolve_model_and_task
from interp.runs import Run
from interp.tasks import AnyTaskConfig
from interp.tasks.base import TaskBatch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Method = Literal["eap", "eap-ig", "acdc"]


TRACR_METRICS = "reverse: log-probability of the reversed token; frac_prevs: minus squared error"
"""What each tracr program's own metric is (`circuits.tracr_models.TracrProgram.metric`)."""


class Source(BaseModel):
    """Where the model, prompts and (maybe) the true circuit come from: exactly one of a
    planted model, a tracr program, or a model with a task."""

    model_config = ConfigDict(extra="forbid")

    planted: str | None = None
    tracr: str | None = None
    model: ModelRef | None = None
    task: AnyTaskConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [self.planted is not None, self.tracr is not None, self.model is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of planted, tracr, or model (with task)")
        if (self.model is None) != (self.task is None):
            raise ValueError("model and task go together")
        if self.planted is not None and self.planted not in PLANTED:
            raise ValueError(f"no planted circuit {self.planted!r}; choose from {sorted(PLANTED)}")
        if self.tracr is not None and self.tracr not in PROGRAMS:
            raise ValueError(f"unknown tracr program {self.tracr!r}; choose from {PROGRAMS}")
        return self


class CircuitConfig(ExperimentConfig):
    """A `circuit` experiment."""

    kind: Literal["circuit"] = "circuit"
    source: Source
    methods: list[Method] = Field(default_factory=lambda: ["eap", "eap-ig", "acdc"], min_length=1)
    ablation: Ablation = "resample"
    metric: str | None = None
    eap_ig_steps: int = Field(default=5, ge=1)
    acdc_thresholds: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=lambda: [0.001, 0.01, 0.03, 0.1, 0.3]
    )
    acdc_objective: Literal["kl", "metric"] = "kl"
    acdc_speculation: int | None = Field(default=None, ge=1)
    sizes: list[NonNegativeInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])

    @model_validator(mode="after")
    def _model_fits_task(self, info: ValidationInfo) -> CircuitConfig:
        """A model source fits its task and the metric is the task's; a planted model's
        metric is one of `interp.metrics.METRICS`; a tracr program scores with its own, so
        a metric named for one is refused rather than ignored. ACDC needs a threshold."""
        if "acdc" in self.methods and not self.acdc_thresholds:
            raise ValueError("acdc_thresholds: ACDC is among the methods but no threshold is given")
        if self.source.tracr is not None and self.metric is not None:
            raise ValueError(
                f"metric: tracr program {self.source.tracr!r} scores with its own metric "
                f"(circuits.tracr_models: {TRACR_METRICS}); leave metric unset"
            )
        if self.source.model is not None:
            check_model_and_task(self.source.model, self.source.task, info, "source.model")
            check_metric(self.metric, self.source.task)
        elif self.source.planted is not None:
            check_metric(self.metric, None)
        return self


@dataclass(frozen=True)
class Benchmark:
    """A model, its prompts, the metric, and the true circuit's edges when known."""

    model: TransformerBridge
    batch: TaskBatch
    metric: PatchMetric
    truth: frozenset[str] | None
    metric_reads_one_position: bool = True
    """Whether the metric reads the logits at `batch.position` only, which incremental ACDC
    with the metric as objective needs (tracr's reads every output position)."""


def load_benchmark(config: CircuitConfig, context: RunContext) -> Benchmark:
    """The benchmark the config's `source` names."""
    source = config.source
    device = models.resolve_device(config.device)
    if source.planted is not None:
        case = planted(source.planted, device=device)
        return Benchmark(case.model, case.batch, _named_metric(config),
                         case.truth_edges(config.ablation))
    if source.tracr is not None:
        program = tracr_program(source.tracr)
        return Benchmark(
            load_tracr(source.tracr, device=device),
            program.batch().to(device),
            mean_metric(program.metric()),
            frozenset(program.truth_edges(config.ablation)),
            metric_reads_one_position=False,
        )
    model, task = resolve_model_and_task(
        source.model, source.task, context.store, config.device, context.config_dir
    )
    batch = task.batch().to(device)
    return Benchmark(model, batch, mean_metric(task.metric(config.metric)), None)


def _named_metric(config: CircuitConfig) -> PatchMetric:
    """The metric a config names (logit difference by default) as a batch mean."""
    name = config.metric or "logit_diff"
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {sorted(METRICS)}")
    return mean_metric(METRICS[name])


def _roc_summary(
    graph: ComputationalGraph,
    truth: frozenset[str],
    method: str,
    points: list[pd.DataFrame],
    **kind: Any,
) -> dict[str, float]:
    """AUCs at edge and node level; each curve's points are appended to `points`."""
    summary = {}
    for level in ("edge", "node"):
        curve = roc(graph, truth, level=level, **kind)
        summary[f"auc_{level}"] = curve.auc
        summary[f"auc_{level}_pessimistic"] = curve.pessimistic_auc
        points.append(
            pd.DataFrame(
                {
                    "method": method,
                    "level": level,
                    "fpr": curve.fpr.tolist(),
                    "tpr": curve.tpr.tolist(),
                }
            )
        )
    return summary


def _edge_list(graph: ComputationalGraph) -> pd.DataFrame:
    """One row per edge in graph order: `edge`, `source`, `destination` (node names)."""
    return pd.DataFrame(
        {
            "edge": [edge.name for edge in graph.edges],
            "source": [edge.source.name for edge in graph.edges],
            "destination": [edge.destination.name for edge in graph.edges],
        }
    )


def run_circuit(config: CircuitConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """Run every method, save each result, and score it against the truth if there is one."""
    torch.manual_seed(config.seed)
    bench = load_benchmark(config, context)
    patcher = EdgePatcher(bench.model)
    graph = patcher.graph
    summary: dict[str, Any] = {"n_edges": len(graph), "ablation": config.ablation}
    run.save_table("graph_edges", _edge_list(graph))
    if bench.truth is not None:
        summary["n_true_edges"] = len(bench.truth)
        run.save_json("truth_edges", sorted(bench.truth, key=graph.edge_index.__getitem__))
    curves = []
    roc_points: list[pd.DataFrame] = []
    for method in config.methods:
        if method in ("eap", "eap-ig"):
            scores = edge_attribution(
                bench.model,
                bench.batch,
                bench.metric,
                method=method,
                ablation=config.ablation,
                steps=config.eap_ig_steps,
            )
            scores.save(run, name=f"edge_scores_{method}")
            run.save_table(f"edge_scores_{method}", scores.to_frame())
            sizes = [k for k in config.sizes if k <= len(graph)]
            curve = faithfulness(
                patcher,
                bench.batch,
                top_k_masks(scores.scores, sizes),
                bench.metric,
                ablation=config.ablation,
            )
            curves.append(
                pd.DataFrame(
                    {"method": method, "size": sizes, "faithfulness": curve.faithfulness.tolist()}
                )
            )
            entry: dict[str, Any] = {"top_edges": scores.top(10)}
            if bench.truth is not None:
                entry |= _roc_summary(
                    graph, bench.truth, method, roc_points, scores=scores.scores
                )
                k = len(bench.truth)
                entry["recovers_truth"] = set(scores.top(k)) == set(bench.truth)
            summary[method] = entry
        else:
            summary["acdc"] = _run_acdc(config, bench, run, roc_points, context.progress)
    if curves:
        run.save_table("faithfulness", pd.concat(curves, ignore_index=True))
    if roc_points:
        run.save_table("roc", pd.concat(roc_points, ignore_index=True))
    return summary


def _run_acdc(
    config: CircuitConfig,
    bench: Benchmark,
    run: Run,
    roc_points: list[pd.DataFrame],
    progress: bool,
) -> dict[str, Any]:
    objective = "kl" if config.acdc_objective == "kl" else bench.metric
    # incremental tests compute the logits at batch.position only (None: acdc decides
    # by the model, full passes where the pruning state does not hold it)
    reads_one = config.acdc_objective == "kl" or bench.metric_reads_one_position
    incremental = None if reads_one else False
    results: list[ACDCResult] = []
    rows = []
    for i, threshold in enumerate(config.acdc_thresholds):
        result = acdc(
            bench.model,
            bench.batch,
            threshold,
            objective=objective,
            ablation=config.ablation,
            progress=progress,
            speculation=config.acdc_speculation,
            incremental=incremental,
        )
        result.save(run, name=f"acdc_{i}")
        results.append(result)
        rows.append(
            {
                "threshold": threshold,
                "n_edges": len(result.edges),
                "damage": result.damage,
                "n_tests": result.n_tests,
                "n_trials": result.n_trials,
            }
        )
    run.save_table("acdc", pd.DataFrame(rows))
    entry: dict[str, Any] = {"thresholds": rows}
    if bench.truth is not None and results:
        graph = results[0].graph
        masks = torch.stack([r.kept.float() for r in results])
        entry |= _roc_summary(graph, bench.truth, "acdc", roc_points, circuits=masks)
        truth_mask = masks_of(graph, [list(bench.truth)])[0].bool()
        entry["recovers_truth"] = any(torch.equal(r.kept, truth_mask) for r in results)
    return entry


CIRCUIT = ExperimentKind(
    name="circuit",
    config_model=CircuitConfig,
    run=run_circuit,
    description="circuit discovery (EAP, EAP-IG, ACDC) with faithfulness and ROC against truth",
    model_artifacts=saves_no_model,
)
