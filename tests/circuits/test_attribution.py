"""Tests for circuits.attribution: attribution patching against exact activation patching."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from patching_reference import metric_with_scaled_patch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.attribution import attribute, correlation
from circuits.patching import TARGETS, PatchingResult, patch
from interp import models
from interp.metrics import logit_diff, mean_metric
from interp.runs import RunStore
from interp.tasks.base import TaskBatch

METRIC = mean_metric(logit_diff)


def assert_no_hooks(model: TransformerBridge) -> None:
    for name, point in model.hook_dict.items():
        assert point.fwd_hooks == [] and point.bwd_hooks == [], name
        assert len(point._forward_hooks) == 0, name


def exact(model: TransformerBridge, batch: TaskBatch, target: str, **kwargs) -> PatchingResult:
    return patch(model, batch, target, METRIC, progress=False, **kwargs)


@pytest.fixture(scope="module")
def linear_model() -> TransformerBridge:
    """One attention layer, no norms: logits are linear in z, attn_out and resid_post."""
    spec = dict(
        n_layers=1, d_model=32, n_heads=4, d_vocab=20, n_ctx=8,
        attn_only=True, normalization=None, seed=0,
    )  # fmt: skip
    return models.build(spec, device="cpu")



# Where the logits are linear in the patched activation (the path from it to the
# unembedding has no norm and no softmax), the first-order estimate is exact. The pattern
# and v enter z = pattern @ v linearly for a fixed other factor, which patching one keeps.
LINEAR_TARGETS = ["resid_post", "attn_out", "z", "z_by_pos", "v", "v_by_pos", "pattern"]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("target", LINEAR_TARGETS)
def test_exact_where_the_model_is_linear(linear_model, batch, target, direction) -> None:
    approx = attribute(linear_model, batch, target, METRIC, direction=direction)
    reference = exact(linear_model, batch, target, direction=direction)
    assert reference.values.std() > 1e-5  # the patches really change the metric
    assert approx.values.shape == reference.values.shape
    torch.testing.assert_close(approx.values, reference.values, atol=1e-4, rtol=0)
    assert_no_hooks(linear_model)


def test_not_exact_through_the_softmax(linear_model, batch) -> None:
    """resid_pre feeds the attention softmax, so the estimate is close but not exact."""
    approx = attribute(linear_model, batch, "resid_pre", METRIC)
    reference = exact(linear_model, batch, "resid_pre")
    gap = (approx.values - reference.values).abs().max().item()
    assert 1e-6 < gap < 1e-2
    assert correlation(approx, reference) > 0.9


# Measured on this model and batch: resid_pre 0.83, z 0.96 (seeds 1, 2: 0.89/0.90, 0.95/0.98).
@pytest.mark.parametrize("target, floor", [("resid_pre", 0.7), ("z", 0.85), ("pattern", 0.85)])
def test_correlates_with_exact_patching_under_layer_norm(model, batch, target, floor) -> None:
    approx = attribute(model, batch, target, METRIC)
    reference = exact(model, batch, target)
    assert correlation(approx, reference) > floor


@pytest.mark.parametrize(
    "target, index",
    [("resid_mid", (0, 4)), ("resid_pre", (1, 2)), ("z_by_pos", (0, 4, 1)), ("q", (1, 3))],
)
def test_is_the_directional_derivative_of_the_patch(batch, target, index) -> None:
    """Known by definition: attribution is d/d eps of the metric when the activation at one
    index moves by eps * (source - base), at eps = 0 (central difference in float64)."""
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8, seed=1)
    model = models.build(spec, device="cpu", dtype=torch.float64).eval()
    approx = attribute(model, batch, target, METRIC)
    eps = 1e-5
    slope = (
        metric_with_scaled_patch(model, batch, target, index, eps)
        - metric_with_scaled_patch(model, batch, target, index, -eps)
    ) / (2 * eps)
    estimate = approx.values[index].item() - approx.metric_corrupted
    assert abs(slope) > 1e-4
    assert estimate == pytest.approx(slope, abs=1e-7, rel=1e-5)


def test_layout_and_run_metrics_match_patch(model, batch) -> None:
    approx = attribute(model, batch, "z_by_pos", METRIC, direction="noise")
    reference = exact(model, batch, "z_by_pos", direction="noise")
    assert approx.axes == reference.axes == ("layer", "pos", "head")
    assert approx.labels == reference.labels
    assert approx.values.shape == (2, 6, 4)
    assert approx.metric_clean == pytest.approx(reference.metric_clean, abs=1e-5)
    assert approx.metric_corrupted == pytest.approx(reference.metric_corrupted, abs=1e-5)
    assert approx.direction == "noise" and approx.target == "z_by_pos"
    assert approx.method == "attribution" and reference.method == "activation"


def test_unchanged_positions_get_exactly_the_base_value(model, batch) -> None:
    """Clean and corrupted prompts differ only at positions 2 and 4: elsewhere in layer 0
    the residual streams agree, so the estimated patch changes nothing."""
    approx = attribute(model, batch, "resid_pre", METRIC)
    for pos in (0, 1, 3, 5):
        assert approx.values[0, pos].item() == pytest.approx(approx.metric_corrupted, abs=1e-6)


def test_normalise_rescales_to_clean_and_corrupted(model, batch) -> None:
    raw = attribute(model, batch, "attn_out", METRIC)
    normed = attribute(model, batch, "attn_out", METRIC, normalise=True)
    expected = (raw.values - raw.metric_corrupted) / (raw.metric_clean - raw.metric_corrupted)
    torch.testing.assert_close(normed.values, expected)
    assert normed.normalised


def test_per_example_metric_is_averaged(model, batch) -> None:
    scalar = attribute(model, batch, "mlp_out", METRIC)
    per_example = attribute(model, batch, "mlp_out", logit_diff)
    torch.testing.assert_close(scalar.values, per_example.values)


def test_every_target_runs(model, batch) -> None:
    for target, space in TARGETS.items():
        result = attribute(model, batch, target, METRIC)
        assert result.values.shape == space.sizes(model, 6), target
        assert torch.isfinite(result.values).all(), target
    assert_no_hooks(model)


def test_hooks_removed_grads_and_mode_restored_after_metric_raises(model, batch) -> None:
    calls = []

    def failing(logits: Tensor, batch: TaskBatch) -> Tensor:
        calls.append(1)
        if len(calls) > 1:  # the source run passes, the base run (with hooks) fails
            raise RuntimeError("metric failed")
        return METRIC(logits, batch)

    model.train()
    try:
        with pytest.raises(RuntimeError, match="metric failed"):
            attribute(model, batch, "z", failing)
        assert model.training
    finally:
        model.eval()
    assert_no_hooks(model)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_inputs_and_weights_are_not_modified(model, batch) -> None:
    before = {name: getattr(batch, name).clone() for name in ("clean", "corrupted", "answer")}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    attribute(model, batch, "resid_mid", METRIC)
    for name, tensor in before.items():
        assert torch.equal(getattr(batch, name), tensor), name
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, weights[name]), name
        assert parameter.grad is None, name


def test_frozen_weights_still_give_gradients(linear_model, batch) -> None:
    linear_model.requires_grad_(False)
    try:
        approx = attribute(linear_model, batch, "resid_post", METRIC)
    finally:
        linear_model.requires_grad_(True)
    torch.testing.assert_close(
        approx.values, exact(linear_model, batch, "resid_post").values, atol=1e-4, rtol=0
    )


def test_works_when_called_under_inference_mode(model, batch) -> None:
    expected = attribute(model, batch, "z", METRIC)
    with torch.inference_mode():
        frozen_batch = TaskBatch(
            clean=batch.clean.clone(),
            corrupted=batch.corrupted.clone(),
            answer=batch.answer.clone(),
            wrong=batch.wrong.clone(),
            position=batch.position.clone(),
        )
        result = attribute(model, frozen_batch, "z", METRIC)
    torch.testing.assert_close(result.values, expected.values)


def test_correlation_known_values(model, batch) -> None:
    result = attribute(model, batch, "resid_pre", METRIC)
    flipped = PatchingResult(**{**result.__dict__, "values": 3.0 - 2.0 * result.values})
    assert correlation(result, result) == pytest.approx(1.0)
    assert correlation(result, flipped) == pytest.approx(-1.0)
    other = attribute(model, batch, "z", METRIC)
    with pytest.raises(ValueError, match="cannot correlate"):
        correlation(result, other)
    constant = PatchingResult(**{**result.__dict__, "values": torch.ones_like(result.values)})
    with pytest.raises(ValueError, match="constant"):
        correlation(result, constant)


def test_save_load_keeps_the_method(model, batch, tmp_path: Path) -> None:
    result = attribute(model, batch, "z", METRIC)
    run = RunStore(tmp_path / "runs").create("exp", "attribution", {"target": "z"})
    result.save(run, "attribution")
    loaded = PatchingResult.load(run.path, "attribution")
    assert loaded.method == "attribution"
    torch.testing.assert_close(loaded.values, result.values)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target="nope"), "unknown patching target"),
        (dict(direction="sideways"), "direction"),
        (dict(metric=lambda logits, batch: logits[..., 0]), "scalar or one value per example"),
        (dict(metric=lambda logits, batch: logits.argmax(-1)[:, 0].float()), "differentiable"),
    ],
)
def test_bad_arguments_raise_one_line(model, batch, kwargs, message) -> None:
    arguments = dict(target="resid_pre", metric=METRIC, direction="denoise") | kwargs
    with pytest.raises(ValueError, match=message):
        attribute(model, batch, **arguments)
    assert_no_hooks(model)
