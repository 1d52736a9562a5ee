"""The summary's epochs, and the accuracy and (float64) loss they are read from."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from interp.grokking.summary import seed_summary, summarise
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
        -sum(torch.log_softmax(logits[m, i].double(), -1)[answers[i]] for i in range(n)) / n
        for m in range(n_models)
    ])
    torch.testing.assert_close(answer_loss(logits, _batch(answers)), by_hand)
    torch.testing.assert_close(answer_loss(logits[1:2], _batch(answers)), by_hand[1:2])


def test_answer_loss_is_float64_on_confident_logits() -> None:
    """Nanda et al. 2023 take the loss in float64 (`cross_entropy_high_precision`): with
    logit 20 on the answer and 0 on the 112 others, the loss is log(1 + 112 e^-20) =
    2.3085e-07, which float32 rounds to 1.49e-07 (one ulp of 1), and the gradient over the
    vocabulary sums to 0, where float32 leaves 2.8e-08."""
    p, n = 113, 4
    answers = torch.arange(n)
    logits = torch.zeros(1, n, p)
    logits[0, answers, answers] = 20.0
    logits.requires_grad_()
    loss = answer_loss(logits, _batch(answers))
    assert loss.dtype == torch.float64
    exact = math.log1p((p - 1) * math.exp(-20.0))
    assert loss.item() == pytest.approx(exact, rel=1e-12)
    loss.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.float32
    assert logits.grad[0, 0, 0].item() == pytest.approx(-exact / (1 + exact) / n, rel=1e-5)
    assert abs(logits.grad[0].sum(dim=-1)).max().item() < 1e-12


def test_restricted_loss_epoch_is_read_from_the_final_key_rows() -> None:
    """The epoch the restricted loss falls below 1 comes from the rows computed with the
    final key frequencies (progress.jsonl), not from the metrics' own-key values."""
    metrics = _rows([0.5, 1.0, 1.0], [0.1, 0.2, 1.0]).assign(seed=0)
    metrics["restricted_loss_own_keys"] = [3.0, 2.0, 0.5]
    progress = pd.DataFrame({"step": [300, 100, 200], "seed": [0, 0, 0],
                             "restricted_loss": [0.2, 1.5, 0.9]})
    summary = summarise(metrics, [0], {0: {"restricted_loss": 0.2, "key_frequencies": [3]}},
                        progress)
    assert summary["epoch_restricted_loss_below_1"] == 200
    assert summary["final_restricted_loss"] == 0.2 and summary["key_frequencies"] == [3]
    assert summary["final_train_loss"] == 0.1  # the logged metrics', not a measure's
    without = summarise(metrics, [0], {}, progress.iloc[:0])
    assert without["epoch_restricted_loss_below_1"] is None
    with pytest.raises(ValueError, match=r"final measures \['final_train_loss'\] would"):
        summarise(metrics, [0], {0: {"train_loss": 0.3}}, progress)
