"""Tracr-compiled programs as native models whose circuits are known: the ground truth of
ACDC's tracr benchmarks.

Tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for
Interpretability") compiles a RASP program (Weiss et al. 2021) into transformer weights, so
which component reads what from which is known by construction. ACDC (Conmy et al. 2023,
"Towards Automated Circuit Discovery for Mechanistic Interpretability") uses two such
programs as benchmarks, with the settings kept here:

- `reverse`: `lib.make_reverse(rasp.tokens)` over the vocabulary {1, 2, 3},
  max_seq_len 5: 4 blocks x 1 head; a categorical output (one logit per token).
- `frac_prevs`: `lib.make_frac_prevs(rasp.tokens == "x")` over {w, x, y, z}, max_seq_len 5:
  2 blocks x 1 head; a numerical output (logit 0 is the fraction of "x" so far; where
  `ModelSpec` needs two outputs, logit 1 is identically zero).

This module is the run-time half: it loads the converted programs shipped in
`circuits/data/` (`tracr_<name>.safetensors` and `tracr_<name>.json`: the spec,
vocabularies, residual labels and ground-truth edges), so `load_tracr(name)` and
`tracr_program(name)` need neither tracr nor jax. Compiling and converting them (the
build-time half, which needs the `tracr` extra) lives in `circuits.tracr_compile`:

    python -m circuits.tracr_compile [--out DIR]

Inputs are BOS followed by 1..max_seq_len tokens, right-padded with tracr's pad token to a
common length; positions after the sequence (and BOS) carry no output. Both programs give
the same outputs on a sequence whether or not it is padded.

Ground truth (`derive_truth`): an edge s -> d is structural when d's input weights (W_Q,
W_K or W_V of the head, the MLP's W_in, the unembedding) times s's output weights (the
head's W_O, the MLP's W_out, the embeddings) is nonzero; every other edge carries nothing d
reads. Edges are then removed one at a time, downstream first, while the circuit alone
(every other edge ablated) still gives the model's read-out at every output position of the
task batch within `FAITHFUL_TOLERANCE`, until every remaining edge is necessary. Which edges
are needed depends on the ablation: under resample or mean ablation an edge that carries the
same value on every input (the BOS and "one" directions, the position embedding) is not
needed, under zero ablation it is. The stored truth holds for `TracrProgram.batch()`: every
input of every length, each corrupted by another input of the batch (of any length).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file
from torch import Tensor

from circuits.edge_patching import ABLATIONS, Ablation, EdgePatcher
from circuits.graph import ComputationalGraph, Edge, Node
from interp import functional
from interp.models import ModelSpec, build
from interp.tasks.base import TaskBatch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

PROGRAMS: tuple[str, ...] = ("reverse", "frac_prevs")
DATA_DIR = Path(__file__).parent / "data"
FAITHFUL_TOLERANCE = 1e-4
"""Largest change of the read-out (any example, any output position) that still counts as
the same output when edges are ablated."""

_COUNTED_TOKEN = "x"  # frac_prevs counts this token


@dataclass(frozen=True)
class TracrProgram:
    """A converted tracr program: what its model reads and writes, and its ground truth.

    Attributes:
        name: `"reverse"` or `"frac_prevs"`.
        description: The RASP program and compiler settings, in words.
        spec: The native model's shape (`load_tracr` builds it with the shipped weights).
        input_tokens: Token id -> token, tracr's input encoding (vocab, BOS, pad).
        output_tokens: Logit index -> token for a categorical program; None when numerical.
        bos: The BOS token (always first).
        pad: The pad token (after the sequence).
        vocab: The tokens a sequence is made of.
        max_seq_len: Longest sequence, BOS not counted (`spec.n_ctx == max_seq_len + 1`).
        residual_labels: Tracr's name of each residual dimension (`"tokens:x"`, `"one"`).
        truth: Ablation (`"resample"`, `"mean"`, `"zero"`) -> the ground-truth edges on the
            default batch (every length, padded).
        acdc_length: The one sequence length of ACDC's data for this program.
        acdc_truth: The same on `batch(lengths=[acdc_length])` (no padding).
        structural_edges: Edges whose weight product is nonzero (a superset of each truth).
    """

    name: str
    description: str
    spec: ModelSpec
    input_tokens: tuple[str, ...]
    output_tokens: tuple[str, ...] | None
    bos: str
    pad: str
    vocab: tuple[str, ...]
    max_seq_len: int
    residual_labels: tuple[str, ...]
    truth: Mapping[str, tuple[str, ...]]
    acdc_length: int
    acdc_truth: Mapping[str, tuple[str, ...]]
    structural_edges: tuple[str, ...]

    @property
    def numerical(self) -> bool:
        """Whether the output is a number (logit 0) rather than a token (argmax)."""
        return self.output_tokens is None

    @property
    def n_outputs(self) -> int:
        """How many logits carry the output: the output vocabulary, or 1 when numerical."""
        return 1 if self.output_tokens is None else len(self.output_tokens)

    @property
    def bos_id(self) -> int:
        return self.input_tokens.index(self.bos)

    @property
    def pad_id(self) -> int:
        return self.input_tokens.index(self.pad)

    def truth_edges(
        self, ablation: Ablation, lengths: Sequence[int] | None = None
    ) -> tuple[str, ...]:
        """The ground-truth circuit under `ablation`, as edge names of the model's graph, for
        `batch(lengths)`: stored for the default (every length) and for ACDC's one length;
        for other batches run `derive_truth`."""
        if ablation not in self.truth:
            raise ValueError(f"ablation must be one of {tuple(self.truth)}, got {ablation!r}")
        if lengths is None or sorted(lengths) == list(range(1, self.max_seq_len + 1)):
            return self.truth[ablation]
        if list(lengths) == [self.acdc_length]:
            return self.acdc_truth[ablation]
        raise ValueError(
            f"no stored truth for lengths {list(lengths)} (stored: all lengths, and "
            f"[{self.acdc_length}]); derive it with circuits.tracr_models.derive_truth"
        )

    # -- tokens ----------------------------------------------------------------------

    def encode(
        self, sequence: Sequence[str | int], n_pos: int | None = None
    ) -> Int[Tensor, " pos"]:
        """Token ids of BOS + `sequence`, right-padded to `n_pos` positions (default: none)."""
        if len(sequence) > self.max_seq_len:
            raise ValueError(
                f"sequence of {len(sequence)} tokens; {self.name} takes at most {self.max_seq_len}"
            )
        unknown = [token for token in sequence if str(token) not in self.vocab]
        if unknown:
            raise ValueError(f"tokens {unknown} are not in {self.name}'s vocab {self.vocab}")
        ids = [self.bos_id] + [self.input_tokens.index(str(token)) for token in sequence]
        n_pos = len(ids) if n_pos is None else n_pos
        if not len(ids) <= n_pos <= self.spec.n_ctx:
            raise ValueError(f"n_pos={n_pos} must lie in {len(ids)}..{self.spec.n_ctx}")
        return torch.tensor(ids + [self.pad_id] * (n_pos - len(ids)))

    def output_mask(self, tokens: Int[Tensor, "batch pos"]) -> Tensor:
        """`[batch, pos]` bool: the positions that carry an output (not BOS, not pad)."""
        return (tokens != self.bos_id) & (tokens != self.pad_id)

    def readout(
        self, logits: Float[Tensor, "batch pos d_vocab_out"]
    ) -> Float[Tensor, "batch pos n_outputs"]:
        """The logits that carry the output (drops the zero column of a numerical model)."""
        return logits[..., : self.n_outputs]

    def decode(self, logits: Float[Tensor, "batch pos d_vocab_out"], tokens: Tensor) -> list[list]:
        """Each sequence's outputs at its output positions: tokens (argmax) or numbers."""
        readout, mask = self.readout(logits), self.output_mask(tokens)
        decoded = []
        for row, keep in zip(readout, mask, strict=True):
            if self.output_tokens is None:
                decoded.append([float(v) for v in row[keep, 0]])
            else:
                decoded.append([self.output_tokens[int(i)] for i in row[keep].argmax(-1)])
        return decoded

    def expected(self, tokens: Int[Tensor, "batch pos"]) -> Tensor:
        """What the RASP program outputs, computed directly: `[batch, pos]` output-token ids
        (-1 off the output positions) for reverse, fractions (NaN off them) for frac_prevs."""
        mask = self.output_mask(tokens)
        if self.name == "reverse":
            assert self.output_tokens is not None
            to_output = torch.tensor(
                [
                    self.output_tokens.index(t) if t in self.output_tokens else -1
                    for t in self.input_tokens
                ],
                device=tokens.device,
            )
            lengths = mask.sum(1)
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            source = (lengths[:, None] + 1 - positions).clamp(0, tokens.shape[1] - 1)
            reversed_ids = to_output[tokens.gather(1, source)]
            return torch.where(mask, reversed_ids, -1)
        counted = (tokens == self.input_tokens.index(_COUNTED_TOKEN)) & mask
        seen = mask.cumsum(1).clamp(min=1)
        fraction = counted.cumsum(1).float() / seen
        return torch.where(mask, fraction, torch.nan)

    # -- task --------------------------------------------------------------------------

    def batch(
        self, lengths: Sequence[int] | None = None, n_examples: int | None = None, seed: int = 0
    ) -> TaskBatch:
        """Every sequence of each length in `lengths` (default 1..max_seq_len), BOS first
        and right-padded to the longest; each corrupted by another example of the batch
        (a random permutation without fixed points: resample ablation).

        `n_examples` keeps a random subset. `answer` is the output token at the last
        output position (`position`) and `wrong` the corrupted example's; both are 0 for
        a numerical program. The stored truth holds for the default batch.
        """
        lengths = list(range(1, self.max_seq_len + 1)) if lengths is None else list(lengths)
        if not lengths or any(not 1 <= n <= self.max_seq_len for n in lengths):
            raise ValueError(f"lengths must lie in 1..{self.max_seq_len}, got {lengths}")
        n_pos = 1 + max(lengths)
        clean = torch.stack(
            [
                self.encode(sequence, n_pos)
                for n in lengths
                for sequence in itertools.product(self.vocab, repeat=n)
            ]
        )
        generator = torch.Generator().manual_seed(seed)
        if n_examples is not None:
            if not 2 <= n_examples <= len(clean):
                raise ValueError(f"n_examples must lie in 2..{len(clean)}, got {n_examples}")
            clean = clean[torch.randperm(len(clean), generator=generator)[:n_examples]]
        if len(clean) < 2:
            raise ValueError("a batch needs at least two examples to corrupt one by another")
        corrupted = clean[_derangement(len(clean), generator)]
        position = self.output_mask(clean).sum(1)
        if self.numerical:
            answer = wrong = torch.zeros(len(clean), dtype=torch.long)
        else:
            rows = torch.arange(len(clean))
            answer = self.expected(clean)[rows, position]
            wrong = self.expected(corrupted)[rows, self.output_mask(corrupted).sum(1)]
        return TaskBatch(
            clean=clean, corrupted=corrupted, answer=answer, wrong=wrong, position=position
        )

    def metric(self) -> Callable[[Tensor, TaskBatch], Float[Tensor, " batch"]]:
        """The program's metric, one value per example, higher is better, read at every
        output position of the clean prompts: reverse, the mean log-probability (softmax of
        the read-out) of the reversed token, i.e. minus the cross-entropy; frac_prevs, minus
        the mean squared error to the true fraction (ACDC's L2 metric)."""

        def metric(logits: Tensor, batch: TaskBatch) -> Tensor:
            readout = self.readout(logits).float()
            mask = self.output_mask(batch.clean)
            target = self.expected(batch.clean)
            if self.numerical:
                per_position = -(readout[..., 0] - target.nan_to_num()).pow(2)
            else:
                log_probs = readout.log_softmax(-1)
                per_position = log_probs.gather(-1, target.clamp(min=0)[..., None])[..., 0]
            per_position = per_position * mask
            return per_position.sum(1) / mask.sum(1).clamp(min=1)

        return metric


