"""The two ways `attribute` makes its runs (`circuits.attribution_runs`) give the same
estimates: through `interp.functional` (the default where it covers the model) and through
the bridge's hooks, on native models and on every pretrained family, both directions, with
GradDrop and integrated gradients too; and the functional runs are refused, in one line,
where they cannot run."""

from __future__ import annotations

import pytest
import torch
from patching_reference import metric_with_scaled_patch

from circuits.attribution import attribute
from circuits.patching import TARGETS
from interp import models
from interp.metrics import logit_diff, mean_metric

METRIC = mean_metric(logit_diff)
FAMILIES = ("gpt2", "neox", "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3",
            "gptj", "opt", "gpt_neo", "phi", "bloom", "mistral_windowed")
FUNCTIONAL_TARGETS = sorted(name for name in TARGETS if name != "pattern")
"""Every target but the pattern, which the functional runs leave to the hooks."""


def assert_engines_agree(model, batch, target: str, **options) -> None:
    functional_result = attribute(model, batch, target, METRIC, engine="functional", **options)
    hooked = attribute(model, batch, target, METRIC, engine="hooks", **options)
    assert (hooked.values - hooked.baseline).abs().max() > 1e-4  # the estimate is not 0
    torch.testing.assert_close(functional_result.values, hooked.values, atol=2e-5, rtol=1e-4)
    assert functional_result.baseline == pytest.approx(hooked.baseline, abs=1e-5)
    assert functional_result.metric_clean == pytest.approx(hooked.metric_clean, abs=1e-5)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("target", FUNCTIONAL_TARGETS)
@pytest.mark.parametrize("fixture", ["model", "rotary"])
def test_native_models(request, batch, fixture, target, direction) -> None:
    assert_engines_agree(request.getfixturevalue(fixture), batch, target, direction=direction)


@pytest.mark.parametrize("target", ["resid_pre", "resid_mid", "mlp_out", "z_by_pos", "k", "v"])
@pytest.mark.parametrize("kind", FAMILIES)
def test_pretrained_families(request, batch, kind, target) -> None:
    model = request.getfixturevalue(kind)
    if target == "resid_mid" and kind in ("neox", "gptj", "phi"):  # parallel blocks
        target = "attn_out"
    if target == "resid_mid" and kind == "opt":  # see test_opt_resid_mid
        return
    assert_engines_agree(model, batch, target)


def test_opt_resid_mid_is_the_directional_derivative(opt, batch) -> None:
    """On OPT's bridge the hooked runs' gradient at `hook_resid_mid` misses a use of the
    stream that patching it in place reaches (the skip connection reads another tensor
    over the same memory): there the functional runs, the default, give the derivative of
    the patch, which the hooked ones do not (central difference of the metric with the
    activation at one index moved by eps times the patch, written in place)."""
    index = (0, 4)
    eps = 1e-3  # (the metric curves here: 1e-2 is 8% off; float32 still holds 1e-3)
    slope = (metric_with_scaled_patch(opt, batch, "resid_mid", index, eps)
             - metric_with_scaled_patch(opt, batch, "resid_mid", index, -eps)) / (2 * eps)
    estimates = {
        engine: (result.values[index] - result.baseline).item()
        for engine in ("functional", "hooks")
        for result in [attribute(opt, batch, "resid_mid", METRIC, engine=engine)]
    }
    assert abs(slope) > 0.05
    assert estimates["functional"] == pytest.approx(slope, rel=1e-2)
    assert abs(estimates["hooks"] - slope) > 0.1 * abs(slope)


@pytest.mark.parametrize("kind", ["model", "gpt2", "neox", "gemma2"])
def test_grad_drop(request, batch, kind) -> None:
    """The gates sit on the recorded writes of the functional pass as on the bridge's
    hooks (GPT-NeoX: parallel blocks; Gemma 2: norms after the attention and the MLP)."""
    assert_engines_agree(request.getfixturevalue(kind), batch, "z", grad_drop=True)


@pytest.mark.parametrize(("kind", "target"), [
    ("model", "resid_mid"), ("model", "z_by_pos"), ("rotary", "k"), ("gpt2", "resid_pre"),
    ("neox", "attn_out"), ("llama", "v_by_pos"),
])
def test_integrated_gradients(request, batch, kind, target) -> None:
    """The interpolated activation is written as it is recorded, in place, as the hook
    writes it (`hook_resid_mid`: the skip connection reads the same tensor)."""
    assert_engines_agree(request.getfixturevalue(kind), batch, target, ig_steps=3,
                         max_batch=6)


def test_integrated_gradients_of_any_metric(model, batch) -> None:
    """A metric not known to read `batch.position` alone gets whole passes, the activation
    written as it is recorded (the library's metrics start at the written layer)."""

    def metric(logits, batch):  # (a plain function: not marked as reading one position)
        return METRIC(logits, batch)

    for target in ("resid_mid", "z"):
        hooked = attribute(model, batch, target, metric, ig_steps=3, engine="hooks")
        ours = attribute(model, batch, target, metric, ig_steps=3, engine="functional")
        torch.testing.assert_close(ours.values, hooked.values, atol=2e-5, rtol=1e-4)
        library = attribute(model, batch, target, METRIC, ig_steps=3, engine="functional")
        torch.testing.assert_close(library.values, hooked.values, atol=2e-5, rtol=1e-4)


def test_frozen_weights(model, batch) -> None:
    """The functional runs detach the weights anyway; frozen ones change nothing."""
    expected = attribute(model, batch, "resid_mid", METRIC)
    model.requires_grad_(False)
    try:
        frozen = attribute(model, batch, "resid_mid", METRIC, engine="functional")
    finally:
        model.requires_grad_(True)
    torch.testing.assert_close(frozen.values, expected.values)


def test_auto_takes_the_hooks_where_it_must(model, batch) -> None:
    """With a hook of the user's attached, `auto` runs the bridge (and so the hook): here
    one that zeroes layer 1's attention output, which changes the estimates."""
    plain = attribute(model, batch, "resid_pre", METRIC)

    def zero(activation, *, hook):
        return activation * 0

    model.add_hook("blocks.1.hook_attn_out", zero)
    try:
        hooked = attribute(model, batch, "resid_pre", METRIC)
        with pytest.raises(ValueError, match="hooks are attached to the model"):
            attribute(model, batch, "resid_pre", METRIC, engine="functional")
    finally:
        model.reset_hooks()
    assert (hooked.values - plain.values).abs().max() > 1e-3


@pytest.mark.parametrize(("make", "options", "message"), [
    ("minilm", {}, "engine='functional' cannot run here"),
    ("model", dict(target="pattern"), "the pattern target needs the bridge's hooks"),
    ("model", dict(engine="fast"), "engine must be 'auto', 'functional' or 'hooks'"),
])
def test_refusals(request, batch, minilm_batch, make, options, message) -> None:
    model = request.getfixturevalue(make)
    options = {"target": "z", "engine": "functional", **options}
    target = options.pop("target")
    with pytest.raises(ValueError, match=message):
        attribute(model, minilm_batch if make == "minilm" else batch, target, METRIC, **options)
    assert not models.attached_hooks(model)
