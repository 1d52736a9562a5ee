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
pre-LayerNorm models it covers (native models and pretrained GPT-2, GPT-NeoX, Llama,
Mistral and Qwen2, `functional.architecture_of`; with parallel attention and MLP, a
block's MLP reads the sources before the block, as the graph's edges say; under grouped
keys and values, each query head's key and value inputs are its own destinations, the
shared projection computed once per head): with every edge in the circuit it
gives the model's logits (to float rounding), with none it gives the ablated run's.
Post-LayerNorm models (BERT) have no such decomposition of the residual stream; they are
refused. Circuits are
batched: C masks run as one forward pass of C copies of the batch. Edge attribution
patching (`circuits.eap`) takes gradients at the destination inputs of a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.graph import ComputationalGraph, Node
from circuits.patching.engine import PatchMetric, scalar_metric
from interp import functional
from interp.functional import Architecture
from interp.tasks.base import TaskBatch

Ablation = Literal["resample", "mean", "zero"]
ABLATIONS: tuple[Ablation, ...] = ("resample", "mean", "zero")


def _architecture(model: TransformerBridge) -> Architecture:
    try:
        arch = functional.architecture_of(model)
    except ValueError as error:
        raise ValueError(
            "edge patching covers pre-LayerNorm models whose residual stream is a sum of "
            f"source outputs (native models, pretrained GPT-2, GPT-NeoX, Llama, Mistral, "
            f"Qwen2): {error}"
        ) from None
    return arch


@dataclass(frozen=True)
class _Groups:
    """Rows of the dense `[destination, source]` mask read by each group of destinations."""

    heads: list[Tensor]  # per layer: the 3H rows (head-major, then q, k, v)
    mlps: list[int]  # per layer: the MLP's row (empty for attention-only models)
    logits: int


