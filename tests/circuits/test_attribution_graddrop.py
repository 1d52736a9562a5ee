"""Tests for AtP*'s GradDrop (`attribute(..., grad_drop=True)`, Kramár et al. 2024):
identities that hold by construction. With layer l's writes dropped, a head of layer l has
no path to the metric; a node of layer j sees its plain gradient whatever is dropped
before j; and in a model without norms, dropping the last layer leaves the direct path
alone, whose estimate is a dot product with the unembedding."""

from __future__ import annotations

import pytest
import torch
from patching_reference import assert_leaves_model_as_it_was
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.attribution import GRAD_DROP_METHOD, attribute, top_indices
from interp import functional, models
from interp.metrics import logit_diff, mean_metric
from interp.tasks.base import TaskBatch

METRIC = mean_metric(logit_diff)


@pytest.fixture(scope="module", params=["attention-only", "with MLPs"])
def no_norm(request) -> TransformerBridge:
    """Two layers, no norms: the direct path to the logits is linear. With MLPs, a layer's
    writes are its attention's and its MLP's outputs, both dropped together."""
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8,
                attn_only=request.param == "attention-only", normalization=None, seed=3)
    return models.build(spec, device="cpu")


def plain_effects(model: TransformerBridge, batch: TaskBatch, target: str) -> Tensor:
    """|plain attribution estimate| of every index."""
    plain = attribute(model, batch, target, METRIC)
    return (plain.values - plain.baseline).abs()


def scores(model: TransformerBridge, batch: TaskBatch, target: str) -> Tensor:
    result = attribute(model, batch, target, METRIC, grad_drop=True)
    assert result.method == GRAD_DROP_METHOD
    return result.values - result.baseline


def direct_effects(model: TransformerBridge, batch: TaskBatch, hook: str) -> Tensor:
    """The change of the mean logit difference along the direct path alone, from each
    head's (`hook_z`, `[head]`) or the stream's (`hook_resid_pre`, `[pos]`) clean minus
    corrupted activation at `hook`, in a model without norms: computed by hand from the
    weights."""
    arch, params = functional.architecture_of(model), functional.live_params(model)
    caches = []
    for tokens in (batch.clean, batch.corrupted):
        cache: dict[str, Tensor] = {}
        with torch.no_grad():
            functional.forward(params, tokens, arch, cache=cache)
        caches.append(cache[hook])
    change = caches[0] - caches[1]  # denoising: clean into the corrupted run
    unembed = params["unembed.weight"]
    direction = unembed[batch.answer] - unembed[batch.wrong]  # [batch, d_model]
    rows = torch.arange(len(batch.answer))
    if hook.endswith("hook_z"):
        layer = int(hook.split(".")[1])
        w_o = params[f"blocks.{layer}.attn.o.weight"].unflatten(1, (arch.n_heads, arch.d_head))
        at_read = change[rows, batch.position]  # [batch, head, d_head]
        written = torch.einsum("bhd,mhd->bhm", at_read, w_o)
        return torch.einsum("bhm,bm->h", written, direction) / len(rows)
    position_axis = torch.arange(change.shape[1])
    at_read = change * (position_axis[None, :] == batch.position[:, None])[..., None]
    return torch.einsum("bpm,bm->p", at_read, direction) / len(rows)


def test_two_layers_without_norms(no_norm, batch) -> None:
    """L = 2, so score = |estimate with layer 0 dropped| + |with layer 1 dropped|: a
    layer-1 head's is its plain estimate (layer 0 lies before it, layer 1 is its own);
    the residual stream entering layer 1 keeps its plain gradient with layer 0 dropped
    and only the skip connection with layer 1 (its attention and MLP) dropped; without
    MLPs, a layer-0 head's is its direct path's."""
    z = scores(no_norm, batch, "z")
    plain_z = plain_effects(no_norm, batch, "z")
    torch.testing.assert_close(z[1], plain_z[1], atol=1e-5, rtol=0)

    resid = scores(no_norm, batch, "resid_pre")
    plain_resid = plain_effects(no_norm, batch, "resid_pre")
    direct = direct_effects(no_norm, batch, "blocks.1.hook_resid_pre").abs()
    assert (direct - plain_resid[1]).abs().max() > 1e-3  # the second layer matters here
    torch.testing.assert_close(resid[1], plain_resid[1] + direct, atol=1e-5, rtol=0)

    if no_norm.cfg.attn_only:  # (with MLPs, layer 0's MLP lies on its heads' paths too)
        direct = direct_effects(no_norm, batch, "blocks.0.attn.hook_z").abs()
        assert (direct - plain_z[0]).abs().max() > 1e-3
        torch.testing.assert_close(z[0], direct, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
def test_last_layer_heads_score_their_plain_estimate(request, batch, kind) -> None:
    """On any model a last-layer head's L - 1 terms with an earlier layer dropped are its
    plain estimate and the one with its own layer dropped is 0: its score is |plain|.
    GPT-NeoX's parallel blocks write attention and MLP outputs side by side; both are
    dropped."""
    model = request.getfixturevalue(kind)
    last = model.cfg.n_layers - 1
    z = scores(model, batch, "z")
    assert z[last].abs().max() > 1e-4
    torch.testing.assert_close(z[last], plain_effects(model, batch, "z")[last],
                               atol=1e-5, rtol=1e-4)
    assert (z >= 0).all()


def test_ranks_with_top_indices(no_norm, batch) -> None:
    result = attribute(no_norm, batch, "z", METRIC, grad_drop=True)
    flat = (result.values - result.baseline).reshape(-1)
    first = top_indices(result, 1)[0]
    assert (result.values - result.baseline)[first] == flat.max()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(grad_drop=True, qk_fix=True), "choose one of .*, not qk_fix and grad_drop"),
    (dict(grad_drop=True, ig_steps=2), "choose one of .*, not ig_steps and grad_drop"),
])
def test_bad_settings_raise_one_line(no_norm, batch, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        attribute(no_norm, batch, "z", METRIC, **kwargs)


def test_one_layer_model_is_refused(batch) -> None:
    one = models.build(dict(n_layers=1, d_model=16, n_heads=2, d_vocab=20, n_ctx=8, seed=0))
    with pytest.raises(ValueError, match="grad_drop needs a model of at least 2 layers"):
        attribute(one, batch, "z", METRIC, grad_drop=True)


def test_nothing_left_behind(no_norm, batch) -> None:
    assert_leaves_model_as_it_was(
        no_norm, batch, lambda: attribute(no_norm, batch, "z", METRIC, grad_drop=True))
