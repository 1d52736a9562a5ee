"""Cached reads of what a `patching` run saves (circuits/patching_experiment.py), for the
Patching page: per target `artifacts/patching_<target>.safetensors` (the values) and
`.json` (axes, labels, metric on the clean and corrupted runs, ...), written by
`circuits.patching.PatchingResult.save`, `artifacts/prompts.json` (the prompts), and the
direct effects of the clean prompts, `artifacts/logit_attribution.*` and
`artifacts/logit_lens.*` (tables saved by `Run.save_table`: parquet, or csv), and each
head's direct effect split by key position, the `sources` tensor of
`artifacts/logit_attribution.safetensors` (`LogitAttribution.save`). A run made with
`attribution: true` also saves, per target, the attribution-patching estimate in the same
layout, `artifacts/attribution_<target>.*` (its `method` "attribution" or
"attribution_qk_fix").

The values are read with `safetensors.numpy` and the tables with pandas, so nothing here
imports torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from safetensors.numpy import load_file

from dashboards.figures.direct_effects import ATTRIBUTION_COLUMNS, LENS_COLUMNS
from dashboards.loaders import CACHE_TTL_S, read_table
from interp.runs.errors import one_line

PROMPTS_FILE = "prompts.json"
ATTRIBUTION_TABLE = "logit_attribution"
LENS_TABLE = "logit_lens"
VALUES_KEY = "values"
"""The key of the values tensor in `patching_<target>.safetensors`."""
SOURCES_KEY = "sources"
"""The key of the per-position split in `logit_attribution.safetensors`."""

ATTRIBUTION_PREFIX = "attribution_"
"""The attribution estimate of a target is saved as `attribution_<target>.*`."""

_RESULT_FILE = re.compile(r"patching_(.+)\.json")
_PROMPT_KEYS = ("clean_tokens", "corrupted_tokens")


@dataclass(frozen=True)
class SavedPatching:
    """One target's saved `PatchingResult`, as numpy data.

    Attributes:
        target: The patched target, e.g. "resid_pre".
        values: The metric after patching each index, shaped by `axes`.
        axes: Axis names, e.g. ("layer", "pos").
        labels: Per axis, one label per index.
        metric_clean: The metric on the clean run.
        metric_corrupted: The metric on the corrupted run.
        direction: "denoise" or "noise".
        normalised: Whether the values are normalised (1 clean, 0 corrupted).
        method: "activation" (exact patching), "attribution" or "attribution_qk_fix"
            (attribution patching, plain or with AtP*'s query-key fix).
    """

    target: str
    values: np.ndarray
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    metric_clean: float
    metric_corrupted: float
    direction: str
    normalised: bool
    method: str

    @property
    def baseline(self) -> float:
        """The value of an index whose patch changes nothing (as
        `circuits.patching.PatchingResult.baseline`): the metric of the run patched into,
        the corrupted one when denoising and the clean one when noising; 0 or 1 when
        normalised."""
        if self.normalised:
            return 0.0 if self.direction == "denoise" else 1.0
        return self.metric_corrupted if self.direction == "denoise" else self.metric_clean


def _artifacts(run_dir: str | Path) -> Path:
    return Path(run_dir) / "artifacts"


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def patching_targets(run_dir: str) -> list[str]:
    """The targets with a saved result (`artifacts/patching_<target>.json`), sorted."""
    folder = _artifacts(run_dir)
    if not folder.is_dir():
        return []
    matches = (_RESULT_FILE.fullmatch(path.name) for path in folder.iterdir())
    return sorted(match.group(1) for match in matches if match)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path.name} is unreadable: {one_line(error)}") from None


def _read_values(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a bad file
        raise ValueError(f"{path.name} is unreadable: {one_line(error)}") from None
    if VALUES_KEY not in tensors:
        raise ValueError(f"{path.name} has no {VALUES_KEY!r} tensor")
    return tensors[VALUES_KEY].astype(np.float64)


def _read_result(run_dir: str, name: str, target: str) -> SavedPatching:
    """The `PatchingResult` saved as `artifacts/<name>.*` (FileNotFoundError, ValueError as
    `patching_result`)."""
    stem = _artifacts(run_dir) / name
    meta = _read_json(stem.with_name(stem.name + ".json"))
    values = _read_values(stem.with_name(stem.name + ".safetensors"))
    try:
        axes = tuple(str(axis) for axis in meta["axes"])
        labels = tuple(tuple(str(label) for label in names) for names in meta["labels"])
        result = SavedPatching(
            target=str(meta.get("target", target)), values=values, axes=axes, labels=labels,
            metric_clean=float(meta["metric_clean"]),
            metric_corrupted=float(meta["metric_corrupted"]),
            direction=str(meta["direction"]), normalised=bool(meta["normalised"]),
            method=str(meta.get("method", "activation")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{name}.json is malformed: {one_line(error)}") from None
    shape = tuple(len(names) for names in labels)
    if values.shape != shape:
        raise ValueError(f"{name}: values {values.shape} disagree with the labels {shape}")
    return result


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def patching_result(run_dir: str, target: str) -> SavedPatching:
    """The result saved for `target`. Raises FileNotFoundError when a file is missing and
    ValueError when one is unreadable or the values disagree with the labels."""
    return _read_result(run_dir, f"patching_{target}", target)


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def attribution_result(run_dir: str, target: str) -> SavedPatching | None:
    """The attribution-patching estimate saved for `target`
    (`circuits.patching_experiment.save_attribution`), or None when the run saved none
    (no `attribution_<target>.json`: made without `attribution: true`, or older).
    FileNotFoundError when only its values are missing, ValueError as `patching_result`."""
    name = f"{ATTRIBUTION_PREFIX}{target}"
    if not (_artifacts(run_dir) / f"{name}.json").exists():
        return None
    return _read_result(run_dir, name, target)


@st.cache_data(ttl=CACHE_TTL_S, max_entries=16, show_spinner=False)
def patching_prompts(run_dir: str) -> dict[str, Any] | None:
    """`artifacts/prompts.json` (see `circuits.patching_experiment.prompts_record`), or
    None for a run made before prompts were saved. ValueError when it is malformed."""
    path = _artifacts(run_dir) / PROMPTS_FILE
    if not path.exists():
        return None
    prompts = _read_json(path)
    if not isinstance(prompts, dict) or any(
        not isinstance(prompts.get(key), list) for key in _PROMPT_KEYS
    ):
        raise ValueError(f"{PROMPTS_FILE} lacks the lists {list(_PROMPT_KEYS)}")
    if len(prompts["clean_tokens"]) != len(prompts["corrupted_tokens"]):
        raise ValueError(f"{PROMPTS_FILE} has unequal numbers of clean and corrupted prompts")
    return prompts


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def direct_effects(run_dir: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The direct logit attribution table and the logit lens table of the clean prompts
    (`circuits.patching_experiment.save_direct_effects`), each None when the run saved no
    such table (older runs, a model those cannot read). ValueError when a table is
    unreadable or lacks its columns (`ATTRIBUTION_COLUMNS`, `LENS_COLUMNS`)."""
    folder = _artifacts(run_dir)
    return (read_table(folder, ATTRIBUTION_TABLE, ATTRIBUTION_COLUMNS),
            read_table(folder, LENS_TABLE, LENS_COLUMNS))


@st.cache_data(ttl=CACHE_TTL_S, max_entries=16, show_spinner=False)
def head_sources(run_dir: str) -> np.ndarray | None:
    """Each head's direct effect split by the key position it attends to, `[example, layer,
    head, pos]` (float64), from `artifacts/logit_attribution.safetensors`; None when the run
    saved no such split (no file, or an older run without the `sources` tensor). ValueError
    when the file is unreadable or the tensor is not 4-D."""
    path = _artifacts(run_dir) / f"{ATTRIBUTION_TABLE}.safetensors"
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a bad file
        raise ValueError(f"{path.name} is unreadable: {one_line(error)}") from None
    sources = tensors.get(SOURCES_KEY)
    if sources is None:
        return None
    if sources.ndim != 4:
        raise ValueError(
            f"{path.name}: {SOURCES_KEY!r} has shape {sources.shape}, not [example, layer, "
            "head, pos]"
        )
    return sources.astype(np.float64)


def clear_caches() -> None:
    """Forget every cached read."""
    for reader in (patching_targets, patching_result, attribution_result, patching_prompts,
                   direct_effects, head_sources):
        reader.clear()
