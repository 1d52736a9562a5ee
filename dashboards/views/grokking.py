"""The Grokking page: training curves of one or more `grokking` runs (every seed overlaid),
progress measures, key frequencies and the Fourier spectrum of the embedding at a chosen
checkpoint, after Nanda et al. 2023, "Progress measures for grokking via mechanistic
interpretability" (ICLR 2023), figures 1, 3a and 6.

It reads what the runs saved (metrics.jsonl, summary.json, checkpoints) and never runs a
model: the spectrum is computed in numpy from the saved embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import loaders_grokking as data
from dashboards.figures.grokking import (
    embedding_frequency_norms,
    frequency_spectrum,
    key_frequency_timeline,
    training_curves,
)
from dashboards.run_picker import pick_runs
from interp.runs import RunInfo

KIND = "grokking"
MAX_DEFAULT_RUNS = 3
"""How many of the newest runs are chosen when the page opens."""

HOW_TO_MAKE_ONE = (
    "`interp run experiments/grokking_cpu.yaml --runs-dir {runs_dir}` (a few minutes on "
    "CPU), or `experiments/grokking_p113.yaml` for the paper's setup (p = 113)"
)

CURVES = (
    ("Loss", ("train_loss", "test_loss"), True, "cross-entropy"),
    ("Accuracy", ("train_acc", "test_acc"), False, "accuracy"),
    ("Weight norm", ("weight_norm",), False, "L2 norm of all parameters"),
    ("Restricted and excluded loss", ("restricted_loss", "excluded_loss"), True,
     "cross-entropy"),
)
"""The curves drawn: title, metrics, log vertical axis, vertical-axis title. Restricted and
excluded loss come from the run's progress rows (the final key frequencies at every
snapshot, as in the paper's figure 6), written when the run ends."""

SUMMARY_COLUMNS = (
    "key_frequencies", "grokked", "final_train_acc", "final_test_acc",
    "epoch_train_acc_1", "epoch_test_acc_0.99", "final_restricted_loss",
)
"""Per-seed numbers of summary.json shown in the key-frequency table."""


@dataclass(frozen=True)
class GrokkingRun:
    """What the page reads of one run.

    Attributes:
        info: The run's listing entry (status, summary, path).
        p: The task's modulus.
        metrics: metrics.jsonl, one row per (epoch, seed), followed by the rows of
            artifacts/progress.jsonl (restricted and excluded loss with the final key
            frequencies, per snapshot epoch and seed), plus a "series" column naming
            the model of each row ("seed 0", or "<run_id> seed 0" when several runs).
        epochs: The epochs with a checkpoint, ascending.
    """

    info: RunInfo
    p: int
    metrics: pd.DataFrame
    epochs: list[int]


def render_grokking_page(runs_dir: Path) -> None:
    """Draw the Grokking page for the run store at `runs_dir`."""
    st.header("Grokking")
    chosen = pick_runs(
        runs_dir, KIND, key="grokking_runs", how=HOW_TO_MAKE_ONE.format(runs_dir=runs_dir),
        n_default=MAX_DEFAULT_RUNS,
    )
    runs = [run for info in chosen if (run := load_run(info, len(chosen) > 1))]
    if not runs:
        if chosen:
            st.caption("Choose a run that has logged epochs.")
        return
    seeds = sorted({int(s) for run in runs for s in run.metrics["seed"].dropna().unique()})
    kept = st.multiselect(
        "Seeds", seeds, default=seeds, key=f"grokking_seeds_{'_'.join(map(str, seeds))}"
    )
    if not kept:
        st.caption("Choose at least one seed.")
        return
    runs = [keep_seeds(run, kept) for run in runs]
    render_curves(pd.concat([run.metrics for run in runs], ignore_index=True))
    render_key_frequencies(runs)
    render_spectrum(runs, kept)


def series_label(info: RunInfo, seed: int, several_runs: bool) -> str:
    """The name of one model in the legends: "seed 0", or "<run_id> seed 0"."""
    return f"{info.run_id} seed {seed}" if several_runs else f"seed {seed}"


def load_run(info: RunInfo, several_runs: bool) -> GrokkingRun | None:
    """The run's data, or None (after a notice on the page) when it cannot be shown."""
    try:
        p = data.modulus(data.run_config(str(info.path)))
        metrics = data.run_metrics(str(info.path))
        progress = data.run_progress(str(info.path))
        epochs = data.checkpoint_epochs(str(info.path))
    except (ValueError, OSError) as error:
        st.warning(f"`{info.ref}` cannot be read: {error}")
        return None
    if metrics.empty or "seed" not in metrics.columns:
        st.info(f"`{info.ref}` has logged no epochs yet.")
        return None
    if not progress.empty:
        metrics = pd.concat([metrics, progress], ignore_index=True)
    metrics = metrics.dropna(subset=["seed"]).assign(run=info.ref)
    metrics["series"] = [series_label(info, int(s), several_runs) for s in metrics["seed"]]
    return GrokkingRun(info=info, p=p, metrics=metrics, epochs=epochs)


