"""Tests for probes.linear: batched logistic / ridge probes on activations with planted answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from interp.runs import RunStore
from probes.linear import (
    ProbeResult,
    ProbeSweep,
    confidence_interval,
    fit_probes,
    fit_probes_on_split,
    fit_probes_over_seeds,
    majority_baseline,
    split_examples,
)

N_LAYERS, N, D = 4, 600, 16
PLANTED_LAYER = 2


def _planted_classification(signal: float = 3.0, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Noise at every layer; at PLANTED_LAYER add `signal * (+-1) * u` for a unit direction u.

    Returns features [layer, n, d], labels [n] in {0, 1}, and u [d].
    """
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(N_LAYERS, N, D, generator=generator)
    labels = torch.randint(0, 2, (N,), generator=generator)
    direction = torch.randn(D, generator=generator)
    direction = direction / direction.norm()
    sign = (2 * labels - 1).float()
    features[PLANTED_LAYER] += signal * sign[:, None] * direction
    return features, labels, direction


def _planted_regression(noise: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Targets y = x[PLANTED_LAYER] @ M + noise, for a random linear map M [d, 2]."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(N_LAYERS, N, D, generator=generator)
    linear_map = torch.randn(D, 2, generator=generator)
    targets = features[PLANTED_LAYER] @ linear_map + noise * torch.randn(N, 2, generator=generator)
    return features, targets


def test_planted_feature_found_only_at_its_layer() -> None:
    features, labels, direction = _planted_classification()
    result = fit_probes(features, labels)
    assert result.test_score.shape == (N_LAYERS,)
    assert result.directions.shape == (N_LAYERS, D, 2)
    assert result.biases.shape == (N_LAYERS, 2)
    assert result.test_score[PLANTED_LAYER] > 0.95
    for layer in range(N_LAYERS):
        if layer != PLANTED_LAYER:
            assert result.test_score[layer] < 0.65
    # the class-1-minus-class-0 logit direction is the planted one (up to sign and scale)
    found = result.directions[PLANTED_LAYER, :, 1] - result.directions[PLANTED_LAYER, :, 0]
    assert torch.cosine_similarity(found, direction, dim=0).abs() > 0.9
    assert 0.35 < result.majority_baseline < 0.65


def test_directions_are_in_the_original_feature_space() -> None:
    features, labels, _ = _planted_classification()
    features = features * 5.0 + 2.0  # scale and shift: standardisation must be undone
    result = fit_probes(features, labels)
    logits = result.predict(features)
    accuracy = (logits[:, result.test_index].argmax(-1) == labels[result.test_index]).float()
    torch.testing.assert_close(accuracy.mean(dim=1), result.test_score)


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_torch_and_sklearn_backends_agree(kind: str) -> None:
    if kind == "logistic":
        features, labels, _ = _planted_classification(signal=1.5)
    else:
        features, labels = _planted_regression(noise=2.0)
    ours = fit_probes(features, labels, kind=kind, backend="torch", seed=3)
    reference = fit_probes(features, labels, kind=kind, backend="sklearn", seed=3)
    assert torch.equal(ours.test_index, reference.test_index)
    tolerance = 0.01
    assert (ours.test_score - reference.test_score).abs().max() <= tolerance + 1e-6
    assert (ours.train_score - reference.train_score).abs().max() <= tolerance + 1e-6
    # the same strictly convex objective on both sides, so the same minimiser
    torch.testing.assert_close(ours.directions, reference.directions, atol=2e-3, rtol=1e-3)


def test_wide_ridge_on_several_threads_equals_sklearn() -> None:
    """MiniLM-wide features (d = 384) for two layers with two threads: a batched LU solve
    fails inside MKL there (pytorch/pytorch#142815); our Cholesky solve gives sklearn's fit."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 600, 384, generator=generator)
    targets = features[1, :, :3] @ torch.randn(3, generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ours = fit_probes(features, targets, kind="ridge", l2=0.01)
    finally:
        torch.set_num_threads(threads)
    reference = fit_probes(features, targets, kind="ridge", l2=0.01, backend="sklearn")
    torch.testing.assert_close(ours.directions, reference.directions, atol=1e-4, rtol=1e-3)
    assert ours.test_score[1] > 0.99


def test_backends_agree_on_three_classes() -> None:
    features, _, _ = _planted_classification()
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (N,), generator=generator)
    class_means = torch.randn(3, D, generator=generator)
    features[1] += class_means[labels]
    ours = fit_probes(features, labels)
    reference = fit_probes(features, labels, backend="sklearn")
    assert ours.directions.shape == (N_LAYERS, D, 3)
    assert ours.test_score[1] > 0.9
    assert (ours.test_score - reference.test_score).abs().max() <= 0.01 + 1e-6
    torch.testing.assert_close(ours.directions, reference.directions, atol=1e-2, rtol=1e-2)


def test_sklearn_cross_validated_penalty_runs() -> None:
    features, labels, _ = _planted_classification()
    result = fit_probes(features, labels, backend="sklearn", l2=None)
    assert result.l2 is None
    assert result.test_score[PLANTED_LAYER] > 0.95


def test_shuffled_labels_give_chance_everywhere() -> None:
    features, labels, _ = _planted_classification()
    shuffled = labels[torch.randperm(N, generator=torch.Generator().manual_seed(1))]
    result = fit_probes(features, shuffled)
    assert (result.test_score - 0.5).abs().max() < 0.12


def test_ridge_recovers_a_planted_linear_map() -> None:
    features, targets = _planted_regression()
    result = fit_probes(features, targets, kind="ridge")
    assert result.metric == "r2"
    assert result.directions.shape == (N_LAYERS, D, 2)
    assert result.test_score[PLANTED_LAYER] > 0.95
    for layer in range(N_LAYERS):
        if layer != PLANTED_LAYER:
            assert abs(float(result.test_score[layer])) < 0.1


def test_ridge_with_a_single_target() -> None:
    features, targets = _planted_regression()
    result = fit_probes(features, targets[:, 0], kind="ridge")
    assert result.directions.shape == (N_LAYERS, D, 1)
    assert result.test_score[PLANTED_LAYER] > 0.95


def test_group_split_keeps_each_group_on_one_side() -> None:
    features, labels, _ = _planted_classification()
    groups = torch.arange(N) // 7  # e.g. the sentence each token came from
    result = fit_probes(features, labels, groups=groups, seed=5)
    train_groups = set(groups[result.train_index].tolist())
    test_groups = set(groups[result.test_index].tolist())
    assert train_groups and test_groups
    assert not train_groups & test_groups
    assert len(result.train_index) + len(result.test_index) == N
    assert result.test_score[PLANTED_LAYER] > 0.95


def test_stratified_split_keeps_class_proportions() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    train, test = split_examples(100, test_fraction=0.2, seed=0, labels=labels)
    assert int((labels[test] == 1).sum()) == 2
    assert int((labels[test] == 0).sum()) == 18
    assert sorted(torch.cat([train, test]).tolist()) == list(range(100))


def _constant_plus_informative(n: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
    """Features [1, n, 3]: column 0 is 0.1 on every row (float32: its computed mean is one ulp
    off, so its computed std is ~1e-8, not 0), column 1 decides the label, column 2 is noise.
    Returns features, logistic labels (column 1 > 0) and ridge targets (2 * column 1)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, n, 3, generator=generator)
    features[0, :, 0] = 0.1
    return features, (features[0, :, 1] > 0).long(), 2.0 * features[0, :, 1]