def _derangement(n: int, generator: torch.Generator) -> Tensor:
    """A random permutation of 0..n-1 that moves every index: a random cyclic shift of a
    random order."""
    order = torch.randperm(n, generator=generator)
    shift = int(torch.randint(1, n, (1,), generator=generator)) if n > 1 else 0
    result = torch.empty(n, dtype=torch.long)
    result[order] = order.roll(shift)
    return result


# -- loading ---------------------------------------------------------------------------


def _files(name: str, directory: Path) -> tuple[Path, Path]:
    if name not in PROGRAMS:
        raise ValueError(f"unknown tracr program {name!r}; choose from {PROGRAMS}")
    return directory / f"tracr_{name}.json", directory / f"tracr_{name}.safetensors"


def tracr_program(name: str, directory: str | Path | None = None) -> TracrProgram:
    """The shipped description of program `name` (no weights, no jax)."""
    meta_path, _ = _files(name, Path(directory or DATA_DIR))
    if not meta_path.is_file():
        raise ValueError(f"no converted tracr program at {str(meta_path)!r}; regenerate it")
    meta = json.loads(meta_path.read_text())
    return _program_from_meta(meta)


def _program_from_meta(meta: Mapping[str, Any]) -> TracrProgram:
    return TracrProgram(
        name=meta["name"],
        description=meta["description"],
        spec=ModelSpec.model_validate(meta["spec"]),
        input_tokens=tuple(meta["input_tokens"]),
        output_tokens=None if meta["output_tokens"] is None else tuple(meta["output_tokens"]),
        bos=meta["bos"],
        pad=meta["pad"],
        vocab=tuple(meta["vocab"]),
        max_seq_len=int(meta["max_seq_len"]),
        residual_labels=tuple(meta["residual_labels"]),
        truth={ablation: tuple(edges) for ablation, edges in meta["truth"].items()},
        acdc_length=int(meta["acdc_length"]),
        acdc_truth={ablation: tuple(edges) for ablation, edges in meta["acdc_truth"].items()},
        structural_edges=tuple(meta["structural_edges"]),
    )


