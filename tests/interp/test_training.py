from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interp import models
from interp.config import load_config
from interp.tasks import Induction, ModularArithmetic
from interp.tasks.base import IGNORE_INDEX, TaskBatch
from interp.training import TrainSettings, task_loss, train


def test_task_loss_reads_targets_or_answer_at_position() -> None:
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    clean = torch.zeros(2, 3, dtype=torch.long)
    targets = torch.tensor([[IGNORE_INDEX, 1, 2], [IGNORE_INDEX, IGNORE_INDEX, 4]])
    batch = TaskBatch(
        clean=clean, corrupted=clean, answer=torch.tensor([3, 0]), wrong=torch.tensor([1, 1]),
        position=torch.tensor([2, 1]), targets=targets,
    )
    kept = torch.stack([logits[0, 1], logits[0, 2], logits[1, 2]])
    expected = F.cross_entropy(kept, torch.tensor([1, 2, 4]))
    torch.testing.assert_close(task_loss(logits, batch), expected)
    no_targets = TaskBatch(**{**batch.__dict__, "targets": None})
    at_position = torch.stack([logits[0, 2], logits[1, 1]])
    torch.testing.assert_close(
        task_loss(logits, no_targets), F.cross_entropy(at_position, torch.tensor([3, 0]))
    )


def test_model_too_small_for_task_is_a_clear_error() -> None:
    task = ModularArithmetic(p=7)
    model = models.build(dict(n_layers=1, d_model=8, n_heads=2, d_vocab=5, n_ctx=4), device="cpu")
    with pytest.raises(ValueError, match=r"d_vocab=5 is smaller than task 'modular'"):
        train(model, task, TrainSettings(steps=1), progress=False)


def test_modular_training_fits_its_training_split() -> None:
    task = ModularArithmetic(p=7, op="+", frac_train=0.6)
    spec = dict(n_layers=1, d_model=32, n_heads=4, d_vocab=9, d_vocab_out=7, n_ctx=4)
    model = models.build(spec, device="cpu")
    result = train(
        model, task, TrainSettings(steps=150, batch_size=None, lr=1e-2, eval_every=50),
        progress=False,
    )
    assert result.summary["final_train_accuracy"] == 1.0
    assert [h["step"] for h in result.history] == [50, 100, 150]
    assert not model.training


@pytest.mark.slow
def test_induction_2l_config_learns_induction() -> None:
    """The shipped config, shortened: its loss on the repeated half falls far below the
    ln(63) ~ 4.1 nats of guessing, and the induction prediction is right."""
    _, config = load_config("experiments/induction_2l.yaml", ["train.steps=300", "device=cpu"])
    model = models.build(config.model, device="cpu")
    task = Induction(config.task)
    result = train(model, task, config.train, seed=config.seed, progress=False)
    assert result.summary["final_eval_loss"] < 0.3
    assert result.summary["final_eval_accuracy"] > 0.95
    # Induction needs the repeat: on fresh random tokens the model is near chance.
    batch = task.batch()[:256]
    with torch.no_grad():
        clean = (model(batch.clean)[:, -1].argmax(-1) == batch.answer).float().mean()
        corrupt = (model(batch.corrupted)[:, -1].argmax(-1) == batch.answer).float().mean()
    assert clean > 0.95 and corrupt < 0.1


def test_train_config_checks_native_tasks_and_lets_their_errors_through(monkeypatch) -> None:
    import interp.model_checks
    from interp.config import ConfigError, validate_config

    model = dict(n_layers=1, d_model=8, n_heads=2, d_vocab=12, n_ctx=8)
    induction = {"name": "induction", "d_vocab": 12, "half_len": 4}
    native = {"kind": "train", "model": model, "task": induction}
    text = {"kind": "train", "model": model, "task": {"name": "ioi"}}
    built: list[str] = []

    def broken_make_task(config, tokenizer=None):
        built.append(config.name)
        raise ValueError("a bug while building the task")

    monkeypatch.setattr(interp.model_checks, "make_task", broken_make_task)
    with pytest.raises(ConfigError, match="a bug while building the task"):
        validate_config(native, "native.yaml")
    validate_config(text, "text.yaml")  # a text task is not built without a tokenizer
    assert built == ["induction"]
