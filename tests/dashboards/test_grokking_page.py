"""Tests of the Grokking page on a real (tiny) `grokking` run, and of its figures."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from page_testing import array, assert_renders_without_torch, chart_specs, open_page
from safetensors.numpy import load_file
from streamlit.testing.v1 import AppTest

from dashboards import loaders_grokking
from dashboards.figures.grokking import (
    embedding_frequency_norms,
    fourier_basis,
    frequency_spectrum,
    key_frequency_timeline,
    training_curves,
)
from dashboards.views.grokking import final_key_frequencies, summary_rows
from interp import models
from interp.config import load_config
from interp.grokking import fourier
from interp.grokking.experiment import GROKKING, read_progress
from interp.runner import execute
from interp.runs import Run, RunInfo, RunStore

P = 7
SEEDS = (0, 1)
EPOCHS = (20, 40)

TINY = f"""
kind: grokking
name: grok_tiny
seed: 0
seeds: {list(SEEDS)}
device: cpu
model: {{n_layers: 1, d_model: 16, n_heads: 2, d_mlp: 32, act_fn: relu, normalization: null}}
task: {{name: modular, p: {P}, frac_train: 0.5, seed: 0}}
epochs: {EPOCHS[-1]}
optim: {{lr: 0.01, weight_decay: 1.0, betas: [0.9, 0.98], warmup_epochs: 5}}
stop: {{enabled: false}}
log_every: 10
progress_every: 20
checkpoint_every: {EPOCHS[0]}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: Any) -> RunStore:
    """A store with a done grokking run (2 seeds), then a failed one and a corrupt folder
    in the same experiment."""
    folder = tmp_path_factory.mktemp("grokking")
    (folder / "grok_tiny.yaml").write_text(textwrap.dedent(TINY))
    kind, config = load_config(folder / "grok_tiny.yaml", kinds={"grokking": GROKKING})
    store = RunStore(folder / "runs")
    with one_torch_thread():
        good = execute(kind, config, store, folder, progress=False)
    with pytest.raises(RuntimeError), store.create(
        "grok_tiny", "grokking", good.config, run_id="zz-failed"
    ):
        raise RuntimeError("loss went to nan")
    corrupt = store.create("grok_tiny", "grokking", {}, run_id="zz-corrupt")
    (corrupt.path / "manifest.json").write_text("{ not json")
    return store


@pytest.fixture(scope="module")
def good_run(store: RunStore) -> Run:
    run = store.latest("grok_tiny")
    assert run is not None
    return run


def _open_page(runs_dir: Path) -> AppTest:
    app = open_page(runs_dir, "grokking")
    assert not app.exception
    assert [header.value for header in app.header] == ["Grokking"]
    return app


def _charts(app: AppTest) -> dict[str, dict[str, Any]]:
    """The plotly figures on the page, by title."""
    return {spec["layout"]["title"]["text"]: spec for spec in chart_specs(app)}


def _spectrum(app: AppTest) -> dict[str, Any]:
    (spectrum,) = [s for t, s in _charts(app).items() if t.startswith("Fourier norms")]
    return spectrum


def _bars(spectrum: dict[str, Any]) -> dict[str, np.ndarray]:
    return {t["name"]: array(t["y"]) for t in spectrum["data"] if t["type"] == "bar"}


def _reference_norms(embedding: np.ndarray, p: int = P) -> np.ndarray:
    """`interp.grokking.fourier.frequency_norms` (torch) of the first p rows."""
    return fourier.frequency_norms(torch.from_numpy(embedding[:p]), p, axis=0).numpy()


