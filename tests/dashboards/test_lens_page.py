"""The Lens page (a `lens` run: the tuned lens beside the logit lens): its figures and loader
on hand-made tables, the page on hand-made run folders, and the page on a real (tiny) run
made through the `interp` command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from page_testing import assert_renders_without_torch, figures_by_title, open_page
from streamlit.testing.v1 import AppTest

from dashboards import loaders_lens as data
from dashboards.figures.lens import (
    DIVERGENCE_TITLE,
    READOUT_TITLE,
    lens_divergence_figure,
    lens_readout_figure,
)
from dashboards.views.lens import TRAINING_TITLE, divergence_text, loss_text
from interp.cli import main
from interp.runs import Run, RunStore

REPO = Path(__file__).resolve().parents[2]
STAGES = ["0_pre", "1_pre", "2_pre", "final_post"]


def divergence_frame() -> pd.DataFrame:
    """A `lens_divergence` table of a 3-layer model, rows out of depth order."""
    return pd.DataFrame({
        "stage": ["2_pre", "final_post", "0_pre", "1_pre"], "depth": [2, 3, 0, 1],
        "logit_lens_kl": [0.5, 0.0, 4.0, 2.0], "tuned_lens_kl": [0.25, 0.0, 1.0, 3.0],
    })


def readout_frame(shift: float = 0.0) -> pd.DataFrame:
    """A `logit_lens` table of a 3-layer model, rows out of depth order; `shift` moves the
    logit difference so two lenses differ."""
    return pd.DataFrame({
        "stage": ["final_post", "1_pre", "0_pre", "2_pre"], "depth": [3, 1, 0, 2],
        "logit_diff": [3.0 + shift, 0.5 + shift, -1.0 + shift, 2.0 + shift],
        "answer_logprob": [-0.1, -2.0, -3.0, -1.0], "answer_rank": [0.0, 4.0, 9.5, 1.0],
        "top1": [1.0, 0.25, 0.0, 0.75],
    })


def _by_depth(frame: pd.DataFrame, column: str) -> list[float]:
    return frame.sort_values("depth")[column].tolist()


# -- figures


def test_divergence_draws_each_lens_in_depth_order_on_a_log_axis() -> None:
    figure = lens_divergence_figure(divergence_frame())
    logit, tuned = figure.data
    assert (logit.name, tuned.name) == ("logit lens", "tuned lens")
    assert list(logit.x) == STAGES == list(tuned.x)
    assert list(figure.layout.xaxis.categoryarray) == STAGES
    assert figure.layout.yaxis.type == "log" and figure.layout.title.text == DIVERGENCE_TITLE
    # the output's KL 0 cannot sit on a log axis: a gap, said by an annotation at that stage
    np.testing.assert_array_equal(np.asarray(logit.y, dtype=float), [4.0, 2.0, 0.5, np.nan])
    np.testing.assert_array_equal(np.asarray(tuned.y, dtype=float), [1.0, 3.0, 0.25, np.nan])
    np.testing.assert_array_equal(tuned.customdata, [1.0, 3.0, 0.25, 0.0])  # hover: saved
    (note,) = figure.layout.annotations
    assert (note.x, note.text) == ("final_post", "KL 0")
    assert logit.line.color != tuned.line.color


def test_divergence_on_a_linear_axis_draws_every_value() -> None:
    figure = lens_divergence_figure(divergence_frame(), log_y=False)
    logit, tuned = figure.data
    assert figure.layout.yaxis.type == "linear" and not figure.layout.annotations
    assert list(logit.y) == [4.0, 2.0, 0.5, 0.0] and list(tuned.y) == [1.0, 3.0, 0.25, 0.0]


def test_divergence_says_a_rounding_error_below_zero_is_not_drawn() -> None:
    frame = divergence_frame()
    frame.loc[frame["stage"] == "2_pre", "tuned_lens_kl"] = -1e-9
    figure = lens_divergence_figure(frame)
    assert np.isnan(figure.data[1].y[2]) and figure.data[0].y[2] == 0.5
    assert [(a.x, a.text) for a in figure.layout.annotations] == [
        ("2_pre", "KL <= 0"), ("final_post", "KL 0"),
    ]


def test_readout_draws_both_lenses_with_top1_on_a_second_axis() -> None:
    logit, tuned = readout_frame(), readout_frame(shift=0.5)
    figure = lens_readout_figure(logit, tuned)
    names = [trace.name for trace in figure.data]
    assert names == ["logit lens logit diff", "logit lens top-1", "tuned lens logit diff",
                     "tuned lens top-1"]
    traces = dict(zip(names, figure.data, strict=True))
    for trace in figure.data:
        assert list(trace.x) == STAGES
    assert list(traces["logit lens logit diff"].y) == [-1.0, 0.5, 2.0, 3.0]
    assert list(traces["tuned lens logit diff"].y) == [-0.5, 1.0, 2.5, 3.5]
    assert list(traces["tuned lens top-1"].y) == [0.0, 0.25, 0.75, 1.0]
    np.testing.assert_array_equal(traces["logit lens logit diff"].customdata[0], [-3.0, 9.5])
    assert [t.yaxis for t in figure.data] == [None, "y2", None, "y2"]
    assert figure.layout.yaxis2.overlaying == "y" and figure.layout.title.text == READOUT_TITLE
    # one colour per lens, the same as that lens's line in the divergence figure
    colours = lens_divergence_figure(divergence_frame())
    assert [t.line.color for t in figure.data] == [colours.data[0].line.color] * 2 + [
        colours.data[1].line.color] * 2
    assert traces["logit lens top-1"].line.dash == "dot"


@pytest.mark.parametrize(("draw", "message"), [
    (lambda: lens_divergence_figure(divergence_frame().drop(columns="tuned_lens_kl")),
     r"lens_divergence_figure lacks the columns \['tuned_lens_kl'\]"),
    (lambda: lens_divergence_figure(divergence_frame().assign(logit_lens_kl="x")),
     "column 'logit_lens_kl' does not hold numbers"),
    (lambda: lens_divergence_figure(divergence_frame().iloc[:0]), "the table has no rows"),
    (lambda: lens_divergence_figure(divergence_frame().assign(stage="0_pre")),
     "a stage appears more than once"),
    (lambda: lens_divergence_figure(divergence_frame().assign(depth=[0, 1, 1, 2])),
     "a depth appears more than once"),
    (lambda: lens_divergence_figure(divergence_frame().assign(tuned_lens_kl=np.nan)),
     "column 'tuned_lens_kl' holds a value that is not finite"),
    (lambda: lens_readout_figure(readout_frame(), readout_frame().drop(columns="top1")),
     r"lens_readout_figure: the tuned lens table lacks the columns \['top1'\]"),
    (lambda: lens_readout_figure(readout_frame().iloc[:3], readout_frame()),
     "the tuned lens table's stages .* differ from the logit lens table's"),
    (lambda: lens_readout_figure(readout_frame(), pd.DataFrame()),
     "the tuned lens table lacks the columns"),
])
def test_figures_refuse_bad_tables_in_one_line(draw: Callable[[], go.Figure], message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        draw()
    assert "\n" not in str(error.value)


def test_captions_count_the_stages_and_give_the_losses() -> None:
    assert divergence_text(divergence_frame()) == (
        " The tuned lens is closer to the output than the logit lens at 2 of 3 stages before it."
    )
    assert divergence_text(divergence_frame().query("depth == 3")) == ""
    summary = {"first_train_loss": 0.40638, "final_train_loss": 0.0284642}
    assert loss_text(summary) == (
        " First step: 0.4064; last: 0.02846 (the curve shows the logged steps)."
    )
    assert loss_text({"final_train_loss": 0.1}) == ""


# -- the loader


def _artifacts(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "artifacts"
    folder.mkdir(parents=True)
    return folder


def test_loader_reads_parquet_or_csv_and_none_when_missing(tmp_path: Path) -> None:
    folder = _artifacts(tmp_path)
    run_dir = str(folder.parent)
    data.clear_caches()
    assert all(data.lens_table(run_dir, name) is None for name in data.TABLES)
    divergence_frame().to_parquet(folder / "lens_divergence.parquet")
    assert data.lens_table(run_dir, "lens_divergence") is None  # cached ...
    data.clear_caches()  # ... until the caches are cleared
    pd.testing.assert_frame_equal(data.lens_table(run_dir, "lens_divergence"), divergence_frame())
    readout_frame().to_csv(folder / "tuned_lens_readout.csv", index=False)
    pd.testing.assert_frame_equal(data.lens_table(run_dir, "tuned_lens_readout"), readout_frame())
    assert data.lens_table(run_dir, "logit_lens") is None
    with pytest.raises(ValueError, match="a lens run saves no table 'nope'"):
        data.lens_table(run_dir, "nope")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("lens_divergence.parquet", b"\x00 not parquet", "lens_divergence.parquet is unreadable"),
    ("logit_lens.csv", b"", "logit_lens.csv is unreadable"),
    ("lens_divergence.csv", b"stage,depth,logit_lens_kl\n0_pre,0,1.0\n",
     r"lens_divergence.csv lacks the columns \['tuned_lens_kl'\]"),
    ("tuned_lens_readout.csv", b"stage,depth,logit_diff\n0_pre,0,1.0\n",
     r"tuned_lens_readout.csv lacks the columns \['answer_logprob', 'answer_rank', 'top1'\]"),
])
def test_loader_refuses_a_malformed_table_in_one_line(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    folder = _artifacts(tmp_path)
    (folder / name).write_bytes(content)
    data.clear_caches()
    with pytest.raises(ValueError, match=message) as error:
        data.lens_table(str(folder.parent), name.split(".")[0])
    assert "\n" not in str(error.value)


# -- the page, on hand-made run folders


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """Runs of kind `lens`: "a-good" (every table, a loss curve, the summary), "b-tables"
    (the tables only: no metrics), "c-broken" (an unreadable divergence, a tuned readout
    without columns, a good logit readout)."""
    store = RunStore(tmp_path_factory.mktemp("lens") / "runs")
    with store.create("lens_hand", "lens", {}, run_id="a-good") as run:
        run.save_table("lens_divergence", divergence_frame())
        run.save_table("logit_lens", readout_frame())
        run.save_table("tuned_lens_readout", readout_frame(shift=0.5))
        for step, loss in ((10, 0.5), (20, 0.25), (30, 0.125)):
            run.log(step, train_loss=loss)
        run.write_summary({"first_train_loss": 2.0, "final_train_loss": 0.125})
    with store.create("lens_hand", "lens", {}, run_id="b-tables") as run:
        run.save_table("lens_divergence", divergence_frame())
        run.save_table("logit_lens", readout_frame())
        run.save_table("tuned_lens_readout", readout_frame())
    with store.create("lens_hand", "lens", {}, run_id="c-broken") as run:
        (run.artifacts_dir / "lens_divergence.parquet").write_bytes(b"\x00 not parquet")
        run.save_table("logit_lens", readout_frame())
        run.save_table("tuned_lens_readout", readout_frame().drop(columns="top1"))
    return store


def _page(store: RunStore, run_id: str) -> AppTest:
    app = open_page(store.root, "lens")
    app.selectbox(key="lens_run").set_value(f"lens_hand/{run_id}").run()
    assert not app.exception
    assert [header.value for header in app.header] == ["Lens"]
    return app


def _captions(app: AppTest) -> str:
    return " ".join(caption.value for caption in app.caption)


def test_page_draws_the_three_figures_of_a_run(store: RunStore) -> None:
    app = _page(store, "a-good")
    assert not app.warning
    assert [s.value for s in app.subheader] == [
        "Divergence from the output", "Readout of the answer", "Training",
    ]
    charts = figures_by_title(app)
    assert list(charts) == [DIVERGENCE_TITLE, READOUT_TITLE, TRAINING_TITLE]
    divergence = charts[DIVERGENCE_TITLE]
    assert list(divergence.data[0].x) == STAGES
    np.testing.assert_array_equal(divergence.data[0].y, [4.0, 2.0, 0.5, np.nan])
    assert list(charts[READOUT_TITLE].data[2].y) == [-0.5, 1.0, 2.5, 3.5]
    training = charts[TRAINING_TITLE]
    assert list(training.data[0].x) == [10, 20, 30] and training.layout.yaxis.type == "log"
    captions = _captions(app)
    for said in ("closer the readout at that depth is to what the model finally outputs",
                 "nostalgebraist 2020", "Belrose et al. 2023", "affine translator",
                 "at 2 of 3 stages before it", "First step: 2; last: 0.125"):
        assert said in captions

    app.checkbox(key="lens_log_lens_hand/a-good").uncheck().run()
    divergence = figures_by_title(app)[DIVERGENCE_TITLE]
    assert divergence.layout.yaxis.type == "linear"
    assert list(divergence.data[1].y) == [1.0, 3.0, 0.25, 0.0]


def test_page_says_a_run_logged_no_loss(store: RunStore) -> None:
    app = _page(store, "b-tables")
    assert list(figures_by_title(app)) == [DIVERGENCE_TITLE, READOUT_TITLE]
    assert "`lens_hand/b-tables` logged no train_loss" in _captions(app)


def test_page_warns_of_broken_tables_and_draws_the_rest(store: RunStore) -> None:
    app = _page(store, "c-broken")
    warnings = [w.value for w in app.warning]
    assert len(warnings) == 2
    assert "its lens divergence cannot be read: lens_divergence.parquet is unreadable" in (
        warnings[0]
    )
    assert "its tuned lens readout cannot be read" in warnings[1] and "['top1']" in warnings[1]
    (readout,) = figures_by_title(app).values()  # the logit lens alone
    assert [t.name for t in readout.data] == ["logit lens logit diff", "logit lens top-1"]


def test_empty_store_says_how_to_make_a_run(tmp_path: Path) -> None:
    app = open_page(tmp_path, "lens")
    assert not app.exception and not app.get("plotly_chart")
    (info,) = app.info
    assert "No `lens` runs" in info.value
    assert f"interp run experiments/lens_induction.yaml --runs-dir {tmp_path}" in info.value
    assert "induction_2l" in info.value


def test_opening_the_page_never_imports_torch(store: RunStore) -> None:
    assert_renders_without_torch("lens", store.root)


# -- the page on a real run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: Any) -> Run:
    """induction_2l trained 4 steps on 64 prompts, then a tuned lens trained 4 steps on 8
    prompts (the shipped configs, shrunk), through `interp run`."""
    runs = tmp_path_factory.mktemp("lens_real") / "runs"
    commands = (
        ("induction_2l", ["train.steps=4", "train.warmup_steps=0", "train.eval_every=4",
                          "task.n_examples=64"]),
        ("lens_induction", ["steps=4", "log_every=2", "task.n_examples=8"]),
    )
    with one_torch_thread():
        for name, overrides in commands:
            sets = [arg for item in ["device=cpu", *overrides] for arg in ("--set", item)]
            argv = ["run", str(REPO / "experiments" / f"{name}.yaml"), "--runs-dir", str(runs),
                    *sets, "--no-progress"]
            assert main(argv) == 0
    return RunStore(runs).latest("lens_induction")


def test_page_draws_what_a_real_run_saved(real_run: Run) -> None:
    app = open_page(real_run.path.parents[1], "lens")
    assert not app.exception and not app.warning
    assert app.selectbox(key="lens_run").value == real_run.ref
    charts = figures_by_title(app)
    assert list(charts) == [DIVERGENCE_TITLE, READOUT_TITLE, TRAINING_TITLE]

    divergence = real_run.load_table("lens_divergence")
    stages = _by_depth(divergence, "stage")
    assert stages == ["0_pre", "1_pre", "final_post"]
    for trace, column in zip(charts[DIVERGENCE_TITLE].data, ("logit_lens_kl", "tuned_lens_kl"),
                             strict=True):
        assert list(trace.x) == stages
        np.testing.assert_allclose(trace.customdata, _by_depth(divergence, column), rtol=1e-12)
        np.testing.assert_allclose(trace.y[:-1], _by_depth(divergence, column)[:-1], rtol=1e-12)
        assert np.isnan(trace.y[-1])  # KL 0 at the output, not on the log axis
    summary = real_run.summary
    assert summary["tuned_lens_kl"] == dict(zip(divergence["stage"], divergence["tuned_lens_kl"],
                                                strict=True))

    traces = {trace.name: trace for trace in charts[READOUT_TITLE].data}
    for lens, name in (("logit lens", "logit_lens"), ("tuned lens", "tuned_lens_readout")):
        table = real_run.load_table(name)
        assert list(traces[f"{lens} logit diff"].x) == stages
        for suffix, column in (("logit diff", "logit_diff"), ("top-1", "top1")):
            np.testing.assert_allclose(
                traces[f"{lens} {suffix}"].y, _by_depth(table, column), rtol=1e-12
            )
        np.testing.assert_allclose(
            np.asarray(traces[f"{lens} logit diff"].customdata, dtype=float),
            table.sort_values("depth")[["answer_logprob", "answer_rank"]].to_numpy(),
        )

    metrics = real_run.metrics()
    (loss,) = charts[TRAINING_TITLE].data
    assert list(loss.x) == metrics["step"].tolist() == [2, 4]
    np.testing.assert_allclose(loss.y, metrics["train_loss"], rtol=1e-12)
    assert f"last: {summary['final_train_loss']:.4g}" in _captions(app)
    assert json.loads((real_run.path / "manifest.json").read_text())["kind"] == "lens"
