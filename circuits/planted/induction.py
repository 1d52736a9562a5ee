"""The `induction` planted circuit: a previous-token head K-composing with an induction head
(Olsson et al. 2022; Elhage et al. 2021).
"""

from __future__ import annotations

import torch

from circuits.planted.base import (
    _ATTEND,
    _LOGIT,
    PlantedCircuit,
    _check_examples,
    _distinct,
    _identity,
    _planted_spec,
    _Residual,
    _Weights,
)
from interp.tasks.base import TaskBatch

_IND_VOCAB, _IND_LOW, _IND_HALF = 24, 16, 6  # tokens < 16 in the batch; 16.. only elsewhere


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
    spec = _planted_spec(2, residual.width, 3, vocab, vocab, n_ctx)
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
