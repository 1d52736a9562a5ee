"""`RunStore`: all runs under one root folder. Creates run folders atomically, lists them
(as `RunInfo`s or a table), loads one by reference, finds the latest and compares runs."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from interp.atomic_io import atomic_write_json, atomic_write_text, fsync_dir
from interp.provenance import git_state, package_versions, process_stat
from interp.runs.errors import RunExists, RunNotFound
from interp.runs.info import RunInfo, inspect_run_dir
from interp.runs.layout import (
    ARTIFACTS_DIR,
    CONFIG_FILE,
    MANIFEST_FILE,
    STATUS_DONE,
    STATUS_RUNNING,
    check_name,
    is_name,
    iso,
    new_run_id,
    utc_now,
)
from interp.runs.run import Run
from interp.runs.values import flatten_dict, plain_config

__all__ = ["TABLE_COLUMNS", "RunStore"]

TABLE_COLUMNS = (
    "experiment", "run_id", "kind", "status", "started", "ended", "duration_s", "seed",
)
"""Leading columns of `RunStore.table()`; summary columns follow, then error and path."""


class RunStore:
    """All runs under one root folder: `<root>/<experiment>/<run_id>/`.

    Attributes:
        root: The root folder (need not exist until the first `create`).
    """

    def __init__(self, root: str | os.PathLike[str] = "runs") -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # -- writing

    def create(
        self,
        experiment: str,
        kind: str,
        config: Mapping[str, Any] | Any,
        seed: int | None = None,
        run_id: str | None = None,
        device: str | None = None,
        resumable: bool = False,
        inputs: Mapping[str, Any] | None = None,
    ) -> Run:
        """Create a new run folder with its config.yaml and manifest.json (status "running").

        The folder is assembled under a hidden temporary name and renamed into place, so a
        listing never sees a half-made run. `config` is a dict (a pydantic model or a
        dataclass is converted). `inputs` records the runs this one reads (e.g. which run
        a `{run: X}` model reference resolved to: config path -> requested, run, artifact).
        Raises RunExists if `experiment/run_id` already exists.
        """
        check_name(experiment, "experiment name")
        check_name(kind, "run kind")
        run_id = new_run_id() if run_id is None else check_name(run_id, "run_id")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if device is not None and not isinstance(device, str):
            raise ValueError(f"device must be a string or None, got {device!r}")
        plain = plain_config(config, "config")
        plain_inputs = plain_config(dict(inputs or {}), "inputs")
        if not isinstance(plain, dict):
            raise ValueError(f"config must be a mapping, got {type(config).__name__}")
        config_text = yaml.safe_dump(plain, sort_keys=False)
        experiment_dir = self.root / experiment
        final = experiment_dir / run_id
        if final.exists():
            raise RunExists(f"run {experiment}/{run_id} already exists in {self.root}")
        experiment_dir.mkdir(parents=True, exist_ok=True)

        started = utc_now()
        stat = process_stat(os.getpid())
        manifest: dict[str, Any] = {
            "kind": kind,
            "experiment": experiment,
            "run_id": run_id,
            "status": STATUS_RUNNING,
            "started": iso(started),
            "ended": None,
            "duration_s": None,
            "seed": seed,
            "device": device,
            "resumable": bool(resumable),
            "error": None,
            "traceback": None,
            "python": platform.python_version(),
            "packages": package_versions(),
            "inputs": plain_inputs,
            **git_state(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "process_start_ticks": stat[1] if stat else None,
            "argv": list(sys.argv),
        }
        staging = Path(tempfile.mkdtemp(prefix=f".{run_id}.", suffix=".creating",
                                        dir=experiment_dir))
        try:
            (staging / ARTIFACTS_DIR).mkdir()
            atomic_write_text(staging / CONFIG_FILE, config_text)
            atomic_write_json(staging / MANIFEST_FILE, manifest)
            os.chmod(staging, 0o755)
            try:
                os.rename(staging, final)
            except OSError:
                if final.exists():
                    raise RunExists(
                        f"run {experiment}/{run_id} already exists in {self.root}"
                    ) from None
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(experiment_dir)
        return Run(final, config=plain, manifest=manifest)

    # -- reading

    def _run_dirs(self, experiment: str | None = None) -> Iterable[Path]:
        if experiment is not None:
            experiment_dirs = [self.root / check_name(experiment, "experiment name")]
        elif self.root.is_dir():
            experiment_dirs = sorted(self.root.iterdir())
        else:
            experiment_dirs = []
        for experiment_dir in experiment_dirs:
            if experiment_dir.name.startswith(".") or not experiment_dir.is_dir():
                continue
            for run_dir in sorted(experiment_dir.iterdir()):
                if not run_dir.name.startswith(".") and run_dir.is_dir():
                    yield run_dir

    def runs(self, experiment: str | None = None, kind: str | None = None) -> list[RunInfo]:
        """Every run folder (optionally of one experiment / kind), oldest first.

        Corrupt folders are listed with status "corrupt" and an error; they never stop the
        others from loading. A missing root gives [].
        """
        infos = [inspect_run_dir(run_dir) for run_dir in self._run_dirs(experiment)]
        if kind is not None:
            infos = [info for info in infos if info.kind == kind]
        return sorted(infos, key=lambda info: (info.started or "", info.experiment, info.run_id))

    def table(self, experiment: str | None = None, kind: str | None = None) -> pd.DataFrame:
        """One row per run: experiment, run_id, kind, status, started, ended (UTC datetimes),
        duration_s, seed, the scalar values of summary.json (flattened "a.b" keys), error, path.
        """
        rows = []
        for info in self.runs(experiment=experiment, kind=kind):
            row: dict[str, Any] = {name: getattr(info, name) for name in TABLE_COLUMNS}
            for key, value in flatten_dict(info.summary).items():
                if value is None or isinstance(value, (bool, int, float, str)):
                    row[f"summary.{key}" if key in _RESERVED_COLUMNS else key] = value
            row["error"] = info.error
            row["path"] = str(info.path)
            rows.append(row)
        frame = pd.DataFrame.from_records(rows, columns=_table_columns(rows))
        for name in ("started", "ended"):
            frame[name] = pd.to_datetime(frame[name], utc=True, errors="coerce", format="ISO8601")
        return frame

    def load(self, ref: str | os.PathLike[str] | Run) -> Run:
        """A run from "experiment/run_id", a bare run_id (unique in the store), or a path.

        Raises RunNotFound when nothing matches, ValueError when a bare run_id is ambiguous,
        CorruptRun when the folder's manifest or config cannot be read.
        """
        if isinstance(ref, Run):
            return ref
        text = os.fspath(ref)
        parts = text.strip("/").split("/")
        if len(parts) == 2 and all(map(is_name, parts)):
            candidate = self.root / parts[0] / parts[1]
            if candidate.is_dir():
                return Run.open(candidate)
        if len(parts) == 1 and is_name(text):
            matches = [path for path in self._run_dirs() if path.name == text]
            if len(matches) == 1:
                return Run.open(matches[0])
            if len(matches) > 1:
                names = ", ".join(f"{m.parent.name}/{m.name}" for m in matches)
                raise ValueError(f"run id {text!r} is ambiguous; use experiment/run_id: {names}")
        if text.strip() and Path(text).is_dir():
            return Run.open(text)
        raise RunNotFound(
            f"no run {text!r} in {self.root} (give experiment/run_id, a run id or a run folder)"
        )

    def latest(self, experiment: str, kind: str | None = None) -> Run | None:
        """The most recently started run of `experiment` with status "done", or None."""
        done = [i for i in self.runs(experiment=experiment, kind=kind) if i.status == STATUS_DONE]
        return Run.open(done[-1].path) if done else None

    def compare(
        self, refs: Iterable[str | os.PathLike[str]], only_differences: bool = False
    ) -> pd.DataFrame:
        """Configs and summaries of runs side by side: one column per run (named by its ref),
        one row per "kind", "status", "seed", "config.<flattened key>" and
        "summary.<flattened key>". With `only_differences`, rows equal across runs are dropped.
        """
        if isinstance(refs, str | os.PathLike):
            raise ValueError("compare takes a list of run refs, e.g. [\"exp/a\", \"exp/b\"]")
        columns: dict[str, dict[str, Any]] = {}
        for ref in refs:
            run = self.load(ref)
            values: dict[str, Any] = {
                "kind": run.kind,
                "status": run.status,
                "seed": run.manifest.get("seed"),
            }
            values.update({f"config.{k}": v for k, v in flatten_dict(run.config).items()})
            try:
                summary = run.summary
            except ValueError:
                summary = {}
            values.update({f"summary.{k}": v for k, v in flatten_dict(summary).items()})
            columns[run.ref] = values
        if not columns:
            raise ValueError("compare() needs at least one run reference")
        keys: dict[str, None] = {}
        for section in ("", "config.", "summary."):
            for values in columns.values():
                keys.update(dict.fromkeys(k for k in values if _section(k) == section))
        rows = {key: [values.get(key) for values in columns.values()] for key in keys}
        if only_differences and len(columns) > 1:
            rows = {k: row for k, row in rows.items() if len({_hashable(v) for v in row}) > 1}
        frame = pd.DataFrame(list(rows.values()), index=list(rows), columns=list(columns),
                             dtype=object)
        return frame.where(frame.notna(), None) if len(frame) else frame


_RESERVED_COLUMNS = frozenset(TABLE_COLUMNS) | {"error", "path"}


def _table_columns(rows: list[dict[str, Any]]) -> list[str]:
    summary_columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in _RESERVED_COLUMNS:
                summary_columns[key] = None
    return [*TABLE_COLUMNS, *summary_columns, "error", "path"]


def _section(key: str) -> str:
    """"config." or "summary." for a compare() row key, "" for the manifest rows."""
    head = key.split(".", 1)[0] + "."
    return head if head in ("config.", "summary.") and "." in key else ""


def _hashable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    try:
        hash(value)
    except TypeError:
        return json.dumps(value, sort_keys=True, default=repr)
    return value
