"""Tests for attribution patching with integrated gradients (`attribute(ig_steps=...)`):
completeness per layer against patching the whole layer, exactness where the metric is
linear in the activation, and closeness to exact patching beside plain attribution."""

from __future__ import annotations

import pytest
import torch
from patching_reference import assert_leaves_model_as_it_was
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.attribution import attribute, correlation
from circuits.patching import TARGETS, patch
from interp import functional, models
from interp.metrics import logit_diff, mean_metric
from interp.tasks.base import TaskBatch

METRIC = mean_metric(logit_diff)


@pytest.fixture(scope="module")
def model64() -> TransformerBridge:
    """Two LayerNorm blocks with GELU MLPs (smooth: ReLU's kinks make the midpoint rule's
    error jump about with the steps), in float64 (so that only the midpoint rule errs)."""
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8, seed=1,
                act_fn="gelu")
    return models.build(spec, device="cpu", dtype=torch.float64).eval()


def whole_layer_patch(model: TransformerBridge, batch: TaskBatch, hook_name: str) -> float:
    """Denoising: the metric with every entry of `hook_name` replaced by the clean run's."""
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.clean, names_filter=hook_name)
        source = cache[hook_name].clone()

        def write(activation: Tensor, *, hook) -> Tensor:
            return activation.copy_(source)

        with model.hooks(fwd_hooks=[(hook_name, write)]):
            return float(METRIC(model(batch.corrupted), batch))


@pytest.mark.parametrize("target", ["resid_pre", "resid_mid", "resid_post", "attn_out",
                                    "mlp_out", "z", "q", "k", "v", "pattern", "k_by_pos"])
def test_a_layers_estimates_sum_to_patching_the_whole_layer(model64, batch, target) -> None:
    """Completeness (Sundararajan et al. 2017): along the line from the corrupted to the
    clean activation of one layer, the estimates of its indices sum to the metric change
    of writing the whole clean activation there, up to the midpoint rule's error, which
    falls as 1 / steps^2 on a smooth model once the steps resolve its curvature."""
    space = TARGETS[target]
    errors = {}
    for steps in (32, 128):
        result = attribute(model64, batch, target, METRIC, ig_steps=steps)
        assert result.method == "attribution_ig"
        for layer in range(2):
            whole = whole_layer_patch(model64, batch, space.hook_name(layer))
            summed = float((result.values[layer] - result.baseline).sum())
            errors[steps, layer] = abs(summed - (whole - result.metric_corrupted))
    for layer in range(2):
        assert errors[128, layer] < 5e-4, errors
        if errors[32, layer] > 1e-7:  # not already exact (a layer the metric reads linearly)
            assert errors[128, layer] < errors[32, layer] / 4, errors


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("target", ["resid_post", "attn_out", "z", "z_by_pos", "v", "pattern"])
def test_exact_where_the_metric_is_linear_in_the_activation(batch, target, direction) -> None:
    """One attention layer, no norms: the gradient is constant along the line (token
    embeddings scaled 8x so that the patches move the metric by tenths)."""
    spec = dict(n_layers=1, d_model=32, n_heads=4, d_vocab=20, n_ctx=8,
                attn_only=True, normalization=None, seed=0)
    linear = models.build(spec, device="cpu")
    with torch.no_grad():
        functional.live_params(linear)["embed.weight"].mul_(8.0)
    exact = patch(linear, batch, target, METRIC, progress=False, direction=direction)
    estimate = attribute(linear, batch, target, METRIC, ig_steps=3, direction=direction)
    assert (exact.values - exact.baseline).abs().max() > 0.05  # the patches do something
    torch.testing.assert_close(estimate.values, exact.values, atol=1e-5, rtol=0)


# Measured on the `model` fixture (2 LayerNorm blocks with MLPs, 3 prompts, 16 steps):
# correlation with exact patching, integrated gradients vs plain: resid_pre 0.99 vs 0.97,
# resid_post 1.00 vs 0.82, mlp_out 0.99 vs 0.91, q 0.99 vs 0.33, k 1.00 vs 0.90.
@pytest.mark.parametrize("target", ["resid_pre", "resid_post", "mlp_out", "q", "k"])
def test_closer_to_exact_patching_than_plain_attribution(model, batch, target) -> None:
    exact = patch(model, batch, target, METRIC, progress=False)
    integrated = attribute(model, batch, target, METRIC, ig_steps=16)
    plain = attribute(model, batch, target, METRIC)
    assert correlation(integrated, exact) > 0.98
    assert correlation(integrated, exact) > correlation(plain, exact)


def test_steps_per_pass_do_not_change_the_result(model, batch) -> None:
    """max_batch 3 (one step per pass, the batch has 3 prompts) and 256 (all at once)."""
    one = attribute(model, batch, "z_by_pos", METRIC, ig_steps=5, max_batch=3)
    all_at_once = attribute(model, batch, "z_by_pos", METRIC, ig_steps=5)
    torch.testing.assert_close(one.values, all_at_once.values, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(ig_steps=0), "ig_steps must be a positive int"),
    (dict(ig_steps=4, max_batch=0), "max_batch must be a positive int"),
    (dict(ig_steps=4, qk_fix=True), "choose one of .*, not qk_fix and ig_steps"),
])
def test_bad_settings_raise_one_line(model, batch, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        attribute(model, batch, "k", METRIC, **kwargs)


def test_nothing_left_behind(model, batch) -> None:
    assert_leaves_model_as_it_was(
        model, batch, lambda: attribute(model, batch, "resid_mid", METRIC, ig_steps=4))


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama", "gemma2"])
def test_complete_per_layer_on_pretrained_bridges(request, batch, kind) -> None:
    """The interpolation is written where the bridge reads it (a hook whose returned tensor
    a skip connection ignores would break this): on GPT-2, GPT-NeoX (parallel blocks),
    Llama (grouped keys) and Gemma 2 (norms after attention and MLP), a layer's estimates
    sum to patching the whole layer (float32, 64 steps: within 3% of the change)."""
    model = request.getfixturevalue(kind)
    model.eval()
    targets = ["resid_pre", "resid_mid", "attn_out", "z", "k", "v"]
    if kind == "neox":
        targets.remove("resid_mid")  # (no such hook: attention and MLP read the same input)
    for target in targets:
        result = attribute(model, batch, target, METRIC, ig_steps=64)
        for layer in range(2):
            whole = whole_layer_patch(model, batch, TARGETS[target].hook_name(layer))
            change = whole - result.metric_corrupted
            summed = float((result.values[layer] - result.baseline).sum())
            assert abs(change) > 1e-3, (target, layer)  # the layer matters
            assert abs(summed - change) <= 0.03 * abs(change), (target, layer)
