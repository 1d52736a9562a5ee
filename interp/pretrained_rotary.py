"""The rotary-embedding fields of a covered pretrained model's `Architecture`
(`rotary_of`), read from its Hugging Face config and its own rotary module, so that scaled
frequencies are exact as the class computes them, or the reason they cannot be.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["rotary_of"]


_SEQUENCE_DEPENDENT_ROPE = ("dynamic", "longrope")
"""Rope types whose frequencies change with the sequence length (Hugging Face recomputes
them per call past the original context)."""


def rotary_of(
    original: Any, hf_config: Any, d_head: int, rotary: bool
) -> tuple[dict[str, Any], str | None]:
    """The `Architecture` fields of a covered rotary model's embeddings, and the reason it
    is refused, if any. The frequencies and the cos/sin scale are read from the model's
    own rotary module (`inv_freq`, `attention_scaling`), so every rope type whose
    frequencies are fixed is exact as the class computes it: "default", "linear",
    "llama3" (Llama 3.1 and 3.2), "yarn"; `rope_parameters` (transformers 5) names the
    type and `partial_rotary_factor` (GPT-NeoX's `rotary_pct`) the rotated width. Gemma 3
    has parameters per layer type (`rope_parameters[layer_type]`, a module buffer
    `<type>_inv_freq` each): its full-attention layers' are the model's frequencies, its
    sliding layers' `rotary_local_inv_freq`."""
    if not rotary:
        return {}, None
    if getattr(hf_config, "model_type", None) == "gptj":
        return _gptj_rotary(hf_config, d_head)
    rope = dict(getattr(hf_config, "rope_parameters", None) or {})
    per_type = {key: dict(value) for key, value in rope.items() if isinstance(value, dict)}
    types = list(getattr(hf_config, "layer_types", None) or [])
    if per_type:  # Gemma 3: the global layers' parameters are the model's
        main = "full_attention" if "full_attention" in types else types[0]
        rope = per_type[main]
    kinds = [params.get("rope_type", "default") for params in (per_type or {"": rope}).values()]
    if any(kind in _SEQUENCE_DEPENDENT_ROPE for kind in kinds):
        kind = next(kind for kind in kinds if kind in _SEQUENCE_DEPENDENT_ROPE)
        return {}, f"rope_type={kind!r} (frequencies that change with the sequence length)"
    factor = rope.get("partial_rotary_factor", getattr(hf_config, "rotary_pct", 1.0))
    rotary_dim = int(d_head * float(factor))
    if rotary_dim < 2 or rotary_dim % 2:
        return {}, f"rotary width {rotary_dim} (not a positive even number)"
    prefix = f"{main}_" if per_type else ""
    module = next((m for m in original.modules()
                   if isinstance(getattr(m, f"{prefix}inv_freq", None), Tensor)), None)
    inv_freq = None if module is None else getattr(module, f"{prefix}inv_freq")
    if inv_freq is None or inv_freq.numel() * 2 != rotary_dim:
        return {}, "no rotary embedding module of the configured width"
    fields = dict(
        rotary_dim=rotary_dim,
        rotary_base=float(rope.get("rope_theta", getattr(hf_config, "rotary_emb_base", 1e4))),
        rotary_inv_freq=_frequencies(inv_freq),
        rotary_scale=float(getattr(module, f"{prefix}attention_scaling", 1.0)),
    )
    local = [kind for kind in dict.fromkeys(types) if kind != main] if per_type else []
    if len(local) > 1:
        return {}, f"rotary parameters for {len(local) + 1} layer types"
    if local:
        scale = float(getattr(module, f"{local[0]}_attention_scaling", 1.0))
        if scale != fields["rotary_scale"]:
            return {}, "a rotary cos/sin scale per layer type"
        fields.update(
            rotary_local_inv_freq=_frequencies(getattr(module, f"{local[0]}_inv_freq")),
            rotary_local_layers=tuple(i for i, kind in enumerate(types) if kind == local[0]),
        )
    return fields, None


def _gptj_rotary(hf_config: Any, d_head: int) -> tuple[dict[str, Any], str | None]:
    """GPT-J's rotary fields: the first `rotary_dim` dimensions of each head, base 10,000,
    frequencies computed as its `create_sinusoidal_positions` does (the class keeps a
    sin/cos table, no `inv_freq`)."""
    rotary_dim = getattr(hf_config, "rotary_dim", None)
    if not rotary_dim or rotary_dim > d_head or rotary_dim % 2:
        return {}, f"rotary_dim={rotary_dim!r} (not a positive even width within a head)"
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64) / rotary_dim))
    return dict(rotary_dim=int(rotary_dim), rotary_base=1e4,
                rotary_inv_freq=_frequencies(inv_freq)), None


def _frequencies(inv_freq: Tensor) -> tuple[float, ...]:
    """A rotary module's inverse frequencies as a tuple of floats."""
    return tuple(inv_freq.detach().float().cpu().tolist())
