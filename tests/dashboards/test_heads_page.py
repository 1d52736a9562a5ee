"""The Heads page on a real `heads` run (a tiny untrained native model built from its spec),
and its figure functions on hand-made data."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from page_testing import assert_renders_without_torch, copy_run, figures_by_title, open_page
from streamlit.testing.v1 import AppTest

from dashboards.figures.heads import attention_pattern, head_heatmap, score_matrix
from dashboards.views.heads import induction_circuit_text, top_heads_frame
from interp import models
from interp.cli import main
from interp.runs import Run, RunStore

SPEC = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_vocab": 12, "n_ctx": 8, "attn_only": True}
CONFIG = f"""
kind: heads
name: heads_tiny
device: cpu
seed: 0
model: {json.dumps(SPEC)}
task: {{name: induction, d_vocab: 12, half_len: 3, n_examples: 6, seed: 3}}
probe: {{n_sequences: 6, length: 3, vocab: [0, 11], bos_token_id: 11, n_pattern_examples: 2}}
ablation: {{mode: zero}}
n_groups: 2
thresholds: {{copying: 0.45}}
"""
GOOD = "heads_tiny/good"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """A good `heads` run; copies of it with a damaged role table and without example
    patterns (both started earlier); a failed `heads` run; a corrupt folder."""
    root = tmp_path_factory.mktemp("heads")
    config = root / "heads_tiny.yaml"
    config.write_text(textwrap.dedent(CONFIG))
    runs = root / "runs"
    assert main(["run", str(config), "--runs-dir", str(runs), "--no-progress"]) == 0
    store = RunStore(runs)
    store.latest("heads_tiny").path.rename(runs / GOOD)  # a fixed name for widget keys
    damaged, old = copy_run(runs / GOOD, "damaged"), copy_run(runs / GOOD, "old")
    (damaged / "artifacts" / "head_roles.parquet").write_bytes(b"garbage")
    for path in (old / "artifacts").glob("example_patterns.*"):
        path.unlink()
    with pytest.raises(RuntimeError), store.create("heads_tiny", "heads", {}, run_id="failed"):
        raise RuntimeError("the model did not load")
    corrupt = store.create("heads_tiny", "heads", {}, run_id="corrupt")
    (corrupt.path / "config.yaml").unlink()
    return store


@pytest.fixture(scope="module")
def good(store: RunStore) -> Run:
    return store.load(GOOD)


def _open(runs_dir: Path) -> AppTest:
    return open_page(runs_dir, "heads")


def _role_table(app: AppTest) -> pd.DataFrame:
    (table,) = [d.value for d in app.dataframe if "roles" in d.value.columns]
    return table


def _pattern(app: AppTest) -> tuple[str, go.Figure]:
    (title,) = [t for t in figures_by_title(app) if " on example " in t]
    return title, figures_by_title(app)[title]


def test_page_draws_heatmaps_roles_and_a_pattern(store: RunStore, good: Run) -> None:
    app = _open(store.root)
    assert not app.exception
    assert app.selectbox(key="heads_run").value == GOOD
    assert any("heads_tiny/corrupt" in w.value for w in app.warning)
    roles = good.load_table("head_roles")
    figures = figures_by_title(app)
    expected = ["previous_token", "duplicate_token", "induction", "first_token", "copying",
                "ablation_change"]
    assert [t for t in figures if " on example " not in t] == expected
    for score in expected:
        z = np.array(figures[score].data[0].z, dtype=float)
        for layer, head, value in zip(roles["layer"], roles["head"], roles[score], strict=True):
            assert z[layer, head] == pytest.approx(value)
    table = _role_table(app)
    assert len(table) == 4 and list(table.columns[:4]) == ["layer", "head", "roles", "group"]
    top = good.summary["top_heads"]["induction"]
    title, _ = _pattern(app)
    assert title == f"L{top['layer']}H{top['head']} on example 0"


def test_summary_shows_top_heads_and_the_induction_circuit(store: RunStore, good: Run) -> None:
    app = _open(store.root)
    summary = good.summary
    (table,) = [d.value for d in app.dataframe if "top head" in d.value.columns]
    assert list(table["role"]) == list(summary["top_heads"])
    for role, name, score in zip(table["role"], table["top head"], table["score"], strict=True):
        top = summary["top_heads"][role]
        assert name == f"L{top['layer']}H{top['head']}" and score == pytest.approx(top["score"])
    circuit = summary["induction_circuit"]
    text, holds = induction_circuit_text(summary)
    assert holds == (circuit["induction_head"]["passes"]
                     and circuit["k_composition_from"]["above_baseline"])
    shown = [e.value for e in (app.success if holds else app.info)]
    assert f"Induction circuit: {text}" in shown
    head = circuit["induction_head"]
    assert f"into L{head['layer']}H{head['head']}" in text


def test_pattern_viewer_draws_the_chosen_head(store: RunStore, good: Run) -> None:
    app = _open(store.root)
    app.selectbox(key=f"heads_pattern_example_{GOOD}").set_value(1).run()
    app.selectbox(key=f"heads_pattern_head_{GOOD}").set_value("L1H1").run()
    assert not app.exception
    title, figure = _pattern(app)
    assert title == "L1H1 on example 1"
    # the reference: the same model (built from the spec under the run's seed) on the
    # same probe tokens
    tokens = good.load_tensors("probe_tokens")["tokens"][1:2]
    torch.manual_seed(0)
    model = models.build(models.ModelSpec(**SPEC), device="cpu")
    hook = "blocks.1.attn.hook_pattern"
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == hook)
    expected = cache[hook][0, 1].numpy()
    np.testing.assert_allclose(np.array(figure.data[0].z, dtype=float), expected, atol=1e-6)
    assert list(figure.layout.xaxis.ticktext) == [str(int(t)) for t in tokens[0]]


def test_score_choice_and_role_filter(store: RunStore, good: Run) -> None:
    app = _open(store.root)
    app.multiselect(key=f"heads_scores_{GOOD}").set_value(["entropy"]).run()
    assert not app.exception
    assert [t for t in figures_by_title(app) if " on example " not in t] == ["entropy"]

    roles = good.load_table("head_roles")
    copying = roles[roles["roles"].str.split(",").map(lambda rs: "copying" in rs)]
    assert 0 < len(copying) < len(roles)  # the filter has something to do
    app.multiselect(key=f"heads_roles_filter_{GOOD}").set_value(["copying"]).run()
    shown = _role_table(app)
    assert list(zip(shown["layer"], shown["head"], strict=True)) == list(
        zip(copying["layer"], copying["head"], strict=True)
    )


def test_scores_no_head_has_are_not_offered(store: RunStore, good: Run) -> None:
    roles = good.load_table("head_roles")
    numeric = roles.select_dtypes("number").drop(columns=["layer", "head"], errors="ignore")
    empty = [c for c in numeric.columns if roles[c].isna().all()]
    assert empty  # a native model has no special tokens: special_token is NaN for every head
    app = _open(store.root)
    options = app.multiselect(key=f"heads_scores_{GOOD}").options
    assert options and not set(empty) & set(options)
    captions = " ".join(c.value for c in app.caption)
    assert all(name in captions for name in empty) and "not offered" in captions


def test_failed_damaged_and_old_runs_show_why_and_the_good_run_still_draws(
    store: RunStore,
) -> None:
    app = _open(store.root)
    app.selectbox(key="heads_run").set_value("heads_tiny/failed").run()
    assert not app.exception
    assert any("the model did not load" in w.value for w in app.warning)
    assert not app.get("plotly_chart")

    app.selectbox(key="heads_run").set_value("heads_tiny/damaged").run()
    assert any("Could not read run `heads_tiny/damaged`" in w.value for w in app.warning)
    assert not app.get("plotly_chart")

    app.selectbox(key="heads_run").set_value("heads_tiny/old").run()
    assert not app.exception
    assert any("saved no example attention patterns" in i.value for i in app.info)
    assert len(app.get("plotly_chart")) == 6  # the heatmaps still draw

    app.selectbox(key="heads_run").set_value(GOOD).run()
    assert not app.exception and len(app.get("plotly_chart")) == 7


def test_no_heads_runs_names_the_configs(tmp_path: Path) -> None:
    app = _open(tmp_path / "nothing-here")
    assert not app.exception
    assert any("experiments/heads_induction.yaml" in i.value for i in app.info)


def test_opening_the_page_never_imports_torch(store: RunStore) -> None:
    assert_renders_without_torch("heads", store.root)


# -- figures on hand-made data

FRAME = pd.DataFrame(
    {
        "layer": [0, 0, 1],
        "head": [0, 1, 1],
        "roles": ["induction", "", "previous_token,copying"],
        "induction": [0.9, 0.1, 0.3],
        "change": [-0.5, 0.25, 0.0],
    }
)


def test_head_heatmap_places_each_head() -> None:
    figure = head_heatmap(FRAME, "induction")
    z = np.array(figure.data[0].z, dtype=float)
    assert z.shape == (2, 2) and z[0, 0] == 0.9 and z[1, 1] == 0.3 and np.isnan(z[1, 0])
    assert figure.data[0].customdata[1][1] == "previous_token,copying"
    assert figure.data[0].zmid is None
    signed = head_heatmap(FRAME, "change")
    assert (signed.data[0].zmid, signed.data[0].zmin, signed.data[0].zmax) == (0.0, -0.5, 0.5)
    with pytest.raises(ValueError, match="lacks column"):
        score_matrix(FRAME, "nope")


def test_attention_pattern_labels_both_axes_with_tokens() -> None:
    pattern = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]
    figure = attention_pattern(pattern, ["the", "cat", "the"], title="L0H1")
    trace = figure.data[0]
    np.testing.assert_allclose(np.array(trace.z, dtype=float), pattern)
    assert list(figure.layout.xaxis.ticktext) == ["the", "cat", "the"]  # repeats kept apart
    assert list(figure.layout.yaxis.tickvals) == [0, 1, 2]
    assert figure.layout.yaxis.autorange == "reversed"
    assert trace.text[2][1] == "2: the → 1: cat"
    with pytest.raises(ValueError, match="2 token strings"):
        attention_pattern(pattern, ["a", "b"])
    with pytest.raises(ValueError, match="square"):
        attention_pattern(np.ones((2, 3)), ["a", "b"])


SUMMARY = {
    "top_heads": {
        "induction": {"layer": 1, "head": 2, "score": 0.74, "n_heads": 4, "threshold": 0.5},
        "previous_token": {"layer": 0, "head": 2, "score": 0.71, "n_heads": 1,
                           "threshold": 0.4},
    },
    "induction_circuit": {
        "induction_head": {"layer": 1, "head": 2, "induction": 0.74, "threshold": 0.5,
                           "passes": True},
        "k_composition_from": {"layer": 0, "head": 2, "score": 0.23, "baseline": 0.124,
                               "above_baseline": True, "previous_token": 0.71,
                               "roles": "previous_token"},
    },
}


def test_top_heads_frame_has_a_row_per_role() -> None:
    table = top_heads_frame(SUMMARY)
    assert list(table["role"]) == ["induction", "previous_token"]
    assert list(table["top head"]) == ["L1H2", "L0H2"]
    assert list(table["heads passing"]) == [4, 1] and list(table["threshold"]) == [0.5, 0.4]
    assert top_heads_frame({}).empty


def test_induction_circuit_text_says_when_it_is_not_one() -> None:
    text, holds = induction_circuit_text(SUMMARY)
    assert holds and text.startswith("L0H2 (previous-token score 0.71) K-composes into L1H2")
    assert "Not an induction circuit" not in text

    weak = json.loads(json.dumps(SUMMARY))
    weak["induction_circuit"]["induction_head"].update(induction=0.04, passes=False)
    weak["induction_circuit"]["k_composition_from"].update(score=0.1, above_baseline=False)
    text, holds = induction_circuit_text(weak)
    assert not holds
    assert "L1H2 is below the induction threshold" in text and "random weights'" in text

    old = json.loads(json.dumps(SUMMARY))  # saved before `passes` / `above_baseline`
    del old["induction_circuit"]["induction_head"]["passes"]
    del old["induction_circuit"]["k_composition_from"]["above_baseline"]
    text, holds = induction_circuit_text(old)
    assert not holds and "predates" in text
    assert induction_circuit_text({"top_heads": {}}) is None
