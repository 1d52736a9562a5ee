"""Figures of a `probe` run (probes/probe_experiment.py): the probe score per layer with its
confidence band, the control task and selectivity (Hewitt & Liang 2019, "Designing and
Interpreting Probes with Control Tasks"), the MDL compression (Voita & Titov 2020,
"Information-Theoretic Probing with Minimum Description Length"), and the causal
interventions (the task metric before and after removing what a probe found, against the
same intervention along random directions; Elazar et al. 2021, "Amnesic Probing";
Belrose et al. 2023, "LEACE").

Every function takes the run's tables as saved (`probe_layers`: one row per (variant,
target, layer); `probe_interventions`: one row per (variant, target, intervention)).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative

FINAL = "final"
RANDOM_INIT = "random_init"
LAYER_COLUMNS = ("variant", "target", "hook", "layer", "mean", "low", "high", "metric")
INTERVENTION_COLUMNS = (
    "variant", "target", "intervention", "before", "after", "random_mean", "random_std",
)
METRIC_NAMES = {"accuracy": "accuracy", "r2": "R²"}
BAND_ALPHA = 0.15
_COLOURS = qualitative.Plotly


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} must be a DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")


def variant_dash(variant: str) -> str:
    """The line style of a model variant: the final model solid, the untrained baseline
    (`random_init`) dotted, earlier checkpoints dashed."""
    if variant == FINAL:
        return "solid"
    return "dot" if variant == RANDOM_INIT else "dash"


def ordered_variants(variants: Sequence[str]) -> list[str]:
    """Distinct variants in the order drawn: final, the checkpoints as given, random_init."""
    distinct = list(dict.fromkeys(variants))
    rank = {FINAL: 0, RANDOM_INIT: 2}
    return sorted(distinct, key=lambda v: rank.get(v, 1))


def hook_order(frame: pd.DataFrame) -> list[str]:
    """The hook names of a `probe_layers` table in layer order."""
    _check_columns(frame, ("hook", "layer"), "the probe table")
    first = frame.sort_values("layer", kind="stable").drop_duplicates("hook")
    return first["hook"].tolist()


def _colours(targets: Sequence[str]) -> dict[str, str]:
    return {t: _COLOURS[i % len(_COLOURS)] for i, t in enumerate(dict.fromkeys(targets))}


def _translucent(colour: str, alpha: float = BAND_ALPHA) -> str:
    red, green, blue = hex_to_rgb(colour)
    return f"rgba({red}, {green}, {blue}, {alpha})"


def _series(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(target, variant, rows sorted by layer) per series, targets in table order and
    variants in `ordered_variants` order."""
    series = []
    for target in dict.fromkeys(frame["target"]):
        rows = frame[frame["target"] == target]
        for variant in ordered_variants(rows["variant"].tolist()):
            chosen = rows[rows["variant"] == variant].sort_values("layer", kind="stable")
            series.append((str(target), str(variant), chosen))
    return series


def band_traces(
    x: Sequence[str], low: Sequence[float], high: Sequence[float], colour: str, group: str
) -> list[go.Scatter]:
    """A shaded band from `low` to `high`: an invisible upper edge, then the lower edge
    filled up to it. Both traces are named "<group> high" / "<group> low"."""
    edge = {"mode": "lines", "line": {"width": 0}, "legendgroup": group, "showlegend": False,
            "hoverinfo": "skip", "x": list(x)}
    return [
        go.Scatter(name=f"{group} high", y=list(high), **edge),
        go.Scatter(name=f"{group} low", y=list(low), fill="tonexty",
                   fillcolor=_translucent(colour), **edge),
    ]


