"""Every causal analysis refuses a batch its model cannot run with one line naming what is
wrong (`TaskBatch.check_fits`), before any work, instead of a failure deep in torch or a
silent result."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from circuits.acdc import acdc
from circuits.attribution import attribute
from circuits.eap import edge_attribution
from circuits.edge_patching import EdgePatcher
from circuits.evaluate import circuit_kl, faithfulness, roc, top_k_masks
from circuits.patching import patch
from circuits.path_patching import path_patch, path_patch_senders
from interp.metrics import logit_diff, mean_metric
from interp.tasks.base import TaskBatch

METRIC = mean_metric(logit_diff)

ENTRY_POINTS: dict[str, Callable] = {
    "patch, incremental": lambda m, b: patch(m, b, "z", METRIC, progress=False),
    "patch, hooks": lambda m, b: patch(m, b, "z", METRIC, progress=False, engine="hooks"),
    "attribute": lambda m, b: attribute(m, b, "z", METRIC),
    "path_patch": lambda m, b: path_patch(m, b, ["L0H1"], ["logits"], METRIC),
    "path_patch_senders": lambda m, b: path_patch_senders(m, b, ["logits"], METRIC),
    "edge_attribution": lambda m, b: edge_attribution(m, b, METRIC),
    "acdc": lambda m, b: acdc(m, b, 0.1, progress=False),
    "acdc, full passes": lambda m, b: acdc(m, b, 0.1, progress=False, incremental=False),
    "EdgePatcher.evaluate": lambda m, b: EdgePatcher(m).evaluate(b, every_edge(m), METRIC),
    "circuit_kl": lambda m, b: circuit_kl(EdgePatcher(m), b, every_edge(m)),
}


def every_edge(model) -> torch.Tensor:
    """The one circuit holding every edge of `model`'s graph."""
    return torch.ones(1, EdgePatcher(model).n_edges)


def changed(batch: TaskBatch, **fields: torch.Tensor) -> TaskBatch:
    values = {name: getattr(batch, name) for name in ("clean", "corrupted", "answer", "wrong",
                                                      "position")}
    return TaskBatch(**{**values, **fields})


def bad_batches(batch: TaskBatch) -> dict[str, tuple[TaskBatch, str]]:
    long = torch.randint(0, 20, (3, 12))
    empty = torch.zeros(0, dtype=torch.long)
    return {
        "token id": (changed(batch, clean=batch.clean.clamp(max=19) + 5),
                     r"TaskBatch.clean spans \d+..24, outside 0..19"),
        "answer id": (changed(batch, answer=torch.tensor([1, 25, 3])),
                      r"TaskBatch.answer spans 1..25, outside 0..19"),
        "position": (changed(batch, position=torch.tensor([5, 3, -1])),
                     r"TaskBatch.position spans -1..5, outside 0..5"),
        "too long": (changed(batch, clean=long, corrupted=long),
                     "the prompts have 12 positions; the model takes at most 8"),
        "empty": (TaskBatch(clean=torch.zeros(0, 6, dtype=torch.long),
                            corrupted=torch.zeros(0, 6, dtype=torch.long), answer=empty,
                            wrong=empty, position=empty), "the batch is empty"),
    }


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_batches_are_refused_in_one_line(model, batch, entry) -> None:
    for why, (bad, message) in bad_batches(batch).items():
        with pytest.raises(ValueError, match=message) as info:
            ENTRY_POINTS[entry](model, bad)
        assert "\n" not in str(info.value), (entry, why)


def test_float_ids_are_refused_when_the_batch_is_made(batch) -> None:
    with pytest.raises(ValueError, match="TaskBatch.clean must hold integer ids, got torch.float"):
        changed(batch, clean=batch.clean.float())
    with pytest.raises(ValueError, match="TaskBatch.position must be a tensor, got list"):
        changed(batch, position=[5, 5, 4])


