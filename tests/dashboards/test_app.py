"""Tests of the dashboard's Runs page on a run store built in a temporary folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from page_testing import assert_renders_without_torch, figures
from streamlit.testing.v1 import AppTest

from dashboards.app import page_specs, runs_dir_from
from dashboards.figures import metric_curves
from interp.runs import RunStore

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
TIMEOUT_S = 60


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """A store with a done run (metrics, summary), a failed run and a corrupt folder."""
    store = RunStore(tmp_path / "runs")
    config = {"lr": 0.1, "model": {"n_layers": 1}}
    with store.create("grok", "train", config, run_id="r-done") as run:
        for step in range(5):
            run.log(step, loss=1.0 / (step + 1), acc=step / 4)
        run.write_summary({"test_acc": 0.98})
    with pytest.raises(RuntimeError), store.create(
        "grok", "train", {"lr": 0.3, "model": {"n_layers": 1}}, run_id="r-failed"
    ):
        raise RuntimeError("loss went to nan")
    corrupt = store.create("probe", "probe", {}, run_id="r-corrupt")
    (corrupt.path / "manifest.json").write_text("{ this is not json")
    return store.root


def _app(monkeypatch: pytest.MonkeyPatch, runs_dir: Path) -> AppTest:
    monkeypatch.setenv("INTERP_RUNS_DIR", str(runs_dir))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()


def _runs_table(app: AppTest) -> pd.DataFrame:
    return app.dataframe[0].value


def test_runs_page_lists_every_run_with_its_status(
    monkeypatch: pytest.MonkeyPatch, runs_dir: Path
) -> None:
    app = _app(monkeypatch, runs_dir)
    assert not app.exception
    table = _runs_table(app).set_index("run_id")
    assert sorted(table.index) == ["r-corrupt", "r-done", "r-failed"]
    assert table.loc["r-done", "status"] == "done"
    assert table.loc["r-done", "test_acc"] == pytest.approx(0.98)
    assert table.loc["r-failed", "status"] == "failed"
    assert table.loc["r-failed", "error"] == "RuntimeError: loss went to nan"
    assert table.loc["r-corrupt", "status"] == "corrupt"
    assert "manifest.json" in table.loc["r-corrupt", "error"]
    assert "path" not in table.columns
    assert app.selectbox(key="runs_metrics_run").value == "grok/r-failed"  # newest first
    assert len(app.get("plotly_chart")) == 0  # it logged no metrics

    app.selectbox(key="runs_metrics_run").set_value("grok/r-done").run()
    assert not app.exception
    assert len(app.get("plotly_chart")) == 1
    assert app.multiselect(key="runs_metrics_y_grok/r-done").value == ["loss", "acc"]


def test_filters_compare_and_metrics(monkeypatch: pytest.MonkeyPatch, runs_dir: Path) -> None:
    app = _app(monkeypatch, runs_dir)
    app.multiselect(key="runs_filter_status").set_value(["corrupt"]).run()
    assert not app.exception
    assert _runs_table(app)["run_id"].tolist() == ["r-corrupt"]

    app.multiselect(key="runs_filter_status").set_value([]).run()
    app.multiselect(key="runs_filter_experiment").set_value(["grok"]).run()
    assert sorted(_runs_table(app)["run_id"]) == ["r-done", "r-failed"]

    app.multiselect(key="runs_compare").set_value(["grok/r-done", "grok/r-failed"]).run()
    assert not app.exception
    comparison = app.dataframe[1].value
    assert list(comparison.columns) == ["grok/r-done", "grok/r-failed"]
    assert comparison.loc["config.lr"].tolist() == ["0.1", "0.3"]
    assert comparison.loc["status"].tolist() == ["done", "failed"]

    app.checkbox(key="runs_compare_diff").check().run()
    assert "config.model.n_layers" not in app.dataframe[1].value.index

    app.selectbox(key="runs_metrics_run").set_value("grok/r-failed").run()
    assert not app.exception
    assert any("logged no numeric metrics" in c.value for c in app.caption)


def test_corrupt_run_chosen_for_metrics_shows_a_warning(
    monkeypatch: pytest.MonkeyPatch, runs_dir: Path
) -> None:
    app = _app(monkeypatch, runs_dir)
    app.selectbox(key="runs_metrics_run").set_value("probe/r-corrupt").run()
    assert not app.exception
    assert any("corrupt" in w.value for w in app.warning)


def test_summary_values_of_mixed_types_are_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = RunStore(tmp_path / "runs")
    for run_id, summary in [("a", {"x": 1.5, "y": 2, "z": [1, 2]}), ("b", {"x": "n/a", "y": 0.5})]:
        with store.create("exp", "train", {}, run_id=run_id) as run:
            run.write_summary(summary)
    app = _app(monkeypatch, store.root)
    assert not app.exception
    table = _runs_table(app).set_index("run_id")
    assert table.loc["a", "x"] == "1.5" and table.loc["b", "x"] == "n/a"
    assert table["y"].tolist() == [0.5, 2.0]  # newest first


@pytest.mark.parametrize("make_folder", [False, True])
def test_missing_or_empty_store_shows_info(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_folder: bool
) -> None:
    folder = tmp_path / "no-runs-here"
    if make_folder:
        folder.mkdir()
    app = _app(monkeypatch, folder)
    assert not app.exception
    assert len(app.dataframe) == 0
    expected = "No runs in" if make_folder else "No runs folder"
    assert any(expected in info.value for info in app.info)


def test_sidebar_changes_the_runs_folder(
    monkeypatch: pytest.MonkeyPatch, runs_dir: Path, tmp_path: Path
) -> None:
    app = _app(monkeypatch, tmp_path / "elsewhere")
    assert len(app.dataframe) == 0
    app.sidebar.text_input(key="runs_dir").set_value(str(runs_dir)).run()
    assert not app.exception
    assert len(_runs_table(app)) == 3


def test_runs_dir_precedence() -> None:
    env = {"INTERP_RUNS_DIR": "/from/env"}
    assert runs_dir_from(["--runs-dir", "/from/arg"], env) == "/from/arg"
    assert runs_dir_from(["-q", "--runs-dir=/eq"], env) == "/eq"
    assert runs_dir_from(["tests/x.py", "--runs-dir"], env) == "/from/env"
    assert runs_dir_from([], {}) == "runs"


def test_metric_curves_draws_each_metric_against_step() -> None:
    frame = pd.DataFrame(
        {"step": [2, 0, 1, 3], "time": [0.0] * 4, "loss": [0.5, 2.0, 1.0, None],
         "acc": [None, 0.1, None, 0.9]}
    )
    figure = metric_curves(frame, y=["loss", "acc"], log_y=True)
    assert isinstance(figure, go.Figure)
    traces = {trace.name: trace for trace in figure.data}
    assert list(traces["loss"].x) == [0, 1, 2] and list(traces["loss"].y) == [2.0, 1.0, 0.5]
    assert list(traces["acc"].x) == [0, 3] and list(traces["acc"].y) == [0.1, 0.9]
    assert figure.layout.yaxis.type == "log"
    assert [t.name for t in metric_curves(frame).data] == ["loss", "acc"]  # time is skipped
    with pytest.raises(ValueError, match="nope"):
        metric_curves(frame, y=["nope"])


def test_drawing_the_runs_page_never_imports_torch(runs_dir: Path) -> None:
    assert_renders_without_torch("runs", runs_dir)


DASHBOARDS = APP.parent


def dashboard_modules() -> list[str]:
    """Every module of the app: the figures, the loaders, the views, the run picker."""
    files = [*DASHBOARDS.glob("*.py"), *DASHBOARDS.glob("figures/*.py"),
             *DASHBOARDS.glob("views/*.py")]
    names = (".".join(path.relative_to(DASHBOARDS.parent).with_suffix("").parts)
             for path in files)
    return sorted(name.removesuffix(".__init__") for name in names)


def test_importing_figures_loaders_and_views_does_not_import_torch() -> None:
    modules = dashboard_modules()
    for name in ("dashboards.figures.lens", "dashboards.loaders_lens", "dashboards.views.lens",
                 "dashboards.figures.direct_effects", "dashboards.views.runs"):
        assert name in modules
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "import interp.runs; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_page_is_registered() -> None:
    specs = page_specs()
    assert [spec.url_path for spec in specs] == [
        "runs", "grokking", "patching", "circuits", "probes", "heads", "lens",
    ]
    views = {f"dashboards.views.{path.stem}" for path in DASHBOARDS.glob("views/*.py")}
    assert {spec.render.__module__ for spec in specs} == views - {"dashboards.views.__init__"}


def test_metrics_of_a_multi_seed_run_are_drawn_one_seed_at_a_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = RunStore(tmp_path / "runs")
    with store.create("grok", "grokking", {}, run_id="seeds") as run:
        for step in range(3):
            for seed in (0, 1):
                run.log(step, seed=seed, loss=10.0 * seed + step)
        run.write_summary({})
    app = _app(monkeypatch, store.root)
    assert not app.exception
    assert app.selectbox(key="runs_metrics_seed_grok/seeds").options == ["0", "1"]
    (figure,) = figures(app)
    assert [trace.name for trace in figure.data] == ["loss"]  # seed is a selector, not a curve
    assert list(figure.data[0].y) == [0.0, 1.0, 2.0]
    app.selectbox(key="runs_metrics_seed_grok/seeds").set_value(1).run()
    assert list(figures(app)[0].data[0].y) == [10.0, 11.0, 12.0]