def test_page_overlays_seeds_and_reports_bad_runs(
    store: RunStore, good_run: Run
) -> None:
    app = _open_page(store.root)
    warnings = " ".join(w.value for w in app.warning)
    assert "zz-failed` failed: RuntimeError: loss went to nan" in warnings
    assert "zz-corrupt` is corrupt" in warnings and "manifest.json" in warnings
    assert any("zz-failed` has logged no epochs" in i.value for i in app.info)

    charts = _charts(app)
    assert {"Loss", "Accuracy", "Weight norm", "Restricted and excluded loss",
            "Key frequencies over training"} <= set(charts)
    assert charts["Loss"]["layout"]["xaxis"]["type"] == "log"
    assert charts["Loss"]["layout"]["yaxis"]["type"] == "log"
    metrics = good_run.metrics()
    traces = {t["name"]: t for t in charts["Loss"]["data"]}
    prefix = f"{good_run.run_id} seed"
    assert sorted(traces) == sorted(
        f"{prefix} {s} {m}" for s in SEEDS for m in ("train_loss", "test_loss")
    )
    rows = metrics[metrics["seed"] == 1].sort_values("step")
    np.testing.assert_allclose(array(traces[f"{prefix} 1 test_loss"]["y"]), rows["test_loss"])
    np.testing.assert_allclose(array(traces[f"{prefix} 1 test_loss"]["x"]), rows["step"])
    # Restricted and excluded loss with the final key frequencies, from progress.jsonl
    # (the metrics hold only each checkpoint's own-key values, under other names).
    progress = {t["name"]: t for t in charts["Restricted and excluded loss"]["data"]}
    assert sorted(progress) == sorted(
        f"{prefix} {s} {m}" for s in SEEDS for m in ("restricted_loss", "excluded_loss")
    )
    assert "restricted_loss" not in metrics and "restricted_loss_own_keys" in metrics
    final_keys = read_progress(good_run)
    for seed in SEEDS:
        rows = final_keys[final_keys["seed"] == seed].sort_values("step")
        for name in ("restricted_loss", "excluded_loss"):
            trace = progress[f"{prefix} {seed} {name}"]
            assert list(array(trace["x"])) == list(EPOCHS)
            np.testing.assert_allclose(array(trace["y"]), rows[name])

    table = app.dataframe[0].value
    assert sorted(table["seed"]) == list(SEEDS)
    summary = good_run.summary["per_seed"]
    for seed in SEEDS:
        row = table[table["seed"] == seed].iloc[0]
        assert row["final_test_acc"] == pytest.approx(summary[str(seed)]["final_test_acc"])


def test_slider_moves_the_spectrum_through_checkpoints(
    store: RunStore, good_run: Run
) -> None:
    app = _open_page(store.root)
    slider = app.select_slider(key=f"grokking_epoch_{good_run.ref}")
    assert [int(option) for option in slider.options] == list(EPOCHS)
    assert int(slider.value) == EPOCHS[-1]

    last = _bars(_spectrum(app))
    assert sorted(last) == [f"seed {s}" for s in SEEDS]
    for seed in SEEDS:  # the final checkpoint holds the weights the run saved as its model
        model = models.load_checkpoint(good_run.artifacts_dir / "models" / f"seed_{seed}", "cpu")
        reference = fourier.frequency_norms(model.W_E.detach()[:P], P, axis=0).numpy()
        np.testing.assert_allclose(last[f"seed {seed}"], reference, rtol=1e-5)

    app.select_slider(key=f"grokking_epoch_{good_run.ref}").set_value(EPOCHS[0]).run()
    assert not app.exception
    first = _bars(_spectrum(app))
    saved = load_file(loaders_grokking.checkpoint_path(good_run.path, EPOCHS[0]))
    for seed in SEEDS:
        reference = _reference_norms(saved[f"seed_{seed}/embed.weight"])
        np.testing.assert_allclose(first[f"seed {seed}"], reference, rtol=1e-5)
        assert not np.allclose(first[f"seed {seed}"], last[f"seed {seed}"])
    assert f"epoch {EPOCHS[0]}" in _spectrum(app)["layout"]["title"]["text"]


def test_seed_and_run_choice(
    store: RunStore, good_run: Run
) -> None:
    app = _open_page(store.root)
    app.multiselect(key="grokking_runs").set_value([good_run.ref]).run()
    app.multiselect(key="grokking_seeds_0_1").set_value([1]).run()
    assert not app.exception
    # the failed run is no longer chosen; the corrupt folder is always named
    assert [w.value for w in app.warning if "failed" in w.value] == []
    assert len(app.warning) == 1 and "zz-corrupt` is corrupt" in app.warning[0].value
    charts = _charts(app)
    assert sorted(t["name"] for t in charts["Loss"]["data"]) == [
        "seed 1 test_loss", "seed 1 train_loss"
    ]
    assert list(_bars(_spectrum(app))) == ["seed 1"]


def test_no_seed_chosen_says_so_instead_of_failing(store: RunStore, good_run: Run) -> None:
    app = _open_page(store.root)
    app.multiselect(key="grokking_runs").set_value([good_run.ref]).run()
    app.multiselect(key="grokking_seeds_0_1").set_value([]).run()
    assert not app.exception
    assert any("Choose at least one seed" in c.value for c in app.caption)
    assert chart_specs(app) == []
    app.multiselect(key="grokking_seeds_0_1").set_value([0]).run()
    assert not app.exception
    assert sorted(t["name"] for t in _charts(app)["Loss"]["data"]) == [
        "seed 0 test_loss", "seed 0 train_loss"
    ]


