"""Experiment kind `grokking`: train S models on `a op b =` mod p until they grok.

The setup of Nanda et al. 2023 ("Progress measures for grokking via mechanistic
interpretability"): a one-layer transformer, a fraction of all p*p pairs for training
(split with the task's own seed), full-batch AdamW with warm-up, a fixed number of epochs
or a stop once test accuracy has held above a level. Every `log_every` epochs each model
logs train/test loss and accuracy and its weight norm to `metrics.jsonl` (one line per
model, with its `seed`); every `progress_every` epochs also the progress measures
(restricted and excluded loss, Gini of the Fourier norms, key frequencies).

Checkpoints every `checkpoint_every` epochs: `artifacts/checkpoints/state.safetensors`
(everything needed to resume bit for bit) and `artifacts/checkpoints/epoch_XXXXXX` (each
model's weights at that epoch, for the dashboard's Fourier spectrum). `interp resume RUN`
continues a stopped run from its last checkpoint and ends with the same metrics as a run
never stopped.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from interp import functional, models
from interp.experiments import ExperimentConfig, ExperimentKind, RunContext
from interp.grokking.progress import progress_measures
from interp.grokking.summary import summarise
from interp.grokking.trainer import GrokfastSettings, OptimSettings, StackedTrainer
from interp.runs import Run
from interp.tasks.modular import ModularArithmetic, ModularConfig

STATE_ARTIFACT = "checkpoints/state"


class StopSettings(BaseModel):
    """Stop once every model's test accuracy has held at or above `test_acc` for
    `hold_epochs` epochs (checked at log epochs)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    test_acc: float = Field(default=0.99, gt=0, le=1)
    hold_epochs: int = Field(default=1000, ge=0)


