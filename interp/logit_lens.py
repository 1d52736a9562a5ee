"""The logit lens: read the residual stream before each block as if it were the last.

nostalgebraist 2020 ("interpreting GPT: the logit lens") passes the residual stream at
each depth through the model's own final norm (its statistics recomputed at that depth)
and unembedding, and asks how early the model's answer shows. Here it is read at the
position a task's metric reads (`TaskBatch.position`), per example, as three curves over
depth: the logit difference between the answer and the wrong token, the answer's
log-probability, and its rank among all tokens (0: the top token). The last stage is the
model's own output. With a tuned lens (`interp.tuned_lens`, Belrose et al. 2023) each
block's input is read through its learned translator first. The stages are named as
TransformerLens's `accumulated_resid` names them: `"{l}_pre"` for the stream entering
block l, `"final_post"` for the last block's output.

Runs on every model `interp.functional` covers (native models and the pretrained classes
of `functional.architecture_of`), with its forward pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp import functional
from interp.readout import functional_architecture, read_chunks
from interp.runs import Run
from interp.tasks.base import TaskBatch
from interp.tuned_lens import TunedLens
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class LogitLens:
    """The readout of the residual stream at each depth, per example.

    Attributes:
        stages: `"0_pre"`, ..., `"{n_layers - 1}_pre"`, `"final_post"`.
        logit_diff: Answer logit minus the wrong token's, `[example, stage]`.
        answer_logprob: The answer's log-probability, `[example, stage]`.
        answer_rank: How many tokens score above the answer, `[example, stage]`.
    """

    stages: tuple[str, ...]
    logit_diff: Float[Tensor, "example stage"]
    answer_logprob: Float[Tensor, "example stage"]
    answer_rank: Int[Tensor, "example stage"]

    def __post_init__(self) -> None:
        shape = (self.logit_diff.shape[0], len(self.stages))
        for name in ("logit_diff", "answer_logprob", "answer_rank"):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"LogitLens.{name} must be [example, stage] = {list(shape)}, "
                    f"got {list(getattr(self, name).shape)}"
                )

    def to_frame(self) -> pd.DataFrame:
        """One row per stage: `stage`, `depth` (0 = the embeddings), the means over
        examples of `logit_diff`, `answer_logprob` and `answer_rank`, and `top1` (the
        fraction of examples whose answer is the top token there)."""
        return pd.DataFrame({
            "stage": list(self.stages),
            "depth": list(range(len(self.stages))),
            "logit_diff": self.logit_diff.mean(dim=0).tolist(),
            "answer_logprob": self.answer_logprob.mean(dim=0).tolist(),
            "answer_rank": self.answer_rank.float().mean(dim=0).tolist(),
            "top1": (self.answer_rank == 0).float().mean(dim=0).tolist(),
        })

    def save(self, run: Run | str | os.PathLike[str], name: str = "logit_lens") -> None:
        """`artifacts/<name>.safetensors` (the three curves) and `<name>.json` (stages)."""
        run = Run.open(run)
        run.save_tensors(name, {"logit_diff": self.logit_diff,
                                "answer_logprob": self.answer_logprob,
                                "answer_rank": self.answer_rank})
        run.save_json(name, {"stages": list(self.stages)})

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "logit_lens") -> LogitLens:
        run = Run.open(run)
        tensors = run.load_tensors(name)
        return cls(tuple(run.load_json(name)["stages"]), tensors["logit_diff"],
                   tensors["answer_logprob"], tensors["answer_rank"])


def logit_lens(
    model: TransformerBridge,
    batch: TaskBatch,
    *,
    lens: TunedLens | None = None,
    max_batch: int = 32,
    progress: bool = False,
) -> LogitLens:
    """The logit lens of `model` on the clean prompts of `batch`, read at `batch.position`
    against `batch.answer` and `batch.wrong` (module docstring).

    Args:
        model: A native model or a pretrained one that `functional.architecture_of` covers.
        batch: The prompts and what to read.
        lens: A tuned lens (`interp.tuned_lens.train_tuned_lens`): each block's input is
            read through its translator (the tuned lens of Belrose et al. 2023).
        max_batch: Examples per forward pass.
        progress: Show a progress bar over the chunks.
    """
    check_positive_int("max_batch", max_batch)
    arch = functional_architecture(model, "the logit lens")
    TaskBatch.checked(batch, model)
    if lens is not None:
        lens.check_fits(arch)
    params = functional.live_params(model)
    batch = batch.to(params["embed.weight"].device)
    last = arch.n_layers - 1
    stages = (*(f"{layer}_pre" for layer in range(arch.n_layers)), "final_post")
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for rows, read in read_chunks(params, arch, batch, max_batch, "logit lens", progress):
        stream = torch.stack(
            [read(f"blocks.{layer}.hook_resid_pre") for layer in range(arch.n_layers)]
            + [read(f"blocks.{last}.hook_resid_post")]
        )  # [stage, b, d_model]
        if lens is not None:
            stream = lens.translate(stream)
        logits = functional.unembed(params, stream, arch).float()  # [stage, b, vocab]
        answer = logits.gather(-1, batch.answer[rows].expand(len(stages), -1)[..., None])
        wrong = logits.gather(-1, batch.wrong[rows].expand(len(stages), -1)[..., None])
        logprob = answer - logits.logsumexp(-1, keepdim=True)
        rank = (logits > answer).sum(-1)
        parts.append(((answer - wrong)[..., 0].T, logprob[..., 0].T, rank.T))
    logit_diff, logprob, rank = (torch.cat(column).cpu() for column in zip(*parts, strict=True))
    return LogitLens(stages, logit_diff, logprob, rank)
