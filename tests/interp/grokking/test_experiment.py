from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from interp.cli import main
from interp.config import ConfigError, load_config
from interp.grokking import trainer as trainer_module
from interp.grokking.experiment import build_trainer, train_mask
from interp.grokking.trainer import StackedTrainer
from interp.runs import RunStore
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


def test_run_logs_measures_and_summary(config_path: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = ["run", str(config_path), "--runs-dir", str(runs), "--no-progress"]
    assert main([*argv, "--set", "seeds=[0, 1]"]) == 0
    run = RunStore(runs).latest("tiny_grok")
    metrics = run.metrics()
    assert sorted(metrics["seed"].unique()) == [0, 1]
    assert list(metrics[metrics["seed"] == 0]["step"]) == [10, 20, 30, 40, 50, 60]
    with_measures = metrics.dropna(subset=["restricted_loss"])
    assert list(with_measures[with_measures["seed"] == 0]["step"]) == [20, 40, 60]
    summary = run.summary
    assert summary["seeds"] == [0, 1] and set(summary["per_seed"]) == {"0", "1"}
    one = summary["per_seed"]["0"]
    for key in ("epoch_train_acc_1", "epoch_test_acc_0.5", "epoch_test_acc_0.99",
                "final_train_loss", "final_test_loss", "final_test_acc", "key_frequencies",
                "grokked"):
        assert key in one
    assert (run.artifacts_dir / "models" / "seed_1" / "model.safetensors").is_file()
    assert run.artifact_path("checkpoints/epoch_000040.safetensors").is_file()


def test_resumed_run_ends_with_the_same_metrics(
    config_path: Path, tmp_path: Path, monkeypatch
) -> None:
    runs = tmp_path / "runs"
    argv = ["run", str(config_path), "--runs-dir", str(runs), "--no-progress"]
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
    assert resumed.summary.keys() == straight.summary.keys()
    for key, value in straight.summary.items():
        if isinstance(value, float):
            assert resumed.summary[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert resumed.summary[key] == value, key