class GrokkingConfig(ExperimentConfig):
    """A `grokking` experiment. The model's vocabulary and context default to the task's
    (`d_vocab = p + 2`, `d_vocab_out = p`, `n_ctx = 4`), so `--set task.p=61` just works."""

    kind: Literal["grokking"] = "grokking"
    model: models.ModelSpec
    task: ModularConfig
    seeds: list[int] | None = Field(default=None, min_length=1)
    epochs: int = Field(default=40_000, ge=1)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    grokfast: GrokfastSettings = Field(default_factory=GrokfastSettings)
    stop: StopSettings = Field(default_factory=StopSettings)
    log_every: int = Field(default=100, ge=1)
    progress_every: int = Field(default=1000, ge=0)
    checkpoint_every: int = Field(default=5000, ge=1)
    cuda_graph: bool = False
    """Replay each training step as a captured CUDA graph (`StackedTrainer(cuda_graph=True)`)
    when the run is on CUDA; ignored on a CPU. Off by default until measured on a GPU."""

    @model_validator(mode="before")
    @classmethod
    def _model_fits_task(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        task, model = data.get("task"), data.get("model")
        if isinstance(task, dict) and isinstance(model, dict):
            p = task.get("p", ModularConfig.model_fields["p"].default)
            if isinstance(p, int):
                p = max(p, 2)  # a p below 2 is reported by task.p, not by the model's sizes
                defaults = {"d_vocab": p + 2, "d_vocab_out": p, "n_ctx": 4}
                data = {**data, "model": {**defaults, **model}}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> GrokkingConfig:
        p = self.task.p
        if self.task.frac_train is None:
            raise ValueError("task.frac_train is required: grokking trains on a fraction of pairs")
        if self.model.d_vocab < p + 2 or self.model.d_vocab_out < p or self.model.n_ctx < 4:
            raise ValueError(
                f"model (d_vocab={self.model.d_vocab}, d_vocab_out={self.model.d_vocab_out}, "
                f"n_ctx={self.model.n_ctx}) is too small for p={p}: it needs d_vocab >= {p + 2}, "
                f"d_vocab_out >= {p}, n_ctx >= 4"
            )
        return self

    @property
    def model_seeds(self) -> list[int]:
        """The seeds of the models trained together (default: the run's seed)."""
        return list(self.seeds) if self.seeds is not None else [self.seed]


def build_trainer(config: GrokkingConfig, task: ModularArithmetic) -> StackedTrainer:
    """The trainer for a config, at epoch 0."""
    train_set, test_set = task.train_test()
    device = models.resolve_device(config.device)
    return StackedTrainer(
        spec=config.model,
        seeds=config.model_seeds,
        train_set=train_set,
        test_set=test_set,
        optim=config.optim,
        grokfast=config.grokfast,
        device=device,
        cuda_graph=config.cuda_graph and device.type == "cuda",
    )


def train_mask(task: ModularArithmetic) -> torch.Tensor:
    """Bool `[p * p]`, True for the pairs in the training split (a-major order)."""
    batch = task.batch()
    train_index, _ = batch.split_indices(task.config.frac_train, task.config.seed)
    mask = torch.zeros(len(batch), dtype=torch.bool)
    mask[train_index] = True
    return mask


class _Monitor:
    """Logging, progress measures, checkpoints and the stop rule of one training run."""

    def __init__(self, config: GrokkingConfig, run: Run, trainer: StackedTrainer) -> None:
        self.config = config
        self.run = run
        self.trainer = trainer
        self.task = ModularArithmetic(config.task)
        self.mask = train_mask(self.task)
        self.probe_model = models.build(config.model, device=trainer.device)
        self.held_since: dict[int, int | None] = dict.fromkeys(trainer.seeds)
        for row in run.metrics().to_dict("records") if trainer.epoch else []:
            self._update_hold(int(row["seed"]), int(row["step"]), float(row["test_acc"]))

    def _update_hold(self, seed: int, epoch: int, test_acc: float) -> None:
        if test_acc >= self.config.stop.test_acc:
            self.held_since[seed] = self.held_since[seed] or epoch
        else:
            self.held_since[seed] = None

    def measures(self, index: int) -> dict[str, Any]:
        """Progress measures of model `index` now."""
        functional.load_params(self.probe_model, self.trainer.model_params(index))
        return progress_measures(self.probe_model, self.task, self.mask).as_dict()

    def log(self) -> float:
        """Log every model's numbers at this epoch; returns the lowest test accuracy."""
        trainer, every = self.trainer, self.config.progress_every
        stats = trainer.evaluate()
        norms = trainer.weight_norms()
        with_progress = bool(every) and trainer.epoch % every == 0
        for index, seed in enumerate(trainer.seeds):
            values = {
                "seed": seed,
                "train_loss": stats.train_loss[index].item(),
                "train_acc": stats.train_acc[index].item(),
                "test_loss": stats.test_loss[index].item(),
                "test_acc": stats.test_acc[index].item(),
                "weight_norm": norms[index].item(),
            }
            if with_progress:
                values.update(self.measures(index))
            self.run.log(trainer.epoch, **values)
            self._update_hold(seed, trainer.epoch, values["test_acc"])
        return stats.test_acc.min().item()

    def should_stop(self) -> bool:
        stop = self.config.stop
        if not stop.enabled:
            return False
        epoch = self.trainer.epoch
        return all(
            since is not None and epoch - since >= stop.hold_epochs
            for since in self.held_since.values()
        )

    def checkpoint(self) -> None:
        trainer = self.trainer
        snapshot = {
            f"seed_{seed}/{key}": value
            for index, seed in enumerate(trainer.seeds)
            for key, value in trainer.model_params(index).items()
        }
        self.run.save_tensors(f"checkpoints/epoch_{trainer.epoch:06d}", snapshot)
        self.run.save_tensors(STATE_ARTIFACT, trainer.state_dict())

    def save_models(self) -> None:
        for index, seed in enumerate(self.trainer.seeds):
            functional.load_params(self.probe_model, self.trainer.model_params(index))
            models.save(self.probe_model, self.run.artifacts_dir / "models" / f"seed_{seed}")
            if index == 0:
                models.save(self.probe_model, self.run.artifacts_dir / "model")


def train_until_done(
    config: GrokkingConfig, run: Run, trainer: StackedTrainer, progress: bool
) -> dict[str, Any]:
    """Train from the trainer's current epoch to the end; returns the run's summary."""
    monitor = _Monitor(config, run, trainer)
    bar = tqdm(
        total=config.epochs, initial=trainer.epoch, desc=f"grokking p={config.task.p}",
        disable=not progress,
    )
    while trainer.epoch < config.epochs:
        trainer.step()
        bar.update(1)
        epoch = trainer.epoch
        last = epoch == config.epochs
        if epoch % config.log_every == 0 or last:
            bar.set_postfix(min_test_acc=f"{monitor.log():.3f}")
            if monitor.should_stop():
                break
        if epoch % config.checkpoint_every == 0:
            monitor.checkpoint()
    bar.close()
    monitor.checkpoint()
    monitor.save_models()
    final = {seed: monitor.measures(index) for index, seed in enumerate(trainer.seeds)}
    return summarise(run.metrics(), trainer.seeds, final)


def run_grokking(config: GrokkingConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """The `grokking` kind: a fresh run."""
    task = ModularArithmetic(config.task)
    return train_until_done(config, run, build_trainer(config, task), context.progress)


def resume_grokking(config: GrokkingConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """Continue a stopped `grokking` run from `artifacts/checkpoints/state`."""
    task = ModularArithmetic(config.task)
    trainer = build_trainer(config, task)
    if run.artifact_path(f"{STATE_ARTIFACT}.safetensors").is_file():
        trainer.load_state_dict(run.load_tensors(STATE_ARTIFACT))
    run.truncate_metrics(trainer.epoch)
    return train_until_done(config, run, trainer, context.progress)


GROKKING = ExperimentKind(
    name="grokking",
    config_model=GrokkingConfig,
    run=run_grokking,
    resume=resume_grokking,
    description="train models on a op b = c mod p until they grok, with progress measures",
)
