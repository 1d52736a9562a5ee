"""The Patching page: the activation-patching results of a `patching` run as heatmaps
(layer x position, layer x head, ...) with each value on hover, where the run saved one
the attribution-patching estimate of the target against the exact values, the direct
effects of the clean prompts (direct logit attribution per head and per component, where
a chosen head reads from on a chosen example, and the logit lens), and the clean and
corrupted prompts the run patched, token by token.

It reads what the run saved (`artifacts/patching_<target>.*`, `artifacts/attribution_<target>.*`,
`artifacts/logit_attribution.*`, `artifacts/logit_lens.*`, `artifacts/prompts.json`,
summary.json) and never runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import loaders_patching as data
from dashboards.figures.direct_effects import (
    component_attribution_bars,
    head_attribution_heatmap,
    head_source_bars,
    logit_lens_figure,
)
from dashboards.figures.patching import attribution_scatter, patching_heatmap, prompt_table
from dashboards.run_picker import pick_run
from interp.runs import RunInfo

KIND = "patching"

HOW_TO_MAKE_ONE = (
    "`interp run experiments/quickstart.yaml --runs-dir {runs_dir}` (it trains "
    "induction_2l, then patches it), or `interp run experiments/patching_induction.yaml "
    "--runs-dir {runs_dir}` once that store holds an induction_2l run"
)

DIRECTIONS = {
    "denoise": "clean activations patched into the corrupted run",
    "noise": "corrupted activations patched into the clean run",
}

DIFFERS_STYLE = "background-color: rgba(255, 170, 0, 0.35)"
"""How a position where the corrupted prompt differs from the clean one is highlighted."""


def render_patching_page(runs_dir: Path) -> None:
    """Draw the Patching page for the run store at `runs_dir`."""
    st.header("Patching")
    info = pick_run(
        runs_dir, KIND, key="patching_run", how=HOW_TO_MAKE_ONE.format(runs_dir=runs_dir),
        shows_partial=True,
    )
    if info is None:
        return
    render_result(info)
    render_direct_effects(info)
    render_prompts(info)


def render_result(info: RunInfo) -> None:
    """A target selector and the heatmap of that target's result."""
    targets = data.patching_targets(str(info.path))
    if not targets:
        st.info(f"`{info.ref}` has saved no patching result yet.")
        return
    target = st.selectbox("Target", targets, key=f"patching_target_{info.ref}")
    if target is None:
        return
    try:
        result = data.patching_result(str(info.path), target)
    except (ValueError, OSError) as error:
        st.warning(f"`{info.ref}`: the result of target {target!r} cannot be read: {error}")
        return
    metric = str(info.summary.get("metric") or "metric")
    value_name = f"normalised {metric}" if result.normalised else metric
    st.plotly_chart(patching_heatmap(
        result.values, result.axes, result.labels, value_name=value_name,
        title=f"{target}: {' x '.join(result.axes)} ({result.method} patching)",
        zmid=result.baseline,
    ))
    st.caption(result_caption(result, metric, info.summary.get(f"strongest_{target}")))
    render_attribution(info, target, result, value_name)


def result_caption(
    result: data.SavedPatching, metric: str, strongest: dict[str, Any] | None
) -> str:
    """What the heatmap shows, in a sentence or three."""
    what = DIRECTIONS.get(result.direction, result.direction)
    value_name = f"normalised {metric}" if result.normalised else metric
    text = (
        f"{metric} after patching each index ({what}). Unpatched: clean "
        f"{result.metric_clean:.4g}, corrupted {result.metric_corrupted:.4g}."
    )
    if result.normalised:
        text += " Normalised: 1 = the clean run, 0 = the corrupted run."
    unpatched = "corrupted" if result.direction == "denoise" else "clean"
    text += f" White: {result.baseline:.4g}, the {unpatched} run's value (no effect)."
    if isinstance(strongest, dict) and "value" in strongest:
        where = ", ".join(
            f"{k} {v}" for k, v in strongest.items() if k not in ("value", "effect")
        )
        text += f" Largest effect at {where}: {value_name} {float(strongest['value']):.4g}"
        if isinstance(strongest.get("effect"), int | float):
            # the effect is the change from the unpatched run patched into (the value
            # itself only for normalised denoising)
            text += f", a change of {float(strongest['effect']):+.4g}"
        text += "."
    return text


