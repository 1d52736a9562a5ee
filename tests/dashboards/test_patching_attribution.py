"""Tests of the attribution-patching view of the Patching page: a run made with
`attribution: true` saves, per target, an estimate beside the exact result
(`artifacts/attribution_<target>.*`), drawn against it as a scatter. The loader and the
page on real (tiny) runs made by `interp run`, with and without attribution; the figure on
hand-made values."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from page_testing import assert_renders_without_torch, copy_run, figures, open_page
from streamlit.testing.v1 import AppTest
from tiny_patching_configs import TINY_PATCHING, TINY_TRAIN

from circuits.patching import PatchingResult
from dashboards import loaders_patching as data
from dashboards.figures.patching import attribution_scatter, index_labels
from dashboards.views.patching import attribution_caption
from interp.cli import main
from interp.runs import Run, RunStore

TRAIN = TINY_TRAIN

PATCHING = (TINY_PATCHING.replace("targets: [resid_pre, z]", "targets: [resid_pre, k_by_pos]")
            .replace("normalise: false", "normalise: true")
            .replace("max_batch: 12", "max_batch: 32\nattribution: true"))

PLAIN = PATCHING.replace("attribution: true", "attribution: false")
"""The same patching without attribution, as every run made before the option."""

AGAINST = "against exact patching"
"""In the title of every attribution scatter."""
METHODS = {"resid_pre": "attribution", "k_by_pos": "attribution_qk_fix"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: Any) -> RunStore:
    """A tiny model trained by `train`, patched without attribution ("tiny_plain") and with
    it ("tiny_attr"), and a copy of the latter whose k_by_pos estimate is broken."""
    folder = tmp_path_factory.mktemp("attribution")
    runs = folder / "runs"
    with one_torch_thread():
        for name, text in (("tiny_train", TRAIN), ("tiny_plain", PLAIN),
                           ("tiny_attr", PATCHING)):  # the newest: the page's first run
            (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
            argv = ["run", str(folder / f"{name}.yaml"), "--runs-dir", str(runs),
                    "--no-progress"]
            assert main(argv) == 0
    store = RunStore(runs)
    broken = copy_run(store.latest("tiny_attr").path, "zz-broken")
    (broken / "artifacts" / "attribution_k_by_pos.safetensors").write_bytes(b"\x00 not safetensors")
    return store


@pytest.fixture(scope="module")
def attr_run(store: RunStore) -> Run:
    return store.latest("tiny_attr")


@pytest.fixture(scope="module")
def plain_run(store: RunStore) -> Run:
    return store.latest("tiny_plain")


# -- the loader, on the real runs


def test_loader_returns_the_saved_estimate_and_its_method(
    attr_run: Run, plain_run: Run
) -> None:
    data.clear_caches()
    for target, method in METHODS.items():
        loaded = data.attribution_result(str(attr_run.path), target)
        saved = PatchingResult.load(attr_run, name=f"attribution_{target}")
        assert loaded is not None and loaded.method == method == saved.method
        assert loaded.target == target and loaded.values.dtype == np.float64
        np.testing.assert_array_equal(loaded.values, saved.values.numpy())
        assert loaded.axes == saved.axes and loaded.labels == saved.labels
        assert (loaded.direction, loaded.normalised) == ("denoise", True)
        exact = data.patching_result(str(attr_run.path), target)
        assert exact.method == "activation" and exact.values.shape == loaded.values.shape
    assert data.attribution_result(str(plain_run.path), "k_by_pos") is None  # an older run
    assert data.attribution_result(str(attr_run.path), "z") is None  # a target not patched
    # the estimates are no targets of their own
    assert data.patching_targets(str(attr_run.path)) == ["k_by_pos", "resid_pre"]


def test_loader_refuses_a_broken_estimate_in_one_line(tmp_path: Path, attr_run: Run) -> None:
    folder = tmp_path / "run" / "artifacts"
    folder.mkdir(parents=True)
    (folder / "attribution_z.json").write_text(
        (attr_run.artifacts_dir / "attribution_resid_pre.json").read_text()
    )
    with pytest.raises(FileNotFoundError, match="attribution_z.safetensors is missing"):
        data.attribution_result(str(folder.parent), "z")
    (folder / "attribution_z.safetensors").write_bytes(b"\x00 not safetensors")
    with pytest.raises(ValueError, match="attribution_z.safetensors is unreadable") as error:
        data.attribution_result(str(folder.parent), "z")
    assert "\n" not in str(error.value)


# -- the figure, on hand-made values


def test_scatter_has_a_point_per_index_and_the_identity_line() -> None:
    exact = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2) / 10  # layer, pos, head
    estimate = exact * 1.5 - 0.4
    labels = (("0", "1"), ("0:a", "1:b", "2:c"), ("0", "1"))
    figure = attribution_scatter(
        exact, estimate, ("layer", "pos", "head"), labels, "attribution_qk_fix",
        correlation=0.98765, target="k_by_pos", value_name="normalised logit_diff",
    )
    points, line = figure.data
    assert points.mode == "markers" and len(points.x) == len(points.y) == exact.size
    np.testing.assert_array_equal(points.x, exact.reshape(-1))
    np.testing.assert_array_equal(points.y, estimate.reshape(-1))
    assert points.text[0] == "layer 0, pos 0:a, head 0"
    assert points.text[3] == "layer 0, pos 1:b, head 1"  # the last axis fastest
    assert points.text[-1] == "layer 1, pos 2:c, head 1"
    assert "%{text}" in points.hovertemplate and "%{y" in points.hovertemplate
    low, high = min(exact.min(), estimate.min()), max(exact.max(), estimate.max())
    assert line.mode == "lines" and line.name == "y = x"
    assert list(line.x) == list(line.y) == [low, high]
    assert figure.layout.title.text == (
        "k_by_pos: AtP* (query-key fix) against exact patching (Pearson r = 0.988)"
    )
    assert figure.layout.xaxis.title.text == "exact patching: normalised logit_diff"


@pytest.mark.parametrize(("method", "correlation", "title"), [
    ("attribution", 0.5, "attribution patching against exact patching (Pearson r = 0.500)"),
    ("attribution", "undefined: cannot correlate: one of the results is constant",
     "attribution patching against exact patching (correlation undefined)"),
    ("attribution", None, "attribution patching against exact patching (correlation not "
                          "recorded)"),
])
def test_scatter_title_names_the_method_and_the_correlation(
    method: str, correlation: float | str | None, title: str
) -> None:
    values = np.zeros((1, 2))
    figure = attribution_scatter(values, values, ("layer", "head"), (("0",), ("0", "1")),
                                 method, correlation)
    assert figure.layout.title.text == title


def test_scatter_refuses_values_that_disagree_in_one_line() -> None:
    labels = (("0",), ("0", "1"))
    with pytest.raises(ValueError, match=r"the estimate \(1, 3\) and the exact result"):
        attribution_scatter(np.zeros((1, 2)), np.zeros((1, 3)), ("layer", "head"), labels,
                            "attribution")
    with pytest.raises(ValueError, match="axis 'head' has 3 values but 2 labels"):
        attribution_scatter(np.zeros((1, 3)), np.zeros((1, 3)), ("layer", "head"), labels,
                            "attribution")
    assert index_labels(("layer", "head"), labels) == ["layer 0, head 0", "layer 0, head 1"]


def test_caption_gives_the_correlation_or_why_there_is_none() -> None:
    caption = attribution_caption("attribution_qk_fix", 0.91234, 32)
    assert "AtP* (Kramár, Lieberum, Shah and Nanda 2024)" in caption
    assert "over the 32 indices: 0.912." in caption
    caption = attribution_caption("attribution", "undefined: cannot correlate: constant", 4)
    assert "Nanda 2023" in caption
    assert caption.endswith("The correlation is undefined: cannot correlate: constant.")
    assert "records no correlation" in attribution_caption("attribution", None, 4)


# -- the page, on the real runs


def _page(store: RunStore, run: Run | str, target: str | None = None) -> AppTest:
    ref = run if isinstance(run, str) else run.ref
    app = open_page(store.root, "patching")
    app.selectbox(key="patching_run").set_value(ref).run()
    if target is not None:
        app.selectbox(key=f"patching_target_{ref}").set_value(target).run()
    assert not app.exception
    return app


def _scatters(app: AppTest) -> list[Any]:
    return [f for f in figures(app) if AGAINST in (f.layout.title.text or "")]


@pytest.mark.parametrize("target", ["k_by_pos", "resid_pre"])
def test_page_draws_the_estimate_against_the_exact_result(
    store: RunStore, attr_run: Run, target: str
) -> None:
    app = _page(store, attr_run, target)
    assert not app.warning
    charts = figures(app)
    assert charts[0].layout.title.text.startswith(f"{target}: ")  # the heatmap, then ...
    (scatter,) = _scatters(app)
    assert charts[1].layout.title.text == scatter.layout.title.text  # right below it
    exact = PatchingResult.load(attr_run, name=f"patching_{target}")
    estimate = PatchingResult.load(attr_run, name=f"attribution_{target}")
    points, line = scatter.data
    np.testing.assert_allclose(np.asarray(points.x, dtype=float),
                               exact.values.numpy().reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(points.y, dtype=float),
                               estimate.values.numpy().reshape(-1), rtol=1e-6)
    assert list(points.text) == index_labels(exact.axes, exact.labels)
    assert line.name == "y = x" and list(line.x) == list(line.y)
    correlation = attr_run.summary["attribution_correlation"][target]
    name = {"attribution": "attribution patching",
            "attribution_qk_fix": "AtP* (query-key fix)"}[METHODS[target]]
    assert scatter.layout.title.text == (
        f"{target}: {name} {AGAINST} (Pearson r = {correlation:.3f})"
    )
    captions = " ".join(c.value for c in app.caption)
    assert f"over the {exact.values.numel()} indices: {correlation:.3f}." in captions


def test_page_shows_nothing_new_for_a_run_without_attribution(
    store: RunStore, plain_run: Run
) -> None:
    for target in ("k_by_pos", "resid_pre"):
        app = _page(store, plain_run, target)
        assert not app.warning
        assert not _scatters(app)
        assert len(app.get("plotly_chart")) == 1 + 4  # the heatmap, the direct effects' 4
        captions = " ".join(c.value for c in app.caption)
        assert "Attribution patching" not in captions and "AtP*" not in captions


def test_page_warns_of_an_unreadable_estimate_and_draws_the_rest(store: RunStore) -> None:
    ref = "tiny_attr/zz-broken"
    app = _page(store, ref, "k_by_pos")
    (warning,) = app.warning
    assert ("the attribution estimate of target 'k_by_pos' cannot be read: "
            "attribution_k_by_pos.safetensors is unreadable") in warning.value
    assert not _scatters(app) and len(app.get("plotly_chart")) == 1 + 4
    app.selectbox(key=f"patching_target_{ref}").set_value("resid_pre").run()
    assert not app.exception and not app.warning and len(_scatters(app)) == 1


def test_drawing_the_estimate_never_imports_torch(store: RunStore) -> None:
    assert_renders_without_torch("patching", store.root)


def test_page_draws_a_run_that_verified_only_the_strongest_indices(
    tmp_path: Path, one_torch_thread: Any
) -> None:
    """`verify_top: 4`: the heatmap's other cells are NaN, the scatter holds the 4 points
    exact patching ran on, and the caption says so."""
    verified = PATCHING.replace("attribution: true", "attribution: true\nverify_top: 4")
    runs = tmp_path / "runs"
    with one_torch_thread():
        for name, text in (("tiny_train", TRAIN), ("tiny_verified", verified)):
            (tmp_path / f"{name}.yaml").write_text(textwrap.dedent(text))
            assert main(["run", str(tmp_path / f"{name}.yaml"), "--runs-dir", str(runs),
                         "--no-progress"]) == 0
    store = RunStore(runs)
    run = store.latest("tiny_verified")
    app = _page(store, run, "k_by_pos")
    assert not app.warning
    heatmap = figures(app)[0]
    assert int(np.isfinite(np.asarray(heatmap.data[0].z, dtype=float)).sum()) == 4
    (scatter,) = _scatters(app)
    x = np.asarray(scatter.data[0].x, dtype=float)
    assert int(np.isfinite(x).sum()) == 4
    captions = " ".join(c.value for c in app.caption)
    assert "over the 4 indices" in captions
    n_all = PatchingResult.load(run, name="patching_k_by_pos").values.numel()
    assert f"Exact patching ran on the estimate's 4 strongest of the {n_all} indices" in captions
