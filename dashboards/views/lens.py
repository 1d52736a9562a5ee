"""The Lens page: a `lens` run's tuned lens (Belrose et al. 2023) beside the logit lens
(nostalgebraist 2020) on held-out prompts: how far each lens's readout is from the model's
output at each depth (KL divergence), what each reads of the task's answer (logit
difference, top-1), and the tuned lens's training loss.

It reads what the run saved (`artifacts/lens_divergence.*`, `artifacts/logit_lens.*`,
`artifacts/tuned_lens_readout.*`, metrics.jsonl, summary.json) and never runs a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import loaders
from dashboards.figures import metric_curves
from dashboards.figures.direct_effects import readout_figure
from dashboards.figures.lens import (
    DIVERGENCE_COLUMNS,
    READOUT_TITLE,
    lens_divergence_figure,
    lens_readout_figure,
)
from dashboards.loaders_lens import DIVERGENCE_TABLE, LOGIT_TABLE, TUNED_TABLE, lens_table
from dashboards.run_picker import pick_run
from interp.runs import RunInfo

KIND = "lens"

HOW_TO_MAKE_ONE = (
    "`interp run experiments/lens_induction.yaml --runs-dir {runs_dir}` once that store holds "
    "an induction_2l run (`interp run experiments/induction_2l.yaml --runs-dir {runs_dir}` "
    "makes one)"
)
LOSS_COLUMN = "train_loss"
TRAINING_TITLE = "Tuned lens training loss"

DIVERGENCE_CAPTION = (
    "Mean KL divergence (nats) from the model's output distribution to each lens's readout "
    "at each stage, on held-out prompts: the lower it is, the closer the readout at that "
    "depth is to what the model finally outputs. The logit lens reads the residual stream as "
    "it is, through the model's final norm and unembedding (nostalgebraist 2020); the tuned "
    "lens first passes it through an affine translator learned for that depth (Belrose et "
    "al. 2023). The last stage is the model's output itself: KL 0 for both."
)
READOUT_CAPTION = (
    "The held-out task's answer read at each stage by each lens: the mean logit difference "
    "(answer - wrong token; solid, left axis) and the fraction of examples whose answer is "
    "the top token (dotted, right axis). The last stage is the model's own output, the same "
    "for both lenses."
)
TRAINING_CAPTION = (
    "The tuned lens's training loss on the training prompts: the KL divergence from the "
    "model's output to the tuned lens's readout, summed over depths (log axis)."
)


def render_lens_page(runs_dir: Path) -> None:
    """Draw the Lens page for the run store at `runs_dir`."""
    st.header("Lens")
    info = pick_run(
        runs_dir, KIND, key="lens_run", how=HOW_TO_MAKE_ONE.format(runs_dir=runs_dir),
        shows_partial=True,
    )
    if info is None:
        return
    render_divergence(info)
    render_readout(info)
    render_training(runs_dir, info)


def _table(info: RunInfo, name: str, what: str) -> pd.DataFrame | None:
    """The run's table `name`, or None after a caption (not saved) or a warning (unreadable)."""
    try:
        table = lens_table(str(info.path), name)
    except (ValueError, OSError) as error:
        st.warning(f"`{info.ref}`: its {what} cannot be read: {error}")
        return None
    if table is None:
        st.caption(f"`{info.ref}` saved no {what} (`artifacts/{name}.*`).")
    return table


def divergence_text(frame: pd.DataFrame) -> str:
    """" The tuned lens is closer to the output than the logit lens at 2 of 2 stages before
    it." for a `lens_divergence` table ("" when there is no stage before the output)."""
    columns = list(DIVERGENCE_COLUMNS)
    before = frame[columns].sort_values("depth", kind="stable").iloc[:-1]
    if before.empty:
        return ""
    closer = int((before["tuned_lens_kl"] < before["logit_lens_kl"]).sum())
    return (f" The tuned lens is closer to the output than the logit lens at {closer} of "
            f"{len(before)} stages before it.")


def render_divergence(info: RunInfo) -> None:
    """Both lenses' KL divergence from the model's output, per stage, on a log or linear
    axis."""
    st.subheader("Divergence from the output")
    frame = _table(info, DIVERGENCE_TABLE, "lens divergence")
    if frame is None:
        return
    log_y = st.checkbox(
        "Log scale", value=True, key=f"lens_log_{info.ref}",
        help="the last stage (KL 0, the output itself) is not drawn on a log axis",
    )
    try:
        figure = lens_divergence_figure(frame, log_y=log_y)
    except ValueError as error:
        st.warning(f"`{info.ref}`: the lens divergence cannot be drawn: {error}")
        return
    st.plotly_chart(figure, key=f"lens_divergence_{info.ref}")
    st.caption(DIVERGENCE_CAPTION + divergence_text(frame))


def render_readout(info: RunInfo) -> None:
    """Both lenses' readouts of the answer (logit difference, top-1) per stage; the one
    saved when the other is missing."""
    st.subheader("Readout of the answer")
    readouts = {
        lens: _table(info, name, f"{lens} readout")
        for lens, name in (("logit lens", LOGIT_TABLE), ("tuned lens", TUNED_TABLE))
    }
    saved = {lens: frame for lens, frame in readouts.items() if frame is not None}
    if not saved:
        return
    try:
        if len(saved) == len(readouts):
            figure = lens_readout_figure(saved["logit lens"], saved["tuned lens"])
        else:
            figure = readout_figure(saved, what="lens_readout_figure", title=READOUT_TITLE)
    except ValueError as error:
        st.warning(f"`{info.ref}`: the readouts cannot be drawn: {error}")
        return
    st.plotly_chart(figure, key=f"lens_readout_{info.ref}")
    st.caption(READOUT_CAPTION)


def loss_text(summary: dict[str, Any]) -> str:
    """" First step: 0.4064; last: 0.02846 (the curve shows the logged steps)." from the
    summary's `first_train_loss` and `final_train_loss` ("" without them)."""
    first, final = summary.get("first_train_loss"), summary.get("final_train_loss")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (first, final)):
        return ""
    return f" First step: {first:.4g}; last: {final:.4g} (the curve shows the logged steps)."


def render_training(runs_dir: Path, info: RunInfo) -> None:
    """The tuned lens's training loss (metrics.jsonl) over the steps."""
    st.subheader("Training")
    try:
        metrics = loaders.run_metrics(str(runs_dir), info.ref)
    except (ValueError, OSError) as error:
        st.warning(f"`{info.ref}`: metrics.jsonl cannot be read: {error}")
        return
    if LOSS_COLUMN not in metrics.columns or metrics[LOSS_COLUMN].dropna().empty:
        st.caption(f"`{info.ref}` logged no {LOSS_COLUMN} (metrics.jsonl).")
        return
    try:
        figure = metric_curves(metrics, x="step", y=[LOSS_COLUMN], log_y=True,
                               title=TRAINING_TITLE)
    except ValueError as error:
        st.warning(f"`{info.ref}`: the training loss cannot be drawn: {error}")
        return
    st.plotly_chart(figure, key=f"lens_training_{info.ref}")
    st.caption(TRAINING_CAPTION + loss_text(info.summary))
