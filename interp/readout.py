"""What the analyses that read a model at one position per example share (direct logit
attribution, the logit lens, the tuned lens): the entry check that the model runs on
`interp.functional`'s forward pass, and the pass over a task's batch in chunks, each read
at its examples' own positions (`functional.activations_at`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp import functional, models
from interp.functional import Architecture
from interp.tasks.base import TaskBatch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def functional_architecture(
    model: TransformerBridge, what: str, reason: str | None = None
) -> Architecture:
    """`model`'s `Architecture`, or a one-line ValueError saying why `what` cannot run on
    it: hooks attached (the forward pass would skip them), or a model the forward pass does
    not cover (`reason`, when given, says why instead of `architecture_of`'s message)."""
    models.refuse_attached_hooks(model, what, "remove them first")
    try:
        return functional.architecture_of(model)
    except ValueError as error:
        raise ValueError(
            f"{what} runs interp.functional's forward pass: {reason or error}"
        ) from None


def read_chunks(
    params: functional.Params,
    arch: Architecture,
    batch: TaskBatch,
    max_batch: int,
    desc: str,
    progress: bool,
    patterns: bool = False,
) -> Iterator[tuple[slice, Callable[..., Tensor]]]:
    """Per chunk of `max_batch` examples of `batch` (on the parameters' device): its rows
    and a reader of its activations at each example's `batch.position`
    (`functional.activations_at`, with the attention patterns when `patterns`), under
    `torch.inference_mode()`."""
    with torch.inference_mode():
        for start in tqdm(range(0, len(batch), max_batch), desc=desc, disable=not progress):
            rows = slice(start, start + max_batch)
            yield rows, functional.activations_at(params, batch.clean[rows], arch,
                                                  batch.position[rows], patterns=patterns)
