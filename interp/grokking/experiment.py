"""Experiment kind `grokking`: train S models on `a op b =` mod p until they grok.

The setup of Nanda et al. 2023 ("Progress measures for grokking via mechanistic
interpretability"): a one-layer transformer, a fraction of all p*p pairs for training
(split with the task's own seed), full-batch AdamW with warm-up, a fixed number of epochs
or a stop once test accuracy has held above a level. Only modular addition (`op: "+"`,
p >= 3) is accepted: the progress measures are defined for it.

Every `log_every` epochs each model logs train/test loss and accuracy and its weight norm
to `metrics.jsonl` (one line per model, with its `seed`); every `progress_every` epochs
(a multiple of `log_every`) also the progress measures of that checkpoint, with the key
frequencies picked from that checkpoint's own weights: `key_frequencies`,
`restricted_loss_own_keys`, `excluded_loss_own_keys`, the Gini coefficients and the weight
norms. (Their own train and test loss are not logged: the trainer's, under `train_loss`
and `test_loss`, are the same float64 cross-entropy.)

The paper's restricted and excluded loss (figure 6) fix the key frequencies from the
*final* model and evaluate every checkpoint with them. So, once training ends, each model's
final key frequencies are used on every weight snapshot the run saved (`progress_measures(
..., key_freqs=final)`), and the results go to `artifacts/progress.jsonl`, one line per
(snapshot epoch, seed): `step`, `seed`, `restricted_loss`, `excluded_loss`. The summary's
`epoch_restricted_loss_below_1` is read from those. The snapshots are read back from disk,
not kept in memory: a snapshot costs S x n_params x 4 bytes of disk per saved epoch (about
0.9 MB per model at p = 113, d_model = 128), and the final pass one progress-measures
evaluation per snapshot and model (a forward pass over the p*p pairs). With
`progress_every: 0` there are no progress measures over training and no final pass.

Checkpoints every `checkpoint_every` epochs: `artifacts/checkpoints/state.safetensors`
(everything needed to resume bit for bit) and `artifacts/checkpoints/epoch_XXXXXX` (each
model's weights at that epoch, for the dashboard's Fourier spectrum and the final pass);
the weights alone are also saved every `progress_every` epochs. `interp resume RUN`
continues a stopped run from its last checkpoint and ends with the same metrics as a run
never stopped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm

from interp import functional, models
from interp.atomic_io import atomic_write_text, dumps_json, read_jsonl
from interp.experiments import ExperimentConfig, ExperimentKind, RunContext
from interp.grokking.progress import progress_measures
from interp.grokking.summary import summarise
from interp.grokking.trainer import GrokfastSettings, OptimSettings, StackedTrainer
from interp.runs import Run
from interp.tasks.modular import ModularArithmetic, ModularConfig
from interp.validation import Seed

STATE_ARTIFACT = "checkpoints/state"
SNAPSHOT_ARTIFACT = "checkpoints/epoch_{epoch:06d}"
"""Each model's weights at an epoch, under `seed_<s>/<parameter name>`."""
PROGRESS_ARTIFACT = "progress.jsonl"
"""Restricted and excluded loss of every snapshot with the final key frequencies."""
FINAL_KEY_MEASURES = ("restricted_loss", "excluded_loss")
"""The progress measures that depend on the key frequencies."""
OWN_KEYS_SUFFIX = "_own_keys"
"""Suffix of the running measures logged with each checkpoint's own key frequencies."""
DUPLICATED_LOSSES = ("train_loss", "test_loss")
"""Progress-measure losses not logged: the trainer logs the same quantities by name."""

