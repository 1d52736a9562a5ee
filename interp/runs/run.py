"""One run folder as an object: its config and manifest, the metrics it logs, its summary,
its artifacts (tensors, tables, JSON) and its lifecycle (running -> done | failed).

torch is imported only inside the tensor methods, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import operator
import os
import socket
import traceback
from collections.abc import Mapping
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pandas as pd

from interp.atomic_io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    dumps_json,
    read_jsonl,
)
from interp.provenance import process_stat
from interp.runs.errors import CorruptRun, RunNotFound, one_line
from interp.runs.layout import (
    ARTIFACTS_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_RUNNING,
    SUMMARY_FILE,
    is_artifact_name,
    iso,
    parse_iso,
    utc_now,
)
from interp.runs.records import displayed_status, read_config, read_manifest, read_summary
from interp.runs.values import plain_metric

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Run"]


class Run:
    """One run folder: its config, manifest, metrics, summary and artifacts.

    Make one with `RunStore.create` (a new run, status "running") or `RunStore.load`.
    Used as a context manager, a run is marked "done" on normal exit and "failed" (with the
    error's message and traceback in manifest.json) when an exception escapes; the
    exception is re-raised.

    Attributes:
        path: The run folder.
        experiment: Name of the experiment folder the run is in.
        run_id: Name of the run folder.
        config: The resolved config, as read from config.yaml.
        manifest: The manifest (kept in sync with manifest.json by this object's writes).
        artifacts_dir: `path / "artifacts"`.
    """

    def __init__(self, path: Path, config: dict[str, Any], manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.experiment = self.path.parent.name
        self.run_id = self.path.name
        self.config = config
        self.manifest = manifest
        self.artifacts_dir = self.path / ARTIFACTS_DIR
        self._metrics_line_checked = False

    @classmethod
    def open(cls, path: str | os.PathLike[str] | Run) -> Run:
        """Read an existing run folder (a `Run` is returned as it is, so that functions
        taking "a run or its folder" start with `run = Run.open(run)`). Raises CorruptRun
        if its manifest or config is bad."""
        if isinstance(path, Run):
            return path
        run_dir = Path(path)
        if not run_dir.is_dir():
            raise RunNotFound(f"no run folder at {run_dir}")
        try:
            manifest = read_manifest(run_dir)
            config = read_config(run_dir)
        except CorruptRun as error:
            raise CorruptRun(f"run {run_dir} is corrupt: {error}") from None
        return cls(run_dir, config=config, manifest=manifest)

    def __repr__(self) -> str:
        return f"Run({self.ref!r}, kind={self.kind!r}, status={self.status!r})"

    @property
    def ref(self) -> str:
        """"experiment/run_id", the reference `RunStore.load` accepts."""
        return f"{self.experiment}/{self.run_id}"

    @property
    def kind(self) -> str | None:
        return self.manifest.get("kind")

    @property
    def status(self) -> str:
        """running | done | failed, or "died"/"resumable" for a run whose process is gone."""
        return displayed_status(self.manifest)

    @property
    def summary(self) -> dict[str, Any]:
        """Contents of summary.json ({} before `write_summary`)."""
        return read_summary(self.path)

    # -- the context manager

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        clean_exit = exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None))
        if clean_exit:
            if self.manifest.get("status") == STATUS_RUNNING:
                self.finish()
        else:
            self.fail(exc)
        return False

    # -- status

    def update_manifest(self, **fields: Any) -> None:
        """Set manifest fields (e.g. `resumable=True`) and rewrite manifest.json atomically."""
        self.manifest.update(fields)
        atomic_write_json(self.path / MANIFEST_FILE, self.manifest)

    def finish(self, status: str = STATUS_DONE) -> None:
        """Mark the run ended with `status` ("done" or "failed")."""
        if status not in (STATUS_DONE, STATUS_FAILED):
            raise ValueError(f"finish(status=...) must be 'done' or 'failed', got {status!r}")
        ended = utc_now()
        started = parse_iso(self.manifest.get("started"))
        duration = (ended - started).total_seconds() if started else None
        self.update_manifest(status=status, ended=iso(ended), duration_s=duration)

    def reopen(self) -> None:
        """Mark a died, failed or interrupted run as running again in this process, so its
        kind can resume it from its last checkpoint. The manifest lists when it resumed."""
        stat = process_stat(os.getpid())
        self.update_manifest(
            status=STATUS_RUNNING,
            ended=None,
            duration_s=None,
            error=None,
            traceback=None,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            process_start_ticks=stat[1] if stat else None,
            resumed=[*self.manifest.get("resumed", []), iso(utc_now())],
        )

    def truncate_metrics(self, last_step: int) -> None:
        """Drop the metrics.jsonl lines logged after `last_step` (an atomic rewrite), so a
        run resumed from a checkpoint at `last_step` does not log those steps twice."""
        rows = [row for row in read_jsonl(self.path / METRICS_FILE) if row["step"] <= last_step]
        text = "".join(dumps_json(row, where=f"{METRICS_FILE} line") + "\n" for row in rows)
        atomic_write_text(self.path / METRICS_FILE, text)
        self._metrics_line_checked = True

    def fail(self, error: BaseException | str) -> None:
        """Mark the run failed with the error's one-line message (and traceback if any).

        A KeyboardInterrupt is recorded as the message "interrupted".
        """
        trace: str | None = None
        if isinstance(error, BaseException):
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        message = "interrupted" if isinstance(error, KeyboardInterrupt) else one_line(error)
        self.manifest.update(error=message, traceback=trace)
        self.finish(STATUS_FAILED)

    # -- metrics and summary

    def log(self, step: int, **values: Any) -> None:
        """Append one line {"step": step, "time": unix seconds, **values} to metrics.jsonl.

        Values are numbers, strings, None or (nested) lists; tensors and numpy values are
        converted with .tolist() (a 0-d tensor becomes a number). The line is flushed.
        """
        if isinstance(step, bool):
            raise ValueError(f"log(): step must be an integer, got {step!r}")
        try:
            step = operator.index(step)
        except TypeError:
            raise ValueError(f"log(): step must be an integer, got {step!r}") from None
        if "time" in values:
            raise ValueError("log(): 'time' is reserved (it is filled in with the log time)")
        row: dict[str, Any] = {"step": step, "time": utc_now().timestamp()}
        row.update({key: plain_metric(value, key) for key, value in values.items()})
        line = dumps_json(row, where=f"{METRICS_FILE} line") + "\n"
        path = self.path / METRICS_FILE
        with open(path, "a+b") as handle:
            if not self._metrics_line_checked:
                # After a crash mid-line, start on a fresh line so only that line is lost.
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        handle.write(b"\n")
                self._metrics_line_checked = True
            handle.write(line.encode("utf-8"))
            handle.flush()

    def metrics(self) -> pd.DataFrame:
        """metrics.jsonl as a DataFrame, one row per `log` call (columns step, time, ...)."""
        rows = read_jsonl(self.path / METRICS_FILE)
        if not rows:
            return pd.DataFrame({"step": pd.Series(dtype="int64"), "time": pd.Series(dtype=float)})
        frame = pd.DataFrame.from_records(rows)
        leading = [name for name in ("step", "time") if name in frame.columns]
        return frame[leading + [c for c in frame.columns if c not in leading]]

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Atomically (re)write summary.json: the run's headline numbers."""
        if not isinstance(summary, Mapping):
            raise ValueError(f"write_summary() takes a dict, got {type(summary).__name__}")
        atomic_write_json(self.path / SUMMARY_FILE, dict(summary))

    # -- artifacts

    def artifact_path(self, name: str) -> Path:
        """`artifacts/<name>` (subfolders allowed, e.g. "checkpoints/step_100.safetensors").

        The parent folder is created so the caller can write there.
        """
        if not is_artifact_name(name):
            raise ValueError(
                "artifact names are letters, digits, '_', '-', '.' and '/' between parts, "
                f"not starting with '.'; got {name!r}"
            )
        path = self.artifacts_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _artifact(self, name: str, suffix: str) -> Path:
        return self.artifact_path(name if name.endswith(suffix) else name + suffix)

    def _existing_artifact(self, name: str, suffix: str) -> Path:
        path = self._artifact(name, suffix)
        if not path.exists():
            raise FileNotFoundError(f"run {self.ref} has no artifact {path.name!r} ({path})")
        return path

    def save_tensors(
        self,
        name: str,
        tensors: Mapping[str, Tensor],
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Save named tensors as `artifacts/<name>.safetensors` (contiguous CPU copies)."""
        import torch
        from safetensors.torch import save as safetensors_bytes

        prepared: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for key, tensor in tensors.items():
            if not isinstance(key, str):
                raise ValueError(f"save_tensors({name!r}): keys must be strings, got {key!r}")
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(
                    f"save_tensors({name!r}): {key!r} is a {type(tensor).__name__}, "
                    "not a torch.Tensor"
                )
            copy = tensor.detach().to("cpu").contiguous()
            if copy.numel() and copy.untyped_storage().data_ptr() in storages:
                copy = copy.clone()  # safetensors refuses tensors that share memory
            if copy.numel():
                storages.add(copy.untyped_storage().data_ptr())
            prepared[key] = copy
        meta = {str(k): str(v) for k, v in (metadata or {}).items()} or None
        path = self._artifact(name, ".safetensors")
        atomic_write_bytes(path, safetensors_bytes(prepared, metadata=meta))
        return path

    def load_tensors(self, name: str) -> dict[str, Tensor]:
        """The tensors saved by `save_tensors(name, ...)`, on CPU."""
        from safetensors.torch import load_file

        return load_file(self._existing_artifact(name, ".safetensors"), device="cpu")

    def save_table(self, name: str, table: pd.DataFrame) -> Path:
        """Save a DataFrame as `artifacts/<name>.parquet`, or .csv if parquet cannot hold it."""
        if not isinstance(table, pd.DataFrame):
            raise ValueError(f"save_table({name!r}) takes a DataFrame, got {type(table).__name__}")
        parquet = self._artifact(name, ".parquet")
        csv = self._artifact(name.removesuffix(".parquet"), ".csv")
        buffer = BytesIO()
        try:
            table.to_parquet(buffer)
        except (ImportError, ValueError, TypeError, NotImplementedError):
            frame = table if isinstance(table.index, pd.RangeIndex) else table.reset_index()
            atomic_write_text(csv, frame.to_csv(index=False))
            parquet.unlink(missing_ok=True)
            return csv
        atomic_write_bytes(parquet, buffer.getvalue())
        csv.unlink(missing_ok=True)
        return parquet

    def load_table(self, name: str) -> pd.DataFrame:
        """The DataFrame saved by `save_table(name, ...)` (parquet, else csv)."""
        stem = name.removesuffix(".parquet").removesuffix(".csv")
        parquet = self._artifact(stem, ".parquet")
        if parquet.exists():
            return pd.read_parquet(parquet)
        return pd.read_csv(self._existing_artifact(stem, ".csv"))

    def save_json(self, name: str, obj: Any) -> Path:
        """Atomically save `obj` as `artifacts/<name>.json`."""
        path = self._artifact(name, ".json")
        atomic_write_json(path, obj)
        return path

    def load_json(self, name: str) -> Any:
        """The object saved by `save_json(name, ...)`."""
        return json.loads(self._existing_artifact(name, ".json").read_text(encoding="utf-8"))
