"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from interp.metrics import (
    METRICS,
    accuracy,
    answer_logprob,
    answer_prob,
    kl_divergence,
    logit_diff,
    logits_at,
    mean_metric,
    normalise,
    reads_position_only,
)
from interp.tasks import make_task
from interp.tasks.base import TaskBatch


def _batch(answer: list[int], wrong: list[int], position: list[int], n_pos: int) -> TaskBatch:
    n = len(answer)
    tokens = torch.zeros(n, n_pos, dtype=torch.long)
    return TaskBatch(
        clean=tokens,
        corrupted=tokens.clone(),
        answer=torch.tensor(answer),
        wrong=torch.tensor(wrong),
        position=torch.tensor(position),
    )


@pytest.fixture
def logits() -> torch.Tensor:
    """Two examples, three positions, four tokens; only the read positions matter."""
    values = torch.full((2, 3, 4), -7.0)
    values[0, 2] = torch.tensor([1.0, 4.0, 0.5, -2.0])
    values[1, 1] = torch.tensor([0.0, 0.0, 2.0, 3.0])
    return values


def test_logits_at_reads_each_examples_position(logits: torch.Tensor) -> None:
    final = logits_at(logits, torch.tensor([2, 1]))
    assert torch.equal(final[0], logits[0, 2])
    assert torch.equal(final[1], logits[1, 1])


def test_logits_at_rejects_bad_positions(logits: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="position must be"):
        logits_at(logits, torch.tensor([0]))
    with pytest.raises(ValueError, match="lie in"):
        logits_at(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="batch, pos, vocab"):
        logits_at(logits[:, 0], torch.tensor([0, 0]))


def test_logit_diff_by_hand(logits: torch.Tensor) -> None:
    batch = _batch(answer=[1, 3], wrong=[0, 2], position=[2, 1], n_pos=3)
    assert torch.allclose(logit_diff(logits, batch), torch.tensor([4.0 - 1.0, 3.0 - 2.0]))


def test_logprob_prob_and_accuracy_by_hand(logits: torch.Tensor) -> None:
    batch = _batch(answer=[1, 2], wrong=[0, 3], position=[2, 1], n_pos=3)
    row0 = [1.0, 4.0, 0.5, -2.0]
    row1 = [0.0, 0.0, 2.0, 3.0]
    expected = torch.tensor(
        [
            4.0 - math.log(sum(math.exp(v) for v in row0)),
            2.0 - math.log(sum(math.exp(v) for v in row1)),
        ]
    )
    assert torch.allclose(answer_logprob(logits, batch), expected)
    assert torch.allclose(answer_prob(logits, batch), expected.exp())
    # argmax is token 1 in example 0 (the answer) and token 3 in example 1 (not the answer)
    assert torch.equal(accuracy(logits, batch), torch.tensor([1.0, 0.0]))


def test_two_token_probability() -> None:
    two = torch.tensor([[[0.0, math.log(3.0)]]])
    batch = _batch(answer=[1], wrong=[0], position=[0], n_pos=1)
    assert torch.allclose(answer_prob(two, batch), torch.tensor([0.75]))
    assert torch.allclose(answer_logprob(two, batch), torch.tensor([math.log(0.75)]))
    assert torch.allclose(logit_diff(two, batch), torch.tensor([math.log(3.0)]))


def test_kl_is_zero_for_identical_logits(logits: torch.Tensor) -> None:
    assert torch.allclose(kl_divergence(logits, logits.clone()), torch.zeros(2), atol=1e-6)
    at = kl_divergence(logits, logits.clone(), position=torch.tensor([2, 1]))
    assert torch.allclose(at, torch.zeros(2), atol=1e-6)