ESTIMATE_CAPTIONS = {
    "attribution": (
        "Attribution patching (Nanda 2023; Syed, Rager and Conmy 2023): the first-order "
        "estimate of every index's patch from one forward pass on each run and one backward "
        "pass"
    ),
    "attribution_qk_fix": (
        "AtP* (Kramár, Lieberum, Shah and Nanda 2024): attribution patching with the "
        "query-key fix, the patched attention pattern computed exactly and linearised only "
        "from the pattern on"
    ),
    "attribution_ig": (
        "Attribution patching with integrated gradients (Sundararajan et al. 2017): the "
        "gradient averaged along the line from each layer's base to its source activation"
    ),
}


def render_attribution(
    info: RunInfo, target: str, exact: data.SavedPatching, value_name: str
) -> None:
    """The attribution-patching estimate of `target` against its exact result, one point per
    index, when the run saved one (`attribution: true`); nothing when it did not."""
    try:
        estimate = data.attribution_result(str(info.path), target)
    except (ValueError, OSError) as error:
        st.warning(
            f"`{info.ref}`: the attribution estimate of target {target!r} cannot be read: "
            f"{error}"
        )
        return
    if estimate is None:
        return
    correlations = info.summary.get("attribution_correlation")
    correlation = correlations.get(target) if isinstance(correlations, dict) else None
    try:
        if (estimate.direction, estimate.normalised) != (exact.direction, exact.normalised):
            raise ValueError("it was computed on another scale than the exact result")
        figure = attribution_scatter(
            exact.values, estimate.values, exact.axes, exact.labels, estimate.method,
            correlation, target=target, value_name=value_name,
        )
    except ValueError as error:
        st.warning(
            f"`{info.ref}`: the attribution estimate of target {target!r} cannot be drawn: "
            f"{error}"
        )
        return
    st.plotly_chart(figure)
    patched = int(np.isfinite(exact.values).sum())
    st.caption(attribution_caption(estimate.method, correlation, patched, exact.values.size))


def attribution_caption(
    method: str, correlation: Any, n_indices: int, n_all: int | None = None
) -> str:
    """What the attribution scatter shows and how well the estimate agrees; `n_indices` of
    the `n_all` indices were patched exactly (fewer under `verify_top`)."""
    what = ESTIMATE_CAPTIONS.get(method, f"The estimate ({method})")
    text = (
        f"{what}, against the exact value above, one point per index. On the dashed line "
        "y = x the estimate is exact."
    )
    if n_all is not None and n_indices < n_all:
        text += (
            f" Exact patching ran on the estimate's {n_indices} strongest of the {n_all} "
            "indices only (`verify_top`); the others are blank above and absent here."
        )
    if isinstance(correlation, int | float) and not isinstance(correlation, bool):
        return text + (
            f" Pearson correlation with the exact values over the {n_indices} indices: "
            f"{float(correlation):.3f}."
        )
    if isinstance(correlation, str) and correlation.startswith("undefined"):
        reason = correlation.removeprefix("undefined").lstrip(": ")
        return text + f" The correlation is undefined: {reason}."
    return text + " The run's summary records no correlation for this target."


DIRECT_CAPTION = (
    "Direct logit attribution on the clean prompts: what each component writes into the "
    "residual stream that the unembedding reads at once, as a change of the logit "
    "difference (answer - wrong, in logits), averaged over the examples. This is the direct "
    "path only: a component that acts through later ones (an induction circuit's "
    "previous-token head) shows ~0 here however much it matters; patching, above, measures "
    "total effects."
)
LENS_CAPTION = (
    "Logit lens: the residual stream before each block, read through the model's final norm "
    "and unembedding as if it were the output (nostalgebraist 2020); the last stage is the "
    "model's own output."
)
NOT_COMPUTED = "not computed: "


