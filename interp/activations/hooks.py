"""Which hooks to collect and how they are caught: resolution, capture, firing checks.

A request (names or a predicate) becomes one `_HookTarget` per distinct `HookPoint`, so
aliases of one point (e.g. `blocks.0.hook_resid_post` and `blocks.0.hook_out`) are caught
once. `_capture_hooks` attaches one forward hook per target that detaches the activation,
picks positions, casts it and copies it to where it is stored.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from interp.activations.early_stop import _EarlyStop
from interp.activations.positions import _PositionSelector
from interp.activations.suggestions import _suggestion

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge import TransformerBridge

HookRequest = str | Sequence[str] | Callable[[str], bool]
"""Hook names to collect, or a predicate over every name in `model.hook_dict`."""


@dataclass(frozen=True)
class _HookTarget:
    """One requested `HookPoint` and every requested name that refers to it."""

    names: tuple[str, ...]
    point: HookPoint
    pos_axis: int

    @property
    def key(self) -> str:
        """The name its activations are stored under."""
        return self.names[0]


def _resolve_hooks(model: TransformerBridge, hooks: HookRequest) -> list[_HookTarget]:
    """The requested hook points, one target per distinct `HookPoint`, in request order."""
    hook_dict = model.hook_dict
    if callable(hooks) and not isinstance(hooks, str):
        matched = [name for name in hook_dict if hooks(name)]
        if not matched:
            raise ValueError("the hook filter matched no hook in model.hook_dict")
        matched = [name for name in matched if _gate_reason(model, name, hook_dict) is None]
        if not matched:
            raise ValueError("the hook filter matched only hooks that are switched off")
    else:
        requested = [hooks] if isinstance(hooks, str) else list(hooks)
        if not requested:
            raise ValueError("no hooks were requested")
        for name in requested:
            if not isinstance(name, str):
                raise ValueError(f"hook names must be strings, got {name!r}")
            if name not in hook_dict:
                raise ValueError(f"unknown hook {name!r}{_missing_part(model, name, hook_dict)}")
            reason = _gate_reason(model, name, hook_dict)
            if reason is not None:
                raise ValueError(f"hook {name!r} is switched off: {reason}")
        matched = list(dict.fromkeys(requested))
    grouped: dict[int, list[str]] = {}
    for name in matched:
        grouped.setdefault(id(hook_dict[name]), []).append(name)
    return [
        _HookTarget(tuple(names), hook_dict[names[0]], _position_axis(names[0], hook_dict))
        for names in grouped.values()
    ]


def _missing_part(
    model: TransformerBridge, name: str, hook_dict: Mapping[str, HookPoint]
) -> str:
    """Why a hook name is not in `hook_dict`: the model has no MLP for an MLP hook (an
    attention-only model), else the closest names."""
    if (".mlp." in name or "hook_mlp_" in name) and getattr(model.cfg, "attn_only", False):
        return ": this model has no MLPs (it is attention-only)"
    return _suggestion(name, hook_dict)


def _gate_reason(
    model: TransformerBridge, name: str, hook_dict: Mapping[str, HookPoint]
) -> str | None:
    """Why the bridge refuses a hook on `name` (a `set_use_*` flag is off), or None."""
    try:
        model.check_hooks_to_add(hook_dict[name], name, _noop_hook)
    except ValueError as error:
        return str(error).splitlines()[0]
    return None


def _noop_hook(tensor: Tensor, *, hook: HookPoint) -> None:
    return None


def _position_axis(name: str, hook_dict: Mapping[str, HookPoint]) -> int:
    """The position axis of a hook's activation (query position for patterns and scores)."""
    point = hook_dict[name]
    declared = getattr(point, "pos_dim", None)
    if declared is not None:
        return int(declared)
    names = (name, point.name or name)
    return -2 if any(n.endswith(("hook_pattern", "hook_attn_scores")) for n in names) else 1


def _requested_order(hooks: HookRequest, storage: Mapping[str, str]) -> list[str]:
    if callable(hooks) and not isinstance(hooks, str):
        return list(storage)
    return list(dict.fromkeys([hooks] if isinstance(hooks, str) else hooks))


@contextmanager
def _capture_hooks(
    targets: Sequence[_HookTarget],
    captured: dict[str, Tensor],
    select: _PositionSelector,
    dtype: torch.dtype | None,
    store: torch.device,
    early_stop: _EarlyStop,
) -> Iterator[None]:
    """Attach one caching hook per target; every hook is removed on exit, error or not."""
    attached: list[tuple[HookPoint, Any]] = []

    def make_hook(target: _HookTarget) -> Callable[..., None]:
        def capture(activation: Any, *, hook: Any) -> None:
            if isinstance(activation, tuple):
                activation = activation[0]
            if not isinstance(activation, Tensor):
                return None
            kept = select(activation.detach(), target.pos_axis, target.key)
            cast = dtype if dtype is not None and kept.is_floating_point() else kept.dtype
            with torch.inference_mode(False):  # a normal tensor: usable with autograd later
                captured[target.key] = kept.to(device=store, dtype=cast, copy=True)
            early_stop.fired(target.key)
            return None

        return capture

    try:
        for target in targets:
            handle = target.point.add_hook(make_hook(target), dir="fwd")
            attached.append((target.point, handle))
        yield
    finally:
        for point, handle in attached:
            handle.hook.remove()
            point.fwd_hooks[:] = [h for h in point.fwd_hooks if h is not handle]


def _drop_silent(
    targets: list[_HookTarget], captured: Mapping[str, Tensor], *, named: bool
) -> list[_HookTarget]:
    """Targets that fired on the first batch; a named one that did not raises."""
    silent = [t.key for t in targets if t.key not in captured]
    if silent and named:
        raise ValueError(f"hook(s) {silent} never fired during the forward pass")
    if silent:
        warnings.warn(f"collect: dropped hooks that never fire: {silent}", stacklevel=3)
    kept = [t for t in targets if t.key in captured]
    if not kept:
        raise ValueError("none of the hooks the filter matched fired during the forward pass")
    return kept


def _check_fired(
    targets: Sequence[_HookTarget], captured: Mapping[str, Tensor], number: int, expected: int
) -> None:
    """Every target fired on this batch, with the batch on its first axis."""
    for target in targets:
        if target.key not in captured:
            raise ValueError(f"hook {target.key!r} did not fire on batch {number}")
        rows = captured[target.key].shape[0] if captured[target.key].dim() else 0
        if rows != expected:
            raise ValueError(
                f"hook {target.key!r} has leading dimension {rows}, not the batch size "
                f"{expected}; only batched activations can be collected"
            )
