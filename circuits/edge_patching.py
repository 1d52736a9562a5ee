"""Edge patching: run a model with any set of edges of its computational graph ablated.

Each destination (a head's q, k or v input, an MLP's input, the logits) receives the sum
of its sources' outputs: the output computed in this run for the sources whose edge is in
the circuit, and the ablated output for the others,

    input_d = sum_s mask[s, d] * out_s + (1 - mask[s, d]) * ablated_s + biases,

the edge-level patching of ACDC (Conmy et al. 2023) and auto-circuit (Miller et al. 2024).
Ablations: `"resample"` (the source's output on the corrupted prompt of the same example),
`"mean"` (its mean over the batch's clean prompts, per position), `"zero"`. The attention
output bias `b_O` belongs to no head and is never ablated.

The forward pass is `interp.functional`'s, with each head's q, k and v computed from its
own input (so each input has its own LayerNorm), which makes the patching exact for the
pre-LayerNorm models it covers (native models and pretrained GPT-2, GPT-NeoX, GPT-J, OPT,
GPT-Neo, Phi, BLOOM, Llama, Mistral, Qwen2, Qwen3, Phi-3 and Gemma 1-3,
`functional.architecture_of`, with each layer's sliding attention window, rotary
frequencies, ALiBi biases (BLOOM) and soft-capped scores;
with parallel attention and MLP, a block's MLP reads the sources before the block, as the
graph's edges say; under grouped keys and values, each query head's key and value inputs
are its own destinations, the shared projection computed once per head): with every edge
in the circuit it gives the model's logits (to float rounding), with none it gives the
ablated run's.

Gemma 2 and 3 normalise the attention's output before adding it to the residual stream
(`ln1_post`), so the heads' outputs are not added as they are. There a head's output, as
a source, is its share of the normalised block output (`functional.normalized_parts`: its
output divided by the scale of the whole block's output in the same run, then weighted),
and the output bias's share belongs to no head and is never ablated; the shares add up to
what the block adds, so the residual stream is again a sum of source outputs and the two
properties above hold. As in the model, a head's share moves when another head of its
block changes (the scale is the block's): an edge into one head of a block changes the
outputs of all of them, which is what the model computes. An MLP's norm after it
(`ln2_post`) is part of its output.
Post-LayerNorm models (BERT) have no such decomposition of the residual stream; they are
refused. Circuits are
batched: C masks run as one forward pass of C copies of the batch. Edge attribution
patching (`circuits.eap`) takes gradients at the destination inputs of a run.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.graph import ComputationalGraph, Node
from circuits.patching.metric import CopyMetric, PatchMetric
from interp import functional, models
from interp.functional import Architecture
from interp.tasks.base import TaskBatch
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Ablation = Literal["resample", "mean", "zero"]
ABLATIONS: tuple[Ablation, ...] = ("resample", "mean", "zero")


_COVERS = (
    "edge patching covers pre-LayerNorm models whose residual stream is a sum of source "
    "outputs (native models, pretrained GPT-2, GPT-NeoX, GPT-J, OPT, GPT-Neo, Phi, BLOOM, "
    "Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 1-3)"
)


_BERT_STYLE = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra"})
"""Hugging Face `model_type`s of BERT-style encoders, refused naming why."""


def why_not_a_sum(model: TransformerBridge) -> str | None:
    """Why edge patching is inexact on `model`, for architectures known to be out of reach."""
    original = getattr(model, "original_model", None)
    model_type = getattr(getattr(original, "config", None), "model_type", None)
    if model_type not in _BERT_STYLE:
        return None
    return (
        f"this model is a {type(original).__name__}, a BERT-style encoder: its LayerNorm after "
        "each attention and MLP (post-LayerNorm) rescales the residual stream, which is then "
        "no sum of source outputs, and its attention is bidirectional; activation, "
        "attribution and path patching run on it"
    )


def _architecture(model: TransformerBridge) -> Architecture:
    models.refuse_attached_hooks(model, "edge patching, EAP and ACDC", "remove them first")
    try:
        return functional.architecture_of(model)
    except ValueError as error:
        raise ValueError(f"{_COVERS}; {why_not_a_sum(model) or error}") from None


@dataclass(frozen=True)
class _Groups:
    """Rows of the dense `[destination, source]` mask read by each group of destinations."""

    heads: list[Tensor]  # per layer: the 3H rows (head-major, then q, k, v)
    mlps: list[int]  # per layer: the MLP's row (empty for attention-only models)
    logits: int
    heads_and_mlp: list[Tensor]  # per layer: the heads' rows, then the MLP's (if any)


class _Stream(ABC):
    """How a run's destinations read their inputs, from the sources' outputs so far; the
    pass reports each block's head outputs and attention bias (`add_heads`) and MLP output
    (`add_mlp`) as it computes them."""

    @abstractmethod
    def read(
        self, rows: Tensor | list[int], outputs: list[Tensor], sizes: Sequence[int]
    ) -> tuple[Tensor, ...]:
        """The inputs of destinations `rows` from the sources' `outputs`, as groups of
        `sizes` consecutive rows, `[C, B, P, n, d]` each."""

    @abstractmethod
    def add_heads(self, per_head: Tensor, bias: Tensor) -> None:
        """Add a block's heads' outputs `[circuit, batch, pos, head, d_model]` and the bias
        that belongs to none of them (`[d_model]`, or `[circuit, batch, pos, d_model]`
        under a norm after the attention)."""

    @abstractmethod
    def add_mlp(self, out: Tensor) -> None: ...


class _Mixed(_Stream):
    """Some edges ablated: each input is its kept sources' outputs plus its ablated
    sources' ablated outputs (weighted by `dense`), plus the attention biases so far."""

    def __init__(self, dense: Tensor, ablated: Tensor, bias: Tensor) -> None:
        self.dense, self.ablated, self.bias = dense, ablated, bias

    def read(
        self, rows: Tensor | list[int], outputs: list[Tensor], sizes: Sequence[int]
    ) -> tuple[Tensor, ...]:
        """One stack of the sources' outputs for every group."""
        n_sources = len(outputs)
        stacked = torch.stack(outputs, dim=3)
        weights = self.dense[:, rows, :n_sources]
        mixed = torch.einsum("cbpsd,cns->cbpnd", stacked, weights)
        mixed = mixed + torch.einsum(
            "bpsd,cns->cbpnd", self.ablated[:, :, :n_sources], 1.0 - weights
        )
        mixed = mixed + self.bias
        return (mixed,) if len(sizes) == 1 else mixed.split(tuple(sizes), dim=3)

    def add_heads(self, per_head: Tensor, bias: Tensor) -> None:
        # the heads' outputs are read from `outputs`; a bias per position (Gemma 2 and 3:
        # its share of the normalised block output) is added to every destination's input
        self.bias = self.bias + (bias.unsqueeze(-2) if bias.dim() > 1 else bias)

    def add_mlp(self, out: Tensor) -> None:
        pass  # read from `outputs`