def render_direct_effects(info: RunInfo) -> None:
    """The direct logit attribution (per head, per component) and the logit lens of the
    clean prompts, when the run saved them."""
    st.subheader("Direct effects")
    try:
        attribution, lens = data.direct_effects(str(info.path))
    except (ValueError, OSError) as error:
        st.warning(f"`{info.ref}`: the direct effects cannot be read: {error}")
        return
    summary = info.summary.get("direct_effects")
    if attribution is None and lens is None:
        text = f"`{info.ref}` saved no direct effects (logit_attribution, logit_lens)."
        if isinstance(summary, str) and summary.startswith(NOT_COMPUTED):
            text += f" They were {summary}."
        st.caption(text)
        return
    if attribution is None:
        st.caption(f"`{info.ref}` saved no direct logit attribution (logit_attribution).")
    else:
        for draw in (head_attribution_heatmap, component_attribution_bars):
            try:
                st.plotly_chart(draw(attribution))
            except ValueError as error:
                st.warning(f"`{info.ref}`: the direct logit attribution cannot be drawn: {error}")
        st.caption(DIRECT_CAPTION + top_components_text(summary))
        render_head_sources(info, attribution)
    if lens is None:
        st.caption(f"`{info.ref}` saved no logit lens (logit_lens).")
        return
    try:
        st.plotly_chart(logit_lens_figure(lens))
    except ValueError as error:
        st.warning(f"`{info.ref}`: the logit lens cannot be drawn: {error}")
        return
    st.caption(LENS_CAPTION)


def head_source_row(
    sources: np.ndarray, prompts: dict[str, Any], example: int, layer: int, head: int
) -> tuple[np.ndarray, list[str], int, float]:
    """From the `[example, layer, head, pos]` split and prompts.json: the head's contribution
    from each position up to the example's read position, those positions' clean tokens,
    the read position, and the head's direct effect on the example (its row's sum). A
    one-line ValueError when the two disagree."""
    n_examples, n_layers, n_heads, n_pos = sources.shape
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ValueError(f"head L{layer}H{head} is outside the saved {n_layers}x{n_heads} heads")
    tokens = _item(prompts["clean_tokens"], example)
    position = _item(prompts.get("position"), example)
    if not (0 <= example < n_examples) or not isinstance(tokens, list):
        raise ValueError(f"example {example} is missing from the split or the prompts")
    if not isinstance(position, int) or not 0 <= position < min(n_pos, len(tokens)):
        raise ValueError(f"example {example} has no valid read position ({position!r})")
    row = sources[example, layer, head]
    return row[: position + 1], [str(t) for t in tokens[: position + 1]], position, float(
        row.sum()
    )


