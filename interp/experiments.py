"""Experiment kinds: what `interp run` can run, found through entry points.

A package declares its kinds in pyproject.toml:

    [project.entry-points."interp.experiments"]
    train = "interp.training:TRAIN"

Each entry point names an `ExperimentKind`: a config model (pydantic, validated before
anything runs) and a function that runs one validated config into one run folder and
returns its summary. The core never imports the packages built on it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from interp.runs import Run, RunStore
from interp.validation import Seed

ENTRY_POINT_GROUP = "interp.experiments"

STORE_KEY = "store"
"""Key of the pydantic validation context holding the `RunStore` that a config's
`{run: X}` references must resolve in (None: not checked; see `interp.config`)."""
PENDING_KEY = "pending"
"""Key of the validation context holding the suite members validated so far, by experiment
name (their resolved configs as dicts): runs that exist by the time a later member runs."""


class ExperimentConfig(BaseModel):
    """Keys every experiment config has. Kinds subclass this and add their own.

    Attributes:
        kind: Which experiment kind runs the config.
        name: The experiment's name in the run store (default: the config file's stem):
            letters, digits, '_', '-' and '.', not starting with '.' (as the store takes).
        seed: Seed of everything random in the run.
        device: "auto" (CUDA when present), "cpu" or "cuda[:i]".
        description: What the experiment does, in a sentence.
        reproduces: The published result it reproduces, if any.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")
    seed: Seed = 0
    device: str = "auto"
    description: str = ""
    reproduces: str = ""

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
            raise ValueError(f"{device!r} is not a device; use auto, cpu, cuda or cuda:N")
        return device


@dataclass(frozen=True)
class RunContext:
    """What a kind's runner gets besides its config: the store (to find other runs'
    checkpoints) and where the config came from (to resolve relative paths)."""

    store: RunStore
    config_dir: Path
    progress: bool = True


Runner = Callable[[Any, Run, RunContext], dict[str, Any]]


@dataclass(frozen=True)
class ExperimentKind:
    """One kind of experiment.

    Attributes:
        name: The value of `kind:` in a config.
        config_model: The pydantic model that validates the whole config.
        run: Runs a validated config into a run folder; returns the summary numbers.
        description: One line for `interp kinds`.
        resume: Continues a stopped run of this kind from its last checkpoint (same
            signature as `run`; the run folder is the stopped run's), or None when the
            kind cannot resume.
        model_artifacts: The artifact folders a run of this kind saves models in, from
            its config as a dict (`()`: it saves none), so that a suite member's
            `{run: X, artifact: A}` naming an earlier member is checked before anything
            runs; None (the default) when unknown, which checks nothing.
    """

    name: str
    config_model: type[ExperimentConfig]
    run: Runner
    description: str = ""
    resume: Runner | None = None
    model_artifacts: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None


def saves_no_model(config: Mapping[str, Any]) -> tuple[str, ...]:
    """`ExperimentKind.model_artifacts` of a kind whose runs save no model."""
    return ()


class KindRegistry(Mapping[str, ExperimentKind]):
    """The experiment kinds declared through the `interp.experiments` entry points, by name.

    The names come from the package metadata; a kind's module is imported only when that
    kind is looked up (the modules pull in torch and the analysis engines, so validating
    one config imports one kind). A kind whose module fails to import raises, on lookup,
    a one-line `KindLoadError`; iterating over the values skips it with a warning.
    """

    def __init__(self) -> None:
        self._entries = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
        self._loaded: dict[str, ExperimentKind] = {}

    def __getitem__(self, name: str) -> ExperimentKind:
        if name in self._loaded:
            return self._loaded[name]
        entry = self._entries[name]
        try:
            kind = entry.load()
        except ImportError as error:
            raise KindLoadError(
                f"experiment kind {name!r} could not be loaded: {error}"
            ) from error
        if not isinstance(kind, ExperimentKind):
            raise TypeError(f"entry point {name!r} ({entry.value}) is not an ExperimentKind")
        if kind.name != name:
            raise TypeError(f"entry point {name!r} names a kind called {kind.name!r}")
        self._loaded[name] = kind
        return kind

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def loadable(self) -> dict[str, ExperimentKind]:
        """Every kind that imports, by name; one that fails is skipped with a warning (one
        broken kind must not take the others down)."""
        kinds: dict[str, ExperimentKind] = {}
        for name in self._entries:
            try:
                kinds[name] = self[name]
            except KindLoadError as error:
                warnings.warn(str(error), stacklevel=2)
        return kinds


class KindLoadError(ImportError):
    """An experiment kind's module failed to import (a missing optional dependency)."""


def load_kinds() -> KindRegistry:
    """The experiment kinds declared through the `interp.experiments` entry points; each is
    imported when first looked up (see `KindRegistry`)."""
    return KindRegistry()
