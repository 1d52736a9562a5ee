"""The run store: one folder per run, every file written atomically.

Layout (see ARCHITECTURE.md)::

    <root>/<experiment>/<run_id>/
      config.yaml      the resolved config, exactly as run (yaml.safe_dump)
      manifest.json    kind, status, start/end, seed, package versions, git commit (and
                       whether the tree was dirty, with a hash of its diff), host, device,
                       inputs (the run each `{run: X}` reference resolved to)
      metrics.jsonl    one JSON object per `Run.log` call (append-only)
      summary.json     the headline numbers of the run (written last)
      artifacts/       tensors (.safetensors), tables (.parquet, or .csv), JSON

Every file except metrics.jsonl is written to a temporary name in the same folder, fsynced
and renamed over the target, so a crash never leaves half a file. metrics.jsonl is appended
one flushed line at a time; a truncated last line left by a crash is skipped when read.
Nothing in a run folder is ever unpickled: tensors are safetensors, tables parquet or csv.

This package imports neither torch nor any training code at import time, so the dashboard
can read runs cheaply; torch is imported only by the tensor methods.

Typical use::

    store = RunStore("runs")
    with store.create("grokking", kind="train", config=cfg, seed=0) as run:
        for step in range(n_steps):
            run.log(step, loss=loss)
        run.save_tensors("weights", {"W_E": W_E})
        run.write_summary({"test_acc": 0.99})
    store.table()   # one row per run

The package, one job per module:

    layout.py    file names, statuses, valid names, run ids and timestamps
    errors.py    RunNotFound, RunExists, CorruptRun, and errors as one line
    values.py    configs, logged values and nested dicts as plain data
    records.py   reading manifest.json, config.yaml, summary.json; the displayed status
    run.py       Run: one run folder (lifecycle, metrics, summary, artifacts)
    info.py      RunInfo and inspect_run_dir: a listing's view of one folder
    store.py     RunStore: create, list, table, load, latest, compare
"""

from __future__ import annotations

from interp.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl
from interp.runs.errors import CorruptRun, RunExists, RunNotFound
from interp.runs.info import RunInfo
from interp.runs.info import inspect_run_dir as inspect_run_dir
from interp.runs.layout import ARTIFACTS_DIR as ARTIFACTS_DIR
from interp.runs.layout import CONFIG_FILE as CONFIG_FILE
from interp.runs.layout import MANIFEST_FILE as MANIFEST_FILE
from interp.runs.layout import METRICS_FILE as METRICS_FILE
from interp.runs.layout import STATUS_CORRUPT as STATUS_CORRUPT
from interp.runs.layout import STATUS_DIED as STATUS_DIED
from interp.runs.layout import STATUS_DONE as STATUS_DONE
from interp.runs.layout import STATUS_FAILED as STATUS_FAILED
from interp.runs.layout import STATUS_RESUMABLE as STATUS_RESUMABLE
from interp.runs.layout import STATUS_RUNNING as STATUS_RUNNING
from interp.runs.layout import SUMMARY_FILE as SUMMARY_FILE
from interp.runs.layout import new_run_id
from interp.runs.records import displayed_status
from interp.runs.run import Run
from interp.runs.store import TABLE_COLUMNS as TABLE_COLUMNS
from interp.runs.store import RunStore
from interp.runs.values import flatten_dict

__all__ = [
    "CorruptRun",
    "Run",
    "RunExists",
    "RunInfo",
    "RunNotFound",
    "RunStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "displayed_status",
    "flatten_dict",
    "new_run_id",
    "read_jsonl",
]
