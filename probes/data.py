"""(activation, label) datasets for probing, from a model and labelled examples.

Activations come from `interp.activations.collect` (only the hooks asked for, batched, in
memory or streamed to safetensors shards on disk with `out_dir`). By default the hooks are
every layer's residual stream after the block (`blocks.{l}.hook_resid_post`).

- `sequence_dataset`: one label per example, read at one position per example (e.g. the
  `=` token of a modular-arithmetic prompt): features `[layer, n, d]`.
- `token_dataset`: one label per token (labels `[n, pos]`, `IGNORE` where a token has none,
  padding dropped through the attention mask): features `[layer, m, d]` over the m labelled
  tokens, each row with the example it came from in `groups`, so that `probes.linear`
  splits train and test by example, never by token.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.activations import ActivationSet, collect

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

IGNORE = -100
"""Token label meaning "no label here" in `token_dataset`."""


@dataclass(frozen=True)
class ProbeDataset:
    """Features and labels for `probes.linear.fit_probes`.

    Attributes:
        features: `[layer, n, d]`, one slice per hook, in `hooks` order.
        labels: `[n]` (class ids or values) or `[n, k]` (regression targets).
        groups: `[n]`: the example each row came from (split by it).
        hooks: The hook of each layer slice.
        positions: `[n]`: the token position each row was read at.
    """

    features: Float[Tensor, "layer n d"]
    labels: Tensor
    groups: Int[Tensor, " n"]
    hooks: tuple[str, ...]
    positions: Int[Tensor, " n"]

    def __post_init__(self) -> None:
        if self.features.ndim != 3:
            raise ValueError(
                f"ProbeDataset: features must be [layer, n, d], got {tuple(self.features.shape)}"
            )
        n = self.features.shape[1]
        if self.features.shape[0] != len(self.hooks):
            raise ValueError(
                f"ProbeDataset: features {tuple(self.features.shape)} do not match "
                f"{len(self.hooks)} hooks"
            )
        for name in ("labels", "groups", "positions"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(
                    f"ProbeDataset: {name} has {getattr(self, name).shape[0]} rows, features {n}"
                )


def residual_hooks(model: TransformerBridge) -> list[str]:
    """Every layer's residual stream after the block, first layer first."""
    return [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]


def _check_tokens(tokens: Tensor) -> tuple[int, int]:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be integer ids [n, pos], got {shape}")
    return tokens.shape[0], tokens.shape[1]


def _as_labels(labels: Tensor | Sequence[Any]) -> Tensor:
    """`labels` as a tensor (a list, nested list or array of numbers is converted)."""
    if isinstance(labels, Tensor):
        return labels
    try:
        return torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"labels must be a tensor or a (nested) sequence of numbers, got "
            f"{type(labels).__name__}"
        ) from None


def _check_mask(attention_mask: Tensor | None, n: int, n_pos: int) -> None:
    """A one-line ValueError unless the mask is None or a `[n, pos]` tensor like the tokens."""
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != (n, n_pos):
        shape = (
            tuple(attention_mask.shape)
            if isinstance(attention_mask, Tensor)
            else type(attention_mask).__name__
        )
        raise ValueError(f"attention_mask must be [n, pos] = {(n, n_pos)} like tokens, got {shape}")


def _hook_list(model: TransformerBridge, hooks: Sequence[str] | str | None) -> list[str]:
    """The hooks asked for (one name may be given alone); default: the residual stream."""
    if hooks is None:
        return residual_hooks(model)
    return [hooks] if isinstance(hooks, str) else list(hooks)


def _check_stackable(acts: ActivationSet, hooks: Sequence[str], n: int) -> None:
    """A one-line ValueError unless every hook's activations share one shape (each shape
    shown with `n` examples)."""
    shapes = {name: (n, *acts.shape(name)[1:]) for name in hooks}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"the hooks' activations differ in shape, so cannot be stacked: {shapes}")


def _check_one_vector_per_token(acts: ActivationSet, hooks: Sequence[str], lead: int) -> None:
    """A one-line ValueError unless each hook gives every token one vector `[d]`: `acts`
    holds `[n, pos, d]` (token level, `lead` 2) or `[n, d]` at one position (`lead` 1)."""
    for name in hooks:
        per_token = acts.shape(name)[lead:]
        if len(per_token) != 1:
            raise ValueError(
                f"hook {name!r} gives each token an activation of shape {per_token}, with "
                "extra axes (e.g. attention heads): probes take hooks of shape [n, pos, d] "
                "(one vector per token, e.g. blocks.0.hook_resid_post); flatten the extra "
                "axes yourself to probe this one"
            )


