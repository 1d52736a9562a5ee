"""The `copy_suppress` planted circuit: indirect-object identification in miniature (Wang et al.
2022), with a copy-suppression head (McDougall et al. 2023).
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
    spec = _planted_spec(3, residual.width, 2, d_head, vocab, n_ctx)
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
    batch = _read_at_last_position(clean, corrupted, answer, wrong)
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
