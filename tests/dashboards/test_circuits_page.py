"""The Circuits page on a real `circuit` run (the planted induction model, tiny config), and
its figure functions on hand-made data."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from page_testing import assert_renders_without_torch, copy_run, figures, open_page
from streamlit.testing.v1 import AppTest

from dashboards.figures.circuits import (
    EDGE_TRACE,
    circuit_graph,
    drawn_edges,
    faithfulness_curves,
    parse_node,
    roc_curves,
    threshold_grid,
)
from dashboards.views.circuits import default_threshold, threshold_labels
from interp.cli import main
from interp.runs import Run, RunStore

CONFIG = """
kind: circuit
name: circ
seed: 0
device: cpu
source: {planted: induction}
methods: [eap, acdc]
ablation: resample
acdc_objective: metric
acdc_thresholds: [0.01]
sizes: [1, 4, 16]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """A good `circuit` run; copies of it with a damaged score table and without what
    older runs lack (edge list, truth, ROC points), both started earlier; a failed
    `circuit` run and a corrupt folder next to them."""
    root = tmp_path_factory.mktemp("circuits")
    config = root / "circ.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    runs = root / "runs"
    assert main(["run", str(config), "--runs-dir", str(runs), "--no-progress"]) == 0
    store = RunStore(runs)
    store.latest("circ").path.rename(runs / "circ" / "good")  # a fixed name for widget keys
    damaged, old = (copy_run(runs / "circ" / "good", name) for name in ("damaged", "old"))
    (damaged / "artifacts" / "edge_scores_eap.parquet").write_bytes(b"not a parquet file")
    for name in ("graph_edges.parquet", "roc.parquet", "truth_edges.json"):
        (old / "artifacts" / name).unlink()
    with pytest.raises(RuntimeError), store.create("circ", "circuit", {}, run_id="failed"):
        raise RuntimeError("ACDC ran out of memory")
    corrupt = store.create("circ", "circuit", {}, run_id="corrupt")
    (corrupt.path / "manifest.json").write_text("{ not json")
    return store


@pytest.fixture(scope="module")
def good(store: RunStore) -> Run:
    return store.load("circ/good")


def _open(runs_dir: Path) -> AppTest:
    return open_page(runs_dir, "circuits")


def _graph(app: AppTest) -> go.Figure:
    graphs = [f for f in figures(app) if any(t.name == EDGE_TRACE for t in f.data)]
    assert len(graphs) == 1
    return graphs[0]


def test_page_draws_graph_roc_and_faithfulness(store: RunStore, good: Run) -> None:
    app = _open(store.root)
    assert not app.exception
    assert app.selectbox(key="circuits_run").value == "circ/good"
    assert any("circ/corrupt" in w.value and "corrupt" in w.value for w in app.warning)
    drawn = figures(app)
    assert len(drawn) == 3
    _graph(app)
    summary = good.summary
    roc = next(f for f in drawn if f.layout.title.text == "edge-level ROC")
    expected = {f"{m} (AUC {summary[m]['auc_edge']:.3f})" for m in ("eap", "acdc")}
    assert {trace.name for trace in roc.data} == expected
    faithful = next(f for f in drawn if f.layout.xaxis.title.text == "circuit size (edges)")
    table = good.load_table("faithfulness")
    eap = next(t for t in faithful.data if t.name == "eap")
    assert list(eap.y) == pytest.approx(table[table["method"] == "eap"]["faithfulness"].tolist())
    assert len(app.select_slider) == 1


def test_threshold_slider_changes_the_drawn_edges(store: RunStore, good: Run) -> None:
    app = _open(store.root)
    scores = good.load_table("edge_scores_eap")
    slider = app.select_slider(key="circuits_threshold_circ/good_eap")
    slider.set_value(0).run()  # the slider's options are indices into the threshold grid
    assert not app.exception
    assert sorted(drawn_edges(_graph(app))) == sorted(scores["edge"])  # |score| >= 0: all
    top = float(scores["abs_score"].max())
    slider.set_value(len(threshold_grid(scores["score"])) - 1).run()
    top_edges = scores[scores["abs_score"] >= top * (1 - 1e-6)]["edge"].tolist()
    assert drawn_edges(_graph(app)) == top_edges and len(top_edges) < len(scores)

    acdc = good.load_json("acdc_0")
    app.selectbox(key="circuits_acdc_circ/good").set_value(
        f"tau={acdc['threshold']:g} ({len(acdc['edges'])} edges)"
    ).run()
    assert not app.exception
    assert set(drawn_edges(_graph(app))) == set(top_edges) | set(acdc["edges"])


