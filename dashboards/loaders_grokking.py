"""Cached reads of what a `grokking` run saves (interp/grokking/experiment.py), for the
Grokking page: its metrics (one line per epoch and seed), its progress rows (restricted
and excluded loss of every weight snapshot with the final key frequencies,
`artifacts/progress.jsonl`), its config, its checkpoint epochs and the embedding of each
model at a checkpoint.

Checkpoints `artifacts/checkpoints/epoch_XXXXXX.safetensors` hold every model's weights
under `seed_<s>/<parameter name>`; the embedding `W_E` `[d_vocab, d_model]` is the
parameter `embed.weight` (`embed.W_E` in some bridges). They are read with safetensors'
numpy backend, one tensor at a time, so nothing here imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from safetensors import safe_open

from dashboards.loaders import CACHE_TTL_S
from interp.atomic_io import read_jsonl
from interp.runs import Run
from interp.runs.errors import one_line

CHECKPOINTS_DIR = "checkpoints"
PROGRESS_FILE = "progress.jsonl"
"""`interp.grokking.experiment.PROGRESS_ARTIFACT`, named here so as not to import torch."""
EMBEDDING_NAMES = ("embed.weight", "embed.W_E")
"""Parameter names under which a checkpoint holds the embedding `W_E`."""

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.safetensors")
_SEED_KEY = re.compile(r"seed_(-?\d+)/(.+)")


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def run_config(run_dir: str) -> dict[str, Any]:
    """config.yaml of the run at `run_dir` (CorruptRun when unreadable)."""
    return Run.open(run_dir).config


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def run_metrics(run_dir: str) -> pd.DataFrame:
    """metrics.jsonl of the run at `run_dir`: one row per (epoch, seed)."""
    return Run.open(run_dir).metrics()


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def run_progress(run_dir: str) -> pd.DataFrame:
    """artifacts/progress.jsonl of the run at `run_dir`: one row per (snapshot epoch,
    seed) with `restricted_loss` and `excluded_loss` computed with the final model's key
    frequencies (Nanda et al. 2023, figure 6); no rows when the run has not written it
    (it does so when training ends; older runs never did)."""
    rows = read_jsonl(Path(run_dir) / "artifacts" / PROGRESS_FILE)
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame({"step": [], "seed": []})


def modulus(config: dict[str, Any]) -> int:
    """The task's modulus p from a grokking config; ValueError when it has none."""
    p = (config.get("task") or {}).get("p")
    if isinstance(p, bool) or not isinstance(p, int):
        raise ValueError(f"the run's config has no integer task.p (got {p!r})")
    return p


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def checkpoint_epochs(run_dir: str) -> list[int]:
    """The epochs with a checkpoint `artifacts/checkpoints/epoch_XXXXXX.safetensors`,
    ascending ([] when there are none)."""
    folder = Path(run_dir) / "artifacts" / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    matches = (_EPOCH_FILE.fullmatch(path.name) for path in folder.iterdir())
    return sorted(int(match.group(1)) for match in matches if match)


def checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """The checkpoint file of `epoch`."""
    return Path(run_dir) / "artifacts" / CHECKPOINTS_DIR / f"epoch_{epoch:06d}.safetensors"


def embedding_keys(keys: list[str]) -> dict[int, str]:
    """Per seed, the checkpoint key of its embedding (`seed_<s>/embed.weight`)."""
    found: dict[int, str] = {}
    for key in keys:
        match = _SEED_KEY.fullmatch(key)
        if match and match.group(2) in EMBEDDING_NAMES:
            found.setdefault(int(match.group(1)), key)
    return dict(sorted(found.items()))


@st.cache_data(ttl=CACHE_TTL_S, max_entries=64, show_spinner=False)
def checkpoint_embeddings(run_dir: str, epoch: int) -> dict[int, np.ndarray]:
    """Per seed, the embedding `W_E` `[d_vocab, d_model]` saved at `epoch`.

    Raises FileNotFoundError when there is no such checkpoint and ValueError when the file
    is unreadable or holds no embedding.
    """
    path = checkpoint_path(run_dir, epoch)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at epoch {epoch} ({path.name} is missing)")
    try:
        with safe_open(str(path), framework="np") as handle:
            keys = embedding_keys(list(handle.keys()))
            embeddings = {seed: handle.get_tensor(key) for seed, key in keys.items()}
    except Exception as error:  # safetensors raises its own error types for a bad file
        raise ValueError(f"checkpoint {path.name} is unreadable: {one_line(error)}") from None
    if not embeddings:
        raise ValueError(
            f"checkpoint {path.name} holds no embedding (no 'seed_<s>/embed.weight' key)"
        )
    return embeddings


def clear_caches() -> None:
    """Forget every cached read."""
    for reader in (run_config, run_metrics, run_progress, checkpoint_epochs,
                   checkpoint_embeddings):
        reader.clear()