@pytest.mark.parametrize(
    ("kind", "backend"), [("logistic", "torch"), ("logistic", "sklearn"), ("ridge", "torch")]
)
def test_a_feature_constant_on_the_training_rows_gets_no_weight(kind: str, backend: str) -> None:
    features, classes, targets = _constant_plus_informative()
    train, test = torch.arange(800), torch.arange(800, 1000)
    # the precondition of the bug: rounding makes the constant column's mean differ from 0.1
    assert float(features[0, train, 0].mean()) != float(torch.tensor(0.1))
    labels = classes if kind == "logistic" else targets
    result = fit_probes_on_split(features, labels, train, test, kind=kind, backend=backend)
    directions = result.directions[0]
    found = directions[:, 1] - directions[:, 0] if kind == "logistic" else directions[:, 0]
    assert directions[0].abs().max() < 1e-6  # nothing read from the constant feature
    assert float(torch.cosine_similarity(found, torch.tensor([0.0, 1.0, 0.0]), dim=0)) > 0.99
    # so moving that feature a little at test time changes no prediction
    moved = features.clone()
    moved[0, test, 0] += 1e-3 * torch.randn(len(test), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(result.predict(moved), result.predict(features))


def test_majority_baseline_is_the_training_majority_scored_on_the_test_split() -> None:
    # overall, class 1 is the majority (6 of 10); on the training half class 0 is (3 of 5),
    # and the test half holds one 0: always answering 0 scores 1/5 there
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 0])
    train, test = torch.arange(5), torch.arange(5, 10)
    assert majority_baseline(labels, train, test) == pytest.approx(0.2)
    features = torch.randn(1, 10, 2, generator=torch.Generator().manual_seed(0))
    result = fit_probes_on_split(features, labels, train, test, epochs=5)
    assert result.majority_baseline == pytest.approx(0.2)
    # a tie on the training split goes to the smallest label
    assert majority_baseline(torch.tensor([1, 0, 1, 0, 1]), torch.arange(4), torch.tensor([4])) == 0


@pytest.mark.parametrize(
    "labels", [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1] * 6), torch.zeros(10, 1), [0] * 10]
)
def test_split_examples_refuses_labels_of_the_wrong_shape(labels: object) -> None:
    with pytest.raises(ValueError, match=r"labels must have shape \[10\], got") as error:
        split_examples(10, labels=labels)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