def test_acdc_scores_can_drive_the_graph(store: RunStore, good: Run) -> None:
    app = _open(store.root)
    app.selectbox(key="circuits_source_circ/good").set_value("acdc tau=0.01").run()
    app.select_slider(key="circuits_threshold_circ/good_acdc tau=0.01").set_value(0).run()
    assert not app.exception
    # every tested edge (ACDC's untested edges have no score) is drawn at threshold 0
    tensors = good.load_tensors("acdc_0")
    edges = good.load_table("graph_edges")["edge"]
    tested = edges[~tensors["scores"].isnan().numpy()].tolist()
    assert sorted(drawn_edges(_graph(app))) == sorted(tested)


def test_failed_and_damaged_runs_show_why_and_the_good_run_still_draws(store: RunStore) -> None:
    app = _open(store.root)
    app.selectbox(key="circuits_run").set_value("circ/failed").run()
    assert not app.exception
    assert any("ACDC ran out of memory" in w.value for w in app.warning)
    assert not app.get("plotly_chart")

    app.selectbox(key="circuits_run").set_value("circ/damaged").run()
    assert not app.exception
    assert any("Could not read run `circ/damaged`" in w.value for w in app.warning)
    assert not app.get("plotly_chart")

    app.selectbox(key="circuits_run").set_value("circ/good").run()
    assert not app.exception and len(app.get("plotly_chart")) == 3


def test_a_run_without_edge_list_or_roc_points_still_draws(store: RunStore) -> None:
    app = _open(store.root)
    app.selectbox(key="circuits_run").set_value("circ/old").run()
    assert not app.exception
    assert any("saved no ROC points" in i.value for i in app.info)
    scores = store.load("circ/old").load_table("edge_scores_eap")
    app.select_slider(key="circuits_threshold_circ/old_eap").set_value(0).run()
    assert sorted(drawn_edges(_graph(app))) == sorted(scores["edge"])
    assert len(app.get("plotly_chart")) == 2  # the graph and the faithfulness curve


def test_a_run_without_its_faithfulness_table_says_so(good: Run, tmp_path: Path) -> None:
    shutil.copytree(good.path, tmp_path / "runs" / "circ" / "nofaith")
    (tmp_path / "runs" / "circ" / "nofaith" / "artifacts" / "faithfulness.parquet").unlink()
    app = _open(tmp_path / "runs")
    assert not app.exception
    infos = [i.value for i in app.info]
    assert "eap" in good.config["methods"]  # it ran EAP, so "it ran no EAP method" is wrong
    assert any("saved no faithfulness curve" in i for i in infos)
    assert not any("ran no EAP method" in i for i in infos)
    assert len(app.get("plotly_chart")) == 2  # the graph and the ROC curves


def test_default_threshold_holds_for_tiny_scores(good: Run, tmp_path: Path) -> None:
    # tracr runs score most edges exactly 0 and the rest down to ~1e-14; Streamlit matches
    # a float slider value to its options within 5e-12, so a default threshold that small
    # used to snap to 0 and every edge, the zero-score ones too, was drawn
    shutil.copytree(good.path, tmp_path / "runs" / "circ" / "tiny")
    tiny = RunStore(tmp_path / "runs").load("circ/tiny")
    scores = tiny.load_table("edge_scores_eap")
    scores["score"] *= 1e-13
    scores["abs_score"] *= 1e-13
    tiny.save_table("edge_scores_eap", scores)
    nonzero = scores[scores["abs_score"] > 0]["edge"].tolist()
    assert 0 < len(nonzero) < len(scores)  # the default keeps them all, and only them
    app = _open(tmp_path / "runs")
    assert not app.exception
    assert sorted(drawn_edges(_graph(app))) == sorted(nonzero)
    grid = threshold_grid(scores["score"])
    slider = app.select_slider(key="circuits_threshold_circ/tiny_eap")
    assert grid[slider.value] == default_threshold(grid, scores["score"].to_numpy()) > 0
    slider.set_value(len(grid) - 1).run()
    top = scores[scores["abs_score"] >= grid[-1] * (1 - 1e-6)]["edge"].tolist()
    assert drawn_edges(_graph(app)) == top and len(top) < len(nonzero)


