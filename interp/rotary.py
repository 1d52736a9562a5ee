"""Rotary position embeddings (Su et al. 2021, RoFormer) as pure functions of an
`Architecture`: the cos/sin tables of each layer (`rotary_tables`, `rope_of`) and their
application to queries and keys (`apply_rotary`), in the adjacent-pair or GPT-NeoX's
rotate-half layout. `interp.layers.mix_heads` rotates with them; `interp.functional`
re-exports them for engines that rerun part of a forward pass.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor

from interp.param_layout import Architecture

__all__ = ["apply_rotary", "rope_of", "rotary_tables"]


@functools.lru_cache(maxsize=32)
def rotary_tables(arch: Architecture, seq: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Cos and sin [pos, rotary_dim] of rotary embeddings (Su et al. 2021, RoFormer) on the
    first `rotary_dim` dimensions of each head, frequency i for the pair (2i, 2i+1) in the
    adjacent-pair layout and for (i, i + rotary_dim / 2) in GPT-NeoX's rotate-half one
    (`arch.rotary_adjacent_pairs`); the frequencies are `arch.rotary_inv_freq` where a
    pretrained model gives its own, and both tables are scaled by `arch.rotary_scale`
    (YaRN). Kept per architecture, length and device, so that a
    sweep makes them (and copies them to its device) once; made outside inference mode,
    so that autograd may save them."""
    with torch.inference_mode(False), torch.no_grad():
        dim = arch.rotary_dim
        if arch.rotary_inv_freq is not None:  # a pretrained model's own (maybe scaled)
            inv_freq = torch.tensor(arch.rotary_inv_freq, dtype=torch.float32)
        else:
            inv_freq = 1.0 / (arch.rotary_base ** (torch.arange(0, dim, 2).float() / dim))
        angles = torch.outer(torch.arange(arch.n_ctx).float(), inv_freq)[:seq]
        if arch.rotary_adjacent_pairs:
            angles = angles.repeat_interleave(2, dim=-1)
        else:
            angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if arch.rotary_scale != 1.0:
            cos, sin = cos * arch.rotary_scale, sin * arch.rotary_scale
        return cos.to(device), sin.to(device)


def rope_of(
    arch: Architecture, layer: int, seq: int, device: torch.device
) -> tuple[Tensor, Tensor] | None:
    """The rotary cos and sin tables of `layer` (`rotary_tables`; Gemma 3's local layers
    have frequencies of their own, `arch.rotary_local_inv_freq`), or None without rotary
    embeddings."""
    if not arch.rotary:
        return None
    if layer in arch.rotary_local_layers:
        return rotary_tables(_local_rotary(arch), seq, device)
    return rotary_tables(arch, seq, device)


@functools.lru_cache(maxsize=32)
def _local_rotary(arch: Architecture) -> Architecture:
    """`arch` with its local layers' rotary frequencies as the only ones."""
    return dataclasses.replace(
        arch, rotary_inv_freq=arch.rotary_local_inv_freq, rotary_local_inv_freq=None,
        rotary_local_layers=(),
    )


def apply_rotary(x: Tensor, rope: tuple[Tensor, Tensor], arch: Architecture) -> Tensor:
    """`x` [..., pos, d_head] rotated by the cos and sin tables `rope` ([pos, rotary_dim],
    from `rotary_tables`, rows picked for x's positions); dimensions past rotary_dim pass."""
    cos, sin = (table.to(x.dtype) for table in rope)
    dim = arch.rotary_dim
    rotated, passed = x[..., :dim], x[..., dim:]
    if arch.rotary_adjacent_pairs:
        swapped = torch.stack((-rotated[..., 1::2], rotated[..., 0::2]), dim=-1).flatten(-2)
    else:
        first, second = rotated.chunk(2, dim=-1)
        swapped = torch.cat([-second, first], dim=-1)
    rotated = rotated * cos + swapped * sin
    return torch.cat([rotated, passed], dim=-1) if passed.shape[-1] else rotated