def test_save_load_round_trip(tmp_path: Path) -> None:
    features, labels, _ = _planted_classification()
    result = fit_probes(features, labels)
    run = RunStore(tmp_path / "runs").create("exp", "probes", {"kind": "logistic"})
    result.save(run, "probes")
    loaded = ProbeResult.load(run.path, "probes")
    for field in ("test_score", "train_score", "directions", "biases", "train_index"):
        assert torch.equal(getattr(loaded, field), getattr(result, field))
    assert (loaded.kind, loaded.backend, loaded.classes, loaded.l2) == (
        "logistic",
        "torch",
        (0, 1),
        1e-3,
    )
    assert loaded.majority_baseline == pytest.approx(result.majority_baseline)
    frame = loaded.to_frame()
    assert list(frame["layer"]) == list(range(N_LAYERS))
    assert frame["test_score"].tolist() == pytest.approx(result.test_score.tolist())


def test_seed_sweep_interval_contains_mean_and_narrows_with_less_noise(tmp_path: Path) -> None:
    seeds = (0, 1, 2, 3, 4)
    noisy_features, labels, _ = _planted_classification(signal=0.8)
    clean_features, _, _ = _planted_classification(signal=4.0)
    noisy = fit_probes_over_seeds(noisy_features, labels, seeds=seeds)
    clean = fit_probes_over_seeds(clean_features, labels, seeds=seeds)
    for sweep in (noisy, clean):
        assert sweep.scores.shape == (len(seeds), N_LAYERS)
        assert bool((sweep.low <= sweep.mean).all() and (sweep.mean <= sweep.high).all())
    width = lambda sweep: float(sweep.high[PLANTED_LAYER] - sweep.low[PLANTED_LAYER])  # noqa: E731
    assert width(clean) < width(noisy)
    run = RunStore(tmp_path / "runs").create("exp", "probes", {})
    noisy.save(run)
    loaded = ProbeSweep.load(run)
    torch.testing.assert_close(loaded.low, noisy.low)
    assert loaded.to_frame().shape[0] == N_LAYERS


def test_seed_sweep_interval_stays_in_the_score_range() -> None:
    """Two seeds near accuracy 1: the t interval of their mean runs past 1 (and for a
    weak probe below 0); the sweep cuts it to [0, 1]."""
    features, labels, _ = _planted_classification(signal=2.5)
    sweep = fit_probes_over_seeds(features, labels, seeds=(0, 2))  # 0.992 and 1.0
    _, low, high = confidence_interval(sweep.scores)
    assert float(high[PLANTED_LAYER]) > 1.0  # the uncut interval leaves the range here
    assert bool((sweep.high <= 1.0).all() and (sweep.low >= 0.0).all())
    torch.testing.assert_close(sweep.high, high.clamp(max=1.0))
    torch.testing.assert_close(sweep.low, low.clamp(min=0.0))


def test_confidence_interval_matches_t_formula() -> None:
    scores = torch.tensor([[0.8], [0.9], [1.0]])
    mean, low, high = confidence_interval(scores)
    # t(0.975, df=2) = 4.302653; std = 0.1; half-width = 4.302653 * 0.1 / sqrt(3)
    assert float(mean) == pytest.approx(0.9)
    assert float(high - mean) == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)
    assert float(mean - low) == pytest.approx(float(high - mean))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": torch.randn(10, 4)}, "features must be \\[layer, n, d\\]"),
        ({"labels": torch.zeros(9, dtype=torch.long)}, "labels must be a tensor with 10 rows"),
        ({"kind": "svm"}, "unknown kind 'svm'"),
        ({"backend": "jax"}, "unknown backend 'jax'"),
        ({"labels": torch.tensor([0] * 9 + [1])}, "too few examples of class"),
        ({"labels": torch.zeros(10, dtype=torch.long)}, "at least 2 classes"),
        ({"test_fraction": 1.5}, "test_fraction must be in"),
        ({"l2": None}, "needs backend='sklearn'"),
        ({"groups": torch.zeros(3)}, "groups must be a tensor of shape"),
    ],
)
def test_bad_input_gives_one_line_errors(kwargs: dict, message: str) -> None:
    arguments = {
        "features": torch.randn(2, 10, 4),
        "labels": torch.tensor([0, 1] * 5),
    }
    arguments.update(kwargs)
    features, labels = arguments.pop("features"), arguments.pop("labels")
    with pytest.raises(ValueError, match=message) as error:
        fit_probes(features, labels, **arguments)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_are_refused(bad: float) -> None:
    features = torch.randn(2, 20, 3)
    features[1, 7, 2] = bad
    labels = torch.arange(20) % 2
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_probes(features, labels)


def test_split_indices_must_be_disjoint_integer_indices() -> None:
    features, labels = torch.randn(1, 10, 4), torch.tensor([0, 1] * 5)
    mask = torch.arange(10) < 8
    with pytest.raises(ValueError, match="train_index must hold example indices, not a bool mask"):
        fit_probes_on_split(features, labels, mask, ~mask)
    with pytest.raises(ValueError, match=r"share 2 example\(s\)"):
        fit_probes_on_split(features, labels, torch.arange(6), torch.arange(4, 10))
    with pytest.raises(ValueError, match="labels hold NaN"):
        fit_probes(torch.randn(1, 40, 4), torch.full((40,), float("nan")), kind="ridge")