def render_head_sources(info: RunInfo, attribution: pd.DataFrame) -> None:
    """Where a chosen head reads from: its direct effect on a chosen example split by the
    key position it attends to (the attribution's `sources`), when the run saved that."""
    st.markdown("**Where a head reads from**")
    try:
        sources = data.head_sources(str(info.path))
        prompts = data.patching_prompts(str(info.path)) if sources is not None else None
    except (ValueError, OSError) as error:
        st.warning(f"`{info.ref}`: the per-position split cannot be read: {error}")
        return
    if sources is None:
        st.caption(
            f"`{info.ref}` saved no per-position split of the heads' direct effects (no "
            "`sources` in logit_attribution.safetensors: an older run)."
        )
        return
    heads = attribution[attribution["kind"] == "head"].sort_values(["layer", "head"])
    if prompts is None or heads.empty or sources.shape[0] == 0:
        st.caption(f"`{info.ref}` saved no prompts or no heads to split by position.")
        return
    names = heads["component"].astype(str).tolist()
    largest = int(np.argmax(np.abs(heads["mean"].to_numpy(dtype=np.float64))))
    name = st.selectbox("Head", names, index=largest, key=f"patching_source_head_{info.ref}")
    n_examples = sources.shape[0]
    index = int(st.number_input(
        f"Example to split (0 to {n_examples - 1})", min_value=0, max_value=n_examples - 1,
        value=0, key=f"patching_source_example_{info.ref}",
    ))
    row = heads.iloc[names.index(str(name))]
    try:
        values, tokens, position, total = head_source_row(
            sources, prompts, index, int(row["layer"]), int(row["head"])
        )
        figure = head_source_bars(values, tokens, str(name), example=index)
    except ValueError as error:
        st.warning(f"`{info.ref}`: where {name} reads from cannot be drawn: {error}")
        return
    st.plotly_chart(figure)
    st.caption(
        f"{name}'s direct effect on example {index}, split by the key position it attends "
        "to (attention weight times that position's value through W_O, read along answer - "
        f"wrong through the final norm). The bars sum to the head's direct effect on this "
        f"example, {total:+.4g} logits, read at position {position} (`{tokens[-1]}`)."
    )


def top_components_text(summary: Any) -> str:
    """" Largest direct effects: L0H0 +0.175, ..." from the summary's `direct_effects`
    list ({"component", "logit_diff"} per entry, largest |effect| first); "" without one."""
    if not isinstance(summary, list):
        return ""
    parts = [
        f"{entry['component']} {float(entry['logit_diff']):+.3g}"
        for entry in summary
        if isinstance(entry, dict) and isinstance(entry.get("logit_diff"), int | float)
        and "component" in entry
    ]
    return f" Largest direct effects: {', '.join(parts)}." if parts else ""


def differing_style(table: pd.DataFrame) -> pd.DataFrame:
    """CSS per cell of a `prompt_table`: positions whose tokens differ are highlighted."""
    differs = table.loc["clean"] != table.loc["corrupted"]
    styles = pd.DataFrame("", index=table.index, columns=table.columns)
    styles.loc[:, differs] = DIFFERS_STYLE
    return styles


def render_prompts(info: RunInfo) -> None:
    """The clean and corrupted prompt of one chosen example, token by token."""
    st.subheader("Prompts")
    try:
        prompts = data.patching_prompts(str(info.path))
    except (ValueError, OSError) as error:
        st.warning(f"`{info.ref}`: the prompts cannot be read: {error}")
        return
    if prompts is None:
        st.caption(f"`{info.ref}` did not save its prompts (prompts.json).")
        return
    n_examples = len(prompts["clean_tokens"])
    if n_examples == 0:
        st.caption("The run patched no prompts.")
        return
    index = int(st.number_input(
        f"Example (0 to {n_examples - 1})", min_value=0, max_value=n_examples - 1, value=0,
        key=f"patching_example_{info.ref}",
    ))
    try:
        table = prompt_table(prompts["clean_tokens"][index], prompts["corrupted_tokens"][index])
    except ValueError as error:
        st.warning(f"`{info.ref}`: example {index}: {error}")
        return
    st.dataframe(table.style.apply(differing_style, axis=None))
    st.caption(example_caption(prompts, index))


def _item(values: Any, index: int) -> Any:
    return values[index] if isinstance(values, Sequence) and index < len(values) else None


def example_caption(prompts: dict[str, Any], index: int) -> str:
    """The answer and wrong tokens of an example and the position the metric reads."""
    parts = []
    for name in ("answer", "wrong"):
        token = _item(prompts.get(f"{name}_tokens"), index)
        if token is not None:
            parts.append(f"{name} token `{token}`")
    position = _item(prompts.get("position"), index)
    if position is not None:
        parts.append(f"read at position {position}")
    highlighted = "Highlighted: positions where the corrupted prompt differs."
    return f"{'; '.join(parts)}. {highlighted}" if parts else highlighted
