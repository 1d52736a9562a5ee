"""Planted circuits: small transformers built by hand whose circuit is known by construction.

Circuit discovery (ACDC, Conmy et al. 2023; EAP, Syed et al. 2023; EAP-IG, Hanna et al.
2024) is judged against a ground truth, and on trained models there is none. Here every
weight is set by hand, in the spirit of the compiled models of Tracr (Lindner et al. 2023)
but smaller and with distractors: each component reads and writes its own named subspace
of the residual stream (no LayerNorm, so the stream is an exact sum), so which edge of
`ComputationalGraph.from_model(model)` carries the behaviour on a batch follows from the
weights. Distractor heads and MLPs do real work on other prompts but nothing on the
batch's metric (they are silent on it, or write only logits other than the answer and the
wrong token), so a discovery method that finds them has made a mistake.

The ground truth is for resample ablation and the batch's metric (mean logit difference):
`edges` are exactly the edges whose ablation moves the metric. Edges that the mechanism
reads but that carry the same signal on clean and corrupted prompts (positional
embeddings, constant features, the slots of a fixed template) are invisible to resample
ablation; they are listed in `invariant_edges`, and `edges | invariant_edges` is the
circuit under zero ablation (there, though, removing a distractor's own positional edge
from the full model can move the metric: a zeroed query makes a head attend everywhere).
Under mean ablation the same `edges` hold on the default batches, as measured, but not by
construction: a distractor's batch-mean output may touch another example's answer.
`tests/circuits/test_planted.py` verifies all this by exact edge patching
(`circuits.edge_patching`).

Distractors are built to be exactly orthogonal to the metric on the batch, so every
non-circuit edge has an attribution score of (nearly) zero: ranking by |EAP| separates
circuit from non-circuit edges perfectly here, even though EAP underestimates the edges
through saturated attention by orders of magnitude (their first-order effect is tiny).

Models:

- `induction`: a previous-token head K-composing with an induction head (Olsson et al.
  2022, "In-context Learning and Induction Heads"; Elhage et al. 2021, "A Mathematical
  Framework for Transformer Circuits").
- `copy_suppress`: a three-layer indirect-object circuit in miniature (Wang et al. 2022,
  "Interpretability in the Wild"): a duplicate-token head, a suppression head that writes
  minus the duplicated name to the logits (the negative copying of copy suppression,
  McDougall et al. 2023, "Copy Suppression") and tells, by Q-composition, a name mover
  which name not to copy.
- `mlp_and`: two heads move two tokens to the last position, where ReLU neurons compute
  their AND (a lookup table of pairs) and write the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.graph import ComputationalGraph
from interp import functional, models
from interp.tasks.base import TaskBatch


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


def _identity(dims: Iterable[int], cols: Iterable[int]) -> list[tuple[int, int]]:
    return list(zip(dims, cols, strict=True))


def _distinct(generator: torch.Generator, pool: Sequence[int], k: int) -> list[int]:
    """`k` distinct tokens drawn from `pool`."""
    order = torch.randperm(len(pool), generator=generator)[:k]
    return [pool[int(i)] for i in order]


def _check_examples(n_examples: int) -> None:
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"n_examples must be a positive int, got {n_examples!r}")


# -- induction -------------------------------------------------------------------------

_IND_VOCAB, _IND_LOW, _IND_HALF = 24, 16, 6  # tokens < 16 in the batch; 16.. only elsewhere
_ATTEND = 12.0  # attention score of the position a hand-built head means to attend to
_LOGIT = 6.0  # logit a circuit head writes


def induction(
    *, n_examples: int = 24, seed: int = 0, device: str | torch.device = "cpu"
) -> PlantedCircuit:
    """A previous-token head feeding an induction head by K-composition.

    Residual stream (no LayerNorm): `tok` (one-hot token), `pos` (one-hot position), `one`
    (a constant 1 from the positional embedding), `prev`, `first`, `self` (copies of a
    token written by layer-0 heads), `out` (read by the unembedding, one column per token).

    - L0H0, previous-token head: query `pos[t]` shifted by one, key `pos[s]`, so position t
      attends to t-1; its value copies `tok` into `prev`.
    - L1H0, induction head: query reads `tok` (the current token), key reads `prev`
      (K-composition with L0H0), so it attends to the position after the previous
      occurrence of the current token, and its value copies that position's `tok` into
      `out`: on `r + r` it predicts the next token of the repeat (Olsson et al. 2022).
    - Distractors. L0H1 attends to position 0 (query `one`, key `pos[0]`) and copies the
      first token into `first`; L1H1 attends uniformly and writes `first` to the logits,
      but only for tokens 16..23, which never occur in the batch (silent there). L0H2
      attends to its own position and copies `tok` into `self`; L1H2 attends to its own
      position and writes minus `self` to the logits (it suppresses repeating the current
      token), active on every prompt, but the current token is never the answer or the
      wrong token.

    Batch: clean `r + r` (6 distinct tokens repeated), metric at a position `6 + j` of the
    repeat (j in 2..4), answer `r[j+1]`, wrong `r[j-1]`; corrupted: 12 distinct fresh
    tokens, where the induction head finds no match. Invariant edges: the previous-token
    head's query and key read only positions, equal on clean and corrupted prompts.
    """
    _check_examples(n_examples)
    vocab, low, half = _IND_VOCAB, _IND_LOW, _IND_HALF
    n_ctx = 2 * half
    residual = _Residual(
        {
            "tok": vocab,
            "pos": n_ctx,
            "one": 1,
            "prev": vocab,
            "first": vocab,
            "self": vocab,
            "out": vocab,
        }
    )
    tok, pos, prev, first, own, out = (
        residual[name] for name in ("tok", "pos", "prev", "first", "self", "out")
    )
    one = residual["one"][0]
    spec = dict(
        n_layers=2,
        d_model=residual.width,
        n_heads=3,
        d_head=vocab,
        d_vocab=vocab,
        n_ctx=n_ctx,
        attn_only=True,
        normalization=None,
        seed=0,
    )
    w = _Weights(spec, device)
    w.embed(range(vocab), list(tok))
    w.position(list(pos), one)
    every = range(vocab)
    # L0H0 previous-token head: q_i = pos[i + 1], k_i = pos[i]; copies tok into prev.
    w.read(0, 0, "q", _identity(range(n_ctx - 1), pos[1:]), _ATTEND)
    w.read(0, 0, "k", _identity(range(n_ctx), pos))
    w.read(0, 0, "v", _identity(every, tok))
    w.write(0, 0, _identity(prev, every))
    # L0H1 first-token head: attends to position 0; copies tok into first.
    w.read(0, 1, "q", [(0, one)], _ATTEND)
    w.read(0, 1, "k", [(0, pos[0])])
    w.read(0, 1, "v", _identity(every, tok))
    w.write(0, 1, _identity(first, every))
    # L0H2 self head: attends to its own position; copies tok into self.
    w.read(0, 2, "q", _identity(range(n_ctx), pos), _ATTEND)
    w.read(0, 2, "k", _identity(range(n_ctx), pos))
    w.read(0, 2, "v", _identity(every, tok))
    w.write(0, 2, _identity(own, every))
    # L1H0 induction head: query tok, key prev; copies tok into out.
    w.read(1, 0, "q", _identity(every, tok), _ATTEND)
    w.read(1, 0, "k", _identity(every, prev))
    w.read(1, 0, "v", _identity(every, tok))
    w.write(1, 0, _identity(out, every), _LOGIT)
    # L1H1 first-token recall, tokens >= low only; uniform attention (zero query, key).
    high = range(low, vocab)
    w.read(1, 1, "v", _identity(high, [first[t] for t in high]))
    w.write(1, 1, [(out[t], t) for t in high], _LOGIT)
    # L1H2 self suppression: attends to its own position, writes minus self to out.
    w.read(1, 2, "q", _identity(range(n_ctx), pos), _ATTEND)
    w.read(1, 2, "k", _identity(range(n_ctx), pos))
    w.read(1, 2, "v", _identity(every, own))
    w.write(1, 2, _identity(out, every), -_LOGIT)
    w.unembed(list(out))
    model = w.finish()

    generator = torch.Generator().manual_seed(seed)
    pool = list(range(low))
    clean, corrupted, answer, wrong, position = [], [], [], [], []
    for _ in range(n_examples):
        r = _distinct(generator, pool, half)
        j = int(torch.randint(2, half - 1, (1,), generator=generator))
        t = half + j
        while True:  # the distractors' tokens (first and current) must stay off the metric
            c = _distinct(generator, pool, n_ctx)
            if not {c[0], c[t]} & {r[j + 1], r[j - 1]}:
                break
        clean.append(r + r)
        corrupted.append(c)
        answer.append(r[j + 1])
        wrong.append(r[j - 1])
        position.append(t)
    batch = TaskBatch.from_columns(
        dict(clean=clean, corrupted=corrupted, answer=answer, wrong=wrong, position=position)
    )
    distractor_tokens = torch.tensor(
        [[low + i] + _distinct(generator, pool, n_ctx - 1) for i in range(4)]
    )
    return PlantedCircuit(
        name="induction",
        model=model,
        batch=batch,
        edges=frozenset(
            {"embed->L0H0.v", "L0H0->L1H0.k", "embed->L1H0.q", "embed->L1H0.v", "L1H0->logits"}
        ),
        invariant_edges=frozenset({"embed->L0H0.q", "embed->L0H0.k"}),
        distractors=frozenset({"L0H1", "L0H2", "L1H1", "L1H2"}),
        distractor_tokens=distractor_tokens,
        description=(
            "L0H0 previous-token head (attends to t-1 by position, copies the token into a "
            "prev subspace) -> K-composition -> L1H0 induction head (query: current token, "
            "key: prev, value: token -> logits). Distractors: L0H1 copies the first token into "
            "a first subspace that L1H1 writes to the logits for tokens 16..23 only (absent "
            "from the batch); L0H2 copies the current token into a self subspace that L1H2 "
            "writes, negated, to the logits (never the answer or wrong token)."
        ),
    )


# -- copy and suppress (IOI in miniature) ----------------------------------------------

_BOS, _END = 0, 1
_CS_NAMES = tuple(range(2, 14))
_CS_FILLERS = tuple(range(14, 24))
_CS_VOCAB = 24
_CS_SLOTS = (1, 3, 6)  # name positions of the template; position 6 repeats one of 1 and 3
_CS_LENGTH = 9  # BOS N f N f f N f END


def copy_suppress(
    *, n_examples: int = 24, seed: int = 0, device: str | torch.device = "cpu"
) -> PlantedCircuit:
    """A name mover that copies one name and a head that suppresses the other.

    Prompts follow the template `BOS A f B f f S f END` with names A, B, S = A or B, and
    fillers f; the answer is the name that occurs once (the indirect object, IO), the
    wrong token the repeated one (S), as in Wang et al. 2022.

    Residual stream: `tok`, `pos`, `one`, token features `name` and `bos`, and the
    subspaces `dup`, `inhibit`, `prev` and `out` (read by the unembedding).

    - L0H0, duplicate-token head: query and key read the name's `tok` (a match scores
      high), minus its own position (query `-pos`, key `pos`) and a BOS sink (query `one`,
      key `bos`, half the match score); at S's second occurrence it attends to the first
      and copies the name into `dup`; elsewhere it rests on BOS, whose value is zero.
    - L1H0, suppression head: query `one`, key reads `dup` (K-composition), so at END it
      attends to the duplicated name; its value reads `dup` (V-composition) and writes S
      into `inhibit` and minus S into `out`: it suppresses the wrong name (the negative
      copying of McDougall et al. 2023).
    - L2H0, name mover: query `one` minus `inhibit` (Q-composition with L1H0), key the
      `name` feature plus the name's `tok`, so it attends to names other than S, i.e. to
      IO, and copies IO into `out`.
    - Distractors. L0H1 is a previous-token head writing `prev`; L2H1 is an induction head
      for fillers (query `tok`, key `prev`, value `tok`, fillers only) that predicts a
      repeated filler's successor: on the batch it writes filler logits only. L1H1
      attends like L1H0 but maps the duplicated name to a filler's logit: active on the
      batch (it reads the circuit's `dup`), yet never touching a name's logit.

    Corrupted prompts put three distinct fresh names in the slots (no name repeats).
    Invariant edges: the queries of L1H0 and L2H0 read the constant `one`.
    """
    _check_examples(n_examples)
    vocab, n_ctx = _CS_VOCAB, _CS_LENGTH
    residual = _Residual(
        {
            "tok": vocab,
            "pos": n_ctx,
            "one": 1,
            "name": 1,
            "bos": 1,
            "dup": vocab,
            "inhibit": vocab,
            "prev": vocab,
            "out": vocab,
        }
    )
    tok, pos, dup, inhibit, prev, out = (
        residual[key] for key in ("tok", "pos", "dup", "inhibit", "prev", "out")
    )
    one, is_name, is_bos = (residual[key][0] for key in ("one", "name", "bos"))
    d_head = vocab + n_ctx + 2
    flag, sink = vocab + n_ctx, vocab + n_ctx + 1  # head dims beyond the token and position ones
    spec = dict(
        n_layers=3,
        d_model=residual.width,
        n_heads=2,
        d_head=d_head,
        d_vocab=vocab,
        n_ctx=n_ctx,
        attn_only=True,
        normalization=None,
        seed=0,
    )
    w = _Weights(spec, device)
    w.embed(range(vocab), list(tok))
    w.embed(_CS_NAMES, is_name)
    w.embed([_BOS], is_bos)
    w.position(list(pos), one)
    names, fillers = list(_CS_NAMES), list(_CS_FILLERS)
    pos_dims = range(vocab, vocab + n_ctx)
    # L0H0 duplicate-token head.
    w.read(0, 0, "q", [(n, tok[n]) for n in names], _ATTEND)
    w.read(0, 0, "q", _identity(pos_dims, pos), -_ATTEND)
    w.read(0, 0, "q", [(sink, one)], _ATTEND / 2)
    w.read(0, 0, "k", [(n, tok[n]) for n in names])
    w.read(0, 0, "k", _identity(pos_dims, pos))
    w.read(0, 0, "k", [(sink, is_bos)])
    w.read(0, 0, "v", [(n, tok[n]) for n in names])
    w.write(0, 0, [(dup[n], n) for n in names])
    # L0H1 previous-token head (distractor).
    w.read(0, 1, "q", _identity(range(n_ctx - 1), pos[1:]), _ATTEND)
    w.read(0, 1, "k", _identity(range(n_ctx), pos))
    w.read(0, 1, "v", _identity(range(vocab), tok))
    w.write(0, 1, _identity(prev, range(vocab)))
    # L1H0 suppression head and L1H1 (distractor) attend alike: to `dup`, else to BOS.
    for head in (0, 1):
        w.read(1, head, "q", [(flag, one)], _ATTEND)
        w.read(1, head, "q", [(sink, one)], _ATTEND / 2)
        w.read(1, head, "k", [(flag, dup[n]) for n in names])
        w.read(1, head, "k", [(sink, is_bos)])
        w.read(1, head, "v", [(n, dup[n]) for n in names])
    w.write(1, 0, [(inhibit[n], n) for n in names])
    w.write(1, 0, [(out[n], n) for n in names], -_LOGIT)
    w.write(1, 1, [(out[fillers[i % len(fillers)]], n) for i, n in enumerate(names)], _LOGIT)
    # L2H0 name mover: attends to names not inhibited; copies them to out.
    w.read(2, 0, "q", [(flag, one)], _ATTEND)
    w.read(2, 0, "q", [(n, inhibit[n]) for n in names], -_ATTEND)
    w.read(2, 0, "k", [(flag, is_name)])
    w.read(2, 0, "k", [(n, tok[n]) for n in names])
    w.read(2, 0, "v", [(n, tok[n]) for n in names])
    w.write(2, 0, [(out[n], n) for n in names], _LOGIT)
    # L2H1 filler induction head (distractor).
    w.read(2, 1, "q", [(f, tok[f]) for f in fillers], _ATTEND)
    w.read(2, 1, "k", [(f, prev[f]) for f in fillers])
    w.read(2, 1, "v", [(f, tok[f]) for f in fillers])
    w.write(2, 1, [(out[f], f) for f in fillers], _LOGIT)
    w.unembed(list(out))
    model = w.finish()

    generator = torch.Generator().manual_seed(seed)
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n_examples):
        a, b, c1, c2, c3 = _distinct(generator, names, 5)
        filler = _distinct(generator, fillers, 4)
        repeated = a if int(torch.randint(0, 2, (1,), generator=generator)) else b
        template = [_BOS, 0, filler[0], 0, filler[1], filler[2], 0, filler[3], _END]
        prompt, fresh = list(template), list(template)
        for slot, name, other in zip(_CS_SLOTS, (a, b, repeated), (c1, c2, c3), strict=True):
            prompt[slot], fresh[slot] = name, other
        clean.append(prompt)
        corrupted.append(fresh)
        answer.append(b if repeated == a else a)
        wrong.append(repeated)
    batch = TaskBatch.from_columns(
        dict(
            clean=clean,
            corrupted=corrupted,
            answer=answer,
            wrong=wrong,
            position=[n_ctx - 1] * n_examples,
        )
    )
    # A repeated name (L1H1 works) and a repeated filler at the end (L0H1 -> L2H1 work).
    f = fillers
    distractor_tokens = torch.tensor(
        [
            [_BOS, names[0], f[0], f[1], names[0], f[2], f[3], f[4], f[0]],
            [_BOS, names[3], f[5], f[6], f[7], names[3], f[8], f[9], f[5]],
        ]
    )
    return PlantedCircuit(
        name="copy_suppress",
        model=model,
        batch=batch,
        edges=frozenset(
            {
                "embed->L0H0.q",
                "embed->L0H0.k",
                "embed->L0H0.v",
                "L0H0->L1H0.k",
                "L0H0->L1H0.v",
                "L1H0->L2H0.q",
                "L1H0->logits",
                "embed->L2H0.k",
                "embed->L2H0.v",
                "L2H0->logits",
            }
        ),
        invariant_edges=frozenset({"embed->L1H0.q", "embed->L2H0.q"}),
        distractors=frozenset({"L0H1", "L1H1", "L2H1"}),
        distractor_tokens=distractor_tokens,
        description=(
            "IOI in miniature. L0H0 duplicate-token head writes the repeated name S into dup "
            "-> L1H0 suppression head (key and value read dup) writes -S to the logits and S "
            "into inhibit -> Q-composition -> L2H0 name mover attends to names but S, copies "
            "IO to the logits. Distractors: L0H1 previous-token head feeding L2H1, an "
            "induction head for fillers only; L1H1 reads dup and writes filler logits."
        ),
    )


# -- MLP AND ---------------------------------------------------------------------------

_AND_X = (2, 3, 4)
_AND_Y = (5, 6, 7)
_AND_Z = tuple(range(8, 17))  # z[3 i + j]: the answer for the pair (x_i, y_j)
_AND_FILLERS = tuple(range(17, 25))
_AND_VOCAB, _AND_LENGTH, _AND_MLP = 25, 8, 16


def mlp_and(
    *, n_examples: int = 24, seed: int = 0, device: str | torch.device = "cpu"
) -> PlantedCircuit:
    """An MLP that combines two attended tokens: ReLU neurons computing an AND.

    Prompts: `BOS` then fillers with one X token (x_i) and one Y token (y_j) at random
    positions among 1..5, then `END`; the answer is z[i, j], a token for the pair.

    Residual stream: `tok`, `pos`, `one`, token features `is_x` and `is_y`, the moved
    tokens `xs` and `ys` (3 columns each) and `out` (read by the unembedding).

    - L0H0 (L0H1): query `one`, key `is_x` (`is_y`): attends to the X (Y) token wherever
      it is and copies which one it is into `xs` (`ys`).
    - mlp0: neuron (i, j) = relu(2 xs_i + 2 ys_j - 3) is 1 only when both x_i and y_j
      were moved (an AND) and writes z[i, j] into `out`. Its other neurons are
      distractors: relu(2 xs_i - 1) and relu(2 ys_j - 1) fire on a single token and write
      filler logits.
    - Distractors. L1H0 attends to the previous position and writes the successor of a
      previous filler; L1H1 attends uniformly and writes filler logits from `xs` and `ys`
      (reading the circuit's heads); mlp1 is a bigram table, current filler or END -> a
      filler's logit.

    Corrupted prompts use another pair (x_k, y_l), k != i, l != j, at other positions;
    the wrong token is z[k, l]. Invariant edges: the two heads' queries read `one`.
    """
    _check_examples(n_examples)
    vocab, n_ctx = _AND_VOCAB, _AND_LENGTH
    residual = _Residual(
        {"tok": vocab, "pos": n_ctx, "one": 1, "is_x": 1, "is_y": 1, "xs": 3, "ys": 3, "out": vocab}
    )
    tok, pos, xs, ys, out = (residual[key] for key in ("tok", "pos", "xs", "ys", "out"))
    one, is_x, is_y = (residual[key][0] for key in ("one", "is_x", "is_y"))
    fillers = list(_AND_FILLERS)
    spec = dict(
        n_layers=2,
        d_model=residual.width,
        n_heads=2,
        d_head=len(fillers),
        d_vocab=vocab,
        n_ctx=n_ctx,
        d_mlp=_AND_MLP,
        act_fn="relu",
        normalization=None,
        seed=0,
    )
    w = _Weights(spec, device)
    w.embed(range(vocab), list(tok))
    w.embed(_AND_X, is_x)
    w.embed(_AND_Y, is_y)
    w.position(list(pos), one)
    # L0H0 moves X into xs, L0H1 moves Y into ys.
    for head, feature, tokens, moved in ((0, is_x, _AND_X, xs), (1, is_y, _AND_Y, ys)):
        w.read(0, head, "q", [(0, one)], _ATTEND)
        w.read(0, head, "k", [(0, feature)])
        w.read(0, head, "v", [(i, tok[t]) for i, t in enumerate(tokens)])
        w.write(0, head, _identity(moved, range(3)))
    # mlp0: the AND table (circuit) and single-token neurons (distractors).
    for i in range(3):
        for j in range(3):
            w.neuron(0, 3 * i + j, {xs[i]: 2.0, ys[j]: 2.0}, -3.0, {out[_AND_Z[3 * i + j]]: _LOGIT})
        w.neuron(0, 9 + i, {xs[i]: 2.0}, -1.0, {out[fillers[i]]: _LOGIT})
        w.neuron(0, 12 + i, {ys[i]: 2.0}, -1.0, {out[fillers[3 + i]]: _LOGIT})
    # L1H0: previous filler -> its successor's logit.
    w.read(1, 0, "q", _identity(range(n_ctx - 1), pos[1:]), _ATTEND)
    w.read(1, 0, "k", _identity(range(n_ctx), pos))
    w.read(1, 0, "v", [(k, tok[f]) for k, f in enumerate(fillers)])
    w.write(1, 0, [(out[fillers[(k + 1) % len(fillers)]], k) for k in range(len(fillers))], _LOGIT)
    # L1H1: uniform attention; the moved X and Y -> filler logits.
    w.read(1, 1, "v", _identity(range(3), xs))
    w.read(1, 1, "v", _identity(range(3, 6), ys))
    w.write(1, 1, [(out[fillers[7 - d]], d) for d in range(6)], _LOGIT)
    # mlp1: bigram neurons on the current token.
    for k, f in enumerate([*fillers, _END]):
        w.neuron(1, k, {tok[f]: 1.0}, 0.0, {out[fillers[(k + 2) % len(fillers)]]: _LOGIT})
    w.unembed(list(out))
    model = w.finish()

    generator = torch.Generator().manual_seed(seed)
    slots = list(range(1, n_ctx - 2))
    clean, corrupted, answer, wrong = [], [], [], []
    for _ in range(n_examples):
        base = (
            [_BOS]
            + [fillers[int(k)] for k in torch.randint(0, 8, (n_ctx - 2,), generator=generator)]
            + [_END]
        )
        i, k = _distinct(generator, [0, 1, 2], 2)
        j, m = _distinct(generator, [0, 1, 2], 2)
        p, q = _distinct(generator, slots, 2)
        while True:
            p2, q2 = _distinct(generator, slots, 2)
            if p2 != p and q2 != q:
                break
        prompt, fresh = list(base), list(base)
        prompt[p], prompt[q] = _AND_X[i], _AND_Y[j]
        fresh[p2], fresh[q2] = _AND_X[k], _AND_Y[m]
        clean.append(prompt)
        corrupted.append(fresh)
        answer.append(_AND_Z[3 * i + j])
        wrong.append(_AND_Z[3 * k + m])
    batch = TaskBatch.from_columns(
        dict(
            clean=clean,
            corrupted=corrupted,
            answer=answer,
            wrong=wrong,
            position=[n_ctx - 1] * n_examples,
        )
    )
    f = fillers
    distractor_tokens = torch.tensor(
        [
            [_BOS, f[0], _AND_X[0], f[1], _AND_Y[2], f[2], f[3], f[4]],
            [_BOS, _AND_Y[1], f[5], f[6], _AND_X[2], f[7], f[0], f[1]],
        ]
    )
    return PlantedCircuit(
        name="mlp_and",
        model=model,
        batch=batch,
        edges=frozenset(
            {
                "embed->L0H0.k",
                "embed->L0H0.v",
                "embed->L0H1.k",
                "embed->L0H1.v",
                "L0H0->mlp0",
                "L0H1->mlp0",
                "mlp0->logits",
            }
        ),
        invariant_edges=frozenset({"embed->L0H0.q", "embed->L0H1.q"}),
        distractors=frozenset({"L1H0", "L1H1", "mlp1"}),
        distractor_tokens=distractor_tokens,
        description=(
            "L0H0 and L0H1 move the X and Y tokens to the last position; mlp0's neuron "
            "relu(2 x_i + 2 y_j - 3) fires only for both (an AND) and writes z[i, j]. "
            "Distractors: mlp0's single-token neurons and L1H1 (reading the moved tokens) "
            "write filler logits; L1H0 (previous filler) and mlp1 (bigrams) too."
        ),
    )


# -- registry --------------------------------------------------------------------------

PLANTED: Mapping[str, Callable[[], PlantedCircuit]] = MappingProxyType(
    {"induction": induction, "copy_suppress": copy_suppress, "mlp_and": mlp_and}
)
"""Every planted circuit by name; each builds a fresh model and batch when called."""


def planted(name: str) -> PlantedCircuit:
    """The planted circuit called `name` (see `PLANTED`)."""
    if name not in PLANTED:
        raise ValueError(f"no planted circuit {name!r}; choose from {sorted(PLANTED)}")
    return PLANTED[name]()
