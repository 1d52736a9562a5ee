"""The `mlp_and` planted circuit: two heads move two tokens to the last position, where ReLU
neurons compute their AND.
"""

from __future__ import annotations

import torch

from circuits.planted.base import (
    _ATTEND,
    _BOS,
    _END,
    _LOGIT,
    PlantedCircuit,
    _check_examples,
    _distinct,
    _identity,
    _planted_spec,
    _read_at_last_position,
    _Residual,
    _Weights,
)

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
    spec = _planted_spec(2, residual.width, 2, len(fillers), vocab, n_ctx, d_mlp=_AND_MLP)
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
    batch = _read_at_last_position(clean, corrupted, answer, wrong)
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
