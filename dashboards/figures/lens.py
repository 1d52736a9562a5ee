"""Figures of a `lens` run (interp/lens_experiment.py): the tuned lens (Belrose et al. 2023,
"Eliciting Latent Predictions from Transformers with the Tuned Lens") beside the logit lens
(nostalgebraist 2020, "interpreting GPT: the logit lens") on held-out prompts.

- `lens_divergence_figure`: per stage, the mean KL divergence from the model's output
  distribution to each lens's readout (`artifacts/lens_divergence.*`).
- `lens_readout_figure`: per stage, each lens's readout of the task's answer: the logit
  difference and the top-1 fraction (`artifacts/logit_lens.*`,
  `artifacts/tuned_lens_readout.*`), drawn by `direct_effects.readout_figure`, the Patching
  page's logit lens figure with a second lens.

The training loss (`metrics.jsonl`) is drawn with `curves.metric_curves`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.figures.direct_effects import (
    LENS_COLOURS,
    ordered_stages,
    readout_figure,
    stage_axis,
)

__all__ = ["DIVERGENCE_COLUMNS", "LENSES", "lens_divergence_figure", "lens_readout_figure"]

DIVERGENCE_COLUMNS = ("stage", "depth", "logit_lens_kl", "tuned_lens_kl")
"""The columns of `artifacts/lens_divergence.*`."""
LENSES = {"logit lens": "logit_lens_kl", "tuned lens": "tuned_lens_kl"}
"""Each lens's name in the figures -> its column of the divergence table (same order, hence
same colours, as the readout figure's lenses)."""
DIVERGENCE_TITLE = "KL divergence from the model's output to each lens's readout"
READOUT_TITLE = "The answer read at each depth by the logit lens and the tuned lens"


def lens_divergence_figure(frame: pd.DataFrame, log_y: bool = True) -> go.Figure:
    """The mean KL divergence (nats) from the model's output distribution to the logit
    lens's and the tuned lens's readouts, one line per lens, over the stages in depth order.

    Args:
        frame: A `lens_divergence` table (`DIVERGENCE_COLUMNS`), one row per stage.
        log_y: Logarithmic KL axis. The last stage (the model's own output) has KL 0 for
            both lenses, which a log axis cannot show: values <= 0 are left out of the lines
            (NaN), every stage keeps its place on the x axis, and an annotation at such a
            stage says "KL 0" (or "KL <= 0" for a rounding error below 0). On a linear axis
            every value is drawn as it is.

    Returns:
        A figure with one `go.Scatter` per lens, named "logit lens" and "tuned lens", x the
        stage names in depth order; the hover and `customdata` give every saved value.
    """
    what = "lens_divergence_figure"
    ordered, stages = ordered_stages(frame, DIVERGENCE_COLUMNS, what)
    values = {lens: ordered[column].to_numpy(dtype=np.float64) for lens, column in LENSES.items()}
    for lens, kl in values.items():
        if not np.all(np.isfinite(kl)):
            raise ValueError(f"{what}: column {LENSES[lens]!r} holds a value that is not finite")
    traces = []
    for index, (lens, kl) in enumerate(values.items()):
        shown = np.where(kl > 0, kl, np.nan) if log_y else kl
        traces.append(go.Scatter(
            x=stages, y=shown, customdata=kl, name=lens, mode="lines+markers",
            line={"color": LENS_COLOURS[index]}, connectgaps=False,
            hovertemplate=f"{lens}<br>stage %{{x}}<br>KL %{{customdata:.4g}} nats<extra></extra>",
        ))
    figure = go.Figure(traces)
    if log_y:
        for position, stage in enumerate(stages):
            hidden = [kl[position] for kl in values.values() if kl[position] <= 0]
            if hidden:
                text = "KL 0" if all(value == 0 for value in hidden) else "KL <= 0"
                figure.add_annotation(
                    x=stage, y=0, yref="paper", yanchor="bottom", showarrow=False, text=text,
                    hovertext="not drawn on a log axis",
                )
    figure.update_layout(
        title=DIVERGENCE_TITLE,
        xaxis=stage_axis(stages),
        yaxis={"title": "KL(output || lens) (nats)", "type": "log" if log_y else "linear"},
        legend={"orientation": "h", "y": -0.2},
        hovermode="x unified",
        margin={"l": 40, "r": 20, "t": 50, "b": 40},
    )
    return figure


def lens_readout_figure(logit_frame: pd.DataFrame, tuned_frame: pd.DataFrame) -> go.Figure:
    """The held-out task's answer read at each stage by both lenses: the mean logit
    difference (left axis, solid) and the fraction of examples whose answer is the top token
    (right axis, 0 to 1, dotted), one colour per lens.

    Args:
        logit_frame: The logit lens's `logit_lens` table (`LENS_COLUMNS`).
        tuned_frame: The tuned lens's table, same columns, same stages at the same depths.

    Returns:
        A figure with four `go.Scatter` traces: "logit lens logit diff", "logit lens top-1",
        "tuned lens logit diff", "tuned lens top-1" (the top-1 traces on `y2`), x the stage
        names in depth order.
    """
    return readout_figure(
        {"logit lens": logit_frame, "tuned lens": tuned_frame},
        what="lens_readout_figure", title=READOUT_TITLE,
    )
