"""The Heads page: a `heads` run's per-head scores as layer x head heatmaps, the role
table, and an attention-pattern viewer on example tokens.

Reads only what the run saved (`dashboards.loaders_heads`); never runs a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboards.figures.heads import attention_pattern, head_heatmap
from dashboards.loaders_heads import HeadsRunData, heads_run
from dashboards.run_picker import pick_run
from interp.runs.errors import one_line

KIND = "heads"
DEFAULT_SCORES = (
    "previous_token",
    "duplicate_token",
    "induction",
    "first_token",
    "copying",
    "ablation_change",
)
"""Scores drawn when the page opens (those the run has)."""
HEATMAPS_PER_ROW = 2


def render_heads_page(runs_dir: Path) -> None:
    """Draw the Heads page for the run store at `runs_dir`."""
    st.header("Heads")
    info = pick_run(runs_dir, KIND, key="heads_run")
    if info is None:
        return
    try:
        data = heads_run(str(runs_dir), info.ref)
    except Exception as error:  # a damaged run must not take the page down
        st.warning(f"Could not read run `{info.ref}`: {one_line(error)}")
        return
    n_layers, n_heads = data.shape
    columns = st.columns(3)
    columns[0].metric("layers x heads", f"{n_layers} x {n_heads}")
    columns[1].metric("probe", str(data.summary.get("probe", "?")))
    columns[2].metric("probe sequences", data.summary.get("n_sequences", "?"))
    render_summary(data.summary)
    render_heatmaps(data)
    render_roles(data)
    render_patterns(data)


def top_heads_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per role of the summary's `top_heads`: the top head, its score, the role's
    threshold and how many heads pass it."""
    rows = [
        {
            "role": role,
            "top head": f"L{top.get('layer')}H{top.get('head')}",
            "score": top.get("score"),
            "threshold": top.get("threshold"),
            "heads passing": top.get("n_heads"),
        }
        for role, top in summary.get("top_heads", {}).items()
        if isinstance(top, dict)
    ]
    return pd.DataFrame(rows, columns=["role", "top head", "score", "threshold", "heads passing"])


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "?"


def induction_circuit_text(summary: dict[str, Any]) -> tuple[str, bool] | None:
    """The summary's induction circuit (Elhage et al. 2021) in one sentence, and whether
    it holds: the top induction head passes its threshold and the earlier head's
    K-composition into it beats the random baseline. None when the run has none (one
    layer, or no weights to compose)."""
    circuit = summary.get("induction_circuit")
    if not isinstance(circuit, dict):
        return None
    head, source = circuit.get("induction_head", {}), circuit.get("k_composition_from", {})
    head_name = f"L{head.get('layer')}H{head.get('head')}"
    source_name = f"L{source.get('layer')}H{source.get('head')}"
    text = (
        f"{source_name} (previous-token score {_number(source.get('previous_token'))}) "
        f"K-composes into {head_name} (induction score {_number(head.get('induction'))}, "
        f"threshold {_number(head.get('threshold'))}) at {_number(source.get('score'))}, "
        f"against {_number(source.get('baseline'))} for random weights."
    )
    holds = head.get("passes") is True and source.get("above_baseline") is True
    if not holds:
        why = []
        if head.get("passes") is False:
            why.append(f"{head_name} is below the induction threshold")
        if source.get("above_baseline") is False:
            why.append("the composition is no stronger than random weights'")
        if not why:  # a run saved before the summary said
            why.append("this run's summary predates the check")
        text += " Not an induction circuit: " + "; ".join(why) + "."
    return text, holds


def render_summary(summary: dict[str, Any]) -> None:
    """The top head of each role, and the induction circuit the summary names."""
    st.subheader("Summary")
    table = top_heads_frame(summary)
    if not table.empty:
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                c: st.column_config.NumberColumn(c, format="%.3f") for c in ("score", "threshold")
            },
        )
    circuit = induction_circuit_text(summary)
    if circuit is not None:
        text, holds = circuit
        (st.success if holds else st.info)(f"Induction circuit: {text}")


def render_heatmaps(data: HeadsRunData) -> None:
    """A layer x head heatmap of each chosen score."""
    st.subheader("Scores")
    available = [c for c in data.score_columns if data.roles[c].notna().any()]
    chosen = st.multiselect(
        "Scores",
        available,
        default=[s for s in DEFAULT_SCORES if s in available] or available[:4],
        key=f"heads_scores_{data.ref}",
    )
    for start in range(0, len(chosen), HEATMAPS_PER_ROW):
        row = st.columns(HEATMAPS_PER_ROW)
        for column, score in zip(row, chosen[start : start + HEATMAPS_PER_ROW], strict=False):
            column.plotly_chart(
                head_heatmap(data.roles, score), key=f"heads_heatmap_{data.ref}_{score}"
            )
    empty = [c for c in data.score_columns if c not in available]
    if empty:
        st.caption(
            f"No head has a score for {', '.join(empty)} in this run (e.g. a model without "
            "special tokens has no special-token score), so they are not offered."
        )


def role_names(roles: pd.Series) -> list[str]:
    """Every role that some head has, in order of first appearance."""
    seen: dict[str, None] = {}
    for text in roles.fillna("").astype(str):
        seen.update(dict.fromkeys(r for r in text.split(",") if r))
    return list(seen)


def render_roles(data: HeadsRunData) -> None:
    """The role table: one row per head, filterable by role."""
    st.subheader("Roles")
    table = data.roles
    names = role_names(table["roles"])
    if not names:
        st.caption("No head passes any role threshold; every head's scores are below.")
    chosen = st.multiselect(
        "Only heads with any of these roles", names, key=f"heads_roles_filter_{data.ref}"
    )
    if chosen:
        has = table["roles"].fillna("").str.split(",").map(lambda rs: bool(set(rs) & set(chosen)))
        table = table[has]
    leading = [c for c in ("layer", "head", "roles", "group") if c in table.columns]
    rest = [c for c in data.score_columns if c not in leading]
    st.dataframe(
        table[leading + rest],
        hide_index=True,
        column_config={c: st.column_config.NumberColumn(c, format="%.3f") for c in rest},
    )


def _default_head(data: HeadsRunData, heads: list[str]) -> int:
    """Index of the top induction head (from the summary) in `heads`, else 0."""
    top = data.summary.get("top_heads", {}).get("induction")
    if isinstance(top, dict):
        name = f"L{top.get('layer')}H{top.get('head')}"
        if name in heads:
            return heads.index(name)
    return 0


def render_patterns(data: HeadsRunData) -> None:
    """One head's attention pattern on one example sequence."""
    st.subheader("Attention patterns")
    if data.examples is None:
        st.info("This run saved no example attention patterns (it predates them, or its "
                "`probe.n_pattern_examples` is 0); run it again to see them here.")
        return
    n_layers, n_heads = data.examples.patterns.shape[1:3]
    heads = [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]
    strings = data.examples.token_strings
    columns = st.columns(2)
    example = columns[0].selectbox(
        "Example",
        list(range(len(strings))),
        format_func=lambda i: f"{i}: {' '.join(strings[i][:12])}",
        key=f"heads_pattern_example_{data.ref}",
    )
    head_name = columns[1].selectbox(
        "Head", heads, index=_default_head(data, heads), key=f"heads_pattern_head_{data.ref}"
    )
    layer, head = divmod(heads.index(head_name), n_heads)
    pattern, tokens = data.examples.pattern(example, layer, head)
    st.plotly_chart(
        attention_pattern(pattern, tokens, title=f"{head_name} on example {example}"),
        key=f"heads_pattern_{data.ref}",
    )
