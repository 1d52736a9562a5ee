"""Index spaces of activation patching: which hook a target patches and how one index is set.

A target (e.g. `resid_pre`, `z`) names a hook per layer, the axes its indices range over
(always starting with `layer`), and a setter that copies the source activation into the
patched one at a single index. The engine in `circuits.patching.engine` folds many indices
into one batch; the setters here only ever see one copy `[batch, ...]` at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuits.graph import parallel_blocks

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Setter = Callable[[Tensor, tuple[int, ...], Tensor], None]
"""`(patched [batch, ...], index without the layer, source [batch, ...])`, writes in place."""


def _set_pos(patched: Tensor, index: tuple[int, ...], source: Tensor) -> None:
    """Index `(pos,)` of a `[batch, pos, ...]` activation."""
    (pos,) = index
    patched[:, pos] = source[:, pos]


def _set_head(patched: Tensor, index: tuple[int, ...], source: Tensor) -> None:
    """Index `(head,)` of a `[batch, pos, head, d_head]` activation, every position."""
    (head,) = index
    patched[:, :, head] = source[:, :, head]


def _set_pos_head(patched: Tensor, index: tuple[int, ...], source: Tensor) -> None:
    """Index `(pos, head)` of a `[batch, pos, head, d_head]` activation."""
    pos, head = index
    patched[:, pos, head] = source[:, pos, head]


def _set_pattern_head(patched: Tensor, index: tuple[int, ...], source: Tensor) -> None:
    """Index `(head,)` of a `[batch, head, dest_pos, src_pos]` pattern, every position."""
    (head,) = index
    patched[:, head] = source[:, head]


@dataclass(frozen=True)
class IndexSpace:
    """One patching target: the hook of each layer, the axes of its indices, its setter.

    Attributes:
        name: The target's name, e.g. `"resid_pre"`.
        hook: Hook name with a `{layer}` field, e.g. `"blocks.{layer}.hook_resid_pre"`.
        axes: Names of the index axes, the first always `"layer"`.
        setter: Copies the source into the patched activation at one index.
        kv_heads: Heads are counted by `n_key_value_heads` where the model has them (k, v).
        dims: For each axis after `layer`, the dimension of the hooked activation
            `[batch, ...]` that it indexes (e.g. `(1, 2)` for pos and head of
            `[batch, pos, head, d_head]`); attribution patching sums over the others.
    """

    name: str
    hook: str
    axes: tuple[str, ...]
    setter: Setter
    kv_heads: bool = False
    dims: tuple[int, ...] = ()

    def hook_name(self, layer: int) -> str:
        """The hook patched at `layer`."""
        return self.hook.format(layer=layer)

    def sizes(self, model: TransformerBridge, n_pos: int) -> tuple[int, ...]:
        """The length of each axis for `model` on prompts of `n_pos` tokens."""
        cfg = model.cfg
        n_heads = cfg.n_heads
        if self.kv_heads and getattr(cfg, "n_key_value_heads", None):
            n_heads = cfg.n_key_value_heads
        lengths = {"layer": cfg.n_layers, "pos": n_pos, "head": n_heads}
        return tuple(lengths[axis] for axis in self.axes)


def _spaces() -> dict[str, IndexSpace]:
    spaces: dict[str, IndexSpace] = {}
    for name in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        spaces[name] = IndexSpace(
            name, f"blocks.{{layer}}.hook_{name}", ("layer", "pos"), _set_pos, dims=(1,)
        )
    for name in ("z", "q", "k", "v"):
        hook = f"blocks.{{layer}}.attn.hook_{name}"
        kv = name in ("k", "v")
        spaces[name] = IndexSpace(name, hook, ("layer", "head"), _set_head, kv, dims=(2,))
        spaces[f"{name}_by_pos"] = IndexSpace(
            f"{name}_by_pos", hook, ("layer", "pos", "head"), _set_pos_head, kv, dims=(1, 2)
        )
    spaces["pattern"] = IndexSpace(
        "pattern",
        "blocks.{layer}.attn.hook_pattern",
        ("layer", "head"),
        _set_pattern_head,
        dims=(1,),
    )
    return spaces


TARGETS: Mapping[str, IndexSpace] = MappingProxyType(_spaces())
"""Every patching target by name (read-only).

