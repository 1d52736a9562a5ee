"""Tests for circuits.evaluate: faithfulness, KL and ROC on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.edge_patching import EdgePatcher
from circuits.evaluate import (
    ROC,
    circuit_kl,
    faithfulness,
    masks_of,
    node_view,
    roc,
    roc_of_circuits,
    roc_of_scores,
    top_k_masks,
)
from circuits.graph import ComputationalGraph
from interp.metrics import logit_diff, mean_metric

METRIC = mean_metric(logit_diff)


def test_roc_of_perfect_inverted_and_tied_scores() -> None:
    truth = torch.tensor([True, True, False, False, False])
    perfect = roc_of_scores(torch.tensor([0.9, 0.8, 0.1, 0.2, 0.0]), truth)
    assert perfect.auc == pytest.approx(1.0) and perfect.pessimistic_auc == pytest.approx(1.0)
    inverted = roc_of_scores(torch.tensor([0.0, 0.1, 0.9, 0.8, 0.7]), truth)
    assert inverted.auc == pytest.approx(0.0) and inverted.pessimistic_auc == pytest.approx(0.0)
    tied = roc_of_scores(torch.ones(5), truth)  # one threshold: everything or nothing
    assert tied.auc == pytest.approx(0.5) and tied.pessimistic_auc == pytest.approx(0.0)


def brute_force_roc(scores: torch.Tensor, truth: torch.Tensor) -> ROC:
    """One pass over the edges per distinct |score|: the definition, slowly."""
    magnitude = scores.abs().double().tolist()
    members = truth.tolist()
    positives, negatives = sum(members), len(members) - sum(members)
    points = {(0.0, 0.0), (1.0, 1.0)}
    for threshold in set(magnitude):
        chosen = [m >= threshold for m in magnitude]
        tp = sum(c and t for c, t in zip(chosen, members, strict=True))
        fp = sum(c and not t for c, t in zip(chosen, members, strict=True))
        points.add((fp / negatives, tp / positives))
    ordered = sorted(points)
    fpr = torch.tensor([p[0] for p in ordered], dtype=torch.float64)
    tpr = torch.tensor([p[1] for p in ordered], dtype=torch.float64)
    return ROC(fpr=fpr, tpr=torch.cummax(tpr, dim=0).values)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_of_scores_is_the_per_threshold_curve_with_ties(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    # few distinct values and both signs: many ties, and -s ties with s
    scores = torch.randint(-6, 7, (300,), generator=generator).float() / 4
    truth = torch.rand(300, generator=generator) < 0.2 + 0.2 * (scores.abs() > 0.5)
    ours, expected = roc_of_scores(scores, truth), brute_force_roc(scores, truth)
    assert torch.equal(ours.fpr, expected.fpr) and torch.equal(ours.tpr, expected.tpr)
    assert ours.auc == expected.auc and ours.pessimistic_auc == expected.pessimistic_auc
    distinct = torch.rand(300, generator=generator)
    ours, expected = roc_of_scores(distinct, truth), brute_force_roc(distinct, truth)
    assert torch.equal(ours.fpr, expected.fpr) and torch.equal(ours.tpr, expected.tpr)


def test_trapezoid_and_pessimistic_staircase_by_hand() -> None:
    # points (0, 0), (0.5, 0.5), (1, 1): trapezoid 0.5; staircase right-then-up 0.25
    truth = torch.tensor([True, True, False, False])
    circuits = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)  # TPR 0.5 at FPR 0.5
    curve = roc_of_circuits(circuits, truth)
    assert torch.equal(curve.fpr, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert curve.auc == pytest.approx(0.5) and curve.pessimistic_auc == pytest.approx(0.25)
    assert ROC(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])).pessimistic_auc == 1.0


def test_node_level_folds_head_inputs_and_merges_sources() -> None:
    graph = ComputationalGraph(n_layers=2, n_heads=2, has_mlp=False)
    truth = ["embed->L0H0.v", "L0H0->L1H1.k", "L1H1->logits"]
    names, member = node_view(graph, masks_of(graph, [truth])[0], reduce="any")
    assert {n for n, m in zip(names, member.tolist(), strict=True) if m} == {
        "embed",
        "L0H0",
        "L1H1",
        "logits",
    }
    scores = torch.zeros(len(graph))
    for name in truth:
        scores[graph.edge_index[name]] = 1.0
    assert roc(graph, truth, scores=scores, level="node").auc == pytest.approx(1.0)
    assert roc(graph, truth, scores=scores).pessimistic_auc == pytest.approx(1.0)
    with pytest.raises(ValueError, match="exactly one of scores"):
        roc(graph, truth)
    with pytest.raises(ValueError, match=rf"circuits must be \[n_circuits, {len(graph)}\]"):
        roc(graph, truth, circuits=torch.ones(len(graph)))
    with pytest.raises(ValueError, match="no edge 'L1H1->L0H0.q'"):
        masks_of(graph, [["L1H1->L0H0.q"]])


def test_faithfulness_kl_and_top_k(model, batch) -> None:
    patcher = EdgePatcher(model)
    ones, zeros = torch.ones(1, patcher.n_edges), torch.zeros(1, patcher.n_edges)
    result = faithfulness(patcher, batch, torch.cat([ones, zeros]), METRIC)
    torch.testing.assert_close(result.faithfulness, torch.tensor([1.0, 0.0]), atol=1e-5, rtol=0)
    kl = circuit_kl(patcher, batch, torch.cat([ones, zeros]))
    assert kl[0].item() == pytest.approx(0.0, abs=1e-6) and kl[1] > 1e-3
    masks = top_k_masks(torch.tensor([0.1, -3.0, 2.0, 0.0]), [0, 1, 2, 4])
    assert masks.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]]
    sizes = np.array([0, 1, 2, 4])  # NumPy's ints are sizes too
    assert torch.equal(top_k_masks(torch.tensor([0.1, -3.0, 2.0, 0.0]), list(sizes)), masks)
    with pytest.raises(ValueError, match="circuit size 5 outside 0..4"):
        top_k_masks(torch.zeros(4), [5])
    with pytest.raises(ValueError, match="scores hold NaN or infinite values"):
        top_k_masks(torch.tensor([0.1, float("nan"), 2.0, 0.0]), [1])
    with pytest.raises(ValueError, match=r"masks must be \[n_circuits, \d+\] \(one row"):
        faithfulness(patcher, batch, ones[0], METRIC)
