"""The Probes page on real (tiny) `probe` runs: one of a grokking model (checkpoint and
random-init variants, MDL, interventions) and one of an induction model (selectivity, no
interventions); and its figure functions on hand-made data."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from page_testing import assert_renders_without_torch, copy_run, figures_by_title, open_page
from streamlit.testing.v1 import AppTest
from tiny_probe_configs import tiny_probe_configs

from dashboards.figures.probes import (
    band_traces,
    hook_order,
    intervention_labels,
    interventions_chart,
    layer_scores,
    mdl_chart,
    ordered_variants,
    selectivity_chart,
    variant_dash,
)
from dashboards.loaders_probes import read_probe_run
from interp.cli import main
from interp.runs import RunStore

GROK_RUN, INDUCTION_RUN = "tiny_probe_grok/good", "tiny_probe_induction/good"
CONFIGS = tiny_probe_configs(mdl_on="induction")
"""Made in this order, so the grokking probe run is the newest finished probe run; MDL on
the induction run, the cheaper one."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: Any) -> RunStore:
    """The two probe runs (renamed `good` for fixed widget keys); a copy of the grokking
    one with a damaged table, started earlier; a failed probe run and a corrupt folder."""
    root = tmp_path_factory.mktemp("probes")
    runs = root / "runs"
    with one_torch_thread():
        for name, text in CONFIGS.items():
            (root / f"{name}.yaml").write_text(textwrap.dedent(text))
            argv = ["run", str(root / f"{name}.yaml"), "--runs-dir", str(runs), "--no-progress"]
            assert main(argv) == 0
    store = RunStore(runs)
    for ref in (GROK_RUN, INDUCTION_RUN):
        experiment = ref.split("/")[0]
        store.latest(experiment).path.rename(runs / ref)
    damaged = copy_run(runs / GROK_RUN, "damaged")
    (damaged / "artifacts" / "probe_layers.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(RuntimeError), store.create(
        "tiny_probe_grok", "probe", {}, run_id="zz-failed"
    ):
        raise RuntimeError("probe fit diverged")
    corrupt = store.create("tiny_probe_grok", "probe", {}, run_id="zz-corrupt")
    (corrupt.path / "manifest.json").write_text("{ not json")
    return store


def _open(runs_dir: Path) -> AppTest:
    app = open_page(runs_dir, "probes")
    assert not app.exception
    assert [header.value for header in app.header] == ["Probes"]
    return app


def _traces(figure: go.Figure) -> dict[str, Any]:
    return {trace.name: trace for trace in figure.data}


def test_page_draws_bands_equal_to_the_saved_table(store: RunStore) -> None:
    app = _open(store.root)
    assert app.selectbox(key="probes_run").value == GROK_RUN
    warnings = [w.value for w in app.warning]
    assert len(warnings) == 1 and "tiny_probe_grok/zz-corrupt` is corrupt" in warnings[0]
    layers = store.load(GROK_RUN).load_table("probe_layers")
    targets = list(dict.fromkeys(layers["target"]))
    assert app.multiselect(key=f"probes_targets_{GROK_RUN}").value == targets[:4]
    app.multiselect(key=f"probes_targets_{GROK_RUN}").set_value(["sum", "fourier_key"]).run()
    assert not app.exception

    charts = figures_by_title(app)
    assert set(charts) == {"Probe accuracy per layer", "Probe R² per layer",
                           "Interventions on final"}
    accuracy = _traces(charts["Probe accuracy per layer"])
    r2 = _traces(charts["Probe R² per layer"])
    for variant in ("final", "epoch_20", "random_init"):
        for target, traces in (("sum", accuracy), ("fourier_key", r2)):
            rows = layers[(layers["variant"] == variant) & (layers["target"] == target)]
            rows = rows.sort_values("layer")
            group = f"{target} · {variant}"
            np.testing.assert_allclose(list(traces[f"{group} high"].y), rows["high"])
            np.testing.assert_allclose(list(traces[f"{group} low"].y), rows["low"])
            np.testing.assert_allclose(list(traces[group].y), rows["mean"])
            assert list(traces[group].x) == rows["hook"].tolist()
            assert traces[f"{group} low"].fill == "tonexty"
            assert traces[group].line.dash == variant_dash(variant)
    assert {accuracy[f"sum · {v}"].line.dash for v in ("final", "epoch_20", "random_init")} == {
        "solid", "dash", "dot"
    }
    captions = " ".join(c.value for c in app.caption)
    assert "No selectivity" in captions and "No MDL codelength" in captions  # none computed


