"""The activations of a circuit being pruned one edge at a time, so that each of ACDC's tests
recomputes only what removing one edge can change (Conmy et al. 2023, computed incrementally).

ACDC visits destinations in reverse topological order and tests the removal of one edge at
a time. Every destination's input is a sum of its sources' outputs (`circuits.edge_patching`),
so removing the edge s -> d changes d's input by exactly `ablated_s - out_s`, and nothing but
d's component (one head, or one MLP) and what it feeds through kept edges can change after
that. This state holds every source's output and every destination's input in the current
circuit; a test

1. adds `ablated_s - out_s` to d's input and recomputes d's component: one head's q, k or v
   projection and its attention, or the MLP;
2. carries the change of that output along the kept edges, stage by stage, recomputing only
   the heads and MLPs whose input changed (the projections of inputs that did not change
   come from the state; `circuits.pruning_stages`);
3. reads the logits at `batch.position` only: under causal attention the positions after
   the last one read are dropped from the start, and the last block computes its queries,
   its MLP and the logits at the read positions only.

Accepting the removal writes the recomputed tensors into the state (`commit`). The
arithmetic is the edge-patched forward pass of `EdgePatcher` (pre-LayerNorm models: native,
GPT-2, GPT-NeoX, GPT-J, OPT, GPT-Neo, Phi, BLOOM, Llama, Mistral, Qwen2, Qwen3, Phi-3,
Gemma; scores divided by the model's own `attn_scale` (GPT-Neo: 1), soft-capped where the
model says, plus each head's ALiBi bias (BLOOM), masked to each layer's sliding window;
rotary queries and keys are rotated by their positions, with each layer's frequencies, as
they are projected, grouped key and value
weights are repeated per head, and with parallel attention and MLP a block's MLP reads the
block's input), so the damage equals that of a full edge-patched pass to float rounding.
Under a norm after the attention (Gemma 2 and 3) a head's output is its share of the
normalised block output (`functional.normalized_parts`), whose scale the whole block sets:
the state holds each head's output before the norm too, and a block whose heads a test
recomputes gives new shares to all of its heads, which the test then carries along their
kept edges. The output bias's share is not a source and is carried by no edge, so this
needs it to be zero (no output bias, a norm without bias, as in Gemma; `not_covered`).

Speculation (`trials`): several edges e1..eS into one destination, or into q / k / v
inputs of one block's heads, are tested as one batch, trial j being the current circuit
without e_j and without the edges before it that the caller does not assume kept. All of
them recompute the same components (nothing but the destinations' inputs differ, by
running sums of the edges' changes, since the sources of these edges lie upstream of every
destination of the batch), so every tensor of the computation above carries a leading
dimension of S trials; committing trial j writes its slice. Removing e_j after committing
the removals before it gives exactly trial j, so a caller can accept trials in order and
commit the last removal, as S sequential tests would.

Memory: the outputs, inputs and q/k/v projections of every head are held, about
`4 * n_heads * n_layers * batch * pos * d_model` floats; inputs that no removal has touched
yet are views of one residual stream per block and cost nothing. Each tested source's
`ablated - output` is kept as well (one more activation per source), until a commit
changes that output.

Cost: on a GPU a test of this small a model costs its dispatches, not its arithmetic, so
everything that is the same in every test is made once (weights per head, additive causal
masks, the reference side of the KL, the index tensors and kept-edge weights of each
pattern), and heads are picked by slices where they are consecutive (views, no copies). The
only host-to-device copies a test makes are those of a pattern no earlier test met (its
heads' index tensor, its kept-edge weights); its one synchronisation is reading back its
damages, every trial's in one transfer (a metric objective reads every trial in one
vectorised call, `CopyMetric`, and may add syncs of its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.edge_patching import Ablation, EdgePatcher
from circuits.graph import HEAD_INPUTS, Node
from circuits.patching.metric import (
    CopyMetric,
    PatchMetric,
    nan_metric_error,
    refuse_metric_reading_elsewhere,
)
from circuits.pruning_pieces import BlockPieces
from circuits.pruning_stages import Change, heads_stage, logits_stage, mlp_stage
from circuits.pruning_trials import Heads, Seed, Trial, chain_of_trials, one_stage
from interp.metrics import KLReference
from interp.tasks.base import TaskBatch

METRIC_BUFFER = 2**27
"""Most logits (elements, 512 MiB of float32) that a metric objective reads at once: the
trials of a speculative batch go to one vectorised metric call in one `[trial, batch, pos,
vocab]` buffer, in groups of trials that keep it under this size."""


def not_covered(patcher: EdgePatcher) -> str | None:
    """Why the pruning state cannot hold a circuit of `patcher`'s model (None: it can):
    under a norm after the attention, an output bias or a norm bias, whose share of the
    block output would move with every test of the block."""
    if patcher.bias_under_post_norm:
        return (
            "incremental ACDC carries no bias through a norm after the attention, and this "
            "model's attention output or that norm has one"
        )
    return None


class PruningState:
    """A circuit (initially the full model) held as activations, for ACDC.

    Args:
        patcher: The model's `EdgePatcher`.
        batch: Clean prompts (the circuit's input), corrupted ones for resample ablation,
            and `position`, where the logits are read.
        ablation: `"resample"`, `"mean"` or `"zero"`.
        objective: `"kl"` (KL from the full model at `batch.position`) or a task metric,
            whose distance from the full model's value is the damage. The metric is given
            logits that are NaN away from `batch.position`, so a metric reading other
            positions is refused rather than misread.
    """

    def __init__(
        self,
        patcher: EdgePatcher,
        batch: TaskBatch,
        ablation: Ablation,
        objective: str | PatchMetric = "kl",
    ):
        if objective != "kl" and not callable(objective):
            raise ValueError(f"objective must be 'kl' or a metric function, got {objective!r}")
        why = not_covered(patcher)
        if why is not None:
            raise ValueError(f"{why}; run acdc with incremental=False")
        self.patcher, self.arch, self.params = patcher, patcher.arch, patcher.params
        self.objective = objective
        self.batch = batch = batch.to(patcher.device)
        graph, device = patcher.graph, patcher.device
        self.last = self.arch.n_layers - 1
        self.has_mlp = self.arch.d_mlp is not None
        self.kept = np.zeros((len(graph.destinations), len(graph.sources)), dtype=bool)
        self.edge_pairs = np.stack(
            [patcher.edge_destinations.cpu().numpy(), patcher.edge_sources.cpu().numpy()], axis=1
        )
        self.kept[self.edge_pairs[:, 0], self.edge_pairs[:, 1]] = True
        self._index_nodes()

        n_pos = batch.clean.shape[1]
        n_rows = int(batch.position.max()) + 1 if self.arch.causal else n_pos
        self.reads, row_of_example = torch.unique(batch.position, sorted=True, return_inverse=True)
        self._indices: dict[bytes, Tensor] = {}
        self._mixes: dict[tuple, Tensor] = {}
        self._deltas: dict[tuple[int, bool], Tensor] = {}
        clean = batch.clean[:, :n_rows]
        corrupted = batch.corrupted[:, :n_rows]
        with torch.inference_mode():
            positions = torch.arange(n_rows, device=device)
            self.pieces = BlockPieces(patcher, positions, self.reads, row_of_example)
            ablated = patcher.ablated_outputs(clean, corrupted, ablation)
            self._build(clean, ablated)
            self.full_logits = self.pieces.read(self.logit_in["logits"])
            if objective == "kl":  # KL's reference side, the same in every test
                self._reference = KLReference.of(self.full_logits)
            else:
                self._per_copy = CopyMetric(objective, batch)  # type: ignore[arg-type]
                self._buffer: Tensor | None = None
                self.full_value = self._metric_values(self.full_logits[None])[0]
                refuse_metric_reading_elsewhere(
                    objective, batch, self._full_logits_of(self.full_logits[None])[0],  # type: ignore[arg-type]
                    "incremental ACDC", "run acdc with incremental=False",
                )
        if objective != "kl" and not bool(self.full_value.isfinite()):
            if bool(self.full_value.isnan()):
                raise nan_metric_error(objective, batch, self.full_logits.shape[-1],  # type: ignore[arg-type]
                                       "incremental ACDC", "run acdc with incremental=False")
            raise ValueError("the objective is infinite on the full model")
        self.damage = self.damage_of(self.full_logits)

    # -- bookkeeping ---------------------------------------------------------------------

    def _index_nodes(self) -> None:
        graph, n_heads = self.patcher.graph, self.arch.n_heads
        destinations = {node.name: i for i, node in enumerate(graph.destinations)}
        sources = {node.name: i for i, node in enumerate(graph.sources)}
        self.head_destinations = [
            {
                part: np.array([destinations[f"L{layer}H{h}.{part}"] for h in range(n_heads)])
                for part in HEAD_INPUTS
            }
            for layer in range(self.arch.n_layers)
        ]
        self.head_sources = [
            np.array([sources[f"L{layer}H{h}"] for h in range(n_heads)])
            for layer in range(self.arch.n_layers)
        ]
        self.head_rows = [  # every q, k and v destination of a block, part-major
            np.concatenate([rows[part] for part in HEAD_INPUTS]) for rows in self.head_destinations
        ]
        self.mlp_destination = [
            destinations.get(f"mlp{layer}") for layer in range(self.arch.n_layers)
        ]
        self.mlp_source = [sources.get(f"mlp{layer}") for layer in range(self.arch.n_layers)]
        self.logits_destination = destinations["logits"]

    def heads(self, heads: np.ndarray) -> Heads:
        """Heads `heads` (sorted) as a slice when they are consecutive, else as an index
        tensor on the device, made once per set of heads."""
        first, last = int(heads[0]), int(heads[-1])
        if last - first + 1 == len(heads):
            return slice(first, last + 1)
        key = heads.tobytes()
        if key not in self._indices:
            self._indices[key] = torch.as_tensor(heads, device=self.patcher.device)
        return self._indices[key]

    def mix(self, weights: np.ndarray, like: Tensor, column: bool) -> Tensor:
        """The kept-edge weights `[destination, source]` on the device (made once per
        pattern); as `[1, destination, 1, 1, 1]` when `column` (one source)."""
        key = (weights.shape, weights.tobytes(), column)
        mix = self._mixes.get(key)
        if mix is None:
            mix = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
            self._mixes[key] = mix = mix.view(1, -1, 1, 1, 1) if column else mix
        return mix

    def _at(self, x: Tensor, at_reads: bool, into_reads: bool) -> Tensor:
        """`x` (positions on dim -2) as rows of a tensor that holds the read positions only
        (`into_reads`) or every position."""
        if at_reads or not into_reads:
            return x
        return x[..., self.reads, :]

    # -- the full model ------------------------------------------------------------------

    def _build(self, tokens: Tensor, ablated: Float[Tensor, "batch pos source d_model"]) -> None:
        """Every source's output and destination's input with all edges kept; the ablated
        output of each source in the same rows as its output."""
        arch, params, n_heads = self.arch, self.params, self.arch.n_heads
        every_head = slice(None)
        resid = self.patcher.embed(tokens)
        self.embed_out = resid
        self.ablated = [ablated[:, :, 0]]
        self.head_in: list[dict[str, Tensor]] = []
        self.proj: list[dict[str, Tensor]] = []
        self.head_raw: list[dict[str, Tensor]] = []  # before a norm after the attention
        self.head_out: list[dict[str, Tensor]] = []
        self.mlp_in: list[dict[str, Tensor]] = []
        self.mlp_out: list[dict[str, Tensor]] = []
        for layer in range(arch.n_layers):
            at_reads = layer == self.last
            block_in = self._at(resid, False, at_reads)  # a parallel MLP's input
            inputs, proj = {}, {}
            for part in HEAD_INPUTS:
                x = self._at(resid, False, at_reads and part == "q")
                inputs[part] = x.expand(n_heads, *x.shape)
                proj[part] = self.pieces.project(layer, part, inputs[part], every_head)
            raw = self.pieces.attend(layer, every_head, proj)
            out = self.pieces.shares(layer, raw[None])[0]
            self.head_in.append(inputs)
            self.proj.append(proj)
            self.head_raw.append({"out": raw})
            self.head_out.append({"out": out})
            source = int(self.head_sources[layer][0])
            self.ablated += [
                self._at(ablated[:, :, source + h], False, at_reads) for h in range(n_heads)
            ]
            resid = self._at(resid, False, at_reads) + out.sum(0)
            resid = resid + params[f"blocks.{layer}.attn.o.bias"]
            if self.has_mlp:
                mlp_in = block_in if arch.parallel_attn_mlp else resid
                mlp_out = self.pieces.mlp(layer, mlp_in)
                self.mlp_in.append({"in": mlp_in})
                self.mlp_out.append({"out": mlp_out})
                self.ablated.append(self._at(ablated[:, :, source + n_heads], False, at_reads))
                resid = resid + mlp_out
        self.logit_in = {"logits": resid}

    def _place(self, source: int) -> tuple[int, int]:
        """`(layer, index in its block)` of source `source` (`graph.sources` order: the
        embedding, then per block its heads and its MLP); the embedding is `(-1, 0)`."""
        if source == 0:
            return -1, 0
        return divmod(source - 1, self.arch.n_heads + (1 if self.has_mlp else 0))

    def output_of(self, source: int) -> Tensor:
        """The current output of source `source` (`graph.sources` order)."""
        layer, index = self._place(source)
        if layer < 0:
            return self.embed_out
        if index == self.arch.n_heads:
            return self.mlp_out[layer]["out"]
        return self.head_out[layer]["out"][index]

    def _source_at_reads(self, source: int) -> bool:
        """Whether the source's output is held at the read positions only (last block)."""
        return self._place(source)[0] == self.last

    def _held_at_reads(self, destination: Node) -> bool:
        """Whether the destination's input is held at the read positions only: the
        logits', and in the last block the MLP's and the queries'."""
        if destination.kind == "logits":
            return True
        return destination.layer == self.last and destination.input in (None, "q")

    # -- damage ------------------------------------------------------------------------

    def _metric_values(self, read: Float[Tensor, "trial batch vocab"]) -> Float[Tensor, " trial"]:
        """The task metric of each trial's logits, known at the read positions only (NaN
        elsewhere): one vectorised call (`CopyMetric`) per `METRIC_BUFFER` logits, so one
        for a speculative batch of a small model."""
        per_trial = self.batch.clean.numel() * read.shape[-1]
        group = max(1, METRIC_BUFFER // per_trial)
        with torch.inference_mode():  # the buffer is an inference tensor
            values = [
                self._per_copy(self._full_logits_of(read[start : start + group]))
                for start in range(0, len(read), group)
            ]
            return values[0] if len(values) == 1 else torch.cat(values)

    def _full_logits_of(
        self, read: Float[Tensor, "trial batch vocab"]
    ) -> Float[Tensor, "trial batch pos vocab"]:
        """Each trial's logits at every position: `read` at `batch.position`, NaN elsewhere.
        One buffer, NaN-filled once and grown on demand, is reused (only the read positions
        are written): read the result before the next call."""
        n_trials, batch = len(read), self.batch
        if self._buffer is None or len(self._buffer) < n_trials:
            self._buffer = None  # free the smaller one first
            shape = (n_trials, *batch.clean.shape, read.shape[-1])
            self._buffer = read.new_full(shape, float("nan"))
        logits = self._buffer[:n_trials]
        logits[:, self.pieces.examples, batch.position] = read
        return logits

    def damage_of(self, read: Float[Tensor, "batch vocab"]) -> float:
        """KL from the full model at the read positions, or |m(circuit) - m(full)|."""
        return self.damages(read[None])[0]

    def damages(self, read: Float[Tensor, "trial batch vocab"]) -> list[float]:
        """`damage_of` each trial's logits, read back in one transfer."""
        if self.objective == "kl":  # interp.metrics.kl_divergence, the reference side kept
            # [trial, batch] -> the mean over the batch of each trial
            return self._reference.divergence(read).mean(dim=-1).tolist()
        return (self._metric_values(read) - self.full_value).abs().tolist()

    # -- tests ---------------------------------------------------------------------------

    def trial(self, edge: int) -> Trial:
        """The damage of the current circuit without edge `edge` (not applied)."""
        return self.trials([edge])[0]

    def trials(
        self, edges: Sequence[int], assume_kept: Sequence[bool] | None = None
    ) -> list[Trial]:
        """Speculative tests of edges into one destination, or into the q, k and v inputs of
        one block's heads, computed as one batch: trial j is the current circuit without
        `edges[j]` and without every edge before it that is not assumed kept
        (`assume_kept[i]`; by default none is), nothing applied.

        Committing trial j gives the state that committing the removals of its edges one
        after the other would (to float rounding), so trial j's damage is that of
        sequential tests as long as the decisions on the edges before it were the assumed
        ones.
        """
        edges = [int(edge) for edge in edges]
        pairs = self.edge_pairs[edges]
        graph = self.patcher.graph
        nodes = tuple(graph.destinations[int(destination)] for destination in pairs[:, 0])
        if not edges or not one_stage(nodes):
            raise ValueError(
                "trials: edges must be one or more into one destination, or into the q, k "
                f"and v inputs of heads of one block, got {edges}"
            )
        if assume_kept is None:
            assume_kept = [False] * len(edges)
        if len(assume_kept) != len(edges):
            raise ValueError(
                f"trials: assume_kept needs one flag per edge, got {len(assume_kept)} for "
                f"{len(edges)} edges"
            )
        node = nodes[0]
        start = self.patcher.stage(node)
        changes: list[Change] = []
        writes: list[tuple[dict, object, Tensor | None, Tensor]] = []
        with torch.inference_mode():
            deltas = tuple(
                self._removal(source, self._held_at_reads(into))
                for source, into in zip(pairs[:, 1].tolist(), nodes, strict=True)
            )
            seed = Seed(nodes, deltas, tuple(bool(flag) for flag in assume_kept))
            for stage in range(start, 2 * self.arch.n_layers):
                layer, is_mlp = divmod(stage, 2)
                planted = seed if stage == start else None
                if not is_mlp:
                    change = heads_stage(self, layer, changes, planted, writes)
                elif self.has_mlp:
                    change = mlp_stage(self, layer, changes, planted, writes)
                else:
                    continue
                if change is not None:
                    changes.append(change)
            planted = seed if node.kind == "logits" else None
            damages = logits_stage(self, changes, planted, writes, len(edges))
        return chain_of_trials(edges, assume_kept, damages, writes)

    def _removal(self, source: int, into_reads: bool) -> Float[Tensor, "batch row d_model"]:
        """`ablated - output` of source `source` in the rows of an input held at the read
        positions (`into_reads`) or at every position; kept until a commit changes the
        source's output (ACDC's tests never do: a destination's sources lie upstream of
        every component recomputed so far)."""
        key = (source, into_reads)
        delta = self._deltas.get(key)
        if delta is None:
            delta = self.ablated[source] - self.output_of(source)
            delta = self._deltas[key] = self._at(delta, self._source_at_reads(source), into_reads)
        return delta

    def commit(self, trial: Trial) -> None:
        """Remove the trial's edge (and `trial.earlier`): write what it computed into the
        state."""
        for edge in (*trial.earlier, trial.edge):
            destination, source = self.edge_pairs[edge]
            self.kept[destination, source] = False
        with torch.inference_mode():
            for container, key, heads, values in trial.writes:
                value = values[trial.slot]
                current = container[key]
                if heads is None:
                    # a slice would keep every trial's tensor alive
                    container[key] = value if len(values) == 1 else value.clone()
                    continue
                if current.stride(0) == 0:  # still a view of the residual stream
                    current = container[key] = current.clone()
                current[heads] = value
            written = {id(container) for container, *_ in trial.writes}
            for layer in range(self.arch.n_layers):
                outputs = [self.head_out[layer]] + (self.mlp_out[layer : layer + 1])
                if any(id(output) in written for output in outputs):
                    stale = {*self.head_sources[layer].tolist(), self.mlp_source[layer]}
                    self._deltas = {k: v for k, v in self._deltas.items() if k[0] not in stale}
        self.damage = trial.damage

    def drop_untested(self, edges: list[int]) -> None:
        """Remove `edges` without testing (their destination feeds nothing kept, so no read
        activation changes)."""
        pairs = self.edge_pairs[edges]
        self.kept[pairs[:, 0], pairs[:, 1]] = False
