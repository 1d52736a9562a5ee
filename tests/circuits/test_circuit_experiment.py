"""The `circuit` experiment kind end to end on a planted model, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pretrained_models import write_llama

from circuits.acdc import ACDCResult, acdc
from circuits.eap import EdgeScores, edge_attribution
from circuits.planted import planted
from interp import models
from interp.cli import main
from interp.config import ConfigError, load_config
from interp.metrics import logit_diff, mean_metric
from interp.runs import RunStore
from interp.tasks import make_task

REPO = Path(__file__).resolve().parents[2]


def test_circuit_kind_on_planted_mlp_and(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = REPO / "experiments" / "circuit_planted_mlp_and.yaml"
    argv = ["run", str(config), "--runs-dir", str(runs), "--no-progress",
            "--set", "acdc_thresholds=[0.01, 1.0]", "--set", "acdc_speculation=4"]
    assert main(argv) == 0
    run = RunStore(runs).latest("circuit_planted_mlp_and")
    summary = run.summary
    for method in ("eap", "eap-ig", "acdc"):
        assert summary[method]["auc_edge"] >= 0.99, method
        assert summary[method]["recovers_truth"] is True, method
    case = planted("mlp_and")
    saved = EdgeScores.load(run, name="edge_scores_eap-ig")
    direct = edge_attribution(case.model, case.batch, mean_metric(logit_diff), method="eap-ig")
    torch.testing.assert_close(saved.scores, direct.scores)
    speculative = ACDCResult.load(run, name="acdc_1")
    assert speculative.edges == sorted(case.edges, key=lambda name: case.graph.edge_index[name])
    assert speculative.speculation == 4 and speculative.n_trials >= speculative.n_tests
    curve = run.load_table("faithfulness")
    assert set(curve["method"]) == {"eap", "eap-ig"}
    at_truth = curve[(curve["method"] == "eap-ig") & (curve["size"] == 8)]["faithfulness"]
    assert float(at_truth.iloc[0]) == pytest.approx(1.0, abs=1e-4)  # 7 true edges + 1 more


def test_tracr_with_the_metric_as_acdc_objective(tmp_path: Path) -> None:
    """tracr's metric reads every output position, which incremental ACDC does not
    compute: the experiment runs ACDC's tests as full passes there (it used to fail)."""
    runs = tmp_path / "runs"
    config = REPO / "experiments" / "circuit_tracr_frac_prevs.yaml"
    argv = ["run", str(config), "--runs-dir", str(runs), "--no-progress",
            "--set", "methods=[acdc]", "--set", "acdc_thresholds=[0.001, 0.1]"]
    assert main(argv) == 0
    summary = RunStore(runs).latest("circuit_tracr_frac_prevs").summary
    assert summary["n_true_edges"] == 3
    assert summary["acdc"]["recovers_truth"] is True
    assert summary["acdc"]["auc_edge"] == pytest.approx(1.0)


def test_planted_truth_follows_the_ablation(tmp_path: Path) -> None:
    """Under zero ablation the planted circuit also needs its invariant edges (positions,
    constant features), which resample ablation cannot see."""
    runs = tmp_path / "runs"
    config = REPO / "experiments" / "circuit_planted_mlp_and.yaml"
    argv = ["run", str(config), "--runs-dir", str(runs), "--no-progress",
            "--set", "ablation=zero", "--set", "methods=[acdc]",
            "--set", "acdc_thresholds=[0.01, 1.0]"]
    assert main(argv) == 0
    run = RunStore(runs).latest("circuit_planted_mlp_and")
    case = planted("mlp_and")
    assert case.invariant_edges  # else this test would not tell the truths apart
    truth = case.edges | case.invariant_edges
    assert case.truth_edges("zero") == truth and case.truth_edges("resample") == case.edges
    assert set(run.load_json("truth_edges")) == truth
    assert run.summary["n_true_edges"] == len(truth)
    assert run.summary["acdc"]["recovers_truth"] is True


