"""Tests of the Patching page on a real (tiny) `patching` run of a model trained by the
`train` kind, and of its figures."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from page_testing import (
    array,
    assert_renders_without_torch,
    chart_specs,
    figures,
    open_page,
)
from streamlit.testing.v1 import AppTest

from circuits.logit_attribution import LogitAttribution
from circuits.patching import PatchingResult
from circuits.patching_experiment import PATCHING
from dashboards.figures.patching import heatmap_grid, patching_heatmap, prompt_table
from dashboards.loaders_patching import SavedPatching
from dashboards.views.patching import result_caption
from interp.config import load_config
from interp.logit_lens import LogitLens
from interp.runner import execute
from interp.runs import Run, RunStore
from interp.tasks import Induction
from interp.training import TRAIN

N_LAYERS, N_HEADS, N_POS = 2, 2, 8

TRAIN_CONFIG = f"""
kind: train
device: cpu
model: {{n_layers: {N_LAYERS}, d_model: 16, n_heads: {N_HEADS}, d_vocab: 12, n_ctx: {N_POS},
        attn_only: true}}
task: {{name: induction, d_vocab: 12, half_len: 4, n_examples: 64}}
train: {{steps: 10, batch_size: 16, eval_every: 10}}
"""

PATCHING_CONFIG = """
kind: patching
device: cpu
model: {run: tiny_train}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 6, seed: 3}
targets: [resid_pre, z, z_by_pos]
normalise: true
max_batch: 32
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: Any) -> RunStore:
    """A tiny model trained by `train`, patched by `patching`; in the same experiment a
    copy of that run whose `z` result is broken, a failed run and a corrupt folder."""
    folder = tmp_path_factory.mktemp("patching")
    store = RunStore(folder / "runs")
    with one_torch_thread():
        for name, text in (("tiny_train", TRAIN_CONFIG), ("tiny_patch", PATCHING_CONFIG)):
            (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
            kind, config = load_config(
                folder / f"{name}.yaml", kinds={"train": TRAIN, "patching": PATCHING}
            )
            run = execute(kind, config, store, folder, progress=False)
    broken = store.root / "tiny_patch" / "zz-broken"
    shutil.copytree(run.path, broken)
    (broken / "artifacts" / "patching_z.safetensors").write_bytes(b"\x00 not safetensors")
    with pytest.raises(RuntimeError), store.create(
        "tiny_patch", "patching", run.config, run_id="zz-failed"
    ):
        raise RuntimeError("out of memory")
    corrupt = store.create("tiny_patch", "patching", {}, run_id="zz-corrupt")
    (corrupt.path / "config.yaml").write_text("kind: [unclosed")
    return store


@pytest.fixture(scope="module")
def good_run(store: RunStore) -> Run:
    runs = [info for info in store.runs(kind="patching") if info.status == "done"]
    return Run.open(next(info.path for info in runs if info.run_id != "zz-broken"))


def _open_page(runs_dir: Path) -> AppTest:
    app = open_page(runs_dir, "patching")
    assert not app.exception
    assert [header.value for header in app.header] == ["Patching"]
    return app


def _heatmap(app: AppTest) -> dict[str, Any]:
    """The target's heatmap: the page's first chart (the direct effects' three follow)."""
    spec = chart_specs(app)[0]
    (trace,) = spec["data"]
    assert trace["type"] == "heatmap"
    return {"title": spec["layout"]["title"]["text"], **trace}


def _task_batch(run: Run) -> Any:
    """The prompts the run patched, made again from its config."""
    config = PATCHING.config_model.model_validate(run.config)
    return Induction(config.task).batch()


def test_page_draws_the_saved_result_and_the_prompts(
    store: RunStore, good_run: Run
) -> None:
    app = _open_page(store.root)
    app.selectbox(key="patching_run").set_value(good_run.ref).run()
    assert not app.exception
    assert [w.value for w in app.warning if "zz-corrupt" not in w.value] == []
    target = app.selectbox(key=f"patching_target_{good_run.ref}")
    assert list(target.options) == ["resid_pre", "z", "z_by_pos"]

    saved = PatchingResult.load(good_run, name="patching_resid_pre")
    heatmap = _heatmap(app)
    np.testing.assert_allclose(array(heatmap["z"]), saved.values.numpy(), rtol=1e-6)
    assert list(heatmap["x"]) == list(saved.labels[1]) and list(heatmap["y"]) == ["0", "1"]
    assert "%{z" in heatmap["hovertemplate"] and heatmap["title"].startswith("resid_pre")
    caption = " ".join(c.value for c in app.caption)
    assert f"clean {saved.metric_clean:.4g}" in caption

    batch = _task_batch(good_run)
    table = app.dataframe[0].value
    assert table.loc["clean"].tolist() == [str(t) for t in batch.clean[0].tolist()]
    assert table.loc["corrupted"].tolist() == [str(t) for t in batch.corrupted[0].tolist()]
    app.number_input(key=f"patching_example_{good_run.ref}").set_value(4).run()
    assert app.dataframe[0].value.loc["corrupted"].tolist() == [
        str(t) for t in batch.corrupted[4].tolist()
    ]
    assert f"answer token `{int(batch.answer[4])}`" in " ".join(c.value for c in app.caption)


def test_head_targets_fold_heads_into_rows(
    store: RunStore, good_run: Run
) -> None:
    app = _open_page(store.root)
    app.selectbox(key="patching_run").set_value(good_run.ref).run()
    app.selectbox(key=f"patching_target_{good_run.ref}").set_value("z").run()
    z = PatchingResult.load(good_run, name="patching_z").values.numpy()
    np.testing.assert_allclose(array(_heatmap(app)["z"]), z, rtol=1e-6)

    app.selectbox(key=f"patching_target_{good_run.ref}").set_value("z_by_pos").run()
    assert not app.exception
    heatmap = _heatmap(app)
    by_pos = PatchingResult.load(good_run, name="patching_z_by_pos").values.numpy()
    grid = array(heatmap["z"])
    assert grid.shape == (N_LAYERS * N_HEADS, N_POS)
    assert heatmap["y"][3] == "layer 1 head 1"
    np.testing.assert_allclose(grid[3], by_pos[1, :, 1], rtol=1e-6)


def test_page_draws_the_direct_effects_the_run_saved(store: RunStore, good_run: Run) -> None:
    app = _open_page(store.root)
    app.selectbox(key="patching_run").set_value(good_run.ref).run()
    assert not app.exception
    assert "Direct effects" in [subheader.value for subheader in app.subheader]
    # the target's, then the direct effects' (with where the top head reads from)
    target, heatmap, bars, source_bars, lens_figure = figures(app)
    assert target.layout.title.text.startswith("resid_pre")
    attribution = LogitAttribution.load(good_run)
    np.testing.assert_allclose(
        np.asarray(heatmap.data[0].z, dtype=float), attribution.heads().numpy(), rtol=1e-6
    )
    assert list(bars.data[0].x) == ["embed", "heads 0", "heads 1", "bias", "unembed"]  # attn-only
    np.testing.assert_allclose(
        bars.data[0].y[1:3], attribution.heads().numpy().sum(axis=1), rtol=1e-5, atol=1e-7
    )
    lens = LogitLens.load(good_run)
    assert list(lens_figure.data[0].x) == list(lens.stages) == ["0_pre", "1_pre", "final_post"]
    np.testing.assert_allclose(
        lens_figure.data[0].y, lens.logit_diff.mean(dim=0).numpy(), rtol=1e-6
    )
    top_name, top_value = attribution.top(1)[0]
    captions = " ".join(c.value for c in app.caption)
    assert f"Largest direct effects: {top_name} {top_value:+.3g}," in captions
    # the head with the largest |mean| on example 0, split by the position it reads from
    assert app.selectbox(key=f"patching_source_head_{good_run.ref}").value == top_name
    layer, head = (int(n) for n in top_name.removeprefix("L").split("H"))
    prompts = good_run.load_json("prompts")
    position = prompts["position"][0]
    assert attribution.sources is not None
    np.testing.assert_allclose(
        source_bars.data[0].y, attribution.sources[0, layer, head, : position + 1].numpy(),
        rtol=1e-6,
    )
    assert list(source_bars.data[0].x) == [
        f"{i}:{token}" for i, token in enumerate(prompts["clean_tokens"][0][: position + 1])
    ]
    effect = float(attribution.values[0, attribution.components.index(top_name)])
    assert f"the head's direct effect on this example, {effect:+.4g} logits" in captions
    assert "direct path only" in captions and "nostalgebraist 2020" in captions


def test_heatmap_is_white_where_a_patch_changes_nothing(
    store: RunStore, tmp_path: Path, one_torch_thread: Any
) -> None:
    # noising, not normalised: a patch that changes nothing leaves the clean run's metric,
    # which is where the colour scale must be white (it was always white at 0)
    shutil.copytree(store.root / "tiny_train", tmp_path / "runs" / "tiny_train")
    noise = PATCHING_CONFIG.replace("normalise: true", "normalise: false\ndirection: noise")
    (tmp_path / "tiny_noise.yaml").write_text(textwrap.dedent(noise))
    kind, config = load_config(tmp_path / "tiny_noise.yaml", kinds={"patching": PATCHING})
    with one_torch_thread():
        run = execute(kind, config, RunStore(tmp_path / "runs"), tmp_path, progress=False)
    app = _open_page(tmp_path / "runs")
    app.selectbox(key=f"patching_target_{run.ref}").set_value("z").run()
    assert not app.exception
    saved = PatchingResult.load(run, name="patching_z")
    assert saved.direction == "noise" and not saved.normalised
    heatmap = _heatmap(app)
    assert heatmap["zmid"] == pytest.approx(saved.baseline) == pytest.approx(saved.metric_clean)
    assert saved.metric_clean != 0
    np.testing.assert_allclose(array(heatmap["z"]), saved.values.numpy(), rtol=1e-6)
    caption = " ".join(c.value for c in app.caption)
    assert f"White: {saved.metric_clean:.4g}, the clean run's value (no effect)." in caption


def test_saved_baseline_is_the_results_baseline() -> None:
    for direction, normalised in itertools.product(("denoise", "noise"), (True, False)):
        saved = SavedPatching(
            target="z", values=np.zeros((1, 1)), axes=("layer", "head"), labels=(("0",), ("0",)),
            metric_clean=2.5, metric_corrupted=-1.5, direction=direction,
            normalised=normalised, method="activation",
        )
        result = PatchingResult(
            values=torch.zeros(1, 1), axes=("layer", "head"), labels=(("0",), ("0",)),
            metric_clean=2.5, metric_corrupted=-1.5, direction=direction, target="z",
            normalised=normalised,
        )
        assert saved.baseline == result.baseline, (direction, normalised)


def test_broken_failed_and_corrupt_runs_show_their_message(
    store: RunStore, good_run: Run
) -> None:
    app = _open_page(store.root)
    assert app.selectbox(key="patching_run").value in (good_run.ref, "tiny_patch/zz-broken")
    corrupt = [w.value for w in app.warning if "zz-corrupt" in w.value]  # named, not offered
    assert len(corrupt) == 1 and "is corrupt" in corrupt[0] and "config.yaml" in corrupt[0]
    assert "tiny_patch/zz-corrupt" not in app.selectbox(key="patching_run").options

    ref = "tiny_patch/zz-broken"
    app.selectbox(key="patching_run").set_value(ref).run()
    app.selectbox(key=f"patching_target_{ref}").set_value("z").run()
    assert not app.exception
    assert any("target 'z' cannot be read" in w.value for w in app.warning)
    assert len(app.dataframe) == 1  # the prompts still show
    app.selectbox(key=f"patching_target_{ref}").set_value("resid_pre").run()
    assert not [w for w in app.warning if "zz-corrupt" not in w.value]
    assert len(app.get("plotly_chart")) == 1 + 4  # the target's, the direct effects' 4

    app.selectbox(key="patching_run").set_value("tiny_patch/zz-failed").run()
    assert any("failed: RuntimeError: out of memory" in w.value for w in app.warning)
    assert any("has saved no patching result" in i.value for i in app.info)
    assert not app.get("plotly_chart")


def test_store_without_patching_runs_says_how_to_make_one(
    tmp_path: Path
) -> None:
    app = _open_page(tmp_path / "missing")
    assert any("experiments/quickstart.yaml" in info.value for info in app.info)
    assert not app.get("plotly_chart")


# -- figures, on hand-made data


def test_heatmap_grid_keeps_2d_and_folds_3d_results() -> None:
    values = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)  # layer, pos, head
    labels = (("0", "1"), ("0:a", "1:b", "2:c"), ("0", "1", "2", "3"))
    grid, rows, columns, row_title, column_title = heatmap_grid(
        values, ("layer", "pos", "head"), labels
    )
    assert grid.shape == (8, 3) and columns == ["0:a", "1:b", "2:c"]
    for layer in range(2):
        for head in range(4):
            row = rows.index(f"layer {layer} head {head}")
            np.testing.assert_array_equal(grid[row], values[layer, :, head])
    assert (row_title, column_title) == ("layer, head", "pos")
    flat, rows, _, _, _ = heatmap_grid(values[:, :, 0], ("layer", "pos"), labels[:2])
    np.testing.assert_array_equal(flat, values[:, :, 0])
    assert rows == ["0", "1"]


