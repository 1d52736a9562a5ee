"""The parameter layout against the bridge's `state_dict()`: keys, shapes, buffers, copies
in and out, stacking along a seed axis, and the one-line errors of a wrong layout."""

from __future__ import annotations

import pytest
import torch
from native_specs import SPECS

from interp import functional, param_layout
from interp.dispatch_count import count_dispatch
from interp.models import ModelSpec, build


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_param_shapes_are_the_state_dict_layout(spec_name: str) -> None:
    spec = SPECS[spec_name]
    model = build(spec, device="cpu")
    layout = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert list(param_layout.param_shapes(spec).items()) == list(layout.items())
    params = param_layout.params_of(model)
    assert list(params) == list(layout)
    trainable = {t.data_ptr() for t in model.parameters()}
    buffers = {name for name, t in model.state_dict().items() if t.data_ptr() not in trainable}
    assert buffers == set(param_layout.TRAINABLE_EXCLUDED)


def test_stack_then_unstack_gives_back_the_params() -> None:
    spec = SPECS["ln-relu-1layer"]
    models = [build(spec.model_copy(update={"seed": seed}), device="cpu") for seed in range(2)]
    params = [param_layout.params_of(model) for model in models]
    restored = param_layout.unstack_params(param_layout.stack_params(params))
    assert len(restored) == 2
    for original, back in zip(params, restored, strict=True):
        assert list(back) == list(original)
        assert all(torch.equal(back[k], original[k]) for k in original)


def test_live_params_are_the_state_dict_without_copies_and_follow_loads() -> None:
    model = build(ModelSpec(n_layers=1, d_model=16, n_heads=2, d_vocab=10, n_ctx=4), device="cpu")
    live = param_layout.live_params(model)
    state = model.state_dict()
    assert list(live) == list(state)
    for name, tensor in state.items():
        assert torch.equal(live[name], tensor), name
        assert live[name].data_ptr() == tensor.data_ptr(), name  # a view, not a copy
    changed = {name: tensor + 1.0 for name, tensor in param_layout.params_of(model).items()}
    param_layout.load_params(model, changed)
    again = param_layout.live_params(model)
    for name, tensor in changed.items():
        assert torch.equal(again[name], tensor), name


def test_live_params_reuse_their_views_until_a_weight_is_replaced() -> None:
    """A second call dispatches no op (no detach per weight), and a tensor swapped in by
    `.data =` (what `model.to` and loads by assignment do) is seen."""
    model = build(ModelSpec(n_layers=1, d_model=16, n_heads=2, d_vocab=10, n_ctx=4), device="cpu")
    first = param_layout.live_params(model)
    with count_dispatch() as counted:
        second = param_layout.live_params(model)
    assert counted.ops == 0
    assert all(second[k] is first[k] for k in first)
    weight = model.state_dict(keep_vars=True)["embed.weight"]
    weight.data = torch.full_like(weight, 3.0)
    third = param_layout.live_params(model)
    assert torch.equal(third["embed.weight"], torch.full_like(weight, 3.0))
    assert third["embed.weight"].data_ptr() == weight.data_ptr()
    assert third["unembed.weight"] is first["unembed.weight"]


def test_bad_layouts_raise_one_line_value_errors() -> None:
    model = build(SPECS["ln-relu-1layer"], device="cpu")
    params = param_layout.params_of(model)
    with pytest.raises(ValueError, match="missing"):
        param_layout.load_params(model, {k: v for k, v in params.items() if "ln1" not in k})
    with pytest.raises(ValueError, match="shape"):
        param_layout.stack_params([params, {**params, "embed.weight": torch.zeros(2, 16)}])
    with pytest.raises(ValueError, match="at least one"):
        param_layout.stack_params([])


def test_functional_re_exports_the_layout_names() -> None:
    names = (
        "Architecture",
        "architecture",
        "param_shapes",
        "params_of",
        "live_params",
        "load_params",
        "stack_params",
        "unstack_params",
        "TRAINABLE_EXCLUDED",
        "Params",
    )
    for name in names:
        assert getattr(functional, name) is getattr(param_layout, name), name
        assert name in functional.__all__, name
