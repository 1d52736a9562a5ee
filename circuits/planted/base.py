"""The parts every planted circuit is built from.

`PlantedCircuit` (a hand-built model, its batch and its known circuit), `_Residual` (named,
disjoint subspaces of the residual stream), `_Weights` (a native model's weights, filled in
by hand), small helpers for building batches, and the constants the builders share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from circuits.graph import ComputationalGraph
from interp import functional, models
from interp.tasks.base import TaskBatch
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_ATTEND = 12.0  # attention score of the position a hand-built head means to attend to
_LOGIT = 6.0  # logit a circuit head writes
_BOS, _END = 0, 1  # the BOS and END tokens of the models with a template (copy_suppress, mlp_and)


@dataclass(frozen=True)
class PlantedCircuit:
    """A hand-built model, a batch on which it shows a behaviour, and the circuit of it.

    Attributes:
        name: The registry name (`"induction"`, `"copy_suppress"`, `"mlp_and"`).
        model: A native `TransformerBridge` (no LayerNorm, weights set by hand).
        batch: Clean and corrupted prompts, answer and wrong tokens and the position the
            metric reads; the metric is the mean logit difference (answer - wrong).
        edges: The ground truth under resample ablation: names of the edges of
            `ComputationalGraph.from_model(model)` through which the behaviour flows.
        invariant_edges: Edges the mechanism reads whose signal is the same on every clean
            and corrupted prompt (positions, constant features), so resample and mean
            ablation cannot see them; `edges | invariant_edges` is the circuit under zero
            ablation.
        distractors: Node names (`"L0H1"`, `"mlp1"`) of components outside the circuit
            that do work on other prompts.
        distractor_tokens: Prompts `[batch, pos]` on which ablating any distractor changes
            the logits at the last position.
        description: What is planted: which component reads and writes what.
    """

    name: str
    model: TransformerBridge
    batch: TaskBatch
    edges: frozenset[str]
    invariant_edges: frozenset[str]
    distractors: frozenset[str]
    distractor_tokens: Int[Tensor, "batch pos"]
    description: str

    def __post_init__(self) -> None:
        graph = ComputationalGraph.from_model(self.model)
        for field in ("edges", "invariant_edges"):
            unknown = sorted(set(getattr(self, field)) - set(graph.edge_index))
            if unknown:
                raise ValueError(f"PlantedCircuit.{field}: no such edges {unknown}")
        if self.edges & self.invariant_edges:
            raise ValueError("PlantedCircuit: edges and invariant_edges overlap")

    def truth_edges(self, ablation: str) -> frozenset[str]:
        """The ground-truth circuit under `ablation`: `edges` under resample and mean
        ablation, `edges | invariant_edges` under zero ablation."""
        if ablation not in ("resample", "mean", "zero"):
            raise ValueError(f"ablation must be resample, mean or zero, got {ablation!r}")
        return self.edges | self.invariant_edges if ablation == "zero" else self.edges

    @property
    def graph(self) -> ComputationalGraph:
        """The model's computational graph."""
        return ComputationalGraph.from_model(self.model)


# -- building blocks -------------------------------------------------------------------


class _Residual:
    """Named, disjoint subspaces of the residual stream, laid out in the order given."""

    def __init__(self, widths: Mapping[str, int]):
        self.spans: dict[str, range] = {}
        start = 0
        for name, width in widths.items():
            self.spans[name] = range(start, start + width)
            start += width
        self.width = start

    def __getitem__(self, name: str) -> range:
        return self.spans[name]


