"""Experiment kind `lens`: train a tuned lens on a task's prompts and set it beside the
logit lens on held-out ones.

    kind: lens
    model: {run: induction_2l}          # a checkpoint, a native spec, or a hub name / folder
    task: {name: induction, d_vocab: 64, half_len: 16, n_examples: 256, seed: 1}
    held_out_seed: 2                    # the held-out prompts: the task drawn at this seed
    steps: 250                          # Adam steps of the translators (Belrose et al. 2023)
    lr: 0.001
    max_batch: 32                       # prompts per step
    log_every: 10

The lens trains on every position of the task's clean prompts up to each read position
(right padding left out, `interp.tuned_lens.counted_through`), the model frozen. Saved to the
run: `artifacts/tuned_lens.safetensors` (the translators, `TunedLens.load(run.artifacts_dir)`),
`artifacts/lens_divergence.parquet` (per stage: the mean KL divergence from the model's
output to the logit lens's and the tuned lens's readouts on the held-out prompts),
`artifacts/logit_lens.*` and `artifacts/tuned_lens_readout.*` (both lenses' readouts of the
held-out task's answer: `interp.logit_lens.LogitLens`, with tables), and `metrics.jsonl`
(the training loss every `log_every` steps). The summary holds both divergences per stage.
"""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field, ValidationInfo, model_validator

from interp import models
from interp.experiments import ExperimentConfig, ExperimentKind, RunContext, saves_no_model
from interp.logit_lens import logit_lens
from interp.model_checks import check_model_and_task
from interp.model_refs import ModelRef, resolve_model_and_task
from interp.runs import Run
from interp.tasks import AnyTaskConfig, make_task
from interp.tuned_lens import counted_through, lens_divergence, train_tuned_lens
from interp.validation import Seed

DIVERGENCE_TABLE = "lens_divergence"
TUNED_READOUT = "tuned_lens_readout"


class LensConfig(ExperimentConfig):
    """A `lens` experiment: which model, the task whose prompts train and test the lens,
    and the training settings."""

    kind: Literal["lens"] = "lens"
    model: ModelRef
    task: AnyTaskConfig
    held_out_seed: Seed | None = None
    steps: int = Field(default=250, ge=1)
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    max_batch: int = Field(default=32, ge=1)
    log_every: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _model_fits_task(self, info: ValidationInfo) -> LensConfig:
        check_model_and_task(self.model, self.task, info)
        if self.held_out_seed is not None and self.held_out_seed == self.task.seed:
            raise ValueError(
                f"held_out_seed {self.held_out_seed} is the task's own seed: the held-out "
                "prompts would be the training prompts"
            )
        return self

    def held_out_task(self) -> Any:
        """The task config of the held-out prompts (default seed: the task's + 1)."""
        seed = self.held_out_seed if self.held_out_seed is not None else self.task.seed + 1
        return self.task.model_copy(update={"seed": seed})


def run_lens(config: LensConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """Train the tuned lens, then measure both lenses on the held-out prompts."""
    torch.manual_seed(config.seed)
    model, task = resolve_model_and_task(
        config.model, config.task, context.store, config.device, context.config_dir
    )
    device = models.resolve_device(config.device)
    held_out = make_task(config.held_out_task(), tokenizer=getattr(model, "tokenizer", None))
    train_batch, test_batch = task.batch().to(device), held_out.batch().to(device)
    width = train_batch.clean.shape[1]

    def log(step: int, loss: float) -> None:
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            run.log(step + 1, train_loss=loss)

    lens = train_tuned_lens(
        model, train_batch.clean, counted=counted_through(train_batch.position, width),
        steps=config.steps, lr=config.lr, max_batch=config.max_batch, seed=config.seed,
        progress=context.progress, on_step=log,
    )
    counted = counted_through(test_batch.position, test_batch.clean.shape[1])
    logit_kl = lens_divergence(model, test_batch.clean, counted=counted)
    tuned_kl = lens_divergence(model, test_batch.clean, lens, counted=counted)
    logit_read = logit_lens(model, test_batch)
    tuned_read = logit_lens(model, test_batch, lens=lens)

    lens.save(run.artifacts_dir)
    stages = list(logit_read.stages)
    run.save_table(DIVERGENCE_TABLE, pd.DataFrame({
        "stage": stages, "depth": list(range(len(stages))),
        "logit_lens_kl": logit_kl.tolist(), "tuned_lens_kl": tuned_kl.tolist(),
    }))
    logit_frame, tuned_frame = logit_read.to_frame(), tuned_read.to_frame()
    logit_read.save(run)
    run.save_table("logit_lens", logit_frame)
    tuned_read.save(run, name=TUNED_READOUT)
    run.save_table(TUNED_READOUT, tuned_frame)
    return {
        "final_train_loss": lens.losses[-1],
        "first_train_loss": lens.losses[0],
        "logit_lens_kl": dict(zip(stages, logit_kl.tolist(), strict=True)),
        "tuned_lens_kl": dict(zip(stages, tuned_kl.tolist(), strict=True)),
        "tuned_lens_top1": dict(zip(stages, tuned_frame["top1"].tolist(), strict=True)),
        "logit_lens_top1": dict(zip(stages, logit_frame["top1"].tolist(), strict=True)),
    }


LENS = ExperimentKind(
    name="lens",
    config_model=LensConfig,
    run=run_lens,
    description="a tuned lens trained on a task's prompts, beside the logit lens on held-out ones",
    model_artifacts=saves_no_model,
)