class EdgePatcher:
    """Edge-ablated forward passes of one model (native, or a pretrained class that
    `functional.architecture_of` covers).

    Args:
        model: A native model from `interp.models.build` or a pretrained GPT-2, GPT-NeoX,
            Llama, Mistral or Qwen2 (`functional.architecture_of`).
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
        heads, mlps = [], []
        for layer in range(self.arch.n_layers):
            rows = [
                i for node, i in destinations.items() if node.kind == "head" and node.layer == layer
            ]
            heads.append(torch.tensor(rows, device=self.device))
            mlps += [
                i for node, i in destinations.items() if node.kind == "mlp" and node.layer == layer
            ]
        self._groups = _Groups(heads, mlps, len(self.graph.destinations) - 1)
        self._parallel_mlp = self.arch.parallel_attn_mlp and self.arch.d_mlp is not None

    @property
    def n_edges(self) -> int:
        return len(self.graph.edges)

    def check_batch(self, batch: object) -> None:
        """A one-line ValueError unless `batch` is a `TaskBatch` this model can run
        (`TaskBatch.check_fits`)."""
        if not isinstance(batch, TaskBatch):
            raise ValueError(f"batch must be a TaskBatch, got {type(batch).__name__}")
        batch.check_fits(self._model)

    # -- masks -----------------------------------------------------------------------

    def dense(self, masks: Float[Tensor, "circuit edge"]) -> Float[Tensor, "circuit dest source"]:
        """Edge masks as dense `[circuit, destination, source]` weights (1 = in the circuit),
        on the model's device."""
        masks = torch.as_tensor(masks, device=self.device)
        if masks.ndim != 2 or masks.shape[1] != self.n_edges:
            raise ValueError(
                f"masks must be [n_circuits, {self.n_edges}] (one value per edge), got "
                f"{tuple(masks.shape)}"
            )
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
        self._run_unablated(tokens, 1, outputs, None, None, unembed=False)
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
        if ablated is None:
            logits = self._run_unablated(tokens, dense.shape[0], record, inputs, embed_override)
            assert logits is not None  # unembedded
            return logits
        arch, params = self.arch, self.params
        n_circuits = dense.shape[0]
        batch, n_pos = tokens.shape
        outputs: list[Tensor] = [] if record is None else record
        dtype = self.params["embed.weight"].dtype
        bias = torch.zeros(arch.d_model, device=self.device, dtype=dtype)
        positions = torch.arange(n_pos, device=self.device)
        embed = embed_override if embed_override is not None else self.embed(tokens)
        outputs.append(embed.expand(n_circuits, batch, n_pos, arch.d_model))

        def gather(rows: Tensor | list[int]) -> Tensor:
            """Inputs of destinations `rows` from every source so far: [C, B, P, n, d]."""
            n_sources = len(outputs)
            stacked = torch.stack(outputs, dim=3)
            weights = dense[:, rows, :n_sources]
            mixed = torch.einsum("cbpsd,cns->cbpnd", stacked, weights)
            if ablated is not None:
                mixed = mixed + torch.einsum(
                    "bpsd,cns->cbpnd", ablated[:, :, :n_sources], 1.0 - weights
                )
            mixed = mixed + bias
            if inputs is not None:
                inputs.append((rows, n_sources, mixed))
            return mixed

        for layer in range(arch.n_layers):
            block = f"blocks.{layer}"
            head_inputs = gather(self._groups.heads[layer])
            # Parallel attention and MLP: the MLP reads the block's input, not the heads.
            mlp_input = gather([self._groups.mlps[layer]]) if self._parallel_mlp else None
            per_head = self._heads(layer, head_inputs, positions)
            outputs += [per_head[:, :, :, head] for head in range(arch.n_heads)]
            bias = bias + params[f"{block}.attn.o.bias"]
            if arch.d_mlp is not None:
                if mlp_input is None:
                    mlp_input = gather([self._groups.mlps[layer]])
                outputs.append(self._mlp(layer, mlp_input[:, :, :, 0]))
        final = gather([self._groups.logits])[:, :, :, 0]
        return functional.unembed(params, final, arch)

    def _run_unablated(
        self,
        tokens: Tensor,
        n_circuits: int,
        record: list[Tensor] | None,
        inputs: list[tuple[Tensor | list[int], int, Tensor]] | None,
        embed_override: Tensor | None,
        unembed: bool = True,
    ) -> Tensor | None:
        """`run` with every edge kept: each destination reads the whole residual stream, so
        the stream is summed as it goes (no stack of source outputs) and each destination
        group's input is a broadcast view of it, which still has a gradient of its own.
        `unembed=False` stops after recording the last source (returns None)."""
        arch, params = self.arch, self.params
        batch, n_pos = tokens.shape
        shape = (n_circuits, batch, n_pos, arch.d_model)
        outputs: list[Tensor] = [] if record is None else record
        resid = embed_override if embed_override is not None else self.embed(tokens)
        resid = resid.expand(shape)
        outputs.append(resid)
        positions = torch.arange(n_pos, device=self.device)

        def read(rows: Tensor | list[int]) -> Tensor:
            """The stream as the input of destinations `rows`: [C, B, P, n, d]."""
            view = resid.unsqueeze(3).expand(*shape[:3], len(rows), arch.d_model)
            if inputs is not None:
                inputs.append((rows, len(outputs), view))
            return view

        for layer in range(arch.n_layers):
            block = f"blocks.{layer}"
            head_inputs = read(self._groups.heads[layer])
            mlp_input = read([self._groups.mlps[layer]]) if self._parallel_mlp else None
            per_head = self._heads(layer, head_inputs, positions)
            outputs += [per_head[:, :, :, head] for head in range(arch.n_heads)]
            resid = resid + per_head.sum(dim=3) + params[f"{block}.attn.o.bias"]
            if arch.d_mlp is not None:
                if mlp_input is None:
                    mlp_input = read([self._groups.mlps[layer]])
                out = self._mlp(layer, mlp_input[:, :, :, 0])
                outputs.append(out)
                resid = resid + out
        if not unembed:
            return None
        final = read([self._groups.logits])[:, :, :, 0]
        return functional.unembed(params, final, arch)

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
        if isinstance(max_circuits, bool) or not isinstance(max_circuits, int) or max_circuits < 1:
            raise ValueError(f"max_circuits must be a positive int, got {max_circuits!r}")
        self.check_batch(batch)
        batch = batch.to(self.device)
        masks = torch.as_tensor(masks, device=self.device)
        values = []
        with torch.inference_mode():
            ablated = self.ablated_outputs(batch.clean, batch.corrupted, ablation)
            for start in range(0, masks.shape[0], max_circuits):
                dense = self.dense(masks[start : start + max_circuits])
                logits = self.run(batch.clean, dense, ablated)
                values += [scalar_metric(metric, copy, batch).float() for copy in logits]
        return torch.stack(values).cpu()

    # -- pieces ----------------------------------------------------------------------

    def _heads(
        self, layer: int, inputs: Float[Tensor, "circuit batch pos n d_model"], positions: Tensor
    ) -> Float[Tensor, "circuit batch pos head d_model"]:
        """Each head's output (through its own `W_O`, no bias) from its own q, k and v
        inputs (`n = 3 * n_heads`, head-major)."""
        arch, block = self.arch, f"blocks.{layer}"
        n_circuits, batch = inputs.shape[:2]
        x = inputs.unflatten(3, (arch.n_heads, 3))
        normed = self._norm(f"{block}.ln1", x).flatten(0, 1)  # [CB, P, H, 3, d]
        q, k, v = (self._project(block, part, normed[:, :, :, i]) for i, part in enumerate("qkv"))
        z, _ = functional.mix_heads(q, k, v, positions, arch, self._rope(len(positions)),
                                    fused=True)
        per_head = torch.einsum("bphe,hde->bphd", z, self._w_out(block))
        return per_head.unflatten(0, (n_circuits, batch))

    def _rope(self, n_pos: int) -> tuple[Tensor, Tensor] | None:
        """Rotary cos and sin of `n_pos` positions (None where the model has none)."""
        return functional.rotary_tables(self.arch, n_pos, self.device) if self.arch.rotary else None

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