_SNAPSHOT_FILE = re.compile(r"epoch_(\d+)\.safetensors")


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
    seeds: list[Seed] | None = Field(default=None, min_length=1)
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

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        repeated = sorted({s for s in seeds or [] if (seeds or []).count(s) > 1})
        if repeated:
            raise ValueError(
                f"seeds {seeds} repeat {repeated}: each model needs its own seed "
                "(its outputs are stored by seed)"
            )
        return seeds

    @field_validator("task")
    @classmethod
    def _modular_addition(cls, task: ModularConfig) -> ModularConfig:
        if task.op != "+":
            raise ValueError(
                f"op={task.op!r} is not supported: the progress measures (Nanda et al. 2023) "
                "are defined for modular addition, op '+'"
            )
        if task.p < 3:
            raise ValueError(f"p={task.p} is too small: the progress measures need p >= 3")
        return task

    @model_validator(mode="after")
    def _check_shapes(self) -> GrokkingConfig:
        p = self.task.p
        if self.task.frac_train is None:
            raise ValueError("task.frac_train is required: grokking trains on a fraction of pairs")
        if self.progress_every % self.log_every:
            raise ValueError(
                f"progress_every={self.progress_every} must be a multiple of "
                f"log_every={self.log_every} (measures are taken at logged epochs), or 0"
            )
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


def snapshot_epochs(run: Run) -> list[int]:
    """The epochs with a weight snapshot `artifacts/checkpoints/epoch_XXXXXX`, ascending."""
    folder = run.artifacts_dir / "checkpoints"
    if not folder.is_dir():
        return []
    matches = (_SNAPSHOT_FILE.fullmatch(path.name) for path in folder.iterdir())
    return sorted(int(match.group(1)) for match in matches if match)


def drop_snapshots_after(run: Run, epoch: int) -> None:
    """Delete the weight snapshots saved after `epoch` (by a run stopped past its last
    checkpoint), as `Run.truncate_metrics` drops the lines logged after it."""
    for later in snapshot_epochs(run):
        if later > epoch:
            run.artifact_path(SNAPSHOT_ARTIFACT.format(epoch=later) + ".safetensors").unlink()


def seed_params(snapshot: Mapping[str, torch.Tensor], seed: int) -> functional.Params:
    """One model's parameters from a snapshot's `seed_<s>/<name>` tensors."""
    prefix = f"seed_{seed}/"
    params = {k.removeprefix(prefix): v for k, v in snapshot.items() if k.startswith(prefix)}
    if not params:
        raise ValueError(f"the snapshot holds no weights of seed {seed} (no {prefix!r} keys)")
    return params


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

    def is_progress_epoch(self, epoch: int) -> bool:
        every = self.config.progress_every
        return bool(every) and epoch % every == 0

    def final_measures(self, index: int) -> dict[str, Any]:
        """Progress measures of model `index` now, without the train and test loss (the
        trainer's are logged under those names). At the end of training the key
        frequencies picked from the model's own weights are the final ones."""
        functional.load_params(self.probe_model, self.trainer.model_params(index))
        values = progress_measures(self.probe_model, self.task, self.mask).as_dict()
        return {k: v for k, v in values.items() if k not in DUPLICATED_LOSSES}

    def measures(self, index: int) -> dict[str, Any]:
        """`final_measures` of model `index` now, for a metrics line: the key-frequency
        dependent ones named `..._own_keys`, since the key frequencies are this
        checkpoint's own, not the final model's."""
        return {
            f"{k}{OWN_KEYS_SUFFIX}" if k in FINAL_KEY_MEASURES else k: v
            for k, v in self.final_measures(index).items()
        }

    def log(self) -> float:
        """Log every model's numbers at this epoch; returns the lowest test accuracy."""
        trainer = self.trainer
        stats = trainer.evaluate()
        norms = trainer.weight_norms()
        with_progress = self.is_progress_epoch(trainer.epoch)
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

    def snapshot(self) -> None:
        """Save every model's weights at this epoch (`SNAPSHOT_ARTIFACT`)."""
        trainer = self.trainer
        weights = {
            f"seed_{seed}/{key}": value
            for index, seed in enumerate(trainer.seeds)
            for key, value in trainer.model_params(index).items()
        }
        self.run.save_tensors(SNAPSHOT_ARTIFACT.format(epoch=trainer.epoch), weights)

    def checkpoint(self) -> None:
        """A weight snapshot and the trainer's whole state (to resume from)."""
        self.snapshot()
        self.run.save_tensors(STATE_ARTIFACT, self.trainer.state_dict())

    def save_models(self) -> None:
        """Each model under `models/seed_<s>` (and model 0 under `model`), its
        model_spec.json recording its own seed."""
        built_from = self.probe_model.interp_spec
        try:
            for index, seed in enumerate(self.trainer.seeds):
                functional.load_params(self.probe_model, self.trainer.model_params(index))
                self.probe_model.interp_spec = self.trainer.model_spec(index)
                models.save(self.probe_model, self.run.artifacts_dir / "models" / f"seed_{seed}")
                if index == 0:
                    models.save(self.probe_model, self.run.artifacts_dir / "model")
        finally:
            self.probe_model.interp_spec = built_from

    def final_key_progress(self, final_keys: Mapping[int, list[int]]) -> list[dict[str, Any]]:
        """Restricted and excluded loss of every saved snapshot up to now, each model's
        with its final key frequencies (Nanda et al. 2023, section 5.1 and figure 6):
        one row {step, seed, restricted_loss, excluded_loss} per snapshot and model."""
        rows = []
        for epoch in snapshot_epochs(self.run):
            if epoch > self.trainer.epoch:
                continue
            snapshot = self.run.load_tensors(SNAPSHOT_ARTIFACT.format(epoch=epoch))
            for seed, keys in final_keys.items():
                functional.load_params(self.probe_model, seed_params(snapshot, seed))
                values = progress_measures(
                    self.probe_model, self.task, self.mask, key_freqs=keys
                ).as_dict()
                rows.append({"step": epoch, "seed": seed}
                            | {k: values[k] for k in FINAL_KEY_MEASURES})
        return rows