def load_tracr(
    name: str, device: str | torch.device = "cpu", directory: str | Path | None = None
) -> TransformerBridge:
    """The native model of tracr program `name`, with the shipped converted weights."""
    program = tracr_program(name, directory)
    _, weights_path = _files(name, Path(directory or DATA_DIR))
    model = build(program.spec, device=device)
    params = load_file(str(weights_path), device=str(torch.device(device)))
    functional.load_params(model, params)
    return model


# -- ground truth ----------------------------------------------------------------------


def _reading_weights(params: Mapping[str, Tensor], node: Node, spec: ModelSpec) -> Tensor:
    """`[n, d_model]`: how the destination reads the residual stream."""
    d_head = int(spec.d_head or 0)
    if node.kind == "logits":
        return params["unembed.weight"]
    if node.kind == "mlp":
        return params[f"blocks.{node.layer}.mlp.in.weight"]
    weight = params[f"blocks.{node.layer}.attn.{node.input}.weight"]
    assert node.head is not None
    return weight[node.head * d_head : (node.head + 1) * d_head]


def _writing_weights(params: Mapping[str, Tensor], node: Node, spec: ModelSpec) -> Tensor:
    """`[d_model, n]`: how the source writes into the residual stream."""
    d_head = int(spec.d_head or 0)
    if node.kind == "embed":
        return torch.cat([params["embed.weight"], params["pos_embed.weight"]]).T
    if node.kind == "mlp":
        return params[f"blocks.{node.layer}.mlp.out.weight"]
    weight = params[f"blocks.{node.layer}.attn.o.weight"]
    assert node.head is not None
    return weight[:, node.head * d_head : (node.head + 1) * d_head]


