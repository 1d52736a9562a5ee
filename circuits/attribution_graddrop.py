"""GradDrop (AtP*, Kramár et al. 2024, section 3.1.2): attribution patching with the
gradient through one layer dropped at a time, against cancellation.

Plain attribution patching reads one gradient, the sum over every path from a node to the
metric. Where a node's effects along different paths cancel to first order (a head that
raises the answer directly and lowers it through a later layer), its estimate is near zero
while patching it may not be, and a ranking by the estimate misses it. GradDrop takes, for
each layer l, the gradient with the gradient flowing back through layer l's writes to the
residual stream (its attention output and MLP output, `hook_attn_out` and `hook_mlp_out`)
set to zero, so that the paths through layer l no longer cancel the others, and scores
each index by the mean magnitude of its estimates under those gradients:

    score(n) = 1 / (L - 1) * sum over l of |(a_source - a_base)[n] . grad_l[n]|

(L - 1: for a head's or an MLP's output the term of its own layer is zero, as its only path
is that layer's write.) A score for ranking, not an estimate of the patched value: it is
>= 0 whatever the sign of the effect. Each |.| is of the estimate for the whole batch (the
patch `circuits.patching.patch` makes), summed over the batch before the magnitude.
Costs one forward pass with gradients and L backward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

WRITES = ("hook_attn_out", "hook_mlp_out")
"""The hooks of a block whose outputs are its writes to the residual stream."""


class LayerGradientGates:
    """Forward hooks that let each backward pass drop the gradient through one layer's
    writes to the residual stream (`WRITES`): set `dropped` to a layer, or None for none."""

    def __init__(self, model: TransformerBridge, n_layers: int) -> None:
        if n_layers < 2:
            raise ValueError(f"grad_drop needs a model of at least 2 layers, got {n_layers}")
        available = set(model.hook_dict)
        self.names = {
            layer: [f"blocks.{layer}.{write}" for write in WRITES
                    if f"blocks.{layer}.{write}" in available]
            for layer in range(n_layers)
        }
        missing = [layer for layer, names in self.names.items() if not names]
        if missing:
            raise ValueError(
                f"grad_drop: the model has no blocks.{{layer}}.hook_attn_out or hook_mlp_out "
                f"for layers {missing}"
            )
        self.n_layers = n_layers
        self.dropped: int | None = None
        self.seen: set[int] = set()
        """The layers whose writes went through a gate in the forward pass."""

    def hooks(self) -> list[tuple[str, Callable[..., Tensor]]]:
        """`(hook name, hook)` pairs for `model.hooks(fwd_hooks=...)` during the forward pass
        whose gradients `gradients` then takes."""
        return [(name, self._gate(layer)) for layer, names in self.names.items()
                for name in names]

    def gate_cache(self, cache: Mapping[str, Tensor]) -> None:
        """Gate the writes recorded in `cache` by a forward pass already run (through
        `interp.functional`, whose cached tensors are the ones the pass went on with).
        Writes that do not require grad come before every input of the gradients: dropping
        them changes nothing."""
        for layer, names in self.names.items():
            for name in names:
                if name not in cache:
                    raise ValueError(f"grad_drop: the forward pass recorded no {name}")
                self._gate_tensor(layer, cache[name])
            self.seen.add(layer)

    def _gate_tensor(self, layer: int, activation: Tensor) -> None:
        if activation.requires_grad:
            activation.register_hook(
                lambda grad: torch.zeros_like(grad) if self.dropped == layer else None
            )

    def _gate(self, layer: int) -> Callable[..., Tensor]:
        def gate(activation: Tensor, *, hook: Any) -> Tensor:
            self._gate_tensor(layer, activation)  # (a write before every input: no grad)
            self.seen.add(layer)
            return activation

        return gate

    def gradients(
        self, value: Tensor, inputs: Sequence[Tensor]
    ) -> list[tuple[Tensor | None, ...]]:
        """For each layer l in turn, the gradients of `value` with respect to `inputs` with
        layer l's writes dropped (None: an input the value does not depend on then)."""
        missing = sorted(set(range(self.n_layers)) - self.seen)
        if missing:
            raise ValueError(f"grad_drop: the writes of layers {missing} never ran")
        gradients = []
        try:
            for layer in range(self.n_layers):
                self.dropped = layer
                gradients.append(torch.autograd.grad(
                    value, list(inputs), retain_graph=layer < self.n_layers - 1,
                    allow_unused=True,
                ))
        finally:
            self.dropped = None
        return gradients


def grad_drop_scores(
    estimates: Sequence[Tensor], n_layers: int
) -> Tensor:
    """`1 / (L - 1) * sum over l of |estimates[l]|`: the GradDrop score of each index from
    its estimates under each dropped layer's gradient (each `[...]` like one layer's grid)."""
    return torch.stack([estimate.abs() for estimate in estimates]).sum(0) / (n_layers - 1)