`resid_pre`, `resid_mid`, `resid_post`, `attn_out`, `mlp_out`: layer x position.
`z`, `q`, `k`, `v`: layer x head over all positions; `z_by_pos` etc.: layer x pos x head
(the axis order of TransformerLens's `get_act_patch_attn_head_*_by_pos`).
`pattern`: layer x head, the whole attention pattern of the head.
"""


ATTENTION_ONLY_MISSING = ("resid_mid", "mlp_out")
"""Targets an attention-only model has no hook for."""


def check_target_exists(space: IndexSpace, model: TransformerBridge) -> None:
    """Raise a one-line ValueError where `model` has no hook for the target: `resid_mid`
    and `mlp_out` of attention-only models, `resid_mid` of blocks whose attention and MLP
    run in parallel (GPT-J, GPT-NeoX / Pythia)."""
    hooks = getattr(model, "hook_dict", None)
    if hooks is not None and space.hook_name(0) not in hooks:
        why = ""
        if bool(getattr(getattr(model, "cfg", None), "attn_only", False)):
            why = " (it is attention-only)"
        elif parallel_blocks(model):
            why = " (its attention and MLP run in parallel)"
        raise ValueError(f"target {space.name!r} does not exist in this model{why}")


def check_patchable(space: IndexSpace, model: TransformerBridge) -> None:
    """Raise a one-line ValueError where `model` only lets the target's hook observe
    (and, first, where it has no such hook: `check_target_exists`).

    TransformerLens 4 bridges whose attention runs inside a wrapped Hugging Face module
    (e.g. GPT-2's, BERT's) fire `hook_pattern` after that module has already used the
    pattern, so an edit there changes nothing (TransformerLens's own pattern patching then
    silently returns the unpatched metric for every head); others compute the attention
    around the hook (native attentions, `accepts_pattern_fn`; the bridges of rotary models
    such as Llama's and Gemma's). Which one a model is, is seen by trying:
    `pattern_hook_takes_effect`.
    """
    check_target_exists(space, model)
    if space.name != "pattern" or pattern_hook_takes_effect(model):
        return
    attention = getattr(getattr(model.blocks[0], "attn", None), "original_component", None)
    raise ValueError(
        f"target 'pattern' cannot be patched on this model: its attention "
        f"({type(attention).__name__}) uses the pattern before hook_pattern fires, "
        f"so a patch would change nothing; patch 'q', 'k' or 'z' instead"
    )


def pattern_hook_takes_effect(model: TransformerBridge) -> bool:
    """Whether editing `blocks.0.attn.hook_pattern` changes `model`'s output: an attention
    that declares it (`accepts_pattern_fn`) does; otherwise one pass over two tokens with
    the pattern zeroed tells (in eval mode, so that dropout cannot change the output), and
    the answer is kept on the model."""
    known = model.__dict__.get("_interp_pattern_hook_takes_effect")
    if known is not None:
        return known
    attention = getattr(getattr(model.blocks[0], "attn", None), "original_component", None)
    if getattr(attention, "accepts_pattern_fn", False):
        return True
    device = next(model.parameters()).device
    tokens = torch.zeros(1, 2, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:  # (bridges that discard the edit warn so: the answer here says it once, clearly)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = model(tokens)
            zeroed = model.run_with_hooks(tokens, fwd_hooks=[
                ("blocks.0.attn.hook_pattern", lambda pattern, hook: torch.zeros_like(pattern))
            ])
    finally:
        model.train(was_training)
    takes_effect = not torch.equal(plain, zeroed)
    model.__dict__["_interp_pattern_hook_takes_effect"] = takes_effect
    return takes_effect


def index_space(target: str) -> IndexSpace:
    """The index space called `target`; a ValueError lists the known ones."""
    if target not in TARGETS:
        raise ValueError(f"unknown patching target {target!r}; choose from {sorted(TARGETS)}")
    return TARGETS[target]