def write_progress(run: Run, rows: list[dict[str, Any]]) -> None:
    """Write `artifacts/progress.jsonl` (atomically), one JSON line per row."""
    text = "".join(dumps_json(row, where=f"{PROGRESS_ARTIFACT} line") + "\n" for row in rows)
    atomic_write_text(run.artifact_path(PROGRESS_ARTIFACT), text)


def read_progress(run: Run) -> pd.DataFrame:
    """`artifacts/progress.jsonl` as a DataFrame (no rows when the run has none)."""
    rows = read_jsonl(run.artifacts_dir / PROGRESS_ARTIFACT)
    return pd.DataFrame.from_records(rows, columns=["step", "seed", *FINAL_KEY_MEASURES])


def train_until_done(
    config: GrokkingConfig, run: Run, trainer: StackedTrainer, progress: bool
) -> dict[str, Any]:
    """Train from the trainer's current epoch to the end, evaluate the saved snapshots
    with the final key frequencies (`progress.jsonl`); returns the run's summary."""
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
        elif monitor.is_progress_epoch(epoch):
            monitor.snapshot()
    bar.close()
    monitor.checkpoint()
    monitor.save_models()
    final = {seed: monitor.final_measures(index) for index, seed in enumerate(trainer.seeds)}
    if config.progress_every:
        keys = {seed: list(values["key_frequencies"]) for seed, values in final.items()}
        write_progress(run, monitor.final_key_progress(keys))
    return summarise(run.metrics(), trainer.seeds, final, read_progress(run))


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
    drop_snapshots_after(run, trainer.epoch)
    return train_until_done(config, run, trainer, context.progress)


GROKKING = ExperimentKind(
    name="grokking",
    config_model=GrokkingConfig,
    run=run_grokking,
    resume=resume_grokking,
    description="train models on a op b = c mod p until they grok, with progress measures",
    model_artifacts=lambda config: (
        "model", *(f"models/seed_{s}" for s in config.get("seeds") or [config.get("seed", 0)])
    ),
)