def test_interventions_chart_and_table_equal_the_saved_table(store: RunStore) -> None:
    app = _open(store.root)
    table = store.load(GROK_RUN).load_table("probe_interventions")
    radio = app.radio(key=f"probes_intervention_variant_{GROK_RUN}")
    assert list(radio.options) == ["final", "epoch_20"]
    for variant in ("final", "epoch_20"):
        app.radio(key=f"probes_intervention_variant_{GROK_RUN}").set_value(variant).run()
        assert not app.exception
        bars = _traces(figures_by_title(app)[f"Interventions on {variant}"])
        rows = table[table["variant"] == variant]
        labels = [f"{t} · {i}" for t, i in zip(rows["target"], rows["intervention"], strict=True)]
        for name, column in (("before", "before"), ("after", "after"),
                             ("random directions", "random_mean")):
            assert list(bars[name].x) == labels
            np.testing.assert_allclose(list(bars[name].y), rows[column])
        np.testing.assert_allclose(list(bars["random directions"].error_y.array),
                                   rows["random_std"])
    shown = next(d.value for d in app.dataframe if "intervention" in d.value.columns)
    np.testing.assert_allclose(shown["after"], table["after"])


def test_run_with_selectivity_and_no_interventions(store: RunStore) -> None:
    app = _open(store.root)
    app.selectbox(key="probes_run").set_value(INDUCTION_RUN).run()
    assert not app.exception
    assert any("made no causal interventions" in i.value for i in app.info)
    layers = store.load(INDUCTION_RUN).load_table("probe_layers")
    charts = figures_by_title(app)
    assert set(charts) == {"Probe accuracy per layer", "MDL compression per layer",
                           "Control-task accuracy and selectivity per layer"}
    lines = _traces(charts["Control-task accuracy and selectivity per layer"])
    for target in layers["target"].unique():
        rows = layers[layers["target"] == target].sort_values("layer")
        np.testing.assert_allclose(list(lines[f"{target} · final selectivity"].y),
                                   rows["selectivity"])
        np.testing.assert_allclose(list(lines[f"{target} · final control"].y),
                                   rows["control_mean"])
        mdl = _traces(charts["MDL compression per layer"])[f"{target} · final"]
        np.testing.assert_allclose(list(mdl.y), rows["compression"])
        np.testing.assert_allclose(list(mdl.customdata), rows["mdl_bits"])


def test_failed_damaged_and_corrupt_runs_show_why_and_the_good_run_still_draws(
    store: RunStore,
) -> None:
    app = _open(store.root)
    options = app.selectbox(key="probes_run").options
    assert "tiny_probe_grok/zz-corrupt" not in options  # named above, never offered
    app.selectbox(key="probes_run").set_value("tiny_probe_grok/zz-failed").run()
    assert not app.exception
    assert any("failed: RuntimeError: probe fit diverged" in w.value for w in app.warning)
    assert not app.get("plotly_chart")

    app.selectbox(key="probes_run").set_value("tiny_probe_grok/damaged").run()
    assert not app.exception
    assert any("Could not read run `tiny_probe_grok/damaged`" in w.value for w in app.warning)
    assert not app.get("plotly_chart")

    app.selectbox(key="probes_run").set_value(GROK_RUN).run()
    assert not app.exception and len(app.get("plotly_chart")) == 3


def test_no_probe_runs_names_the_configs(tmp_path: Path) -> None:
    app = _open(tmp_path / "nothing-here")
    assert any("experiments/probe_grokking.yaml" in i.value for i in app.info)
    assert not app.get("plotly_chart")


def test_reader_fills_absent_control_columns(store: RunStore) -> None:
    data = read_probe_run(store.load(INDUCTION_RUN))
    assert data.interventions is None
    assert data.layers["selectivity"].notna().all() and data.layers["compression"].notna().all()
    grok = read_probe_run(store.load(GROK_RUN))
    assert grok.interventions is not None and grok.layers["selectivity"].isna().all()
    saved = store.load(GROK_RUN).load_table("probe_layers")
    assert "control_mean" not in saved.columns  # the reader filled it in
    assert data.variants == ["final"]


def test_opening_the_page_never_imports_torch(store: RunStore) -> None:
    assert_renders_without_torch("probes", store.root)


# -- figures on hand-made data

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]


def _layers() -> pd.DataFrame:
    """Two targets x two variants x three layers, rows shuffled."""
    rows = []
    for target in ("a", "b"):
        for variant in ("random_init", "final"):
            for layer in (2, 0, 1):
                mean = 0.1 * layer + (0.5 if variant == "final" else 0.0) + (target == "b")
                rows.append({"variant": variant, "target": target, "hook": HOOKS[layer],
                             "layer": layer, "mean": mean, "low": mean - 0.05,
                             "high": mean + 0.05, "n_seeds": 3, "metric": "accuracy"})
    return pd.DataFrame(rows)


