"""Tests for probes.controls (control tasks, selectivity, online-code MDL, random-init
baseline) and probes.linear.fit_probes_on_split, on data whose answers are known by
construction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from interp import models
from interp.runs import RunStore
from probes.controls import (
    MDLResult,
    SelectivityResult,
    control_labels,
    online_codelength,
    randomly_initialised,
    selectivity,
)
from probes.linear import fit_probes, fit_probes_on_split, split_examples

SPEC = dict(n_layers=2, d_model=16, n_heads=2, d_vocab=12, n_ctx=6, d_mlp=32, seed=3)
N_TYPES, OCCURRENCES, N_LABELS = 60, 5, 4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny fits are dominated by thread hand-offs on a busy machine: one thread per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(tmp_path: Path):
    return RunStore(tmp_path / "runs").create("exp", "probes", {})


# -- fit_probes_on_split


def test_fit_probes_is_fit_probes_on_split_of_its_split() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 200, 5, generator=generator)
    labels = (features[1, :, 0] > 0).long()
    whole = fit_probes(features, labels, seed=4, epochs=50)
    train, test = split_examples(200, seed=4, labels=labels)
    on_split = fit_probes_on_split(features, labels, train, test, epochs=50)
    assert torch.equal(whole.train_index, train) and torch.equal(whole.test_index, test)
    assert torch.equal(whole.directions, on_split.directions)
    assert torch.equal(whole.test_score, on_split.test_score)


def test_a_class_missing_from_training_keeps_its_column_and_is_never_predicted() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2] * 30)
    features = F.one_hot(labels, 3).float()[None] + 0.1 * torch.randn(1, 90, 3, generator=generator)
    first = torch.arange(90) < 60
    train, test = torch.nonzero((labels != 2) & first).flatten(), torch.arange(60, 90)
    with pytest.raises(ValueError, match="no example of class\\(es\\) \\[2\\]"):
        fit_probes_on_split(features, labels, train, test, epochs=50)
    result = fit_probes_on_split(
        features, labels, train, test, epochs=50, allow_missing_classes=True
    )
    assert result.classes == (0, 1, 2) and result.directions.shape == (1, 3, 3)
    predicted = result.predict(features).argmax(-1)[0]
    assert not bool((predicted == 2).any())
    assert float(result.test_score) == pytest.approx(2 / 3)  # classes 0 and 1 all right


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (torch.tensor([0.0, 1.0]), "train_index must be a 1-d integer tensor"),
        (torch.tensor([], dtype=torch.long), "train_index is empty"),
        (torch.tensor([0, 10]), "train_index must hold indices in 0..9"),
    ],
)
def test_fit_on_split_rejects_bad_indices(train: Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        fit_probes_on_split(torch.randn(1, 10, 2), torch.tensor([0, 1] * 5), train, train[:1])
    assert "\n" not in str(error.value)


# -- control tasks


def test_control_labels_share_a_label_per_type_and_follow_the_marginal() -> None:
    generator = torch.Generator().manual_seed(0)
    types = torch.randint(0, 2000, (6000,), generator=generator)
    labels = (torch.rand(6000, generator=generator) < 0.3).long()  # P(label = 1) ~ 0.3
    control = control_labels(types, labels, seed=1)
    assert control.shape == labels.shape and set(control.tolist()) <= {0, 1}
    for value in torch.unique(types)[:200]:
        assert len(torch.unique(control[types == value])) == 1
    assert torch.equal(control, control_labels(types, labels, seed=1))
    assert not torch.equal(control, control_labels(types, labels, seed=2))
    _, first = torch.unique(types, return_inverse=True)
    per_type = torch.zeros(int(first.max()) + 1, dtype=torch.long).scatter_(0, first, control)
    # ~1900 types, each a draw with P(1) = the empirical 0.3: std ~0.011, allow 4.5 std
    assert float(per_type.float().mean()) == pytest.approx(float(labels.float().mean()), abs=0.05)


def _two_representations() -> tuple[Tensor, Tensor, Tensor]:
    """Layer 0: one-hot of the type (a memorising representation); layer 1: only the label
    (its class mean), with N_TYPES // N_LABELS types per label. Label = type % N_LABELS."""
    generator = torch.Generator().manual_seed(0)
    types = torch.arange(N_TYPES).repeat_interleave(OCCURRENCES)
    labels = types % N_LABELS
    noise = 0.1 * torch.randn(2, len(types), N_TYPES, generator=generator)
    one_hot = 3.0 * F.one_hot(types, N_TYPES).float()
    class_means = torch.randn(N_LABELS, N_TYPES, generator=generator)
    return torch.stack([one_hot, class_means[labels]]) + noise, labels, types