def test_patching_heatmap_and_its_errors() -> None:
    values = np.array([[0.0, 1.0], [-0.5, 0.25]])
    figure = patching_heatmap(values, ("layer", "head"), (("0", "1"), ("0", "1")),
                              title="z", value_name="logit diff")
    (trace,) = figure.data
    np.testing.assert_array_equal(trace.z, values)
    assert trace.zmid == 0 and "logit diff %{z" in trace.hovertemplate
    assert figure.layout.xaxis.type == "category"
    with pytest.raises(ValueError, match="axis 'head' has 2 values but 3 labels"):
        patching_heatmap(values, ("layer", "head"), (("0", "1"), ("0", "1", "2")))
    with pytest.raises(ValueError, match="2-d or 3-d"):
        patching_heatmap(np.zeros(3), ("layer",), (("0", "1", "2"),))


def test_caption_names_the_value_and_the_effect_of_the_strongest_index() -> None:
    # noising, not normalised: the value is the metric after the patch, the effect its
    # change from the clean run (as `circuits.patching_experiment.strongest_index` saves)
    result = SavedPatching(
        target="v", values=np.array([[0.5764, 0.2594]]), axes=("layer", "head"),
        labels=(("0",), ("2", "3")), metric_clean=0.2594, metric_corrupted=1.039,
        direction="noise", normalised=False, method="activation",
    )
    strongest = {"layer": "0", "head": "2", "value": 0.5764, "effect": 0.5764 - 0.2594}
    caption = result_caption(result, "logit_diff", strongest)
    assert "Largest effect at layer 0, head 2: logit_diff 0.5764, a change of +0.317." in caption
    assert "corrupted activations patched into the clean run" in caption
    assert "Normalised" not in caption


def test_prompt_table() -> None:
    table = prompt_table(["The", " cat", " sat"], ["The", " dog", " sat"])
    assert table.index.tolist() == ["clean", "corrupted"]
    assert table.columns.tolist() == ["0", "1", "2"]
    assert table.loc["corrupted", "1"] == " dog"
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        prompt_table(["a", "b"], ["a"])


def test_drawing_the_page_never_imports_torch(store: RunStore) -> None:
    assert_renders_without_torch("patching", store.root)


def test_the_page_and_its_figures_do_not_import_torch() -> None:
    code = (
        "import sys, dashboards.views.patching, dashboards.figures.patching, "
        "dashboards.figures.direct_effects, dashboards.loaders_patching; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