class _Summed(_Stream):
    """Every edge kept: each destination reads the whole residual stream, so the stream is
    summed as it goes (no stack of source outputs) and each input is a broadcast view of
    it, which still has a gradient of its own."""

    def __init__(self, embed: Tensor) -> None:
        self.resid = embed

    def read(
        self, rows: Tensor | list[int], outputs: list[Tensor], sizes: Sequence[int]
    ) -> tuple[Tensor, ...]:
        """A view of the stream per group (free: nothing to share between them)."""
        shape = self.resid.shape[:3]
        return tuple(self.resid.unsqueeze(3).expand(*shape, size, -1) for size in sizes)

    def add_heads(self, per_head: Tensor, bias: Tensor) -> None:
        self.resid = self.resid + per_head.sum(dim=3) + bias

    def add_mlp(self, out: Tensor) -> None:
        self.resid = self.resid + out


class EdgePatcher:
    """Edge-ablated forward passes of one model (native, or a pretrained class that
    `functional.architecture_of` covers).

    Args:
        model: A native model from `interp.models.build` or a pretrained GPT-2, GPT-NeoX,
            GPT-J, OPT, GPT-Neo, Phi, BLOOM, Llama, Mistral, Qwen2, Qwen3, Phi-3 or Gemma 1-3
            (`functional.architecture_of`).
        graph: Its `ComputationalGraph` (default: `ComputationalGraph.from_model(model)`).
    """

    def __init__(self, model: TransformerBridge, graph: ComputationalGraph | None = None):
        self.arch = _architecture(model)
        self._model = model
        expected = ComputationalGraph.from_model(model)
        self.graph = graph or expected
        if self.graph != expected:
            raise ValueError(f"graph {self.graph} does not fit the model ({expected})")
        # one key and value head per query head: each head's inputs are its own destinations
        self.params = functional.dense_params(functional.live_params(model), self.arch)
        self.device = self.params["embed.weight"].device
        sources = {node: i for i, node in enumerate(self.graph.sources)}
        destinations = {node: i for i, node in enumerate(self.graph.destinations)}
        self.edge_destinations = torch.tensor(
            [destinations[e.destination] for e in self.graph.edges], device=self.device
        )
        self.edge_sources = torch.tensor(
            [sources[e.source] for e in self.graph.edges], device=self.device
        )
        heads, mlps, heads_and_mlp = [], [], []
        for layer in range(self.arch.n_layers):
            rows = [
                i for node, i in destinations.items() if node.kind == "head" and node.layer == layer
            ]
            mlp = [
                i for node, i in destinations.items() if node.kind == "mlp" and node.layer == layer
            ]
            heads.append(torch.tensor(rows, device=self.device))
            heads_and_mlp.append(torch.tensor(rows + mlp, device=self.device))
            mlps += mlp
        self._groups = _Groups(heads, mlps, len(self.graph.destinations) - 1, heads_and_mlp)
        # Parallel attention and MLP: the MLP reads the block's input, as its heads do (an
        # attention-only block has no MLP to read it)
        self._parallel_mlp = self.arch.parallel_attn_mlp and self.arch.d_mlp is not None

    @property
    def n_edges(self) -> int:
        return len(self.graph.edges)

    @functools.cached_property
    def bias_under_post_norm(self) -> bool:
        """Whether a norm after the attention (Gemma 2 and 3) normalises a bias too (an
        output bias, or the norm's own), whose share of the block output belongs to no
        head (read once: one host sync)."""
        arch = self.arch
        if not arch.post_norms:
            return False
        biases = [self.params[f"blocks.{layer}.attn.o.bias"] for layer in range(arch.n_layers)]
        return arch.normalization == "LN" or bool(torch.stack(biases).any())

    def check_batch(self, batch: object) -> None:
        """A one-line ValueError unless `batch` is a `TaskBatch` this model can run
        (`TaskBatch.check_fits`)."""
        TaskBatch.checked(batch, self._model)

    # -- masks -----------------------------------------------------------------------

    def dense(self, masks: Float[Tensor, "circuit edge"]) -> Float[Tensor, "circuit dest source"]:
        """Edge masks as dense `[circuit, destination, source]` weights (1 = in the circuit),
        on the model's device."""
        masks = self.graph.check_masks(masks, device=self.device)
        n_dest, n_src = len(self.graph.destinations), len(self.graph.sources)
        dense = masks.new_zeros(
            (masks.shape[0], n_dest, n_src), dtype=self.params["embed.weight"].dtype
        )
        dense[:, self.edge_destinations, self.edge_sources] = masks.to(dense.dtype)
        return dense

    # -- runs ------------------------------------------------------------------------

    def source_outputs(self, tokens: Tensor) -> Float[Tensor, "batch pos source d_model"]:
        """Every source's output on `tokens` in the unablated model (the pass stops before
        the unembedding, which no source reads)."""
        outputs: list[Tensor] = []
        embed = self.embed(tokens).expand(1, *tokens.shape, self.arch.d_model)
        self._forward(_Summed(embed), embed, outputs, None, unembed=False)
        return torch.stack(outputs, dim=3)[0]

    def full_logits(self, tokens: Tensor) -> Float[Tensor, "batch pos vocab"]:
        """The logits of the whole model (every edge kept), through the same arithmetic as
        the circuits' runs."""
        return self.run(tokens, self.dense(torch.ones(1, self.n_edges)), None)[0]

    def ablated_outputs(
        self, clean: Tensor, corrupted: Tensor | None, ablation: Ablation
    ) -> Float[Tensor, "batch pos source d_model"]:
        """What an ablated edge carries, per source: see the module docstring."""
        if ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
        if ablation == "resample":
            if corrupted is None:
                raise ValueError("resample ablation needs corrupted tokens")
            return self.source_outputs(corrupted)
        clean_outputs = self.source_outputs(clean)
        if ablation == "zero":
            return torch.zeros_like(clean_outputs)
        return clean_outputs.mean(dim=0, keepdim=True).expand_as(clean_outputs)

    def run(
        self,
        tokens: Tensor,
        dense: Float[Tensor, "circuit dest source"],
        ablated: Float[Tensor, "batch pos source d_model"] | None,
        *,
        record: list[Tensor] | None = None,
        inputs: list[tuple[Tensor | list[int], int, Tensor]] | None = None,
        embed_override: Tensor | None = None,
    ) -> Float[Tensor, "circuit batch pos vocab"]:
        """Logits of each circuit (C copies of the batch).

        Args:
            tokens: `[batch, pos]`.
            dense: From `dense(masks)`.
            ablated: From `ablated_outputs` (None: every mask must be all ones).
            record: Filled with each source's output `[circuit, batch, pos, d_model]`.
            inputs: Filled with `(rows, n_sources, input)` per destination group: the
                group's rows of `dense`, how many sources it reads (the first ones), and
                its input `[circuit, batch, pos, n, d_model]` (heads of a layer: n = 3H;
                an MLP or the logits: n = 1), the tensor the rest of the pass reads, so
                gradients can be taken with respect to it.
            embed_override: The embedding source's output to use instead of the tokens'.
        """
        embed = embed_override if embed_override is not None else self.embed(tokens)
        embed = embed.expand(dense.shape[0], *tokens.shape, self.arch.d_model)
        if ablated is None:
            stream: _Stream = _Summed(embed)
        else:
            dtype = self.params["embed.weight"].dtype
            bias = torch.zeros(self.arch.d_model, device=self.device, dtype=dtype)
            stream = _Mixed(dense, ablated, bias)
        logits = self._forward(stream, embed, record, inputs)
        assert logits is not None  # unembedded
        return logits

    def _forward(
        self,
        stream: _Stream,
        embed: Float[Tensor, "circuit batch pos d_model"],
        record: list[Tensor] | None,
        inputs: list[tuple[Tensor | list[int], int, Tensor]] | None,
        unembed: bool = True,
    ) -> Tensor | None:
        """The forward pass of `run`, each destination group's input read from `stream`.
        `unembed=False` stops after recording the last source (returns None)."""
        arch, params, groups = self.arch, self.params, self._groups
        outputs: list[Tensor] = [] if record is None else record
        outputs.append(embed)
        positions = torch.arange(embed.shape[2], device=self.device)

        def read(
            rows: Tensor | list[int], *parts: Tensor | list[int]
        ) -> tuple[Tensor, ...]:
            """The inputs of destinations `rows`, one tensor for each of `parts` (their
            rows, which `rows` concatenates; default: `rows` alone)."""
            parts = parts or (rows,)
            read_in = stream.read(rows, outputs, [len(part) for part in parts])
            if inputs is not None:
                inputs.extend(
                    (part, len(outputs), x) for part, x in zip(parts, read_in, strict=True)
                )
            return read_in

        for layer in range(arch.n_layers):
            heads = groups.heads[layer]
            if self._parallel_mlp:  # the MLP reads the block's input too: one read for both
                mlp = [groups.mlps[layer]]
                head_inputs, mlp_input = read(groups.heads_and_mlp[layer], heads, mlp)
            else:
                (head_inputs,), mlp_input = read(heads), None
            per_head, bias = self._heads(layer, head_inputs, positions)
            outputs += [per_head[:, :, :, head] for head in range(arch.n_heads)]
            stream.add_heads(per_head, bias)
            if arch.d_mlp is not None:
                if mlp_input is None:
                    (mlp_input,) = read([groups.mlps[layer]])
                out = self._mlp(layer, mlp_input[:, :, :, 0])
                outputs.append(out)
                stream.add_mlp(out)
        if not unembed:
            return None
        (final,) = read([groups.logits])
        return functional.unembed(params, final[:, :, :, 0], arch)

    def stage(self, destination: Node) -> int:
        """Where `destination` is read in the forward pass: `2 l` for the heads of block l,
        `2 l + 1` for its MLP, `2 n_layers` for the logits."""
        if destination.kind == "logits":
            return 2 * self.arch.n_layers
        return 2 * destination.layer + (1 if destination.kind == "mlp" else 0)

    def evaluate(
        self,
        batch: TaskBatch,
        masks: Tensor,
        metric: PatchMetric,
        *,
        ablation: Ablation = "resample",
        max_circuits: int = 16,
    ) -> Float[Tensor, " circuit"]:
        """The metric of each circuit (row of `masks`, `[n_circuits, n_edges]`, 1 = kept) on
        the clean prompts of `batch`, `max_circuits` per forward pass."""
        check_positive_int("max_circuits", max_circuits)
        self.check_batch(batch)
        batch = batch.to(self.device)
        masks = self.graph.check_masks(masks, device=self.device)
        per_copy = CopyMetric(metric, batch)  # one vmapped metric call per pass
        values = []
        with torch.inference_mode():
            ablated = self.ablated_outputs(batch.clean, batch.corrupted, ablation)
            for start in range(0, masks.shape[0], max_circuits):
                dense = self.dense(masks[start : start + max_circuits])
                values.append(per_copy(self.run(batch.clean, dense, ablated)))
        return torch.cat(values).cpu()

    # -- pieces ----------------------------------------------------------------------

    def _heads(
        self, layer: int, inputs: Float[Tensor, "circuit batch pos n d_model"], positions: Tensor
    ) -> tuple[Float[Tensor, "circuit batch pos head d_model"], Tensor]:
        """Each head's output (through its own `W_O`, no bias) from its own q, k and v
        inputs (`n = 3 * n_heads`, head-major), and the output bias (`[d_model]`). Under a
        norm after the attention (Gemma 2 and 3), each head's share of the normalised
        output and the bias's share (`[circuit, batch, pos, d_model]`; module docstring)."""
        arch, block = self.arch, f"blocks.{layer}"
        n_circuits, batch = inputs.shape[:2]
        x = inputs.unflatten(3, (arch.n_heads, 3))
        normed = self._norm(f"{block}.ln1", x).flatten(0, 1)  # [CB, P, H, 3, d]
        q, k, v = (self._project(block, part, normed[:, :, :, i]) for i, part in enumerate("qkv"))
        rope = functional.rope_of(arch, layer, len(positions), self.device)
        z, _ = functional.mix_heads(q, k, v, positions, arch, rope, fused=True,
                                    qk_norm=functional.qk_norm_of(self.params, f"{block}.attn",
                                                                  arch),
                                    window=arch.window(layer))
        per_head = torch.einsum("bphe,hde->bphd", z, self._w_out(block))
        bias = self.params[f"{block}.attn.o.bias"]
        if arch.post_norms:
            per_head, bias = functional.normalized_parts(
                self.params, f"{block}.ln1_post", per_head, bias.expand(*per_head.shape[:-2], -1),
                arch.normalization, arch.eps,
            )
            bias = bias.unflatten(0, (n_circuits, batch))
        return per_head.unflatten(0, (n_circuits, batch)), bias

    def _mlp(self, layer: int, x: Float[Tensor, "circuit batch pos d_model"]) -> Tensor:
        return functional.block_mlp(self.params, layer, x, self.arch)

    def embed(self, tokens: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """The embedding source's output: token plus position embeddings (rotary models:
        the token embeddings alone)."""
        return functional.embed(self.params, tokens, self.arch)

    def _norm(self, prefix: str, x: Tensor) -> Tensor:
        """The pre-norm at `prefix`."""
        return functional.normalize(self.params, prefix, x, self.arch.normalization, self.arch.eps)

    def _project(self, block: str, part: str, x: Tensor) -> Tensor:
        """Each head's `part` (q, k or v) from its own input `[b, p, head, d_model]`."""
        arch = self.arch
        weight = self.params[f"{block}.attn.{part}.weight"].view(arch.n_heads, arch.d_head, -1)
        bias = self.params[f"{block}.attn.{part}.bias"].view(arch.n_heads, arch.d_head)
        return torch.einsum("bphd,hed->bphe", x, weight) + bias

    def _w_out(self, block: str) -> Tensor:
        """`W_O` per head, `[head, d_model, d_head]`."""
        arch = self.arch
        weight = self.params[f"{block}.attn.o.weight"]  # [d_model, H * d_head]
        return weight.view(arch.d_model, arch.n_heads, arch.d_head).transpose(0, 1)
