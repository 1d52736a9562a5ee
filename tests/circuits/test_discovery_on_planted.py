"""Acceptance of issue 6 on the planted models: ACDC and EAP-IG recover the true edge set
exactly at some threshold and reach ROC AUC >= 0.99, at edge and node level."""

from __future__ import annotations

import pytest
import torch

from circuits.acdc import acdc
from circuits.eap import edge_attribution
from circuits.evaluate import masks_of, roc
from circuits.planted import PLANTED, planted
from interp.metrics import logit_diff, mean_metric

METRIC = mean_metric(logit_diff)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_acdc_recovers_the_planted_circuit(name: str) -> None:
    case = planted(name)
    truth = masks_of(case.graph, [sorted(case.edges)])[0].bool()
    results = [
        acdc(case.model, case.batch, tau, objective=METRIC, progress=False) for tau in (0.01, 0.3)
    ]
    assert any(torch.equal(result.kept, truth) for result in results)
    circuits = torch.stack([result.kept.float() for result in results])
    for level in ("edge", "node"):
        curve = roc(case.graph, case.edges, circuits=circuits, level=level)
        assert curve.auc >= 0.99 and curve.pessimistic_auc >= 0.99, (level, curve)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_eap_ig_recovers_the_planted_circuit(name: str) -> None:
    case = planted(name)
    scores = edge_attribution(case.model, case.batch, METRIC, method="eap-ig", steps=5)
    assert set(scores.top(len(case.edges))) == set(case.edges)  # exact at that threshold
    for level in ("edge", "node"):
        curve = roc(case.graph, case.edges, scores=scores.scores, level=level)
        assert curve.auc >= 0.99 and curve.pessimistic_auc >= 0.99, (level, curve)
