"""Train a model on a task (experiment kind `train`), leaving a checkpoint others load.

The loss is next-token cross-entropy on the task's `targets` where the task gives them
(e.g. the repeated half of induction sequences), else on the answer at the metric's
position (e.g. `c` in `a op b = c`). AdamW with linear warm-up; evaluation on a held-out
split every `eval_every` steps, logged to the run's `metrics.jsonl`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from torch import Tensor
from tqdm.auto import tqdm

from interp import models
from interp.experiments import ExperimentConfig, ExperimentKind, RunContext
from interp.metrics import accuracy, logits_at
from interp.model_checks import check_model_and_task, task_misfit
from interp.model_refs import ModelRef, resolve_model_and_task
from interp.runs import Run
from interp.tasks import AnyTaskConfig
from interp.tasks.base import IGNORE_INDEX, Task, TaskBatch
from interp.validation import Beta

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class TrainSettings(BaseModel):
    """Optimisation settings.

    Attributes:
        steps: Optimiser steps.
        batch_size: Examples per step; None trains full-batch.
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        betas: AdamW's betas, each in [0, 1).
        warmup_steps: Linear warm-up from 0 to `lr`.
        grad_clip: Clip the gradient norm to this value; None for no clipping.
        eval_every: Steps between evaluations (and log lines).
        eval_fraction: Share of examples held out for evaluation, for tasks without a
            train/test split of their own.
        stop_eval_loss: Stop early once the held-out loss falls below this.
        checkpoint_every: Steps between checkpoints; the final model is always saved.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=1000, ge=1)
    batch_size: int | None = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    warmup_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    eval_every: int = Field(default=100, ge=1)
    eval_fraction: float = Field(default=0.1, gt=0, lt=1)
    stop_eval_loss: float | None = Field(default=None, gt=0)
    checkpoint_every: int | None = Field(default=None, ge=1)


class TrainConfig(ExperimentConfig):
    """A `train` experiment: a model, a task and optimisation settings."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = "train"
    model: ModelRef
    task: AnyTaskConfig
    train: TrainSettings = Field(default_factory=TrainSettings)

    @model_validator(mode="after")
    def _model_fits_task(self, info: ValidationInfo) -> TrainConfig:
        """The model fits the task (`interp.model_checks.check_model_and_task`, shared by
        every kind that pairs a model with a task)."""
        check_model_and_task(self.model, self.task, info)
        return self


@dataclass
class TrainResult:
    """What training produced.

    Attributes:
        steps: Optimiser steps taken.
        history: One dict per evaluation (step, train_loss, eval_loss, eval_accuracy).
        summary: The headline numbers (final losses and accuracy).
    """

    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


def task_loss(logits: Tensor, batch: TaskBatch) -> Tensor:
    """Mean cross-entropy on `batch.targets`, or on `batch.answer` at `batch.position`."""
    if batch.targets is not None:
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            batch.targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
    return F.cross_entropy(logits_at(logits, batch.position), batch.answer)


def train_eval_split(task: Task, fraction: float, seed: int) -> tuple[TaskBatch, TaskBatch]:
    """The task's own split when it has one (modular arithmetic), else a random one."""
    own_split = getattr(task, "train_test", None)
    if callable(own_split) and getattr(getattr(task, "config", None), "frac_train", None):
        return own_split()
    return task.batch().split(1.0 - fraction, seed)


@torch.no_grad()
def evaluate(model: TransformerBridge, batch: TaskBatch, chunk: int = 512) -> dict[str, float]:
    """Loss and answer accuracy of `model` on `batch`, in chunks to bound memory."""
    total_loss, total_acc, count = 0.0, 0.0, 0
    for part in batch.chunks(chunk):
        logits = model(part.clean)
        total_loss += task_loss(logits, part).item() * len(part)
        total_acc += accuracy(logits, part).sum().item()
        count += len(part)
    return {"loss": total_loss / count, "accuracy": total_acc / count}


def _check_fits(model: TransformerBridge, task: Task) -> None:
    misfit = task_misfit(*models.model_sizes(model.cfg), task)
    if misfit:
        raise ValueError(misfit)


def train(
    model: TransformerBridge,
    task: Task,
    settings: TrainSettings,
    seed: int = 0,
    run: Run | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` in place on `task`; log evaluations to `run` when given."""
    _check_fits(model, task)
    device = next(model.parameters()).device
    train_set, eval_set = train_eval_split(task, settings.eval_fraction, seed)
    train_set, eval_set = train_set.to(device), eval_set.to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        betas=settings.betas,
    )
    warmup = settings.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    result = TrainResult(steps=0)
    model.train()
    bar = tqdm(range(1, settings.steps + 1), desc=f"train {task.name}", disable=not progress)
    for step in bar:
        batch = _sample(train_set, settings.batch_size, generator)
        loss = task_loss(model(batch.clean), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        result.steps = step
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
        if step % settings.eval_every and step != settings.steps:
            continue
        record = _evaluate_step(model, step, loss.item(), train_set, eval_set, optimizer)
        result.history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", eval=f"{record['eval_loss']:.3f}")
        if run is not None:
            run.log(step, **{k: v for k, v in record.items() if k != "step"})
            if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                models.save(model, run.artifacts_dir / "model")
        if settings.stop_eval_loss is not None and record["eval_loss"] < settings.stop_eval_loss:
            break
    model.eval()
    final = result.history[-1]
    result.summary = {
        "steps": result.steps,
        "final_train_loss": final["train_full_loss"],
        "final_train_accuracy": final["train_accuracy"],
        "final_eval_loss": final["eval_loss"],
        "final_eval_accuracy": final["eval_accuracy"],
    }
    return result


def _evaluate_step(
    model: TransformerBridge,
    step: int,
    batch_loss: float,
    train_set: TaskBatch,
    eval_set: TaskBatch,
    optimizer: torch.optim.Optimizer,
) -> dict[str, float]:
    model.eval()
    on_train = evaluate(model, train_set)
    on_eval = evaluate(model, eval_set)
    model.train()
    return {
        "step": step,
        "train_loss": batch_loss,
        "train_full_loss": on_train["loss"],
        "train_accuracy": on_train["accuracy"],
        "eval_loss": on_eval["loss"],
        "eval_accuracy": on_eval["accuracy"],
        "lr": optimizer.param_groups[0]["lr"],
    }


def _sample(data: TaskBatch, batch_size: int | None, generator: torch.Generator) -> TaskBatch:
    if batch_size is None or batch_size >= len(data):
        return data
    index = torch.randint(len(data), (batch_size,), generator=generator)
    return data[index.to(data.clean.device)]


def run_train(config: TrainConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """The `train` kind: build or load the model, train it, save it as `artifacts/model`."""
    torch.manual_seed(config.seed)
    model, task = resolve_model_and_task(
        config.model, config.task, context.store, config.device, context.config_dir,
        reads_next_token=False,
    )
    result = train(model, task, config.train, config.seed, run=run, progress=context.progress)
    models.save(model, run.artifacts_dir / "model")
    n_params = sum(p.numel() for p in model.parameters())
    return {**result.summary, "n_params": n_params}


TRAIN = ExperimentKind(
    name="train",
    config_model=TrainConfig,
    run=run_train,
    description="train a model on a task; saves artifacts/model for other experiments",
    model_artifacts=lambda config: ("model",),
)