def structural_edges(model: TransformerBridge, spec: ModelSpec) -> tuple[str, ...]:
    """Edges s -> d whose weight product (d's input weights times s's output weights) is
    nonzero, in graph order: the destinations that can read anything the source writes."""
    params = functional.params_of(model)
    graph = ComputationalGraph.from_model(model)

    def connected(edge: Edge) -> bool:
        reading = _reading_weights(params, edge.destination, spec)
        writing = _writing_weights(params, edge.source, spec)
        return bool((reading @ writing).abs().max() > 0)

    return tuple(edge.name for edge in graph.edges if connected(edge))


@dataclass(frozen=True)
class TruthCheck:
    """How a circuit fares under one ablation, on one batch.

    Attributes:
        max_deviation: Largest |read-out of the circuit - the model's| over the batch's
            output positions.
        removal_effects: Edge -> the largest change of the read-out when that edge alone
            is removed from the circuit.
        metric_full: The program's metric of the full model.
        metric_circuit: The program's metric of the circuit.
    """

    max_deviation: float
    removal_effects: Mapping[str, float]
    metric_full: float
    metric_circuit: float


def check_circuit(
    model: TransformerBridge,
    program: TracrProgram,
    batch: TaskBatch,
    edges: Sequence[str],
    ablation: Ablation,
) -> TruthCheck:
    """Run `edges` alone and each one-edge-smaller circuit under `ablation` on `batch`."""
    patcher = EdgePatcher(model)
    batch = batch.to(patcher.device)
    index = patcher.graph.edge_index
    unknown = [edge for edge in edges if edge not in index]
    if unknown:
        raise ValueError(f"edges {unknown} are not in the model's graph")
    masks = torch.zeros(len(edges) + 2, patcher.n_edges, device=patcher.device)
    masks[0] = 1.0
    for row in range(1, len(edges) + 2):
        masks[row, [index[e] for e in edges]] = 1.0
    for row, edge in enumerate(edges, start=2):
        masks[row, index[edge]] = 0.0
    readouts = _readouts(patcher, program, batch, masks, ablation)
    mask = program.output_mask(batch.clean)
    deviations = [(r - readouts[0]).abs()[mask].max().item() for r in readouts[1:]]
    metric = program.metric()  # reads the read-out columns only
    return TruthCheck(
        max_deviation=deviations[0],
        removal_effects=dict(zip(edges, deviations[1:], strict=True)),
        metric_full=float(metric(readouts[0], batch).mean()),
        metric_circuit=float(metric(readouts[1], batch).mean()),
    )


