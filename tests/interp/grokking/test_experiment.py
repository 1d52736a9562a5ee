from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from interp import functional, models
from interp.cli import main
from interp.config import ConfigError, load_config
from interp.grokking import trainer as trainer_module
from interp.grokking.experiment import build_trainer, read_progress, seed_params, train_mask
from interp.grokking.progress import progress_measures
from interp.grokking.trainer import StackedTrainer
from interp.runs import Run, RunStore
from interp.tasks.modular import ModularArithmetic

TINY = """
kind: grokking
seed: 0
device: cpu
model: {n_layers: 1, d_model: 32, n_heads: 4, d_mlp: 64, act_fn: relu, normalization: null}
task: {name: modular, p: 11, frac_train: 0.5, seed: 0}
epochs: 60
optim: {lr: 0.003, weight_decay: 1.0, betas: [0.9, 0.98], warmup_epochs: 5}
stop: {enabled: false}
log_every: 10
progress_every: 20
checkpoint_every: 20
"""


@pytest.fixture()
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_grok.yaml"
    path.write_text(textwrap.dedent(TINY))
    return path


def test_reference_config_overrides_and_vocabulary_defaults() -> None:
    _, config = load_config("experiments/grokking_p113.yaml", ["task.p=61", "seed=7"])
    assert config.task.p == 61 and config.seed == 7 and config.model_seeds == [7]
    assert (config.model.d_vocab, config.model.d_vocab_out, config.model.n_ctx) == (63, 61, 4)
    _, reference = load_config("experiments/grokking_p113.yaml")
    assert reference.task.frac_train == 0.3 and reference.optim.weight_decay == 1.0
    assert reference.model.d_model == 128 and reference.model.d_mlp == 512
    assert reference.model.normalization is None and reference.epochs == 40_000


def test_config_errors(config_path: Path) -> None:
    for p in (12, 1, 0):  # below 2 as well: the error names task.p, not the model's sizes
        with pytest.raises(ConfigError, match=f"task.p: p={p} is not prime"):
            load_config(config_path, [f"task.p={p}"])
    with pytest.raises(ConfigError, match="frac_train is required"):
        load_config(config_path, ["task.frac_train=null"])
    with pytest.raises(ConfigError, match="too small for p=11"):
        load_config(config_path, ["model.d_vocab_out=5"])


