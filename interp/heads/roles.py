"""Role labels for heads from their scores, and groups of heads with similar scores.

`assign_roles` gives each head every role whose score passes its threshold
(`RoleThresholds`, documented defaults, each overridable); `cluster_heads` groups heads by
their score vectors with k-means (scikit-learn), so heads that behave alike share a group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from interp.heads.head_scores import SCORE_NAMES, HeadScores

ROLE_NAMES: tuple[str, ...] = (
    "previous_token",
    "next_token",
    "duplicate_token",
    "induction",
    "positional-1",
    "positional+1",
    "first_token",
    "special_token",
    "copying",
)
"""Every role, in the order they are listed in the `roles` column."""

_ROLE_SCORE = {
    "previous_token": "previous_token",
    "next_token": "next_token",
    "duplicate_token": "duplicate_token",
    "induction": "induction",
    "positional-1": "positional_prev",
    "positional+1": "positional_next",
    "first_token": "first_token",
    "special_token": "special_token",
    "copying": "copying",
}


@dataclass(frozen=True)
class RoleThresholds:
    """The score a head needs for each role (a head gets a role when score >= threshold).

    Attributes:
        previous_token, next_token, duplicate_token, induction: Mean attention on the
            target (0.5: at least half of a query's attention, on average).
        positional: Share of queries whose argmax is at offset -1 / +1 (Voita et al. 2019
            use 0.9; this one threshold serves both offsets).
        first_token: Mean attention on the first position (a "sink" head).
        special_token: Mean attention on special tokens ([CLS]/[SEP], Clark et al. 2019).
        copying: Positive share of the full OV circuit's eigenvalue mass (0.75: three
            quarters of the mass positive). Random Gaussian weights give about 0.33, not
            0.5: their eigenvalues are mostly complex, so `|lambda|` exceeds `|Re lambda|`
            and real parts split evenly between signs give well under half (measured: mean
            0.34, sd 0.06, max 0.50 over 200 heads with d_model 64, d_head 16; mean 0.32,
            sd 0.02 at d_model 256, d_head 64; the spread grows as d_head shrinks: max 0.68
            at d_head 8). So 0.75 is above every random head measured.
    """

    previous_token: float = 0.5
    next_token: float = 0.5
    duplicate_token: float = 0.5
    induction: float = 0.5
    positional: float = 0.9
    first_token: float = 0.5
    special_token: float = 0.5
    copying: float = 0.75

    def for_role(self, role: str) -> float:
        """The threshold of one role of `ROLE_NAMES`."""
        if role not in ROLE_NAMES:
            raise ValueError(f"unknown role {role!r}; roles are {ROLE_NAMES}")
        return self.positional if role.startswith("positional") else getattr(self, role)


def _score_frame(
    scores: HeadScores | pd.DataFrame, copying: Float[Tensor, "layer head"] | None
) -> pd.DataFrame:
    if isinstance(scores, HeadScores):
        frame = scores.to_frame()
    elif isinstance(scores, pd.DataFrame):
        if not {"layer", "head"} <= set(scores.columns):
            raise ValueError("a score DataFrame needs 'layer' and 'head' columns")
        frame = scores.copy()
    else:
        raise ValueError(f"scores must be HeadScores or a DataFrame, got {type(scores).__name__}")
    if copying is not None:
        values = copying.detach().cpu().double()
        if values.ndim != 2:
            raise ValueError(f"copying must be [layer, head], got {tuple(values.shape)}")
        layers, heads = frame["layer"].to_numpy(), frame["head"].to_numpy()
        if layers.max() >= values.shape[0] or heads.max() >= values.shape[1]:
            raise ValueError(
                f"copying is {tuple(values.shape)} but the scores have layer {layers.max()}, "
                f"head {heads.max()}"
            )
        frame["copying"] = values.numpy()[layers, heads]
    return frame


def assign_roles(
    scores: HeadScores | pd.DataFrame,
    *,
    copying: Float[Tensor, "layer head"] | None = None,
    thresholds: RoleThresholds | None = None,
) -> pd.DataFrame:
    """One row per head: `layer`, `head`, `roles` (the passing roles of `ROLE_NAMES`
    joined by ",", "" for none), `n_roles`, then every score column.

    Args:
        scores: `HeadScores`, or a frame like `HeadScores.to_frame()`.
        copying: Copying scores `[layer, head]` (`interp.heads.weights.copying_scores`)
            added as a `copying` column; a role whose score column is missing is skipped.
        thresholds: Overrides of the defaults.
    """
    thresholds = thresholds if thresholds is not None else RoleThresholds()
    frame = _score_frame(scores, copying)
    passing = {}
    for role in ROLE_NAMES:
        column = _ROLE_SCORE[role]
        if column in frame.columns:
            values = frame[column].to_numpy(dtype=float)
            passing[role] = np.nan_to_num(values, nan=-np.inf) >= thresholds.for_role(role)
    roles = [",".join(role for role in passing if passing[role][i]) for i in range(len(frame))]
    score_columns = [c for c in frame.columns if c not in ("layer", "head")]
    out = frame[["layer", "head"]].copy()
    out["roles"] = roles
    out["n_roles"] = [len(r.split(",")) if r else 0 for r in roles]
    for column in score_columns:
        out[column] = frame[column]
    return out


def _default_columns(frame: pd.DataFrame) -> list[str]:
    names = [*SCORE_NAMES, "copying"]
    return [c for c in names if c in frame.columns]


def cluster_heads(
    frame: pd.DataFrame,
    n_groups: int,
    *,
    columns: Sequence[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Group heads by their score vectors with k-means; returns a copy with a `group` column.

    Each column is standardised (zero mean, unit variance; constant columns become 0), a
    column that is NaN for every head is dropped, and other NaNs become 0 (the column
    mean). Groups are numbered 0, 1, ... in the order their first head appears in `frame`,
    so the same scores and seed give the same labels.

    Args:
        frame: One row per head, e.g. `assign_roles(...)` or `HeadScores.to_frame()`.
        n_groups: Number of groups, 1 <= n_groups <= number of heads.
        columns: Score columns to cluster on; default every score of `SCORE_NAMES` (and
            `copying`) present.
        seed: Seed of k-means' initialisation.
    """
    from sklearn.cluster import KMeans

    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"cluster_heads takes a DataFrame, got {type(frame).__name__}")
    chosen = list(columns) if columns is not None else _default_columns(frame)
    missing = [c for c in chosen if c not in frame.columns]
    if missing:
        raise ValueError(f"cluster_heads: no columns {missing} in the frame")
    if not 1 <= n_groups <= len(frame):
        raise ValueError(f"n_groups must be between 1 and {len(frame)} heads, got {n_groups}")
    data = frame[chosen].to_numpy(dtype=float)
    data = data[:, ~np.isnan(data).all(axis=0)]
    if data.shape[1] == 0:
        raise ValueError("cluster_heads: every chosen score column is NaN")
    mean = np.nanmean(data, axis=0)
    std = np.nanstd(data, axis=0)
    standard = (data - mean) / np.where(std > 0, std, 1.0)
    standard = np.nan_to_num(standard, nan=0.0)
    labels = KMeans(n_clusters=n_groups, n_init=10, random_state=seed).fit_predict(standard)
    renumber: dict[int, int] = {}
    for label in labels:
        renumber.setdefault(int(label), len(renumber))
    out = frame.copy()
    out["group"] = [renumber[int(label)] for label in labels]
    return out
