"""Run one validated experiment config into a new run folder of the store."""

from __future__ import annotations

from pathlib import Path

from interp.config import config_to_dict
from interp.experiments import ExperimentConfig, ExperimentKind, RunContext
from interp.model_refs import pin_checkpoints
from interp.models import resolve_device
from interp.runs import Run, RunStore


def execute(
    kind: ExperimentKind,
    config: ExperimentConfig,
    store: RunStore,
    config_dir: Path,
    progress: bool = True,
) -> Run:
    """Create the run, call the kind's runner, write its summary last.

    Every `{run: X}` reference is resolved before the run folder is created (a missing one
    raises a one-line `ModelLoadError` and creates nothing); the runner gets the config
    with each pinned to the run it resolved to, and the manifest's `inputs` records which
    (config.yaml keeps the config as written). The run is marked done only when the
    runner returns; an exception marks it failed (with the error and traceback in its
    manifest) and propagates.
    """
    device = str(resolve_device(config.device))
    pinned, inputs = pin_checkpoints(config, store)
    context = RunContext(store=store, config_dir=config_dir, progress=progress)
    with store.create(
        config.name or kind.name,
        kind.name,
        config_to_dict(config),
        seed=config.seed,
        device=device,
        resumable=kind.resume is not None,
        inputs=inputs,
    ) as run:
        summary = kind.run(pinned, run, context)
        run.write_summary(summary)
    return run


def resume(run: Run, store: RunStore, progress: bool = True) -> Run:
    """Continue a stopped run (died, failed or interrupted) from its last checkpoint."""
    from interp.config import validate_config
    from interp.experiments import load_kinds

    if run.status == "done":
        raise ValueError(f"run {run.ref} is done; there is nothing to resume")
    kind, config = validate_config(dict(run.config), f"{run.ref}/config.yaml", load_kinds())
    if kind.resume is None:
        raise ValueError(f"runs of kind {kind.name!r} cannot be resumed; start a new run")
    # the checkpoints the run started from, not newer runs of the same experiments
    pinned, _ = pin_checkpoints(config, store, recorded=run.manifest.get("inputs"))
    run.reopen()
    context = RunContext(store=store, config_dir=Path.cwd(), progress=progress)
    with run:
        summary = kind.resume(pinned, run, context)
        run.write_summary(summary)
    return run