def test_layer_scores_draws_a_band_and_a_line_per_series_in_layer_order() -> None:
    frame = _layers()
    figure = layer_scores(frame)
    traces = _traces(figure)
    assert len(figure.data) == 2 * 2 * 3
    line = traces["b · final"]
    assert list(line.x) == HOOKS
    np.testing.assert_allclose(list(line.y), [1.5, 1.6, 1.7])
    np.testing.assert_allclose(list(traces["b · final low"].y), [1.45, 1.55, 1.65])
    np.testing.assert_allclose(list(traces["b · final high"].y), [1.55, 1.65, 1.75])
    assert traces["a · random_init"].line.dash == "dot" and line.line.dash == "solid"
    assert traces["a · final"].line.color != line.line.color  # a colour per target
    assert traces["a · final"].line.color == traces["a · random_init"].line.color
    assert [t.name for t in figure.data][:3] == ["a · final high", "a · final low", "a · final"]
    assert list(figure.layout.xaxis.categoryarray) == HOOKS
    assert figure.layout.title.text == "Probe accuracy per layer"
    mixed = frame.assign(metric=["accuracy"] * 6 + ["r2"] * 6)
    with pytest.raises(ValueError, match="one metric at a time"):
        layer_scores(mixed)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['high'\]"):
        layer_scores(frame.drop(columns="high"))


def test_band_traces_fill_between_the_edges() -> None:
    upper, lower = band_traces(["x", "y"], [0.0, 1.0], [2.0, 3.0], "#636EFA", "g")
    assert (upper.name, lower.name) == ("g high", "g low")
    assert list(upper.y) == [2.0, 3.0] and list(lower.y) == [0.0, 1.0]
    assert upper.fill is None and lower.fill == "tonexty"
    assert lower.fillcolor == "rgba(99, 110, 250, 0.15)"


def test_selectivity_and_mdl_charts_keep_only_rows_with_values() -> None:
    frame = _layers()
    frame["control_mean"] = np.where(frame["variant"] == "final", 0.4, np.nan)
    frame["selectivity"] = frame["mean"] - frame["control_mean"]
    frame["compression"] = np.where(frame["target"] == "a", frame["layer"] + 1.0, np.nan)
    frame["mdl_bits"] = 100.0 / frame["compression"]
    lines = _traces(selectivity_chart(frame))
    assert sorted(lines) == ["a · final control", "a · final selectivity",
                             "b · final control", "b · final selectivity"]
    np.testing.assert_allclose(list(lines["b · final selectivity"].y), [1.1, 1.2, 1.3])
    mdl = _traces(mdl_chart(frame))
    assert sorted(mdl) == ["a · final", "a · random_init"]
    np.testing.assert_allclose(list(mdl["a · final"].y), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(list(mdl["a · final"].customdata), [100.0, 50.0, 100 / 3])
    with pytest.raises(ValueError, match="selectivity"):
        selectivity_chart(frame.assign(selectivity=np.nan))
    with pytest.raises(ValueError, match="MDL"):
        mdl_chart(frame.assign(compression=np.nan))


def test_interventions_chart_groups_bars_per_target_and_intervention() -> None:
    frame = pd.DataFrame({
        "variant": ["final", "final", "epoch_5"], "target": ["sum", "sum", "sum"],
        "intervention": ["project_out", "erase", "erase"], "metric": ["accuracy"] * 3,
        "before": [0.9, 0.9, 0.5], "after": [0.2, 0.1, 0.5], "random_mean": [0.85, 0.88, 0.5],
        "random_std": [0.02, 0.01, 0.0],
    })
    figure = interventions_chart(frame, "final")
    bars = _traces(figure)
    assert list(bars) == ["before", "after", "random directions"]
    assert list(bars["after"].x) == ["sum · project_out", "sum · erase"]
    assert list(bars["after"].y) == [0.2, 0.1]
    assert list(bars["random directions"].error_y.array) == [0.02, 0.01]
    assert figure.layout.barmode == "group" and figure.layout.yaxis.title.text == "accuracy"
    assert intervention_labels(frame.iloc[2:]) == ["sum · erase"]
    with pytest.raises(ValueError, match="no row for variant 'random_init'"):
        interventions_chart(frame, "random_init")
    with pytest.raises(ValueError, match="random_std"):
        interventions_chart(frame.drop(columns="random_std"), "final")


def test_variant_order_style_and_hook_order() -> None:
    assert ordered_variants(["random_init", "epoch_9", "final", "epoch_2", "final"]) == [
        "final", "epoch_9", "epoch_2", "random_init"
    ]
    assert [variant_dash(v) for v in ("final", "epoch_9", "random_init")] == [
        "solid", "dash", "dot"
    ]
    assert hook_order(_layers()) == HOOKS


def test_scores_caption_names_the_seeds_band_and_metrics() -> None:
    from dashboards.views.probes import scores_caption

    rows = pd.DataFrame({"metric": ["accuracy", "r2"], "n_seeds": [3, 3]})
    text = scores_caption(rows)
    assert "over 3 split seeds" in text and "95% t interval" in text
    assert "Accuracy is the share of held-out examples" in text and "R² is 1 -" in text
    assert "accuracy = accuracy" not in text
    one = scores_caption(pd.DataFrame({"metric": ["accuracy"], "n_seeds": [1]}))
    assert "one split seed (no band" in one and "R²" not in one
