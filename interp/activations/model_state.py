"""The model's device and training flags, changed for a block and restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _model_device(model: TransformerBridge) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def _moved_to(model: TransformerBridge, device: torch.device) -> Iterator[None]:
    """Run the block with `model` on `device`, then move it back where it was."""
    before = _model_device(model)
    if before == device or (device.index is None and before.type == device.type):
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(before)


def _all_modules(model: TransformerBridge) -> list[torch.nn.Module]:
    modules = list(model.modules())
    try:
        original = model.original_model
    except AttributeError:
        original = None
    if isinstance(original, torch.nn.Module):
        modules.extend(original.modules())
    return modules


@contextmanager
def _eval_mode(model: TransformerBridge) -> Iterator[None]:
    """Eval mode for the block; every module's own training flag is restored afterwards."""
    flags = [(module, module.training) for module in _all_modules(model)]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