def test_selectivity_separates_memorising_from_label_only_features(tmp_path: Path) -> None:
    features, labels, types = _two_representations()
    result = selectivity(features, labels, types, seeds=(0, 1, 2), epochs=100)
    assert result.task_scores.shape == result.control_scores.shape == (3, 2)
    # the one-hot layer decodes any function of the type: task and control both ~1
    assert float(result.task_mean[0]) > 0.95 and float(result.control_mean[0]) > 0.9
    assert abs(float(result.selectivity[0])) < 0.1
    # the label-only layer decodes the task but a control label only through the label
    assert float(result.task_mean[1]) > 0.95
    assert float(result.selectivity[1]) > 0.3
    torch.testing.assert_close(result.selectivity, result.task_mean - result.control_mean)
    assert bool((result.control_low <= result.control_mean).all())
    assert bool((result.control_mean <= result.control_high).all())
    run = _run(tmp_path)
    result.save(run, "sel")
    loaded = SelectivityResult.load(run.path, "sel")
    torch.testing.assert_close(loaded.task_low, result.task_low)
    frame = loaded.to_frame()
    assert list(frame.columns) == [
        "layer", "task_mean", "task_low", "task_high",
        "control_mean", "control_low", "control_high", "selectivity",
    ]  # fmt: skip
    assert frame["selectivity"].tolist() == pytest.approx(result.selectivity.tolist())


# -- MDL


