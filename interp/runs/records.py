"""Reading a run folder's manifest.json, config.yaml and summary.json, and the status a
manifest is displayed with."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from interp.provenance import process_alive
from interp.runs.errors import CorruptRun, one_line
from interp.runs.layout import (
    CONFIG_FILE,
    MANIFEST_FILE,
    STATUS_CORRUPT,
    STATUS_DIED,
    STATUS_RESUMABLE,
    STATUS_RUNNING,
    SUMMARY_FILE,
)

__all__ = ["displayed_status", "read_config", "read_manifest", "read_summary"]


def displayed_status(manifest: Mapping[str, Any]) -> str:
    """The status to show for a manifest: its own, except that a "running" run whose
    process is gone on this host shows as "died" (or "resumable" if it says it can resume).
    """
    status = str(manifest.get("status", STATUS_CORRUPT))
    if status != STATUS_RUNNING or manifest.get("hostname") != socket.gethostname():
        return status
    if process_alive(manifest.get("pid"), manifest.get("process_start_ticks")):
        return status
    return STATUS_RESUMABLE if manifest.get("resumable") else STATUS_DIED


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """manifest.json of `run_dir`; CorruptRun if it is missing or not a JSON object."""
    path = run_dir / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptRun(f"{MANIFEST_FILE} is missing") from None
    except (OSError, ValueError) as error:
        raise CorruptRun(f"{MANIFEST_FILE} is unreadable: {one_line(error)}") from None
    if not isinstance(manifest, dict):
        raise CorruptRun(f"{MANIFEST_FILE} is not a JSON object")
    return manifest


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML has it (8x faster: listing 50 runs reads 50 configs)."""


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml of `run_dir` ({} when empty); CorruptRun if missing or not a mapping."""
    path = run_dir / CONFIG_FILE
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except FileNotFoundError:
        raise CorruptRun(f"{CONFIG_FILE} is missing") from None
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise CorruptRun(f"{CONFIG_FILE} is unreadable: {one_line(error)}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise CorruptRun(f"{CONFIG_FILE} is not a mapping")
    return config


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json of `run_dir` ({} when absent); ValueError if it is unreadable."""
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{SUMMARY_FILE} is unreadable: {one_line(error)}") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{SUMMARY_FILE} is not a JSON object")
    return summary