def test_no_circuit_runs_names_the_configs(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    app = _open(tmp_path / "runs")
    assert not app.exception
    assert any("experiments/circuit_planted_induction.yaml" in i.value for i in app.info)


def test_opening_the_page_never_imports_torch(store: RunStore) -> None:
    assert_renders_without_torch("circuits", store.root)


# -- figures on hand-made data

EDGES = pd.DataFrame(
    {
        "edge": ["embed->L0H0.q", "embed->L1H1.k", "L0H0->L1H1.k", "L0H0->mlp0", "L1H1->logits"],
        "source": ["embed", "embed", "L0H0", "L0H0", "L1H1"],
        "destination": ["L0H0.q", "L1H1.k", "L1H1.k", "mlp0", "logits"],
        "score": [0.5, -0.01, -2.0, np.nan, 0.1],
    }
)


def test_graph_keeps_exactly_the_edges_above_threshold_or_in_acdc() -> None:
    figure = circuit_graph(EDGES, 0.1)
    assert drawn_edges(figure) == ["embed->L0H0.q", "L0H0->L1H1.k", "L1H1->logits"]
    assert figure.layout.title.text.startswith("3 of 5 edges")
    both = circuit_graph(EDGES, 1.0, acdc_edges=["L0H0->mlp0", "embed->L1H1.k"])
    assert sorted(drawn_edges(both)) == ["L0H0->L1H1.k", "L0H0->mlp0", "embed->L1H1.k"]
    lines = {t.name: t for t in both.data if t.mode == "lines"}
    assert set(lines) == {"score < 0", "ACDC circuit only"}
    assert sum(x is None for x in lines["ACDC circuit only"].x) == 2  # two segments
    nodes = next(t for t in both.data if t.name == "nodes")
    assert set(nodes.text) == {"embed", "L0H0", "L1H1", "mlp0"}
    node_hover = dict(zip(nodes.text, nodes.hovertext, strict=True))
    assert "2 drawn edge(s)<br>largest |score|: 2" in node_hover["L1H1"]
    markers = next(t for t in both.data if t.name == EDGE_TRACE)
    hover = dict(zip(markers.customdata, markers.hovertext, strict=True))
    assert "score: -2<br>in the ACDC circuit: no" in hover["L0H0->L1H1.k"]
    assert "score: none<br>in the ACDC circuit: yes" in hover["L0H0->mlp0"]
    assert drawn_edges(circuit_graph(EDGES, 10.0)) == []
    with pytest.raises(ValueError, match="lacks column"):
        circuit_graph(EDGES.drop(columns="score"), 0.1)


def test_node_names_and_layout_rows() -> None:
    assert parse_node("L3H2.v").component == "L3H2" and parse_node("L3H2.v").input == "v"
    assert (parse_node("mlp1").kind, parse_node("mlp1").layer) == ("mlp", 1)
    with pytest.raises(ValueError, match="not a node name"):
        parse_node("block7")
    figure = circuit_graph(EDGES, 0.0, acdc_edges=["L0H0->mlp0"])
    nodes = next(t for t in figure.data if t.name == "nodes")
    rows = dict(zip(nodes.text, nodes.y, strict=True))
    assert rows["embed"] < rows["L0H0"] < rows["mlp0"] < rows["L1H1"] < rows["logits"]


def test_roc_figure_has_one_trace_per_method_with_its_auc() -> None:
    points = pd.DataFrame(
        {
            "method": ["perfect"] * 3 + ["chance"] * 3 + ["perfect"] * 2,
            "level": ["edge"] * 6 + ["node"] * 2,
            "fpr": [0.0, 0.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0],
            "tpr": [0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 1.0],
        }
    )
    figure = roc_curves(points, level="edge")
    assert [t.name for t in figure.data] == ["perfect (AUC 1.000)", "chance (AUC 0.500)"]
    assert [t.name for t in roc_curves(points, level="node").data] == ["perfect (AUC 0.500)"]
    with pytest.raises(ValueError, match="tpr"):
        roc_curves(points.drop(columns="tpr"))


def test_faithfulness_figure_sorts_each_method_by_size() -> None:
    frame = pd.DataFrame(
        {"method": ["a", "a", "b"], "size": [4, 1, 2], "faithfulness": [0.9, 0.1, 0.5]}
    )
    figure = faithfulness_curves(frame)
    a = next(t for t in figure.data if t.name == "a")
    assert list(a.x) == [1, 4] and list(a.y) == [0.1, 0.9]
    assert figure.layout.xaxis.type == "log"


def test_threshold_grid_and_default_threshold() -> None:
    scores = np.array([0.0, 1e-4, -1e-2, 1.0, np.nan])
    grid = threshold_grid(scores, n=5)
    assert grid[0] == 0.0 and grid[1] == pytest.approx(1e-4) and grid[-1] == pytest.approx(1.0)
    assert grid == sorted(grid)
    assert threshold_grid(np.zeros(3)) == [0.0]
    chosen = default_threshold(grid, scores, keep=2)
    assert int((np.abs(np.nan_to_num(scores)) >= chosen).sum()) >= 2
    assert chosen > 1e-4  # the largest grid value that keeps two edges
    close = [0.0, 0.1000001, 0.1000002, 0.2]  # alike at 3 digits: more digits, never a clash
    assert threshold_labels(close) == ["0", "0.1000001", "0.1000002", "0.2"]
    assert threshold_labels(grid)[:2] == ["0", "0.0001"]