def test_source_must_name_exactly_one_thing(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("kind: circuit\nsource: {planted: induction, tracr: reverse}\n")
    with pytest.raises(ConfigError, match="source: .*exactly one of planted, tracr"):
        load_config(config)


def test_a_metric_named_for_a_tracr_program_is_refused_not_ignored(tmp_path: Path) -> None:
    config = tmp_path / "tracr.yaml"
    config.write_text("kind: circuit\nsource: {tracr: reverse}\n")
    assert load_config(config)[1].metric is None  # the program's own metric
    with pytest.raises(ConfigError, match="metric: tracr program 'reverse' scores with its own"):
        load_config(config, ["metric=logit_diff"])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("acdc_thresholds: [0.01, .inf]", r"acdc_thresholds\.1: .* finite number \(got inf\)"),
        ("acdc_thresholds: [.nan]", r"acdc_thresholds\.0: .* finite number \(got nan\)"),
        ("sizes: [1, -2]", r"sizes\.1: Input should be greater than or equal to 0 \(got -2\)"),
    ],
)
def test_thresholds_and_sizes_are_checked_item_by_item(tmp_path: Path, line, message) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(f"kind: circuit\nsource: {{planted: induction}}\n{line}\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_config(config)
    assert "\n" not in str(error.value)


def test_acdc_without_thresholds_is_refused_not_run_empty(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("kind: circuit\nsource: {planted: induction}\nacdc_thresholds: []\n")
    with pytest.raises(ConfigError, match="bad.yaml: acdc_thresholds: ACDC is among the methods"):
        load_config(config)
    assert load_config(config, ["methods=[eap]"])[1].acdc_thresholds == []


def test_a_model_source_must_fit_its_task_and_name_a_known_metric(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "kind: circuit\nsource:\n"
        "  model: {n_layers: 2, d_model: 64, n_heads: 4, d_vocab: 64, n_ctx: 40}\n"
        "  task: {name: induction, d_vocab: 128, half_len: 16, n_examples: 8}\n"
    )
    with pytest.raises(ConfigError, match=r"bad.yaml: source\.model\.d_vocab=64 is smaller"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"bad.yaml: metric: unknown metric 'nope' of task"):
        load_config(config, ["source.task.d_vocab=64", "metric=nope"])
    with pytest.raises(ConfigError, match=r"bad.yaml: metric: unknown metric 'nope'; choose"):
        load_config(config, ["source={planted: induction}", "metric=nope"])


def test_circuit_kind_on_a_pretrained_gemma_2_folder(tmp_path: Path) -> None:
    """A model source booted from a local Gemma 2 folder (norms after attention, soft caps,
    a 3-key window): EAP runs, and ACDC's incremental tests keep the plain loop's circuit."""
    folder = write_llama(tmp_path / "gemma2", "gemma2", sliding_window=3,
                         attn_logit_softcapping=2.0, final_logit_softcapping=5.0)
    task = {"name": "induction", "d_vocab": 20, "half_len": 3, "n_examples": 4}
    config = tmp_path / "gemma2_circuit.yaml"
    config.write_text(
        f"kind: circuit\ndevice: cpu\nsource:\n  model: {folder}\n  task: {task}\n"
        "methods: [eap, acdc]\nacdc_thresholds: [0.01]\n"
    )
    runs = tmp_path / "runs"
    assert main(["run", str(config), "--runs-dir", str(runs), "--no-progress"]) == 0
    run = RunStore(runs).latest("gemma2_circuit")
    saved = ACDCResult.load(run, name="acdc_0")
    model = models.load(str(folder), device="cpu").eval()
    batch = make_task(task).batch()
    plain = acdc(model, batch, 0.01, progress=False, incremental=False)
    assert saved.edges == plain.edges and 0 < len(saved.edges) < len(plain.graph)
    assert EdgeScores.load(run, name="edge_scores_eap").scores.abs().max() > 1e-3
