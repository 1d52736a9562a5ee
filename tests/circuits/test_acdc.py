"""Tests for circuits.acdc on cases whose answer is fixed by the threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuits.acdc import ACDCResult, acdc
from circuits.edge_patching import EdgePatcher
from circuits.evaluate import circuit_kl
from interp.metrics import logit_diff, mean_metric
from interp.runs import RunStore


def test_threshold_bounds_keep_everything_or_nothing(model, batch) -> None:
    keep = acdc(model, batch, threshold=-1.0, progress=False)  # KL never drops by 1 nat
    assert bool(keep.kept.all()) and keep.n_tests == len(keep.graph)
    assert keep.damage == pytest.approx(0.0, abs=1e-6)
    drop = acdc(model, batch, threshold=float("inf"), progress=False)
    assert not bool(drop.kept.any())
    assert drop.n_tests < len(drop.graph)  # inputs of cut-off components go untested
    assert torch.isnan(drop.scores).sum() == len(drop.graph) - drop.n_tests


def test_damage_of_the_result_is_the_kl_of_its_circuit(model, batch, tmp_path: Path) -> None:
    result = acdc(model, batch, threshold=0.02, progress=False)
    assert 0 < len(result.edges) < len(result.graph)
    kl = circuit_kl(EdgePatcher(model), batch, result.kept.float()[None])
    assert result.damage == pytest.approx(kl.item(), abs=1e-5)
    tested = ~torch.isnan(result.scores)
    removed = tested & ~result.kept
    assert bool((result.scores[removed] < 0.02).all())  # removed: below tau when tested
    run = RunStore(tmp_path / "runs").create("exp", "acdc", {})
    result.save(run)
    again = ACDCResult.load(run.path)
    assert again.edges == result.edges and again.threshold == 0.02


def test_task_metric_objective(model, batch) -> None:
    result = acdc(model, batch, 0.05, objective=mean_metric(logit_diff), progress=False)
    assert result.objective == "mean_logit_diff"
    with pytest.raises(ValueError, match="objective must be 'kl' or a metric function"):
        acdc(model, batch, 0.05, objective="loss", progress=False)
    with pytest.raises(ValueError, match="threshold must be a number"):
        acdc(model, batch, "high", progress=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("objective", ["kl", "metric"])
def test_incremental_acdc_finds_the_same_circuit_as_the_plain_loop(model, batch, objective) -> None:
    chosen = "kl" if objective == "kl" else mean_metric(logit_diff)
    fast = acdc(model, batch, 0.01, objective=chosen, progress=False)
    plain = acdc(model, batch, 0.01, objective=chosen, progress=False, incremental=False)
    assert torch.equal(fast.kept, plain.kept) and fast.n_tests == plain.n_tests
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=0, equal_nan=True)
