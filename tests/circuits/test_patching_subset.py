"""Tests for patching a chosen set of indices (`patch(indices=...)`) and for AtP*'s
workflow around it (Kramár et al. 2024): estimate every index cheaply, verify the
strongest ones exactly (`circuits.attribution.top_indices`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuits.attribution import attribute, correlation, top_indices
from circuits.patching import PatchingResult, patch
from interp.config import load_config
from interp.metrics import logit_diff, mean_metric
from interp.tasks import Induction

METRIC = mean_metric(logit_diff)


@pytest.mark.parametrize("engine", ["incremental", "hooks"])
@pytest.mark.parametrize(("target", "chosen"), [
    ("resid_pre", [(1, 4), (0, 2), (1, 0)]),
    ("z_by_pos", [(0, 5, 3), (1, 2, 0)]),
    ("k", [(1, 2)]),
])
def test_chosen_indices_equal_the_full_sweep_there_and_nan_elsewhere(
    model, batch, engine, target, chosen
) -> None:
    full = patch(model, batch, target, METRIC, progress=False, engine=engine)
    some = patch(model, batch, target, METRIC, progress=False, engine=engine, indices=chosen)
    assert some.values.shape == full.values.shape and some.labels == full.labels
    assert some.metric_clean == full.metric_clean
    assert some.metric_corrupted == full.metric_corrupted
    picked = torch.zeros_like(full.values, dtype=torch.bool)
    for index in chosen:  # (equal to rounding: a pass of other copies batches differently)
        picked[index] = True
        torch.testing.assert_close(some.values[index], full.values[index], atol=1e-6, rtol=0)
    assert bool(some.values[~picked].isnan().all())


def test_repeated_indices_are_patched_once_and_normalising_keeps_the_gaps(model, batch) -> None:
    some = patch(model, batch, "resid_pre", METRIC, progress=False, normalise=True,
                 indices=[[1, 4], (1, 4)])
    full = patch(model, batch, "resid_pre", METRIC, progress=False, normalise=True)
    assert int(some.values.isfinite().sum()) == 1
    assert float(some.values[1, 4]) == pytest.approx(float(full.values[1, 4]))


@pytest.mark.parametrize(("indices", "message"), [
    ([(0,)], r"index \(0,\) of target 'resid_pre' must be 2 ints \(layer, pos\)"),
    ([(0, 6)], r"index \(0, 6\) is outside the grid \(2, 6\) \(layer, pos\) of target "
               "'resid_pre'"),
    ([(0, -1)], r"index \(0, -1\) is outside the grid"),
    ([(0, 1.5)], "must be 2 ints"),
    ([], "no index of target 'resid_pre' was given"),
])
def test_bad_indices_raise_one_line(model, batch, indices, message) -> None:
    with pytest.raises(ValueError, match=message):
        patch(model, batch, "resid_pre", METRIC, progress=False, indices=indices)


def test_top_indices_are_the_largest_effects_first_and_skip_nan() -> None:
    values = torch.tensor([[0.5, float("nan"), -3.0], [2.0, 0.4, 0.6]])
    result = PatchingResult(
        values=values, axes=("layer", "head"), labels=(("0", "1"), ("0", "1", "2")),
        metric_clean=2.0, metric_corrupted=0.5, direction="denoise", target="z",
        normalised=False,
    )  # baseline 0.5: effects 0, nan, -3.5 / 1.5, -0.1, 0.1
    assert top_indices(result, 3) == [(0, 2), (1, 0), (1, 2)]
    assert top_indices(result, 6)[-1] == (0, 1)  # NaN last
    with pytest.raises(ValueError, match="k must be a positive int"):
        top_indices(result, 0)


def test_correlation_reads_only_the_indices_both_have(model, batch) -> None:
    full = patch(model, batch, "z_by_pos", METRIC, progress=False)
    estimate = attribute(model, batch, "z_by_pos", METRIC)
    chosen = top_indices(estimate, 12)
    some = patch(model, batch, "z_by_pos", METRIC, progress=False, indices=chosen)
    picked = torch.stack([full.values[index] for index in chosen]).double()
    guessed = torch.stack([estimate.values[index] for index in chosen]).double()
    expected = torch.corrcoef(torch.stack([guessed, picked]))[0, 1]
    assert correlation(estimate, some) == pytest.approx(float(expected), abs=1e-6)
    one = patch(model, batch, "z_by_pos", METRIC, progress=False, indices=chosen[:1])
    with pytest.raises(ValueError, match="fewer than two indices"):
        correlation(estimate, one)


# Measured (16 prompts, task seeds 0 / 1 / 2, k_by_pos: 320 indices): how many of exact
# patching's 10 strongest indices each estimate's top 40 holds: AtP* fix 10 / 10 / 10,
# integrated gradients (16 steps) 7 / 8 / 9, plain 4 / 6 / 7 (top 10: 8 / 8 / 9, 3 / 4 / 6,
# 2 / 3 / 5).
def test_atp_star_finds_the_strongest_keys_of_the_induction_model(induction_2l_model) -> None:
    path = Path(__file__).resolve().parents[2] / "experiments" / "induction_2l.yaml"
    _, config = load_config(path, ["device=cpu"])
    for seed in range(3):
        batch = Induction(config.task.model_copy(update={"n_examples": 16, "seed": seed})).batch()
        exact = patch(induction_2l_model, batch, "k_by_pos", METRIC, progress=False)
        estimate = attribute(induction_2l_model, batch, "k_by_pos", METRIC, qk_fix=True)
        candidates = top_indices(estimate, 40)
        assert set(top_indices(exact, 10)) <= set(candidates), seed
        verified = patch(induction_2l_model, batch, "k_by_pos", METRIC, progress=False,
                         indices=candidates)
        assert top_indices(verified, 10) == top_indices(exact, 10)