@pytest.mark.parametrize(("override", "message"), [
    ("task.op='-'", "task: op='-' is not supported: the progress measures (Nanda et al. 2023) "
                  "are defined for modular addition, op '+'"),
    ("task.op='*'", "task: op='*' is not supported"),
    ("task.p=2", "task: p=2 is too small: the progress measures need p >= 3"),
    ("seeds=[0, 1, 0]", "seeds: seeds [0, 1, 0] repeat [0]: each model needs its own seed"),
    ("progress_every=15", "progress_every=15 must be a multiple of log_every=10"),
])
def test_config_refuses_what_would_fail_or_collapse_after_training(
    config_path: Path, override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rejected when the config is validated (as `interp validate` does), in one line."""
    with pytest.raises(ConfigError) as error:
        load_config(config_path, [override])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert main(["validate", str(config_path), "--set", override]) != 0
    assert message in capsys.readouterr().err
    for fine in ("task.op='+'", "task.p=3", "seeds=[2, 0]", "progress_every=30",
                 "progress_every=0"):
        load_config(config_path, [fine])


def test_cuda_graph_key_applies_on_cuda_only(config_path: Path) -> None:
    _, config = load_config(config_path, ["cuda_graph=true"])
    assert config.cuda_graph is True
    trainer = build_trainer(config, ModularArithmetic(config.task))  # device: cpu
    assert trainer.cuda_graph is False and trainer.device.type == "cpu"
    with pytest.raises(ConfigError, match="cuda_graph"):
        load_config(config_path, ["cuda_graph=sometimes"])


def _trainer(
    config_path: Path, seeds: list[int], grokfast: bool, vectorize: bool | None = None
) -> StackedTrainer:
    _, config = load_config(config_path, [f"seeds={seeds}", f"grokfast.enabled={grokfast}"])
    trainer = build_trainer(config, ModularArithmetic(config.task))
    if vectorize is not None:
        trainer.vectorize = vectorize
    return trainer


@pytest.mark.parametrize(("grokfast", "vectorize"), [(False, True), (True, True), (False, False)])
def test_batched_seeds_match_single_runs(
    config_path: Path, grokfast: bool, vectorize: bool
) -> None:
    together = _trainer(config_path, [0, 1, 2], grokfast, vectorize)
    alone = _trainer(config_path, [1], grokfast, vectorize=False)
    for _ in range(25):
        loss_together = together.step()
        loss_alone = alone.step()
        torch.testing.assert_close(loss_together[1:2], loss_alone, rtol=1e-4, atol=1e-5)
    # Adam divides by the root of tiny second moments: where a gradient is ~0, rounding
    # differences between batched and single matmuls can flip the direction of that
    # weight's step. So weights agree to a fraction of one step (lr 3e-3), not to 1e-6.
    for key, value in alone.model_params(0).items():
        torch.testing.assert_close(together.model_params(1)[key], value, rtol=1e-3, atol=6e-4)


def test_train_mask_matches_the_split(config_path: Path) -> None:
    _, config = load_config(config_path)
    task = ModularArithmetic(config.task)
    mask = train_mask(task)
    train, _ = task.train_test()
    assert int(mask.sum()) == len(train)
    assert torch.equal(task.batch().clean[mask].sort(0).values, train.clean.sort(0).values)


SNAPSHOTS = sorted({*range(20, 201, 20), *range(30, 201, 30)})


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The tiny config with seeds [0, 1] for 200 epochs at lr 0.01 (both models end with
    key frequency 3, seed 0 had none at epoch 20), checkpoints every 30 epochs and progress
    every 20: weight snapshots at `SNAPSHOTS`."""
    folder = tmp_path_factory.mktemp("grok")
    config_path = folder / "tiny_grok.yaml"
    config_path.write_text(textwrap.dedent(TINY))
    argv = ["run", str(config_path), "--runs-dir", str(folder / "runs"), "--no-progress"]
    longer = ["epochs=200", "optim.lr=0.01", "checkpoint_every=30", "seeds=[0, 1]"]
    assert main([*argv, *(f"--set={o}" for o in longer)]) == 0
    run = RunStore(folder / "runs").latest("tiny_grok")
    assert run is not None
    return run


def test_run_logs_measures_and_summary(two_seed_run: Run) -> None:
    run = two_seed_run
    metrics = run.metrics()
    assert sorted(metrics["seed"].unique()) == [0, 1]
    assert list(metrics[metrics["seed"] == 0]["step"]) == list(range(10, 201, 10))
    # Progress measures at progress epochs, with this checkpoint's own key frequencies,
    # named so; their own train/test loss is not logged over the trainer's.
    with_measures = metrics.dropna(subset=["restricted_loss_own_keys"])
    assert list(with_measures[with_measures["seed"] == 0]["step"]) == list(range(20, 201, 20))
    assert {"excluded_loss_own_keys", "key_frequencies", "gini_embedding"} <= set(metrics)
    assert "restricted_loss" not in metrics and "excluded_loss" not in metrics
    summary = run.summary
    assert summary["seeds"] == [0, 1] and set(summary["per_seed"]) == {"0", "1"}
    one = summary["per_seed"]["0"]
    for key in ("epoch_train_acc_1", "epoch_test_acc_0.5", "epoch_test_acc_0.99",
                "final_train_loss", "final_test_loss", "final_test_acc", "key_frequencies",
                "grokked", "epoch_restricted_loss_below_1", "final_restricted_loss"):
        assert key in one
    for seed in (0, 1):  # the summary's final losses are the last logged ones
        last = metrics[metrics["seed"] == seed].iloc[-1]
        numbers = summary["per_seed"][str(seed)]
        assert numbers["final_train_loss"] == last["train_loss"]
        assert numbers["final_test_loss"] == last["test_loss"]
    assert (run.artifacts_dir / "models" / "seed_1" / "model.safetensors").is_file()
    files = sorted(run.artifacts_dir.glob("checkpoints/epoch_*.safetensors"))
    assert [int(f.stem.removeprefix("epoch_")) for f in files] == SNAPSHOTS


def test_saved_models_record_their_own_seed(two_seed_run: Run) -> None:
    folders = {"models/seed_0": 0, "models/seed_1": 1, "model": 0}
    final = two_seed_run.load_tensors("checkpoints/epoch_000200")
    for folder, seed in folders.items():
        spec = json.loads((two_seed_run.artifacts_dir / folder / "model_spec.json").read_text())
        assert spec["spec"]["seed"] == seed, folder
        model = models.load_checkpoint(two_seed_run.artifacts_dir / folder, device="cpu")
        for key, value in seed_params(final, seed).items():
            assert torch.equal(functional.params_of(model)[key], value), (folder, key)


def test_progress_file_uses_the_final_key_frequencies_at_every_snapshot(
    two_seed_run: Run,
) -> None:
    """Nanda et al. 2023 fix the key frequencies from the final model and evaluate every
    checkpoint with them: each row equals `progress_measures(..., key_freqs=final)` on
    that snapshot's weights."""
    run = two_seed_run
    _, config = load_config(run.path / "config.yaml")
    task = ModularArithmetic(config.task)
    mask = train_mask(task)
    progress = read_progress(run)
    assert sorted(set(progress["step"])) == SNAPSHOTS
    assert len(progress) == 2 * len(SNAPSHOTS) and sorted(set(progress["seed"])) == [0, 1]
    model = models.build(config.model, device="cpu")
    for seed in (0, 1):
        numbers = run.summary["per_seed"][str(seed)]
        final_keys = numbers["key_frequencies"]
        assert final_keys == [3], seed  # a final model with key frequencies
        rows = progress[progress["seed"] == seed].sort_values("step")
        for row in rows.itertuples():
            snapshot = run.load_tensors(f"checkpoints/epoch_{row.step:06d}")
            functional.load_params(model, seed_params(snapshot, seed))
            expected = progress_measures(model, task, mask, key_freqs=final_keys)
            assert row.restricted_loss == pytest.approx(expected.restricted_loss, rel=1e-12)
            assert row.excluded_loss == pytest.approx(expected.excluded_loss, rel=1e-12)
        assert rows["restricted_loss"].iloc[-1] == pytest.approx(numbers["final_restricted_loss"])
        below = rows[rows["restricted_loss"] < 1.0]["step"]
        assert numbers["epoch_restricted_loss_below_1"] == (
            int(below.iloc[0]) if len(below) else None
        )
    # Where a checkpoint's own key frequencies were not the final ones (seed 0 at epoch
    # 20 had none), its logged own-key losses differ from the final-key ones.
    logged = run.metrics().dropna(subset=["restricted_loss_own_keys"])
    both = logged.merge(progress, on=["step", "seed"])
    assert len(both) == len(logged) == 20
    other_keys = both[both["key_frequencies"].map(lambda keys: keys != [3])]
    assert (0, 20) in set(zip(other_keys["seed"], other_keys["step"], strict=True))
    gaps = other_keys["restricted_loss_own_keys"] - other_keys["restricted_loss"]
    assert gaps.abs().min() > 1e-4  # 0.007 to 1.6 on CPU
    same_keys = both[both["key_frequencies"].map(lambda keys: keys == [3])]
    assert len(same_keys) and same_keys["restricted_loss_own_keys"].to_numpy() == pytest.approx(
        same_keys["restricted_loss"].to_numpy(), rel=1e-12
    )


@pytest.mark.parametrize("grokfast", [False, True])
def test_resumed_run_ends_with_the_same_metrics(
    config_path: Path, tmp_path: Path, monkeypatch, grokfast: bool
) -> None:
    """Stopped at epoch 47 (state saved at 30, a snapshot at 40), resumed from the state
    file, which safetensors reads back in sorted key order: the same metrics, snapshots,
    final-key progress rows and summary as a run never stopped, with Grokfast on too."""
    runs = tmp_path / "runs"
    argv = ["run", str(config_path), "--runs-dir", str(runs), "--no-progress",
            "--set", f"grokfast.enabled={grokfast}", "--set", "checkpoint_every=30"]
    assert main(argv) == 0
    straight = RunStore(runs).latest("tiny_grok")

    real_step = trainer_module.StackedTrainer.step

    def interrupted_step(self: StackedTrainer):
        if self.epoch == 47:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(trainer_module.StackedTrainer, "step", interrupted_step)
    assert main(argv) == 1
    (stopped_info,) = [i for i in RunStore(runs).runs() if i.ref != straight.ref]
    assert stopped_info.status in ("failed", "resumable")
    monkeypatch.setattr(trainer_module.StackedTrainer, "step", real_step)
    assert main(["resume", stopped_info.ref, "--runs-dir", str(runs), "--no-progress"]) == 0
    resumed = RunStore(runs).load(stopped_info.ref)
    assert resumed.status == "done"
    columns = ["step", "seed", "train_loss", "test_loss", "train_acc", "test_acc"]
    a, b = straight.metrics()[columns], resumed.metrics()[columns]
    assert list(a["step"]) == list(b["step"])  # no epoch logged twice
    assert a.to_numpy() == pytest.approx(b.to_numpy(), rel=1e-6, abs=1e-7)
    for epoch in (20, 30, 40, 60):
        name = f"checkpoints/epoch_{epoch:06d}"
        for key, value in straight.load_tensors(name).items():
            torch.testing.assert_close(resumed.load_tensors(name)[key], value, rtol=1e-6,
                                       atol=1e-7)
    assert read_progress(resumed).to_numpy() == pytest.approx(
        read_progress(straight).to_numpy(), rel=1e-6
    )
    assert resumed.summary.keys() == straight.summary.keys()
    for key, value in straight.summary.items():
        if isinstance(value, float):
            assert resumed.summary[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert resumed.summary[key] == value, key
