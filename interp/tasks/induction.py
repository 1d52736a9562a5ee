"""Repeated random tokens: the task that induction heads solve (Olsson et al. 2022,
"In-context Learning and Induction Heads"; Elhage et al. 2021, "A Mathematical Framework
for Transformer Circuits").

A clean prompt is `[BOS, x_1..x_L, x_1..x_{L-1}]`: the answer at the last position is
`x_L`, which only copying "the token that followed the previous occurrence" can predict.
Next-token targets cover the whole repeated half, so training a two-layer attention-only
model on this task grows an induction circuit.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import datasets
import torch
from pydantic import Field, model_validator
from torch import Tensor

from interp.tasks.base import IGNORE_INDEX, Task, TaskBatch
from interp.tasks.task_config import TaskConfig, resolve_config


class InductionConfig(TaskConfig):
    """Configuration of `Induction`."""

    name: Literal["induction"] = "induction"
    d_vocab: int = Field(default=64, ge=3)
    """Vocabulary size of the native model (the BOS token included when `bos`)."""
    half_len: int = Field(default=16, ge=2)
    """Length L of the random sequence that is repeated."""
    n_examples: int = Field(default=256, ge=1)
    bos: bool = True
    """Reserve id `d_vocab - 1` as a BOS token that starts every prompt."""
    max_gap: int = Field(default=0, ge=0)
    """Up to this many filler tokens between the two copies (a uniform random number per
    prompt; the rest pad the start), so that the distance between a token and its previous
    occurrence varies and no head can find it by position alone. With 0 the distance is
    always L, which a single layer-0 head can learn by position: no induction circuit
    is needed then."""

    @model_validator(mode="after")
    def _enough_tokens(self) -> InductionConfig:
        drawable = self.d_vocab - int(self.bos)
        needed = self.half_len + (1 if self.max_gap else 0)
        if drawable < needed:
            raise ValueError(
                f"half_len={self.half_len} distinct tokens (and filler tokens besides them "
                f"when max_gap > 0) need d_vocab >= {needed + int(self.bos)}, got "
                f"d_vocab={self.d_vocab}"
            )
        return self


class Induction(Task):
    """Repeated random sequences for a native model (`d_vocab`,
    `n_ctx = 2L - 1 + max_gap + bos`).

    - clean: `[BOS, x_1..x_L, x_1..x_{L-1}]`, the `x_i` distinct (drawn without
      replacement), so each token's previous occurrence, and hence its induction
      prediction, is unambiguous. With `max_gap` G > 0: `[BOS, f.., x_1..x_L, f..,
      x_1..x_{L-1}]` with g ~ U{0..G} filler tokens between the copies and G - g before
      the first, fillers drawn from the tokens not among the `x_i`.
    - corrupted: `[BOS, y_1..y_L, z_1..z_{L-1}]`, all fresh uniform tokens, so there is no
      repetition to copy from.
    - answer `x_L` at the last position; wrong: a uniformly random token other than the
      answer (the corrupted prompt has no answer to borrow).
    - targets: at the position of the repeated `x_j` (j = 1..L-1) the target is
      `x_{j+1}`; `IGNORE_INDEX` elsewhere (the first half cannot be predicted).
    """

    name = "induction"
    default_metric = "logit_diff"
    config_class: ClassVar[type[InductionConfig]] = InductionConfig

    def __init__(self, config: InductionConfig | dict[str, Any] | None = None, **fields: Any):
        self.config = resolve_config(InductionConfig, config, fields)
        self.d_vocab = self.config.d_vocab
        self.d_vocab_out = self.config.d_vocab
        self.offset = int(self.config.bos)
        self.n_ctx = 2 * self.config.half_len - 1 + self.config.max_gap + self.offset
        self.bos_token: int | None = self.config.d_vocab - 1 if self.config.bos else None

    @classmethod
    def from_config(
        cls, config: InductionConfig | dict[str, Any], tokenizer: Any = None
    ) -> Induction:
        """The task for `config`; a tokenizer is not used (the task has its own vocabulary)."""
        return cls(config)

    def _with_bos(self, tokens: Tensor) -> Tensor:
        if self.bos_token is None:
            return tokens
        bos = torch.full((tokens.shape[0], 1), self.bos_token, dtype=torch.long)
        return torch.cat([bos, tokens], dim=1)

    def _columns(self) -> dict[str, Tensor]:
        cfg = self.config
        n, length = cfg.n_examples, cfg.half_len
        n_tokens = cfg.d_vocab - self.offset
        generator = torch.Generator().manual_seed(cfg.seed)
        order = torch.rand(n, n_tokens, generator=generator).argsort(dim=1)
        first = order[:, :length]
        noise = torch.randint(0, n_tokens, (n, 2 * length - 1 + cfg.max_gap), generator=generator)
        answer = first[:, -1]
        other = torch.randint(0, n_tokens - 1, (n,), generator=generator)
        wrong = other + (other >= answer).long()
        body = torch.cat([first, first[:, :-1]], dim=1)
        if cfg.max_gap:
            body = self._with_gaps(body, order[:, length:], generator)
        clean = self._with_bos(body)
        targets = torch.full_like(clean, IGNORE_INDEX)
        targets[:, -(length - 1) :] = first[:, 1:]
        return {
            "clean": clean,
            "corrupted": self._with_bos(noise),
            "answer": answer,
            "wrong": wrong,
            "position": torch.full((n,), self.n_ctx - 1, dtype=torch.long),
            "targets": targets,
        }

    def _with_gaps(self, body: Tensor, fillers: Tensor, generator: torch.Generator) -> Tensor:
        """`body` = both copies `[n, 2L - 1]` with G fillers placed: g ~ U{0..G} between
        the copies and G - g before the first, drawn from `fillers` (tokens not in x)."""
        n, length, max_gap = body.shape[0], self.config.half_len, self.config.max_gap
        gaps = torch.randint(0, max_gap + 1, (n,), generator=generator)
        picks = torch.randint(0, fillers.shape[1], (n, max_gap), generator=generator)
        filler = fillers.gather(1, picks)
        rows = []
        for i in range(n):
            before, between = max_gap - int(gaps[i]), int(gaps[i])
            rows.append(
                torch.cat(
                    [
                        filler[i, :before],
                        body[i, :length],
                        filler[i, before : before + between],
                        body[i, length:],
                    ]
                )
            )
        return torch.stack(rows)

    def examples(self) -> datasets.Dataset:
        """Columns clean, corrupted, answer, wrong, position and targets."""
        return datasets.Dataset.from_dict({k: v.tolist() for k, v in self._columns().items()})

    def batch(self) -> TaskBatch:
        """All examples as one batch (built directly, without the dataset)."""
        return TaskBatch(**self._columns())
