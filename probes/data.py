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

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from interp.activations import ActivationSet, collect

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
        n = self.features.shape[1]
        if self.features.ndim != 3 or self.features.shape[0] != len(self.hooks):
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

    With `out_dir`, the hooks' shapes are first read from one example collected in memory
    (an example's shape does not depend on how many there are), so hooks that cannot be
    stacked are refused before any shard is written.
    """
    rows = {"positions": positions, "attention_mask": attention_mask}
    if out_dir is not None and len(set(hooks)) > 1:
        first = {key: None if value is None else value[:1] for key, value in rows.items()}
        sample = collect(model, tokens[:1], list(hooks), progress=False, **first)
        _check_stackable(sample, hooks, len(tokens))
    acts = collect(model, tokens, list(hooks), out_dir=out_dir, **rows, **kwargs)
    _check_stackable(acts, hooks, len(tokens))
    return torch.stack([acts[name].float() for name in hooks])


def sequence_dataset(
    model: TransformerBridge,
    tokens: Int[Tensor, "n pos"],
    labels: Tensor,
    position: int | Int[Tensor, " n"],
    *,
    hooks: Sequence[str] | None = None,
    attention_mask: Int[Tensor, "n pos"] | None = None,
    batch_size: int = 32,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ProbeDataset:
    """One row per example: each hook's activation at `position` (an int, or one per
    example), labelled by `labels` (`[n]` or `[n, k]`)."""
    n, n_pos = _check_tokens(tokens)
    if labels.shape[0] != n:
        raise ValueError(f"labels have {labels.shape[0]} rows for {n} examples")
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
    labels: Tensor,
    *,
    hooks: Sequence[str] | None = None,
    attention_mask: Int[Tensor, "n pos"] | None = None,
    batch_size: int = 32,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ProbeDataset:
    """One row per labelled token: `labels` `[n, pos]` (`IGNORE` where there is none);
    padding (`attention_mask == 0`) is dropped whatever its label."""
    n, n_pos = _check_tokens(tokens)
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