def test_store_without_grokking_runs_says_how_to_make_one(
    tmp_path: Path
) -> None:
    other = RunStore(tmp_path / "runs")
    with other.create("train_only", "train", {}):
        pass
    app = _open_page(other.root)
    assert any("experiments/grokking_cpu.yaml" in info.value for info in app.info)
    assert not app.get("plotly_chart")


def test_bad_checkpoints_raise_clear_errors(good_run: Run, tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    checkpoints = run_dir / "artifacts" / "checkpoints"
    checkpoints.mkdir(parents=True)
    source = loaders_grokking.checkpoint_path(good_run.path, EPOCHS[0]).read_bytes()
    (checkpoints / "epoch_000020.safetensors").write_bytes(source[: len(source) // 2])
    (checkpoints / "state.safetensors").write_bytes(b"")
    assert loaders_grokking.checkpoint_epochs(str(run_dir)) == [20]
    with pytest.raises(ValueError, match="epoch_000020.safetensors is unreadable"):
        loaders_grokking.checkpoint_embeddings(str(run_dir), 20)
    with pytest.raises(FileNotFoundError, match="no checkpoint at epoch 40"):
        loaders_grokking.checkpoint_embeddings(str(run_dir), 40)
    assert loaders_grokking.embedding_keys(
        ["seed_3/pos_embed.weight", "seed_3/embed.weight", "seed_-1/embed.W_E", "embed.weight"]
    ) == {-1: "seed_-1/embed.W_E", 3: "seed_3/embed.weight"}


def test_progress_rows_are_read_and_absent_ones_are_no_rows(
    good_run: Run, tmp_path: Path
) -> None:
    frame = loaders_grokking.run_progress(str(good_run.path))
    assert frame[["step", "seed", "restricted_loss"]].to_numpy() == pytest.approx(
        read_progress(good_run)[["step", "seed", "restricted_loss"]].to_numpy()
    )
    assert len(frame) == len(EPOCHS) * len(SEEDS)
    assert loaders_grokking.run_progress(str(tmp_path)).empty


def test_one_seed_and_several_seed_summaries_are_read_alike(tmp_path: Path) -> None:
    one = RunInfo("g", "a", tmp_path, "done", kind="grokking",
                  summary={"seed": 4, "key_frequencies": [2, 5], "final_test_acc": 1.0})
    several = RunInfo("g", "b", tmp_path, "done", kind="grokking", summary={
        "seeds": [0, 1], "per_seed": {"0": {"key_frequencies": [3]}, "1": {"grokked": True}}
    })
    assert final_key_frequencies(one) == {4: [2, 5]}
    assert final_key_frequencies(several) == {0: [3], 1: []}
    (row,) = summary_rows(one)
    assert (row["run"], row["seed"], row["key_frequencies"], row["final_test_acc"]) == (
        "g/a", 4, "2, 5", 1.0
    )
    assert [(r["seed"], r["grokked"]) for r in summary_rows(several)] == [(0, None), (1, True)]
    assert summary_rows(RunInfo("g", "c", tmp_path, "running")) == []


# -- figures, on hand-made data


def test_planted_frequencies_carry_all_the_norm() -> None:
    p, x = 17, np.arange(17)
    embedding = np.zeros((p + 2, 4))
    embedding[:p, 0] = np.cos(2 * np.pi * 3 * x / p)
    embedding[:p, 1] = 2 * np.cos(2 * np.pi * 7 * x / p + 0.4)  # phase must not matter
    embedding[p:] = 99.0  # the operator and "=" tokens are not numbers
    norms = embedding_frequency_norms(embedding, p)
    expected = np.zeros((p - 1) // 2)
    expected[3 - 1], expected[7 - 1] = 1.0, 2.0
    expected *= math.sqrt(p / 2)  # the norm of cos(w x + phase) over x = 0..p-1
    np.testing.assert_allclose(norms, expected, atol=1e-12)


def test_numpy_fourier_matches_interp_grokking_fourier() -> None:
    p = 11
    basis, labels = fourier_basis(p)
    reference, reference_labels = fourier.fourier_basis(p)
    np.testing.assert_allclose(basis, reference.numpy(), atol=1e-12)
    assert labels == reference_labels
    np.testing.assert_allclose(basis @ basis.T, np.eye(p), atol=1e-12)
    embedding = np.random.default_rng(0).normal(size=(p + 2, 8))
    np.testing.assert_allclose(
        embedding_frequency_norms(embedding, p), _reference_norms(embedding, p), rtol=1e-12
    )


@pytest.mark.parametrize(
    ("embedding", "p", "match"),
    [(np.zeros((5, 3)), 7, "d_vocab >= 7"), (np.zeros((8, 3)), 8, "odd integer"),
     (np.full((7, 2), np.nan), 7, "finite")],
)
def test_embedding_norms_reject_bad_input(embedding: np.ndarray, p: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        embedding_frequency_norms(embedding, p)


def test_training_curves_draw_each_model_and_metric() -> None:
    frame = pd.DataFrame({
        "step": [20, 10, 0, 10, 20],
        "series": ["seed 0", "seed 0", "seed 0", "seed 1", "seed 1"],
        "loss": [0.5, 1.0, 2.0, 0.0, 0.25],
    })
    figure = training_curves(frame, ["loss"], title="Loss")
    traces = {trace.name: trace for trace in figure.data}
    assert list(traces["seed 0 loss"].x) == [10, 20]  # epoch 0 has no place on a log axis
    assert list(traces["seed 0 loss"].y) == [1.0, 0.5]
    assert list(traces["seed 1 loss"].y) == [0.25]  # nor has a loss of 0
    linear = training_curves(frame, ["loss"], log_x=False, log_y=False)
    assert [list(t.y) for t in linear.data] == [[2.0, 1.0, 0.5], [0.0, 0.25]]
    assert figure.layout.xaxis.type == "log" and linear.layout.yaxis.type == "linear"
    with pytest.raises(ValueError, match="accuracy"):
        training_curves(frame, ["accuracy"])


def test_spectrum_and_timeline_figures() -> None:
    norms = {"seed 0": np.array([0.1, 3.0, 0.2]), "seed 1": np.array([2.0, 0.1, 0.1])}
    figure = frequency_spectrum(norms, {"seed 0": [2], "seed 1": [1, 9]})
    bars = [t for t in figure.data if t.type == "bar"]
    assert [b.name for b in bars] == ["seed 0", "seed 1"] and list(bars[0].x) == [1, 2, 3]
    stars = {t.name: (list(t.x), list(t.y)) for t in figure.data if t.type == "scatter"}
    assert stars == {"seed 0 key frequencies": ([2], [3.0]),
                     "seed 1 key frequencies": ([1], [2.0])}  # 9 is no frequency of p = 7
    with pytest.raises(ValueError, match="one length"):
        frequency_spectrum({"a": np.ones(3), "b": np.ones(4)})

    logged = pd.DataFrame({"step": [20, 40, 40], "series": ["seed 0", "seed 0", "seed 1"],
                           "key_frequencies": [[], [2, 5], None]})
    timeline = {t.name: (list(t.x), list(t.y)) for t in key_frequency_timeline(logged).data}
    assert timeline == {"seed 0": ([40, 40], [2, 5]), "seed 1": ([], [])}


def test_drawing_the_page_never_imports_torch(store: RunStore) -> None:
    assert_renders_without_torch("grokking", store.root)


def test_the_page_and_its_figures_do_not_import_torch() -> None:
    code = (
        "import sys, dashboards.views.grokking, dashboards.figures.grokking, "
        "dashboards.loaders_grokking; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_spectrum_caption_says_why_a_run_without_a_summary_has_no_stars(
    good_run: Run, tmp_path: Path
) -> None:
    """A run stopped before its end has checkpoints but no summary (no final key
    frequencies): the caption does not promise stars."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(good_run.path, runs / "grok_tiny" / good_run.path.name)
    (runs / "grok_tiny" / good_run.path.name / "summary.json").unlink()
    app = _open_page(runs)
    captions = " ".join(c.value for c in app.caption)
    assert "no stars: the run has no summary yet" in captions
    app = _open_page(good_run.path.parents[1])
    captions = " ".join(c.value for c in app.caption)
    summary = RunInfo("grok_tiny", good_run.path.name, good_run.path, "done", kind="grokking",
                      summary=good_run.summary)
    if any(final_key_frequencies(summary).values()):
        assert "stars mark the final model's key frequencies" in captions
    else:  # 40 epochs at p = 7 may leave no frequency above the rule
        assert "no frequency of the final model passed the key-frequency rule" in captions
