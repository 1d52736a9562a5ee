"""The Probes page: a `probe` run's probe score per layer with its confidence band for each
chosen target and model variant (final, earlier checkpoints, the random-init baseline), the
control task and selectivity (Hewitt & Liang 2019), the MDL compression (Voita & Titov
2020), and the causal interventions with their random-direction baseline.

Reads only what the run saved (`dashboards.loaders_probes`); never runs a model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboards.figures.probes import (
    METRIC_NAMES,
    interventions_chart,
    layer_scores,
    mdl_chart,
    ordered_variants,
    selectivity_chart,
)
from dashboards.loaders_probes import ProbeRunData, probe_run
from dashboards.run_picker import pick_run
from interp.runs.errors import one_line

KIND = "probe"
MAX_DEFAULT_TARGETS = 4
"""How many targets are chosen when the page opens."""
INTERVENTION_COLUMNS_SHOWN = (
    "variant", "target", "intervention", "hook", "metric", "before", "after", "effect",
    "random_mean", "random_std", "random_effect", "n_random",
)


def render_probes_page(runs_dir: Path) -> None:
    """Draw the Probes page for the run store at `runs_dir`."""
    st.header("Probes")
    info = pick_run(runs_dir, KIND, key="probes_run")
    if info is None:
        return
    try:
        data = probe_run(str(runs_dir), info.ref)
    except Exception as error:  # a damaged run must not take the page down
        st.warning(f"Could not read run `{info.ref}`: {one_line(error)}")
        return
    rows = chosen_rows(data)
    if rows.empty:
        st.caption("Choose at least one target and one variant.")
    else:
        render_scores(data, rows)
        render_selectivity(rows)
        render_mdl(rows)
    render_interventions(data)


def chosen_rows(data: ProbeRunData) -> pd.DataFrame:
    """Target and variant selectors; the `probe_layers` rows chosen."""
    columns = st.columns(2)
    targets = columns[0].multiselect(
        "Targets", data.targets, default=data.targets[:MAX_DEFAULT_TARGETS],
        key=f"probes_targets_{data.ref}",
    )
    variants = ordered_variants(data.variants)
    chosen = columns[1].multiselect(
        "Model variants", variants, default=variants, key=f"probes_variants_{data.ref}",
        help="final: the trained model; epoch_*: earlier checkpoints; random_init: the same "
        "architecture untrained, the baseline a probe must beat",
    )
    layers = data.layers
    return layers[layers["target"].isin(targets) & layers["variant"].isin(chosen)]


def render_scores(data: ProbeRunData, rows: pd.DataFrame) -> None:
    """One chart per metric (accuracy, R²) of the score per layer with its band."""
    st.subheader("Probe score per layer")
    for metric in dict.fromkeys(rows["metric"]):
        part = rows[rows["metric"] == metric]
        st.plotly_chart(layer_scores(part), key=f"probes_scores_{data.ref}_{metric}")
    st.caption(scores_caption(rows))


_METRIC_MEANINGS = {
    "accuracy": "Accuracy is the share of held-out examples classified right.",
    "r2": f"{METRIC_NAMES['r2']} is 1 - residual / total variance on held-out examples.",
}


def scores_caption(rows: pd.DataFrame) -> str:
    """What the score charts show: the seeds behind each mean, the band, the line styles
    and what each metric means."""
    n_seeds = sorted(set(rows["n_seeds"].dropna().astype(int))) if "n_seeds" in rows else []
    if not n_seeds:
        seeds = "Mean held-out score; the band is its 95% interval."
    elif max(n_seeds) == 1:
        seeds = "Held-out score of one split seed (no band: one seed has no spread)."
    else:
        seeds = (f"Mean held-out score over {' or '.join(map(str, n_seeds))} split seeds; the "
                 "band is its 95% t interval, cut to the score's range.")
    meanings = [_METRIC_MEANINGS[m] for m in dict.fromkeys(rows["metric"]) if m in _METRIC_MEANINGS]
    return (
        f"{seeds} Solid: the final model; dashed: earlier checkpoints; dotted: the randomly "
        "initialised model. " + " ".join(meanings)
    ).strip()


def render_selectivity(rows: pd.DataFrame) -> None:
    """Control-task accuracy and selectivity, when the run computed them."""
    _render_control(
        rows,
        "selectivity",
        "Control task and selectivity",
        "No selectivity for these targets (the run's `controls.selectivity` is off, or the "
        "targets are regression or sentence-level targets).",
        selectivity_chart,
        "Selectivity = probe accuracy minus the accuracy of the same probe on a control "
        "task (Hewitt & Liang 2019): high selectivity means the probe reads the property "
        "from the representation rather than memorising word types.",
    )


def render_mdl(rows: pd.DataFrame) -> None:
    """MDL compression, when the run computed it."""
    _render_control(
        rows,
        "compression",
        "Minimum description length",
        "No MDL codelength for these targets (the run's `controls.mdl` is off, or the "
        "targets are regression targets).",
        mdl_chart,
        "Compression = uniform codelength / online codelength (Voita & Titov 2020): higher "
        "means the labels are easier to extract from that layer.",
    )


def _render_control(
    rows: pd.DataFrame,
    column: str,
    title: str,
    missing: str,
    chart: Callable[[pd.DataFrame], go.Figure],
    caption: str,
) -> None:
    """One control's section: its chart and caption, or why the run has none."""
    st.subheader(title)
    if not rows[column].notna().any():
        st.caption(missing)
        return
    st.plotly_chart(chart(rows), key=f"probes_{column}")
    st.caption(caption)


def render_interventions(data: ProbeRunData) -> None:
    """The causal interventions of one chosen variant as bars, and the whole table."""
    st.subheader("Causal interventions")
    table = data.interventions
    if table is None or table.empty:
        st.info("This run made no causal interventions (its config has no `interventions:`).")
        return
    variants = ordered_variants(table["variant"].astype(str).tolist())
    variant = st.radio(
        "Variant", variants, horizontal=True, key=f"probes_intervention_variant_{data.ref}"
    ) if len(variants) > 1 else variants[0]
    st.plotly_chart(
        interventions_chart(table, variant or variants[0]), key=f"probes_interventions_{data.ref}"
    )
    st.caption("The task metric before and after removing the probed information at the "
               "hook (project_out: the class-mean directions; project_out_weights: the probe's "
               "weight directions; erase: LEACE), against the same intervention along random "
               "directions of equal rank (mean ± std).")
    shown = [c for c in INTERVENTION_COLUMNS_SHOWN if c in table.columns]
    st.dataframe(table[shown], hide_index=True)
