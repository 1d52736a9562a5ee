"""The tuned lens: the logit lens with a learned affine translator per depth.

The logit lens (`interp.logit_lens`) reads the residual stream entering block l as if it
were the last one's output; but the later blocks move and rescale the stream, so early
readouts are biased. The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions
from Transformers with the Tuned Lens") learns, for each depth l, a translator

    T_l(h) = h + A_l h + b_l        (A_l, b_l start at zero: the logit lens)

that minimises the KL divergence from the model's final next-token distribution to the
distribution read through T_l, the final norm and the unembedding, over every position of
a set of token sequences; the model stays frozen. The translators are independent, so one
optimiser trains all of them at once (Adam here; the paper's SGD with Nesterov momentum
fits large corpora). `lens_divergence` gives the mean KL per depth, by which the paper
compares the two lenses (its figure 2); `interp.logit_lens.logit_lens(model, batch,
lens=tuned)` reads a task's answer through the translators.

Runs on every model `interp.functional` covers, with its forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import trange

from interp import functional
from interp.atomic_io import atomic_write_bytes
from interp.functional import Architecture
from interp.readout import functional_architecture
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FILE = "tuned_lens.safetensors"


@dataclass(frozen=True)
class TunedLens:
    """One affine translator per block input; the last block's output is read as it is.

    Attributes:
        weights: `A_l`, `[layer, d_model, d_model]` (translated: `h + h @ A_l.T + b_l`).
        biases: `b_l`, `[layer, d_model]`.
        losses: The training loss (KL summed over depths, mean over positions) per step.
    """

    weights: Float[Tensor, "layer d_model d_model"]
    biases: Float[Tensor, "layer d_model"]
    losses: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        layers, width = self.biases.shape
        if self.weights.shape != (layers, width, width):
            raise ValueError(
                f"TunedLens: weights {tuple(self.weights.shape)} do not fit biases "
                f"{tuple(self.biases.shape)}"
            )

    @classmethod
    def identity(cls, arch: Architecture, device: torch.device | str = "cpu") -> TunedLens:
        """Translators that change nothing: the logit lens."""
        width = arch.d_model
        return cls(torch.zeros(arch.n_layers, width, width, device=device),
                   torch.zeros(arch.n_layers, width, device=device))

    def check_fits(self, arch: Architecture) -> None:
        """A one-line ValueError unless there is a translator per block of `arch`'s width."""
        if tuple(self.biases.shape) != (arch.n_layers, arch.d_model):
            raise ValueError(
                f"the tuned lens has {self.biases.shape[0]} translators of width "
                f"{self.biases.shape[1]}; the model has {arch.n_layers} blocks of width "
                f"{arch.d_model}"
            )

    def translate_stage(
        self, stage: int, stream: Float[Tensor, "*lead d_model"]
    ) -> Float[Tensor, "*lead d_model"]:
        """The stream entering block `stage` through its translator."""
        weight = self.weights[stage].to(stream.device, stream.dtype)
        return stream + stream @ weight.T + self.biases[stage].to(stream.device, stream.dtype)

    def translate(
        self, stream: Float[Tensor, "stage *lead d_model"]
    ) -> Float[Tensor, "stage *lead d_model"]:
        """The stream entering each block through its translator (stages 0 .. n_layers - 1),
        the last block's output (stage n_layers) unchanged."""
        inner = [self.translate_stage(stage, stream[stage]) for stage in range(len(stream) - 1)]
        return torch.stack([*inner, stream[-1]])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the translators and losses to `path` (a folder: `tuned_lens.safetensors`
        in it; a run's `artifacts/` folder works), atomically."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / FILE
        tensors = {"weights": self.weights.detach().cpu().contiguous(),
                   "biases": self.biases.detach().cpu().contiguous(),
                   "losses": torch.tensor(self.losses, dtype=torch.float64)}
        atomic_write_bytes(target, safetensors_bytes(tensors))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TunedLens:
        """The lens `save(path)` wrote."""
        target = Path(path) / FILE
        if not target.is_file():
            raise ValueError(f"no tuned lens at {target}")
        tensors = load_file(str(target))
        return cls(tensors["weights"], tensors["biases"], tuple(tensors["losses"].tolist()))


def _checked_tokens(tokens: object, arch: Architecture) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError("tokens must be an integer tensor [sequence, pos]")
    functional.check_tokens(tokens, arch)
    return tokens


def _checked_counted(counted: object, tokens: Tensor) -> Tensor:
    """`counted` as a float `[sequence, pos]` weight (all ones when None)."""
    if counted is None:
        return torch.ones(tokens.shape, device=tokens.device)
    if not isinstance(counted, Tensor) or counted.dtype != torch.bool:
        raise ValueError("counted must be a bool tensor [sequence, pos] (True: counts)")
    if counted.shape != tokens.shape:
        raise ValueError(f"counted {tuple(counted.shape)} must match tokens {tuple(tokens.shape)}")
    if not counted.any():
        raise ValueError("counted marks no position")
    return counted.to(tokens.device, torch.float32)


def counted_through(positions: Int[Tensor, " sequence"], length: int) -> Tensor:
    """`[sequence, length]` bool: the positions up to each sequence's `positions` entry
    (a task's read position: what comes after it is padding)."""
    return torch.arange(length, device=positions.device) <= positions[:, None]


def residual_streams(
    params: functional.Params, tokens: Int[Tensor, "batch pos"], arch: Architecture
) -> Float[Tensor, "stage batch pos d_model"]:
    """The stream entering each block and the last block's output, at every position."""
    cache: dict[str, Tensor] = {}
    functional.forward(params, tokens, arch, cache=cache, patterns=False)
    last = arch.n_layers - 1
    return torch.stack([cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(arch.n_layers)]
                       + [cache[f"blocks.{last}.hook_resid_post"]])


def _divergences(
    params: functional.Params, arch: Architecture, stream: Tensor, lens: TunedLens | None,
    counted: Float[Tensor, "batch pos"],
) -> Iterator[Tensor]:
    """Summed KL(final || stage) over the counted positions (weights `counted`) for each
    block's input (stages 0 .. n_layers - 1; the last block's output is the final
    distribution itself), one stage at a time, each from its own graph (a stage's logits
    are `[batch, pos, vocab]`)."""
    target = F.log_softmax(functional.unembed(params, stream[-1], arch).float(), dim=-1)
    target_probs = target.exp()
    for stage in range(arch.n_layers):
        read_in = stream[stage] if lens is None else lens.translate_stage(stage, stream[stage])
        read = F.log_softmax(functional.unembed(params, read_in, arch).float(), dim=-1)
        per_position = (target_probs * (target - read)).sum(-1)
        yield (per_position * counted).sum()


def lens_divergence(
    model: TransformerBridge,
    tokens: Int[Tensor, "sequence pos"],
    lens: TunedLens | None = None,
    *,
    counted: Bool[Tensor, "sequence pos"] | None = None,
    max_batch: int = 32,
) -> Float[Tensor, " stage"]:
    """Mean KL divergence (nats) from the model's output distribution to the distribution
    read at each depth (`"0_pre"`, ..., `"final_post"`, the last 0), over every position
    of `tokens` (or those `counted` marks; `counted_through` for right-padded prompts):
    through the logit lens, or through `lens`'s translators."""
    check_positive_int("max_batch", max_batch)
    arch = functional_architecture(model, "lens_divergence")
    tokens = _checked_tokens(tokens, arch)
    if lens is not None:
        lens.check_fits(arch)
    params = functional.live_params(model)
    tokens = tokens.to(params["embed.weight"].device)
    weights = _checked_counted(counted, tokens)
    total = torch.zeros(arch.n_layers + 1, dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, len(tokens), max_batch):
            rows = slice(start, start + max_batch)
            stream = residual_streams(params, tokens[rows], arch)
            kl = torch.stack(list(_divergences(params, arch, stream, lens, weights[rows])))
            total[:-1] += kl.double().cpu()  # the last stage is the output: KL 0
    return (total / float(weights.sum())).float()


def train_tuned_lens(
    model: TransformerBridge,
    tokens: Int[Tensor, "sequence pos"],
    *,
    counted: Bool[Tensor, "sequence pos"] | None = None,
    steps: int = 250,
    lr: float = 1e-3,
    max_batch: int = 32,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TunedLens:
    """Fit a tuned lens (module docstring) to `model` on every position of `tokens`.

    The residual streams are computed once (frozen model; `[n_layers + 1, sequence, pos,
    d_model]` held in memory), then `steps` Adam steps each on `max_batch` sequences drawn
    at random (seeded: the same inputs give the same lens).

    Args:
        model: A model `interp.functional` covers.
        tokens: Training sequences, `[sequence, pos]`.
        counted: The positions that count (default: all; `counted_through` for
            right-padded prompts).
        steps: Optimiser steps.
        lr: Adam's learning rate.
        max_batch: Sequences per step (all of them when fewer).
        seed: Seed of the minibatch draws.
        progress: Show a progress bar over the steps.
        on_step: Called with (step, loss) after each step.
    """
    check_positive_int("steps", steps)
    check_positive_int("max_batch", max_batch)
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    arch = functional_architecture(model, "train_tuned_lens")
    tokens = _checked_tokens(tokens, arch)
    params = functional.live_params(model)
    device = params["embed.weight"].device
    tokens = tokens.to(device)
    position_weights = _checked_counted(counted, tokens)
    with torch.no_grad():
        streams = torch.cat([residual_streams(params, tokens[start:start + max_batch], arch)
                             for start in range(0, len(tokens), max_batch)], dim=1)
    streams = streams.float()
    weights = torch.zeros(arch.n_layers, arch.d_model, arch.d_model, device=device,
                          requires_grad=True)
    biases = torch.zeros(arch.n_layers, arch.d_model, device=device, requires_grad=True)
    optimiser = torch.optim.Adam([weights, biases], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in trange(steps, desc="tuned lens", disable=not progress):
        rows = torch.randperm(len(tokens), generator=generator)[:max_batch].to(device)
        stream = streams[:, rows].to(params["embed.weight"].dtype)
        lens = TunedLens(weights, biases)
        optimiser.zero_grad(set_to_none=True)
        total = 0.0
        counted_here = position_weights[rows]
        n_counted = counted_here.sum().clamp(min=1.0)
        for kl in _divergences(params, arch, stream, lens, counted_here):
            mean_kl = kl / n_counted
            mean_kl.backward()  # each stage's graph is freed before the next is built
            total += float(mean_kl.detach())
        optimiser.step()
        losses.append(total)
        if on_step is not None:
            on_step(step, total)
    return TunedLens(weights.detach(), biases.detach(), tuple(losses))
