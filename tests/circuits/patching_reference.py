"""TransformerLens's own activation patching (`transformer_lens.patching.get_act_patch_*`),
the reference the patching tests compare ours with, and hook bookkeeping."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import transformer_lens.patching as tl_patching
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.patching import TARGETS
from interp.metrics import logit_diff, mean_metric
from interp.tasks.base import TaskBatch

METRIC = mean_metric(logit_diff)


def _resid_post_reference(**kwargs):
    return tl_patching.generic_activation_patch(
        patch_setter=tl_patching.layer_pos_patch_setter,
        activation_name="resid_post",
        index_axis_names=("layer", "pos"),
        **kwargs,
    )


REFERENCES: dict[str, Callable[..., Tensor]] = {
    "resid_pre": tl_patching.get_act_patch_resid_pre,
    "resid_mid": tl_patching.get_act_patch_resid_mid,
    "resid_post": _resid_post_reference,
    "attn_out": tl_patching.get_act_patch_attn_out,
    "mlp_out": tl_patching.get_act_patch_mlp_out,
    "z": tl_patching.get_act_patch_attn_head_out_all_pos,
    "z_by_pos": tl_patching.get_act_patch_attn_head_out_by_pos,
    "q": tl_patching.get_act_patch_attn_head_q_all_pos,
    "k": tl_patching.get_act_patch_attn_head_k_all_pos,
    "v": tl_patching.get_act_patch_attn_head_v_all_pos,
    "q_by_pos": tl_patching.get_act_patch_attn_head_q_by_pos,
    "k_by_pos": tl_patching.get_act_patch_attn_head_k_by_pos,
    "v_by_pos": tl_patching.get_act_patch_attn_head_v_by_pos,
    "pattern": tl_patching.get_act_patch_attn_head_pattern_all_pos,
}


def reference(
    model: TransformerBridge, batch: TaskBatch, target: str, direction: str, metric=METRIC
) -> Tensor:
    """TransformerLens's one-forward-per-index patching (noising: clean/corrupted swapped)."""
    source, base = (
        (batch.clean, batch.corrupted) if direction == "denoise" else (batch.corrupted, batch.clean)
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(source)
            return REFERENCES[target](
                model=model,
                corrupted_tokens=base,
                clean_cache=cache,
                patching_metric=partial(metric, batch=batch),
            )
    finally:
        model.train(was_training)


def assert_no_hooks(model: TransformerBridge) -> None:
    for name, point in model.hook_dict.items():
        assert point.fwd_hooks == [] and point.bwd_hooks == [], name
        assert len(point._forward_hooks) == 0, name


def hook_counts(model: TransformerBridge) -> dict[str, tuple[int, int, int]]:
    """Hooks on every HookPoint (pretrained bridges keep some permanent ones of their own)."""
    return {
        name: (len(point.fwd_hooks), len(point.bwd_hooks), len(point._forward_hooks))
        for name, point in model.hook_dict.items()
    }


def assert_leaves_model_as_it_was(
    model: TransformerBridge, batch: TaskBatch, call: Callable[[], object]
) -> None:
    """`call()` (an analysis of `model` on `batch`), run with the model in training mode,
    restores that mode and leaves the batch's tokens, the weights, their gradients and the
    hooks as they were."""
    weights = {name: weight.clone() for name, weight in model.state_dict().items()}
    tokens = batch.clean.clone(), batch.corrupted.clone()
    was_training = model.training
    model.train()
    try:
        call()
        assert model.training
    finally:
        model.train(was_training)
    assert torch.equal(batch.clean, tokens[0]) and torch.equal(batch.corrupted, tokens[1])
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, weights[name]), name
    assert all(weight.grad is None for weight in model.parameters())
    assert_no_hooks(model)


def metric_with_scaled_patch(
    model: TransformerBridge, batch: TaskBatch, target: str, index: tuple[int, ...], eps: float
) -> float:
    """Denoising metric with `a_base + eps * (a_clean - a_base)` written at one index."""
    space = TARGETS[target]  # (in place, as patching writes: every alias of it sees it)
    layer, *rest = index
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.clean)
        source = cache[space.hook_name(layer)].clone()

    def write(activation: Tensor, *, hook) -> Tensor:
        space.setter(activation, tuple(rest), activation + eps * (source - activation))
        return activation

    with torch.no_grad(), model.hooks(fwd_hooks=[(space.hook_name(layer), write)]):
        return float(METRIC(model(batch.corrupted), batch))