def keep_seeds(run: GrokkingRun, seeds: list[int]) -> GrokkingRun:
    """The run with only the metric rows of `seeds`."""
    rows = run.metrics[run.metrics["seed"].astype(int).isin(seeds)]
    return GrokkingRun(info=run.info, p=run.p, metrics=rows, epochs=run.epochs)


def render_curves(metrics: pd.DataFrame) -> None:
    """Loss and accuracy on log axes, weight norm, restricted and excluded loss."""
    st.subheader("Training")
    columns = st.columns(2)
    for index, (title, names, log_y, y_title) in enumerate(CURVES):
        present = [n for n in names if n in metrics.columns and metrics[n].notna().any()]
        slot = columns[index % 2]
        if not present:
            slot.caption(f"{title}: not logged by these runs (still training, or "
                         "progress_every: 0?).")
            continue
        slot.plotly_chart(training_curves(
            metrics, present, log_y=log_y, title=title, y_title=y_title
        ))


def summary_rows(info: RunInfo) -> list[dict[str, Any]]:
    """One row per seed of a run's summary.json (a one-seed run has its numbers at the
    top level, a several-seed run under "per_seed")."""
    summary = info.summary
    if "per_seed" in summary and isinstance(summary["per_seed"], dict):
        per_seed = summary["per_seed"]
    elif "seed" in summary:
        per_seed = {str(summary["seed"]): summary}
    else:
        return []
    rows = []
    for seed, values in per_seed.items():
        row: dict[str, Any] = {"run": info.ref, "seed": int(seed)}
        for name in SUMMARY_COLUMNS:
            value = values.get(name) if isinstance(values, dict) else None
            row[name] = ", ".join(map(str, value)) if isinstance(value, list) else value
        rows.append(row)
    return rows


def final_key_frequencies(info: RunInfo) -> dict[int, list[int]]:
    """Per seed, the key frequencies of the final model, from summary.json."""
    summary = info.summary
    per_seed = summary.get("per_seed")
    if not isinstance(per_seed, dict):
        per_seed = {str(summary["seed"]): summary} if "seed" in summary else {}
    return {
        int(seed): list(values.get("key_frequencies") or [])
        for seed, values in per_seed.items() if isinstance(values, dict)
    }


def render_key_frequencies(runs: list[GrokkingRun]) -> None:
    """The final key frequencies and headline numbers per seed, and the key frequencies
    at every epoch the progress measures were logged."""
    st.subheader("Key frequencies")
    seeds = {(run.info.ref, int(s)) for run in runs for s in run.metrics["seed"].unique()}
    rows = [row for run in runs for row in summary_rows(run.info)
            if (row["run"], row["seed"]) in seeds]
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    else:
        st.caption("No summary yet: a run writes summary.json when it ends.")
    metrics = pd.concat([run.metrics for run in runs], ignore_index=True)
    if "key_frequencies" in metrics.columns:
        logged = metrics[metrics["key_frequencies"].map(lambda v: isinstance(v, list))]
        st.plotly_chart(key_frequency_timeline(
            logged, title="Key frequencies over training"
        ))


def render_spectrum(runs: list[GrokkingRun], seeds: list[int]) -> None:
    """The Fourier norms of the embedding at a checkpoint chosen with a slider."""
    st.subheader("Fourier spectrum of the embedding")
    with_checkpoints = {run.info.ref: run for run in runs if run.epochs}
    if not with_checkpoints:
        st.info("None of these runs has saved a checkpoint yet (every `checkpoint_every`).")
        return
    ref = st.selectbox("Run", list(with_checkpoints), key="grokking_spectrum_run")
    run = with_checkpoints[ref or next(iter(with_checkpoints))]
    epoch = st.select_slider(
        "Checkpoint epoch", options=run.epochs, value=run.epochs[-1],
        key=f"grokking_epoch_{run.info.ref}",
    )
    try:
        embeddings = data.checkpoint_embeddings(str(run.info.path), int(epoch))
        norms = {
            f"seed {seed}": embedding_frequency_norms(matrix, run.p)
            for seed, matrix in embeddings.items() if seed in seeds
        }
    except (ValueError, OSError) as error:
        st.warning(f"`{run.info.ref}`: {error}")
        return
    if not norms:
        st.caption("The chosen seeds have no embedding in this checkpoint.")
        return
    keys = {f"seed {s}": freqs for s, freqs in final_key_frequencies(run.info).items()}
    st.plotly_chart(frequency_spectrum(
        norms, keys, title=f"Fourier norms of W_E at epoch {epoch} (p = {run.p})"
    ))
    if any(keys.values()):
        stars = "stars mark the final model's key frequencies."
    elif run.info.summary:
        stars = "no stars: no frequency of the final model passed the key-frequency rule."
    else:
        stars = "no stars: the run has no summary yet, so no final key frequencies."

    st.caption(
        "Norm of each frequency k of the embedding of 0..p-1 (cos and sin together), as in "
        f"figure 3a of Nanda et al. 2023; {stars}"
    )
