"""The headline numbers of a grokking run, read from its logged metrics.

Computed from `metrics.jsonl` and `artifacts/progress.jsonl` (not from the trainer's
memory), so a resumed run and one never stopped give the same summary. The epoch at which
the restricted loss falls below 1 is read from progress.jsonl, where every snapshot is
evaluated with the final model's key frequencies, as in Nanda et al. 2023 (figure 6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

GROKKED_TEST_ACC = 0.99
GROKKED_DELAY_FACTOR = 5
"""A model grokked when its final test accuracy is >= 0.99 and it first reached 0.99 at
least 5x later than it first fitted the training set (train accuracy 1.0)."""


FULL_ACCURACY = 1.0 - 1e-6
"""Accuracy read as 1.0: all examples right. Runs logged before accuracy became count / n
hold 0.99999994 for all-correct on CUDA (float32 mean = sum x 1/n); one wrong example in
fewer than a million is below this."""


def first_epoch(rows: pd.DataFrame, column: str, holds: Callable[[float], bool]) -> int | None:
    """The first logged epoch at which `holds(row[column])`, or None."""
    if column not in rows:
        return None
    for epoch, value in zip(rows["step"], rows[column], strict=True):
        if pd.notna(value) and holds(float(value)):
            return int(epoch)
    return None


def seed_summary(rows: pd.DataFrame, progress: pd.DataFrame | None = None) -> dict[str, Any]:
    """Summary of one model from its logged rows (sorted by epoch) and its progress rows
    (restricted loss with the final key frequencies, sorted by epoch; when None, a
    `restricted_loss` column of `rows` is read instead)."""
    last = rows.iloc[-1]
    restricted = rows if progress is None else progress
    summary: dict[str, Any] = {
        "epochs": int(last["step"]),
        "epoch_train_acc_1": first_epoch(rows, "train_acc", lambda v: v >= FULL_ACCURACY),
        "epoch_test_acc_0.5": first_epoch(rows, "test_acc", lambda v: v >= 0.5),
        "epoch_test_acc_0.99": first_epoch(rows, "test_acc", lambda v: v >= GROKKED_TEST_ACC),
        "epoch_test_loss_below_1": first_epoch(rows, "test_loss", lambda v: v < 1.0),
        "epoch_restricted_loss_below_1": first_epoch(
            restricted, "restricted_loss", lambda v: v < 1.0
        ),
        "final_train_loss": float(last["train_loss"]),
        "final_train_acc": float(last["train_acc"]),
        "final_test_loss": float(last["test_loss"]),
        "final_test_acc": float(last["test_acc"]),
        "final_weight_norm": float(last["weight_norm"]),
    }
    fitted, generalised = summary["epoch_train_acc_1"], summary["epoch_test_acc_0.99"]
    summary["grokked"] = bool(
        summary["final_test_acc"] >= GROKKED_TEST_ACC
        and fitted is not None
        and generalised is not None
        and generalised >= GROKKED_DELAY_FACTOR * fitted
    )
    return summary


def summarise(
    metrics: pd.DataFrame,
    seeds: Sequence[int],
    final_measures: Mapping[int, Mapping[str, Any]],
    progress: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The run's summary: one model's numbers at the top level, or, for several models,
    `per_seed` numbers with `grokked` (all of them), `n_grokked` and the slowest epochs.

    `final_measures` (per seed, the final model's progress measures) become `final_<name>`
    fields; a name that the logged metrics already give (`final_train_loss`, ...) raises
    ValueError rather than replace one computation with another. `progress` holds rows
    (step, seed, restricted_loss) computed with the final key frequencies.
    """
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        rows = metrics[metrics["seed"] == seed].sort_values("step")
        if rows.empty:
            raise ValueError(f"no metrics were logged for seed {seed}")
        own = None if progress is None else progress[progress["seed"] == seed].sort_values("step")
        summary = seed_summary(rows, own)
        finals = {f"final_{k}": v for k, v in final_measures.get(seed, {}).items()}
        if clash := sorted(finals.keys() & summary.keys()):
            raise ValueError(f"final measures {clash} would overwrite the logged metrics' own")
        summary.update(finals)
        summary["key_frequencies"] = summary.pop("final_key_frequencies", None)
        per_seed[str(seed)] = summary
    if len(seeds) == 1:
        return {"seed": seeds[0], **per_seed[str(seeds[0])]}
    values = list(per_seed.values())
    return {
        "seeds": list(seeds),
        "grokked": all(v["grokked"] for v in values),
        "n_grokked": sum(v["grokked"] for v in values),
        "min_final_test_acc": min(v["final_test_acc"] for v in values),
        "per_seed": per_seed,
    }