def test_circuit_inputs_of_the_wrong_shape_are_refused(model, batch) -> None:
    patcher = EdgePatcher(model)
    graph = patcher.graph
    truth = [graph.edges[0].name]
    with pytest.raises(ValueError, match=r"circuits must be \[n_circuits, 110\]"):
        roc(graph, truth, circuits=torch.ones(110))  # one circuit without its row axis
    with pytest.raises(ValueError, match="scores hold NaN"):
        roc(graph, truth, scores=torch.full((110,), float("nan")))
    with pytest.raises(ValueError, match=r"scores must be \[110\]"):
        roc(graph, truth, scores=torch.ones(5), level="node")
    with pytest.raises(ValueError, match=r"masks must be \[n_circuits, 110\]"):
        faithfulness(patcher, batch, torch.ones(110), METRIC)
    with pytest.raises(ValueError, match=r"scores must be \[n_edges\]"):
        top_k_masks(torch.ones(2, 110), [2])
    with pytest.raises(ValueError, match="circuit sizes must be ints"):
        top_k_masks(torch.ones(110), [2.5])


def test_metrics_that_cannot_serve_are_named(model, batch) -> None:
    with pytest.raises(ValueError, match="the metric returned NaN"):
        patch(model, batch, "z", lambda logits, b: torch.tensor(float("nan")), progress=False)
    with pytest.raises(ValueError, match="the metric is not differentiable"):
        edge_attribution(model, batch, lambda logits, b: torch.tensor(1.0))
    with torch.inference_mode():
        frozen = changed(batch, clean=batch.clean.clone())
    scores = edge_attribution(model, frozen, METRIC)  # inference tensors copied for autograd
    torch.testing.assert_close(scores.scores, edge_attribution(model, batch, METRIC).scores)


def test_a_nan_objective_is_refused_by_both_acdc_paths(model, batch) -> None:
    def nan_metric(logits: torch.Tensor, b: TaskBatch) -> torch.Tensor:
        return logits.sum() * float("nan")

    with pytest.raises(ValueError, match=r"the metric returned NaN \(on all-zero logits too\)"):
        acdc(model, batch, 0.1, objective=nan_metric, progress=False)
    with pytest.raises(ValueError, match="the objective returned NaN on the full model"):
        acdc(model, batch, 0.1, objective=nan_metric, progress=False, incremental=False)


def test_eap_runs_inside_inference_mode(model, batch) -> None:
    outside = edge_attribution(model, batch, METRIC).scores
    with torch.inference_mode():
        inside = edge_attribution(model, batch, METRIC).scores
    torch.testing.assert_close(inside, outside)


METRIC_TAKERS: dict[str, Callable] = {
    "patch, incremental": lambda m, b, f: patch(m, b, "z", f, progress=False),
    "patch, hooks": lambda m, b, f: patch(m, b, "z", f, progress=False, engine="hooks"),
    "attribute": lambda m, b, f: attribute(m, b, "z", f),
    "path_patch": lambda m, b, f: path_patch(m, b, ["L0H1"], ["logits"], f),
    "path_patch_senders": lambda m, b, f: path_patch_senders(m, b, ["logits"], f),
    "edge_attribution": lambda m, b, f: edge_attribution(m, b, f),
    "EdgePatcher.evaluate": lambda m, b, f: EdgePatcher(m).evaluate(b, every_edge(m), f),
}


@pytest.mark.parametrize("entry", sorted(METRIC_TAKERS))
def test_a_metric_that_is_not_a_function_is_refused_in_one_line(model, batch, entry) -> None:
    """A metric's name (what a config holds) or None, where a function is wanted: one line
    saying so, not "'str' object is not callable" from inside the engine."""
    with pytest.raises(ValueError, match=r"metric must be a function .* got 'logit_diff' \(for a"):
        METRIC_TAKERS[entry](model, batch, "logit_diff")
    with pytest.raises(ValueError, match=r"metric must be a function .* got None$"):
        METRIC_TAKERS[entry](model, batch, None)