def _linear_labels_and_noise(n: int = 800, d: int = 4) -> tuple[Tensor, Tensor]:
    """Layer 0: x with labels = argmax(x @ W) (3 classes, linear); layer 1: independent noise."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator)
    labels = (x @ torch.randn(d, 3, generator=generator)).argmax(-1)
    return torch.stack([x, torch.randn(n, d, generator=generator)]), labels


def test_online_code_compresses_linear_labels_and_not_unrelated_ones(tmp_path: Path) -> None:
    features, labels = _linear_labels_and_noise()
    fractions = (0.02, 0.05, 0.1, 0.2, 0.4, 1.0)
    result = online_codelength(features, labels, fractions=fractions, epochs=100)
    n, k = 800, len(torch.unique(labels))
    assert result.uniform_bits == n * math.log2(k)
    assert result.block_sizes.tolist() == [16, 24, 40, 80, 160, 480]  # 0.02 n = 16 >= 10
    assert result.block_bits.shape == (2, 6)
    assert result.block_bits[:, 0].tolist() == [16 * math.log2(k)] * 2
    torch.testing.assert_close(result.online_bits, result.block_bits.sum(1))
    assert float(result.compression[0]) > 3.0
    assert 0.75 < float(result.compression[1]) < 1.2
    run = _run(tmp_path)
    result.save(run, "mdl")
    loaded = MDLResult.load(run, "mdl")
    assert torch.equal(loaded.block_bits, result.block_bits) and loaded.n_classes == k
    assert loaded.to_frame()["compression"].tolist() == pytest.approx(result.compression.tolist())


def test_default_fractions_merge_blocks_below_the_minimum_first_block() -> None:
    features, labels = _linear_labels_and_noise(n=300)
    result = online_codelength(features[:1], labels, epochs=30, min_first_block=12)
    # round(f n) for f = 0.001 .. 0.032 is at most 10 <= 12: those blocks merge into the first
    ends = result.block_sizes.cumsum(0).tolist()
    assert ends == [12, 19, 38, 75, 150, 300]
    assert float(result.block_bits[0, 0]) == 12 * math.log2(3)


# -- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f, y: online_codelength(f[0], y), "features must be \\[layer, n, d\\]"),
        (lambda f, y: online_codelength(f, y[:-1]), "labels has 99 entries, expected 100"),
        (lambda f, y: online_codelength(f, y * 0), "at least 2 classes"),
        (lambda f, y: online_codelength(f, y, fractions=(0.5, 0.2, 1.0)), "strictly increasing"),
        (lambda f, y: online_codelength(f, y, fractions=(0.1, 0.5)), "end at 1.0"),
        (lambda f, y: online_codelength(f, y, min_first_block=100), "leaves none of the 100"),
        (lambda f, y: control_labels(y.float(), y, 0), "types must be a 1-d integer tensor"),
        (lambda f, y: selectivity(f, y, y[:50]), "types has 50 entries"),
        (lambda f, y: selectivity(f, y, y, kind="ridge"), "needs kind='logistic'"),
        (lambda f, y: selectivity(f, y, y, alpha=1), "unexpected argument"),
        (lambda f, y: selectivity(f, y * 0, y), "at least 2 classes"),
    ],
)
def test_bad_input_gives_one_line_errors(call, message: str) -> None:
    features = torch.randn(2, 100, 3)
    labels = torch.tensor([0, 1] * 50)
    with pytest.raises(ValueError, match=message) as error:
        call(features, labels)
    assert "\n" not in str(error.value)


def test_a_control_task_with_one_class_is_named_as_such() -> None:
    features = torch.randn(2, 100, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1] * 50)
    # two word types; with seed 1 both draw the same label, with seed 0 they do not
    assert len(torch.unique(control_labels(labels, labels, 1))) == 1
    assert len(torch.unique(control_labels(labels, labels, 0))) == 2
    message = r"control task of seed 1 has a single class: all 2 word type\(s\) drew"
    with pytest.raises(ValueError, match=message) as error:
        selectivity(features, labels, labels, seeds=(0, 1), epochs=5)
    assert "\n" not in str(error.value) and "another seed" in str(error.value)
    # seed 0 alone gives a two-class control task, which is fitted
    result = selectivity(features, labels, labels, seeds=(0,), epochs=5)
    assert result.control_scores.shape == (1, 2)


# -- random-initialisation baseline


def _assert_fresh(model, fresh, again, other) -> None:
    """Same shapes; weights differ from `model` wherever the original is not a constant
    (a norm's ones, a bias's zeros are what an initialisation gives back); deterministic."""
    original = model.state_dict()
    for name, weight in fresh.state_dict().items():
        assert weight.shape == original[name].shape, name
        if bool((original[name] != original[name].flatten()[0]).any()):
            assert not torch.equal(weight, original[name]), name
        assert torch.equal(weight, again.state_dict()[name]), name
    assert not all(
        torch.equal(weight, other.state_dict()[name]) for name, weight in fresh.state_dict().items()
    )


def test_randomly_initialised_native_model() -> None:
    model = models.build(SPEC, device="cpu")
    before = {name: weight.clone() for name, weight in model.state_dict().items()}
    fresh = randomly_initialised(model, seed=0)
    _assert_fresh(model, fresh, randomly_initialised(model, 0), randomly_initialised(model, 1))
    assert models.spec_of(fresh).seed != SPEC["seed"]
    assert all(torch.equal(weight, before[name]) for name, weight in model.state_dict().items())
    tokens = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(model(tokens), fresh(tokens))


def test_randomly_initialised_pretrained_minilm(minilm) -> None:
    embedding = minilm.original_model.get_input_embeddings().weight.clone()
    fresh = randomly_initialised(minilm, seed=0)
    _assert_fresh(minilm, fresh, randomly_initialised(minilm, 0), randomly_initialised(minilm, 1))
    assert torch.equal(minilm.original_model.get_input_embeddings().weight, embedding)
    # BERT's init: N(0, initializer_range) embeddings
    std = float(fresh.original_model.get_input_embeddings().weight.detach().std())
    assert std == pytest.approx(minilm.original_model.config.initializer_range, rel=0.05)
    ids = minilm.tokenizer(["The cat sat on the mat."], return_tensors="pt")["input_ids"]
    assert not torch.allclose(minilm(ids), fresh(ids))