def layer_scores(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """The probe score per layer, one line per (target, variant) with its band.

    Args:
        frame: Rows of `probe_layers` (one metric: all "accuracy" or all "r2"): columns
            variant, target, hook, layer, mean, low, high (the 95% interval over seeds).
        title: Figure title; default "Probe <metric> per layer".

    Returns:
        A figure whose x axis is the hook names in layer order; per (target, variant) the
        band traces "<target> · <variant> high" / "... low" (see `band_traces`) and the
        line "<target> · <variant>" of the mean; a colour per target and a line style per
        variant (`variant_dash`).
    """
    _check_columns(frame, LAYER_COLUMNS, "the probe table")
    metrics = sorted(set(frame["metric"]))
    if len(metrics) > 1:
        raise ValueError(f"layer_scores() draws one metric at a time, got {metrics}")
    metric = METRIC_NAMES.get(metrics[0], metrics[0]) if metrics else "score"
    colours = _colours(frame["target"].tolist())
    figure = go.Figure()
    for target, variant, rows in _series(frame):
        group = f"{target} · {variant}"
        hooks = rows["hook"].tolist()
        figure.add_traces(band_traces(hooks, rows["low"], rows["high"], colours[target], group))
        figure.add_trace(go.Scatter(
            x=hooks, y=rows["mean"].tolist(), name=group, legendgroup=group, mode="lines+markers",
            line={"color": colours[target], "dash": variant_dash(variant)},
            customdata=rows[["low", "high"]].to_numpy(),
            hovertemplate=(f"{group}<br>%{{x}}<br>{metric} %{{y:.4g}} "
                           "(95%: %{customdata[0]:.4g} to %{customdata[1]:.4g})<extra></extra>"),
        ))
    _layer_axes(figure, frame, title or f"Probe {metric} per layer", metric)
    return figure


def _layer_axes(figure: go.Figure, frame: pd.DataFrame, title: str, y_title: str) -> None:
    figure.update_layout(title=title, hovermode="closest", legend_title_text="target · variant")
    figure.update_xaxes(title="hook", type="category", categoryorder="array",
                        categoryarray=hook_order(frame))
    figure.update_yaxes(title=y_title)


def selectivity_chart(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """The control-task accuracy and the selectivity (probe accuracy minus control-task
    accuracy, Hewitt & Liang 2019) per layer, for the rows that have them.

    Args:
        frame: Rows of `probe_layers` with columns control_mean and selectivity (NaN
            where not computed: those rows are left out).

    Returns:
        Per (target, variant): a dashed line "<target> · <variant> control" and a solid
        line with markers "<target> · <variant> selectivity".
    """
    _check_columns(frame, (*LAYER_COLUMNS, "control_mean", "selectivity"), "the probe table")
    rows = frame[frame["selectivity"].notna()]
    if rows.empty:
        raise ValueError("no row of the probe table has a selectivity")
    colours = _colours(rows["target"].tolist())
    figure = go.Figure()
    for target, variant, part in _series(rows):
        group, hooks = f"{target} · {variant}", part["hook"].tolist()
        for column, name, dash in (("control_mean", "control", "dash"),
                                   ("selectivity", "selectivity", "solid")):
            figure.add_trace(go.Scatter(
                x=hooks, y=part[column].tolist(), name=f"{group} {name}", legendgroup=group,
                mode="lines+markers", line={"color": colours[target], "dash": dash},
                hovertemplate=f"{group}<br>%{{x}}<br>{name} %{{y:.4g}}<extra></extra>",
            ))
    figure.add_hline(y=0, line={"color": "grey", "width": 1})
    _layer_axes(figure, frame, title or "Control-task accuracy and selectivity per layer",
                "accuracy")
    return figure


def mdl_chart(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """The MDL compression (uniform codelength / online codelength, Voita & Titov 2020) per
    layer, for the rows that have it; the online codelength in bits on hover.

    Returns:
        One line per (target, variant), "<target> · <variant>", styled as in
        `layer_scores`.
    """
    _check_columns(frame, (*LAYER_COLUMNS, "compression"), "the probe table")
    rows = frame[frame["compression"].notna()]
    if rows.empty:
        raise ValueError("no row of the probe table has an MDL compression")
    bits = rows["mdl_bits"] if "mdl_bits" in rows.columns else pd.Series(float("nan"), rows.index)
    rows = rows.assign(mdl_bits=bits)
    colours = _colours(rows["target"].tolist())
    figure = go.Figure()
    for target, variant, part in _series(rows):
        group = f"{target} · {variant}"
        figure.add_trace(go.Scatter(
            x=part["hook"].tolist(), y=part["compression"].tolist(), name=group,
            mode="lines+markers",
            line={"color": colours[target], "dash": variant_dash(variant)},
            customdata=part["mdl_bits"].to_numpy(),
            hovertemplate=(f"{group}<br>%{{x}}<br>compression %{{y:.4g}}"
                           "<br>online codelength %{customdata:.4g} bits<extra></extra>"),
        ))
    _layer_axes(figure, frame, title or "MDL compression per layer",
                "compression (uniform / online codelength)")
    return figure


def intervention_labels(frame: pd.DataFrame) -> list[str]:
    """The bar positions of `interventions_chart`: "<target> · <intervention>" per row."""
    return [f"{t} · {i}" for t, i in zip(frame["target"], frame["intervention"], strict=True)]


def interventions_chart(
    frame: pd.DataFrame, variant: str, *, metric: str | None = None, title: str | None = None
) -> go.Figure:
    """The interventions on one variant as grouped bars per (target, intervention): the
    task metric before, after, and after the same intervention along random directions
    (mean, with their standard deviation as error bars).

    Args:
        frame: The `probe_interventions` table (any variants; `variant`'s rows are drawn).
        variant: The model variant to draw.
        metric: The metric's name on the y axis; default the table's `metric` column.

    Returns:
        Three `go.Bar` traces named "before", "after", "random directions", each with one
        bar per row of `variant` at `intervention_labels`.
    """
    _check_columns(frame, INTERVENTION_COLUMNS, "the interventions table")
    rows = frame[frame["variant"] == variant]
    if rows.empty:
        raise ValueError(f"the interventions table has no row for variant {variant!r}; "
                         f"it has {sorted(set(frame['variant']))}")
    if metric is None and "metric" in rows.columns:
        metric = ", ".join(sorted(set(rows["metric"].astype(str))))
    labels = intervention_labels(rows)
    figure = go.Figure()
    for column, name in (("before", "before"), ("after", "after"),
                         ("random_mean", "random directions")):
        error = None
        if column == "random_mean":
            error = {"type": "data", "array": rows["random_std"].tolist(), "visible": True}
        figure.add_trace(go.Bar(
            x=labels, y=rows[column].tolist(), name=name, error_y=error,
            hovertemplate=f"%{{x}}<br>{name} %{{y:.4g}}<extra></extra>",
        ))
    figure.update_layout(barmode="group", title=title or f"Interventions on {variant}",
                         legend_title_text="metric measured")
    figure.update_xaxes(title="target · intervention", type="category")
    figure.update_yaxes(title=metric or "metric")
    return figure