def _readouts(
    patcher: EdgePatcher,
    program: TracrProgram,
    batch: TaskBatch,
    masks: Tensor,
    ablation: Ablation,
    max_circuits: int = 16,
) -> Float[Tensor, "circuit batch pos n_outputs"]:
    with torch.inference_mode():
        ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, ablation)
        chunks = [
            program.readout(patcher.run(batch.clean, patcher.dense(chunk), ablated))
            for chunk in masks.split(max_circuits)
        ]
    return torch.cat(chunks)


def derive_truth(
    model: TransformerBridge,
    program: TracrProgram,
    batch: TaskBatch,
    ablation: Ablation,
    tolerance: float = FAITHFUL_TOLERANCE,
) -> tuple[str, ...]:
    """The ground-truth circuit under `ablation`: the structural edges, less every edge
    whose removal changes no read-out by more than `tolerance` (tried downstream first,
    repeated until none can go). Raises if the structural edges are not faithful."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    patcher = EdgePatcher(model)
    batch = batch.to(patcher.device)
    index = patcher.graph.edge_index
    output_mask = program.output_mask(batch.clean)
    every_edge = torch.ones(1, patcher.n_edges, device=patcher.device)
    full = _readouts(patcher, program, batch, every_edge, ablation)[0]

    def deviation(edges: Sequence[str]) -> float:
        mask = torch.zeros(1, patcher.n_edges, device=patcher.device)
        mask[0, [index[e] for e in edges]] = 1.0
        readout = _readouts(patcher, program, batch, mask, ablation)[0]
        return (readout - full).abs()[output_mask].max().item()

    kept = list(structural_edges(model, program.spec))
    if deviation(kept) > tolerance:
        raise ValueError(f"the structural edges of {program.name} are not faithful")
    changed = True
    while changed:
        changed = False
        for edge in reversed(list(kept)):
            trial = [e for e in kept if e != edge]
            if deviation(trial) <= tolerance:
                kept, changed = trial, True
    return tuple(kept)
