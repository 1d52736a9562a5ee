"""Tests of the direct effects on the Patching page (the direct logit attribution, its split
by key position, and the logit lens a `patching` run saves): the figures and the loaders on
hand-made tables and tensors, and the page's section on hand-made run folders.
`test_patching_page.py` checks the section on a real run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from page_testing import figures_by_title, open_page
from safetensors.numpy import save_file
from streamlit.testing.v1 import AppTest

from dashboards import loaders_patching as data
from dashboards.figures.direct_effects import (
    component_attribution_bars,
    head_attribution_heatmap,
    head_source_bars,
    logit_lens_figure,
)
from interp.runs import RunStore

N_LAYERS, N_HEADS = 2, 3
HEATMAP = "Direct effect of each head on the logit difference"
BARS = "Direct effect of each component on the logit difference (heads summed per layer)"
LENS = "Logit lens: the residual stream before each block, read as the output"
N_EXAMPLES, N_POS = 3, 6
POSITIONS = [5, 3, 4]
"""The read position of each hand-made example."""
TOKENS = [[f"t{example}{pos}" for pos in range(N_POS)] for example in range(N_EXAMPLES)]


def sources_tensor() -> np.ndarray:
    """A `sources` tensor [example, layer, head, pos] (float32), 0 past each read position."""
    values = np.random.default_rng(0).normal(size=(N_EXAMPLES, N_LAYERS, N_HEADS, N_POS))
    for example, position in enumerate(POSITIONS):
        values[example, ..., position + 1:] = 0.0
    return values.astype(np.float32)


def source_title(head: str, example: int) -> str:
    return f"Where {head} reads from on example {example}: its direct effect by key position"


def attribution_frame() -> pd.DataFrame:
    """A `logit_attribution` table of a 2-layer, 3-head model with MLPs, rows shuffled so
    that neither the grid nor the forward order can come from the row order."""
    rows = [{"component": "embed", "kind": "embed", "layer": -1, "head": -1, "mean": -0.25}]
    for layer in range(N_LAYERS):
        rows += [
            {"component": f"L{layer}H{head}", "kind": "head", "layer": layer, "head": head,
             "mean": (-1) ** head * (layer + 1) * (head + 0.5)}
            for head in range(N_HEADS)
        ]
        rows.append({"component": f"mlp{layer}", "kind": "mlp", "layer": layer, "head": -1,
                     "mean": 0.1 * (layer + 1)})
    rows += [{"component": "bias", "kind": "bias", "layer": -1, "head": -1, "mean": 0.01},
             {"component": "unembed", "kind": "unembed", "layer": -1, "head": -1, "mean": 0.02}]
    frame = pd.DataFrame(rows)
    frame["std"] = np.linspace(0.1, 0.9, len(frame))
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def lens_frame() -> pd.DataFrame:
    """A `logit_lens` table of a 2-layer model, rows out of depth order."""
    return pd.DataFrame({
        "stage": ["final_post", "0_pre", "1_pre"], "depth": [2, 0, 1],
        "logit_diff": [3.0, -0.5, 1.25], "answer_logprob": [-0.1, -2.5, -1.0],
        "answer_rank": [0.0, 6.5, 2.0], "top1": [1.0, 0.0, 0.5],
    })


# -- figures


def test_heatmap_grid_is_the_head_means_at_layer_and_head() -> None:
    frame = attribution_frame()
    (trace,) = head_attribution_heatmap(frame).data
    grid = np.asarray(trace.z, dtype=float)
    assert grid.shape == (N_LAYERS, N_HEADS)
    for row in frame[frame["kind"] == "head"].itertuples():
        assert grid[row.layer, row.head] == row.mean
    assert list(trace.y) == ["0", "1"] and list(trace.x) == ["0", "1", "2"]
    assert trace.zmid == 0 and trace.colorscale[0][1] != trace.colorscale[-1][1]
    assert "%{z" in trace.hovertemplate and "head %{x}" in trace.hovertemplate

    # a head the table lacks is a blank cell, not a zero
    partial = frame[frame["component"] != "L1H2"]
    (trace,) = head_attribution_heatmap(partial).data
    assert np.isnan(np.asarray(trace.z, dtype=float)[1, 2])


def test_bars_are_in_forward_order_with_heads_summed_per_layer() -> None:
    frame = attribution_frame()
    (trace,) = component_attribution_bars(frame).data
    assert list(trace.x) == ["embed", "heads 0", "mlp0", "heads 1", "mlp1", "bias", "unembed"]
    values = dict(zip(trace.x, trace.y, strict=True))
    heads = frame[frame["kind"] == "head"]
    for layer in range(N_LAYERS):
        expected = heads.loc[heads["layer"] == layer, "mean"].sum()
        assert values[f"heads {layer}"] == pytest.approx(expected)
    means = frame.set_index("component")["mean"]
    for name in ("embed", "mlp0", "mlp1", "bias", "unembed"):
        assert values[name] == means[name]
    colours = dict(zip(trace.x, trace.marker.color, strict=True))
    assert colours["embed"] != colours["mlp0"]  # negative, positive


def test_lens_follows_depth_with_top1_on_a_second_axis() -> None:
    figure = logit_lens_figure(lens_frame())
    logit_diff, top1 = figure.data
    assert list(logit_diff.x) == ["0_pre", "1_pre", "final_post"] == list(top1.x)
    assert list(logit_diff.y) == [-0.5, 1.25, 3.0] and list(top1.y) == [0.0, 0.5, 1.0]
    assert top1.yaxis == "y2" and figure.layout.yaxis2.overlaying == "y"
    assert list(figure.layout.xaxis.categoryarray) == ["0_pre", "1_pre", "final_post"]
    np.testing.assert_array_equal(logit_diff.customdata[0], [-2.5, 6.5])  # at depth 0


def test_source_bars_are_the_values_at_i_token_labels() -> None:
    values = np.array([0.5, -1.25, 0.0, 2.0])
    figure = head_source_bars(values, ["The", " cat", " sat", " on"], "L1H0", example=2)
    (trace,) = figure.data
    assert list(trace.x) == ["0:The", "1: cat", "2: sat", "3: on"]
    assert list(trace.y) == [0.5, -1.25, 0.0, 2.0]
    assert list(figure.layout.xaxis.categoryarray) == list(trace.x)
    assert figure.layout.title.text == source_title("L1H0", 2)
    assert trace.marker.color[0] != trace.marker.color[1]  # positive, negative
    with pytest.raises(ValueError, match="head_source_bars: 4 values but 3 tokens") as error:
        head_source_bars(values, ["a", "b", "c"], "L1H0")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("draw", "frame", "message"), [
    (head_attribution_heatmap, attribution_frame().drop(columns="mean"),
     r"head_attribution_heatmap lacks the columns \['mean'\]"),
    (component_attribution_bars, attribution_frame().drop(columns=["std", "kind"]),
     r"component_attribution_bars lacks the columns \['kind', 'std'\]"),
    (logit_lens_figure, lens_frame().drop(columns="top1"),
     r"logit_lens_figure lacks the columns \['top1'\]"),
    (logit_lens_figure, lens_frame().assign(logit_diff=["a", "b", "c"]),
     "column 'logit_diff' does not hold numbers"),
    (head_attribution_heatmap, pd.concat([attribution_frame()] * 2),
     r"a \(layer, head\) appears more than once"),
    (head_attribution_heatmap, attribution_frame().query("kind != 'head'"),
     "no rows of kind 'head'"),
    (head_attribution_heatmap, attribution_frame().assign(layer=1.5),
     "whole, non-negative layer"),
    (logit_lens_figure, lens_frame().iloc[:0], "no rows"),
])
def test_figures_refuse_bad_tables_in_one_line(
    draw: Callable[[pd.DataFrame], go.Figure], frame: pd.DataFrame, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as error:
        draw(frame)
    assert "\n" not in str(error.value)


# -- the loader


def _artifacts(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "artifacts"
    folder.mkdir(parents=True)
    return folder


def test_loader_reads_parquet_or_csv_and_none_for_a_run_without_them(tmp_path: Path) -> None:
    folder = _artifacts(tmp_path)
    run_dir = str(folder.parent)
    assert data.direct_effects(run_dir) == (None, None)
    attribution_frame().to_parquet(folder / "logit_attribution.parquet")
    assert data.direct_effects(run_dir) == (None, None)  # cached ...
    data.clear_caches()  # ... until the caches are cleared
    attribution, lens = data.direct_effects(run_dir)
    pd.testing.assert_frame_equal(attribution, attribution_frame())
    assert lens is None

    lens_frame().to_csv(folder / "logit_lens.csv", index=False)  # parquet not possible
    data.clear_caches()
    _, lens = data.direct_effects(run_dir)
    pd.testing.assert_frame_equal(lens, lens_frame())


@pytest.mark.parametrize(("name", "content", "message"), [
    ("logit_attribution.parquet", b"\x00 not parquet", "logit_attribution.parquet is unreadable"),
    ("logit_lens.csv", b"", "logit_lens.csv is unreadable"),
    ("logit_lens.csv", b"stage,depth,logit_diff\n0_pre,0,1.0\n",
     r"logit_lens.csv lacks the columns \['answer_logprob', 'answer_rank', 'top1'\]"),
])
def test_loader_refuses_a_malformed_table_in_one_line(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    folder = _artifacts(tmp_path)
    (folder / name).write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        data.direct_effects(str(folder.parent))
    assert "\n" not in str(error.value)


def test_sources_loader_reads_the_split_and_none_without_one(tmp_path: Path) -> None:
    folder = _artifacts(tmp_path)
    run_dir = str(folder.parent)
    assert data.head_sources(run_dir) is None  # no file
    data.clear_caches()
    values = np.zeros((N_EXAMPLES, N_LAYERS * N_HEADS), dtype=np.float32)
    save_file({"values": values, "total": values.sum(axis=1)},
              str(folder / "logit_attribution.safetensors"))
    assert data.head_sources(run_dir) is None  # an older run: no `sources` tensor
    data.clear_caches()
    save_file({"values": values, "sources": sources_tensor()},
              str(folder / "logit_attribution.safetensors"))
    loaded = data.head_sources(run_dir)
    assert loaded is not None and loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, sources_tensor())


@pytest.mark.parametrize(("tensors", "message"), [
    (None, "logit_attribution.safetensors is unreadable"),
    ({"sources": np.zeros((2, 3), dtype=np.float32)},
     r"'sources' has shape \(2, 3\), not \[example, layer, head, pos\]"),
])
def test_sources_loader_refuses_a_malformed_file_in_one_line(
    tmp_path: Path, tensors: dict[str, np.ndarray] | None, message: str
) -> None:
    folder = _artifacts(tmp_path)
    path = folder / "logit_attribution.safetensors"
    if tensors is None:
        path.write_bytes(b"\x00 not safetensors")
    else:
        save_file(tensors, str(path))
    with pytest.raises(ValueError, match=message) as error:
        data.head_sources(str(folder.parent))
    assert "\n" not in str(error.value)


# -- the page, on hand-made run folders


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """Runs of kind `patching` that saved only direct effects: both tables without the
    split by position ("a-with"), none with the reason in the summary ("b-without"), a
    broken table ("c-broken"), and the attribution with its split and the prompts
    ("d-sources")."""
    store = RunStore(tmp_path_factory.mktemp("direct") / "runs")
    with store.create("direct", "patching", {}, run_id="a-with") as run:
        run.save_table("logit_attribution", attribution_frame())
        run.save_table("logit_lens", lens_frame())
        run.write_summary({"metric": "logit_diff", "direct_effects": [
            {"component": "L1H2", "logit_diff": 5.0}, {"component": "L1H1", "logit_diff": -3.0},
        ]})
    with store.create("direct", "patching", {}, run_id="b-without") as run:
        run.write_summary({"direct_effects": "not computed: ValueError: BERT has no sum"})
    with store.create("direct", "patching", {}, run_id="c-broken") as run:
        run.save_table("logit_lens", lens_frame())
        (run.artifacts_dir / "logit_attribution.parquet").write_bytes(b"\x00 not parquet")
    with store.create("direct", "patching", {}, run_id="d-sources") as run:
        run.save_table("logit_attribution", attribution_frame())
        values = np.zeros((N_EXAMPLES, N_LAYERS * N_HEADS), dtype=np.float32)
        save_file({"values": values, "total": values.sum(axis=1), "sources": sources_tensor()},
                  str(run.artifacts_dir / "logit_attribution.safetensors"))
        run.save_json("prompts", {"clean_tokens": TOKENS, "corrupted_tokens": TOKENS,
                                  "position": POSITIONS})
    return store


def _page(store: RunStore, run_id: str) -> AppTest:
    app = open_page(store.root, "patching")
    app.selectbox(key="patching_run").set_value(f"direct/{run_id}").run()
    assert not app.exception
    assert "Direct effects" in [subheader.value for subheader in app.subheader]
    return app


def _captions(app: AppTest) -> str:
    return " ".join(caption.value for caption in app.caption)


def test_page_draws_the_direct_effects_a_run_saved(store: RunStore) -> None:
    app = _page(store, "a-with")
    assert not app.warning
    charts = figures_by_title(app)
    assert list(charts) == [HEATMAP, BARS, LENS]
    frame = attribution_frame()
    heads = frame[frame["kind"] == "head"].sort_values(["layer", "head"])
    np.testing.assert_array_equal(
        np.asarray(charts[HEATMAP].data[0].z, dtype=float),
        heads["mean"].to_numpy().reshape(N_LAYERS, N_HEADS),
    )
    assert list(charts[BARS].data[0].x)[:3] == ["embed", "heads 0", "mlp0"]
    assert list(charts[LENS].data[0].x) == ["0_pre", "1_pre", "final_post"]
    captions = _captions(app)
    assert "direct path only" in captions and "total effects" in captions
    assert "Largest direct effects: L1H2 +5, L1H1 -3." in captions
    assert "nostalgebraist 2020" in captions
    assert "`direct/a-with` saved no per-position split" in captions


def _check_source_bars(app: AppTest, head: str, layer: int, index: int, example: int) -> None:
    """The split chart shows sources[example, layer, index, :read + 1] at "i:token" labels
    and the caption prints their sum and the read token."""
    assert not app.exception and not app.warning
    charts = figures_by_title(app)
    assert list(charts) == [HEATMAP, BARS, source_title(head, example)]  # no lens saved
    (trace,) = charts[source_title(head, example)].data
    position = POSITIONS[example]
    expected = sources_tensor()[example, layer, index, : position + 1]
    np.testing.assert_allclose(np.asarray(trace.y, dtype=float), expected, rtol=1e-6)
    assert list(trace.x) == [f"{i}:{TOKENS[example][i]}" for i in range(position + 1)]
    total = float(sources_tensor()[example, layer, index].astype(np.float64).sum())
    captions = _captions(app)
    assert (f"The bars sum to the head's direct effect on this example, {total:+.4g} logits, "
            f"read at position {position} (`{TOKENS[example][position]}`).") in captions
    assert f"{head}'s direct effect on example {example}, split by the key position" in captions


def test_page_splits_a_head_by_the_position_it_reads_from(store: RunStore) -> None:
    app = _page(store, "d-sources")
    head_box = app.selectbox(key="patching_source_head_direct/d-sources")
    assert head_box.options == [f"L{layer}H{head}" for layer in range(N_LAYERS)
                                for head in range(N_HEADS)]
    assert head_box.value == "L1H2"  # the largest |mean| (5.0)
    _check_source_bars(app, "L1H2", 1, 2, 0)
    head_box.set_value("L0H1").run()
    app.number_input(key="patching_source_example_direct/d-sources").set_value(1).run()
    _check_source_bars(app, "L0H1", 0, 1, 1)


def test_page_says_a_run_saved_no_direct_effects_and_why(store: RunStore) -> None:
    app = _page(store, "b-without")
    assert not app.get("plotly_chart") and not app.warning
    captions = _captions(app)
    assert "`direct/b-without` saved no direct effects" in captions
    assert "They were not computed: ValueError: BERT has no sum." in captions


def test_page_warns_of_an_unreadable_table(store: RunStore) -> None:
    app = _page(store, "c-broken")
    (warning,) = app.warning
    assert "the direct effects cannot be read: logit_attribution.parquet is unreadable" in (
        warning.value
    )
    assert not app.get("plotly_chart")