class _Weights:
    """Zero weights of a native model, filled in by hand, then loaded into it.

    Attention uses TransformerLens's scaling by `1/sqrt(d_head)`; `read("q", ...)`
    multiplies by `sqrt(d_head)` so that a query weight of `g` gives attention scores `g`.
    """

    def __init__(self, spec: Mapping[str, Any], device: str | torch.device):
        self.model = models.build(dict(spec), device=device)
        self.params = {
            name: torch.zeros_like(t) for name, t in functional.params_of(self.model).items()
        }
        self.d_head = int(spec["d_head"])

    def embed(self, tokens: Iterable[int], column: int | Sequence[int], value: float = 1.0) -> None:
        """Token `tokens[i]` writes `value` into `column` (one for all, or one each)."""
        tokens = list(tokens)
        columns = [column] * len(tokens) if isinstance(column, int) else list(column)
        for token, col in zip(tokens, columns, strict=True):
            self.params["embed.weight"][token, col] = value

    def position(self, columns: Sequence[int], constant: int) -> None:
        """Position p writes 1 into `columns[p]` and 1 into the constant column."""
        for pos, col in enumerate(columns):
            self.params["pos_embed.weight"][pos, col] = 1.0
            self.params["pos_embed.weight"][pos, constant] = 1.0

    def read(
        self, layer: int, head: int, part: str, pairs: Iterable[tuple[int, int]], gain: float = 1.0
    ) -> None:
        """Head dim `d` of `part` ("q", "k" or "v") reads residual column `c`, for each
        `(d, c)` in `pairs`, with weight `gain`."""
        weight = self.params[f"blocks.{layer}.attn.{part}.weight"]
        scale = gain * (math.sqrt(self.d_head) if part == "q" else 1.0)
        for dim, col in pairs:
            weight[head * self.d_head + dim, col] += scale

    def write(
        self, layer: int, head: int, pairs: Iterable[tuple[int, int]], gain: float = 1.0
    ) -> None:
        """Head dim `d` of the value writes into residual column `c`, for each `(c, d)`."""
        weight = self.params[f"blocks.{layer}.attn.o.weight"]
        for col, dim in pairs:
            weight[col, head * self.d_head + dim] += gain

    def neuron(
        self,
        layer: int,
        index: int,
        reads: Mapping[int, float],
        bias: float,
        writes: Mapping[int, float],
    ) -> None:
        """MLP neuron `index` of `layer`: `relu(sum reads[c] x_c + bias)` added to columns
        `writes` with the given weights."""
        for col, value in reads.items():
            self.params[f"blocks.{layer}.mlp.in.weight"][index, col] = value
        self.params[f"blocks.{layer}.mlp.in.bias"][index] = bias
        for col, value in writes.items():
            self.params[f"blocks.{layer}.mlp.out.weight"][col, index] = value

    def unembed(self, columns: Sequence[int]) -> None:
        """Token t's logit reads residual column `columns[t]`."""
        for token, col in enumerate(columns):
            self.params["unembed.weight"][token, col] = 1.0

    def finish(self) -> TransformerBridge:
        functional.load_params(self.model, self.params)
        return self.model.eval()


def _planted_spec(
    n_layers: int, d_model: int, n_heads: int, d_head: int, vocab: int, n_ctx: int,
    d_mlp: int | None = None,
) -> dict[str, Any]:
    """The native spec of a planted model: no LayerNorm (the weights are set for a plain
    residual stream), attention-only unless `d_mlp` gives ReLU MLPs."""
    layout: dict[str, Any] = {"attn_only": True} if d_mlp is None else {
        "d_mlp": d_mlp, "act_fn": "relu"
    }
    return dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_vocab=vocab,
        n_ctx=n_ctx, normalization=None, seed=0, **layout,
    )


def _read_at_last_position(
    clean: list[list[int]], corrupted: list[list[int]], answer: list[int], wrong: list[int]
) -> TaskBatch:
    """Prompts of one length whose answer is read at their last position."""
    return TaskBatch.from_columns(
        dict(clean=clean, corrupted=corrupted, answer=answer, wrong=wrong,
             position=[len(clean[0]) - 1] * len(clean))
    )


def _identity(dims: Iterable[int], cols: Iterable[int]) -> list[tuple[int, int]]:
    return list(zip(dims, cols, strict=True))


def _distinct(generator: torch.Generator, pool: Sequence[int], k: int) -> list[int]:
    """`k` distinct tokens drawn from `pool`."""
    order = torch.randperm(len(pool), generator=generator)[:k]
    return [pool[int(i)] for i in order]


def _check_examples(n_examples: int) -> None:
    check_positive_int("n_examples", n_examples)