def test_kl_two_token_case_by_hand() -> None:
    reference = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]])  # p = (1/2, 1/2) at both positions
    model = torch.tensor([[[0.0, math.log(3.0)], [1.0, 1.0]]])  # q = (1/4, 3/4), then (1/2, 1/2)
    kl_first = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    at_first = kl_divergence(model, reference, position=torch.tensor([0]))
    assert torch.allclose(at_first, torch.tensor([kl_first]))
    averaged = kl_divergence(model, reference)
    assert torch.allclose(averaged, torch.tensor([kl_first / 2]))
    # KL is not symmetric: swapping the arguments gives KL(q || p)
    reverse = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    swapped = kl_divergence(reference, model, position=torch.tensor([0]))
    assert torch.allclose(swapped, torch.tensor([reverse]))


def test_kl_ignores_tokens_the_reference_rules_out() -> None:
    reference = torch.tensor([[[0.0, float("-inf")]]])  # p = (1, 0)
    model = torch.tensor([[[0.0, 0.0]]])  # q = (1/2, 1/2)
    assert torch.allclose(kl_divergence(model, reference), torch.tensor([math.log(2.0)]))


def test_kl_rejects_mismatched_shapes(logits: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence(logits, logits[:1])


def test_normalise_maps_clean_to_one_and_corrupt_to_zero() -> None:
    assert normalise(3.0, clean=3.0, corrupt=-1.0) == 1.0
    assert normalise(-1.0, clean=3.0, corrupt=-1.0) == 0.0
    assert normalise(1.0, clean=3.0, corrupt=-1.0) == 0.5
    values = torch.tensor([3.0, -1.0, 1.0])
    out = normalise(values, torch.tensor(3.0), torch.tensor(-1.0))
    assert isinstance(out, torch.Tensor)
    assert torch.allclose(out, torch.tensor([1.0, 0.0, 0.5]))


def test_normalise_raises_when_clean_equals_corrupt() -> None:
    with pytest.raises(ValueError, match="equal"):
        normalise(1.0, clean=2.0, corrupt=2.0)
    with pytest.raises(ValueError, match="equal"):
        normalise(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 3.0]), torch.tensor([2.0, 1.0]))


def test_mean_metric_is_the_batch_mean(logits: torch.Tensor) -> None:
    batch = _batch(answer=[1, 3], wrong=[0, 2], position=[2, 1], n_pos=3)
    scalar = mean_metric(logit_diff)(logits, batch)
    assert scalar.ndim == 0
    assert torch.isclose(scalar, torch.tensor(2.0))


def test_registry_and_task_metric_lookup() -> None:
    expected = {
        "logit_diff": logit_diff,
        "answer_logprob": answer_logprob,
        "answer_prob": answer_prob,
        "accuracy": accuracy,
    }
    assert expected == METRICS
    task = make_task({"name": "modular", "p": 3})
    assert task.metric("accuracy") is accuracy
    assert task.metric() is logit_diff
    with pytest.raises(ValueError, match="no metric 'bogus'"):
        task.metric("bogus")


def test_kl_of_a_nan_reference_is_nan_not_zero(logits: torch.Tensor) -> None:
    """ACDC minimises this KL: a NaN in the reference must not read as a perfect match."""
    reference = logits.clone()
    reference[1, :, 0] = float("nan")
    kl = kl_divergence(logits + 1.0, reference)
    assert torch.isnan(kl[1]) and torch.isfinite(kl[0])
    with pytest.raises(ValueError, match=r"logits must be \[batch, pos, vocab\]"):
        kl_divergence(logits[:, -1], reference[:, -1])


def test_normalise_refuses_non_finite_ends() -> None:
    with pytest.raises(ValueError, match="must be finite"):
        normalise(1.0, float("nan"), 0.0)
    with pytest.raises(ValueError, match="must be finite"):
        normalise(1.0, float("inf"), 0.0)


def test_only_the_librarys_metrics_are_known_to_read_the_position_alone() -> None:
    """The patching engines skip their probe for reads elsewhere on these, and only these."""

    def last_position(logits, batch):  # a user's metric: reads the last position
        return logits[:, -1, 0]

    for metric in METRICS.values():
        assert reads_position_only(metric) and reads_position_only(mean_metric(metric))
    assert not reads_position_only(last_position)
    assert not reads_position_only(mean_metric(last_position))
    assert not reads_position_only(lambda logits, batch: logits.sum())
