"""The summary's epochs, and the accuracy they are read from."""

from __future__ import annotations

import pandas as pd
import torch

from interp.grokking.summary import seed_summary
from interp.grokking.trainer import answer_loss, answer_loss_and_accuracy
from interp.tasks.base import TaskBatch


def _batch(answers: torch.Tensor) -> TaskBatch:
    tokens = torch.zeros(len(answers), 3, dtype=torch.long)
    return TaskBatch(
        clean=tokens, corrupted=tokens, answer=answers, wrong=answers,
        position=torch.full((len(answers),), 2),
    )


def test_accuracy_is_an_exact_count_fraction() -> None:
    n, vocab = 3830, 113  # the reference config's training set
    answers = torch.arange(n) % vocab
    logits = torch.nn.functional.one_hot(answers, vocab).float()[None].repeat(2, 1, 1)
    logits[1, 0] = logits[1, 0].roll(1)  # model 1 gets one example wrong
    _, accuracy = answer_loss_and_accuracy(logits, _batch(answers))
    assert accuracy[0].item() == 1.0
    assert accuracy[1].item() == torch.tensor((n - 1) / n, dtype=torch.float32).item()


def _rows(train_acc: list[float], test_acc: list[float]) -> pd.DataFrame:
    steps = [100 * (i + 1) for i in range(len(train_acc))]
    return pd.DataFrame({
        "step": steps, "train_acc": train_acc, "test_acc": test_acc,
        "train_loss": 0.1, "test_loss": 0.1, "weight_norm": 30.0,
    })


def test_summary_reads_float32_all_correct_as_fitted_and_one_error_as_not() -> None:
    # 0.99999994 is what a float32 mean (sum x 1/n) on CUDA logged for all-correct
    float32_one = 0.9999999403953552
    one_wrong = 3829 / 3830
    train = [0.2, one_wrong] + [float32_one] * 18
    test = [0.0] * 14 + [0.3, 0.6, 0.995, 1.0, 1.0, 1.0]
    summary = seed_summary(_rows(train, test))
    assert summary["epoch_train_acc_1"] == 300
    assert summary["epoch_test_acc_0.5"] == 1600
    assert summary["epoch_test_acc_0.99"] == 1700
    assert summary["grokked"]  # 1,700 >= 5 x 300
    never_fitted = seed_summary(_rows([one_wrong] * 20, test))
    assert never_fitted["epoch_train_acc_1"] is None
    assert not never_fitted["grokked"]


def test_answer_loss_is_each_models_mean_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(3)
    n_models, n, vocab = 3, 50, 11
    answers = torch.randint(0, vocab, (n,), generator=generator)
    logits = torch.randn(n_models, n, vocab, generator=generator)
    by_hand = torch.stack([
        -sum(torch.log_softmax(logits[m, i], -1)[answers[i]] for i in range(n)) / n
        for m in range(n_models)
    ])
    torch.testing.assert_close(answer_loss(logits, _batch(answers)), by_hand)
    torch.testing.assert_close(answer_loss(logits[1:2], _batch(answers)), by_hand[1:2])