def _check_hooks(acts: ActivationSet, hooks: Sequence[str], n: int, lead: int) -> None:
    """The hooks' activations can be stacked and give one vector per token (see above)."""
    _check_stackable(acts, hooks, n)
    _check_one_vector_per_token(acts, hooks, lead)


def _stack(
    model: TransformerBridge,
    tokens: Tensor,
    hooks: Sequence[str],
    *,
    positions: Tensor | None = None,
    attention_mask: Tensor | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    **kwargs,
) -> Tensor:
    """`[layer, n, ...]`: `collect` of every hook, stacked in order (in memory).

    Each hook must give one vector per token and all the same shape. With `out_dir`, the
    hooks' shapes are first read from one example collected in memory (an example's shape
    does not depend on how many there are), so hooks that cannot be probed or stacked are
    refused before any shard is written.
    """
    rows = {"positions": positions, "attention_mask": attention_mask}
    lead = 2 if positions is None else 1  # [n, pos, ...] or [n, ...] at one position
    if out_dir is not None:
        first = {key: None if value is None else value[:1] for key, value in rows.items()}
        sample = collect(model, tokens[:1], list(hooks), progress=False, **first)
        _check_hooks(sample, hooks, len(tokens), lead)
    acts = collect(model, tokens, list(hooks), out_dir=out_dir, **rows, **kwargs)
    _check_hooks(acts, hooks, len(tokens), lead)
    return torch.stack([acts[name].float() for name in hooks])


def sequence_dataset(
    model: TransformerBridge,
    tokens: Int[Tensor, "n pos"],
    labels: Tensor | Sequence[Any],
    position: int | Int[Tensor, " n"],
    *,
    hooks: Sequence[str] | None = None,
    attention_mask: Int[Tensor, "n pos"] | None = None,
    batch_size: int = 32,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ProbeDataset:
    """One row per example: each hook's activation at `position` (an int, or one per
    example), labelled by `labels` (`[n]` or `[n, k]`, a tensor or a list of numbers)."""
    n, n_pos = _check_tokens(tokens)
    labels = _as_labels(labels)
    if labels.ndim == 0 or labels.shape[0] != n:
        rows = labels.shape[0] if labels.ndim else "no"
        raise ValueError(f"labels have {rows} rows for {n} examples")
    _check_mask(attention_mask, n, n_pos)
    where = torch.as_tensor(position).expand(n) if isinstance(position, int) else position
    if where.shape != (n,) or bool((where < 0).any()) or bool((where >= n_pos).any()):
        raise ValueError(f"position must be an int or [n] positions in 0..{n_pos - 1}")
    hooks = _hook_list(model, hooks)
    features = _stack(
        model,
        tokens,
        hooks,
        positions=where.long(),
        attention_mask=attention_mask,
        batch_size=batch_size,
        out_dir=out_dir,
        progress=progress,
    )
    return ProbeDataset(features, labels, torch.arange(n), tuple(hooks), where.long())


def token_dataset(
    model: TransformerBridge,
    tokens: Int[Tensor, "n pos"],
    labels: Tensor | Sequence[Any],
    *,
    hooks: Sequence[str] | None = None,
    attention_mask: Int[Tensor, "n pos"] | None = None,
    batch_size: int = 32,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ProbeDataset:
    """One row per labelled token: `labels` `[n, pos]` (`IGNORE` where there is none);
    padding (`attention_mask == 0`) is dropped whatever its label. `labels` may be a nested
    list of numbers."""
    n, n_pos = _check_tokens(tokens)
    labels = _as_labels(labels)
    _check_mask(attention_mask, n, n_pos)
    if labels.shape[:2] != (n, n_pos):
        raise ValueError(f"labels must be [n, pos] = {(n, n_pos)}, got {tuple(labels.shape)}")
    keep = labels != IGNORE if labels.ndim == 2 else torch.ones(n, n_pos, dtype=torch.bool)
    if attention_mask is not None:
        keep &= attention_mask.bool()
    if not bool(keep.any()):
        raise ValueError("no labelled token: every label is IGNORE or padding")
    hooks = _hook_list(model, hooks)
    features = _stack(
        model,
        tokens,
        hooks,
        attention_mask=attention_mask,
        batch_size=batch_size,
        out_dir=out_dir,
        progress=progress,
    )
    rows, columns = keep.nonzero(as_tuple=True)
    return ProbeDataset(
        features=features[:, rows, columns],
        labels=labels[rows, columns],
        groups=rows,
        hooks=tuple(hooks),
        positions=columns,
    )
