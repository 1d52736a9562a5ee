"""What linear probes return (`probes.linear`): one probe per layer (`ProbeResult`), test
scores over seeds with a Student-t interval of their mean (`ProbeSweep`,
`confidence_interval`), each with a DataFrame view and save / load through the run store."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.runs import Run

__all__ = ["ProbeResult", "ProbeSweep", "confidence_interval", "score_bounds"]


@dataclass(frozen=True)
class ProbeResult:
    """One linear probe per layer, fitted on a train split and scored on a test split.

    Attributes:
        test_score: `[layer]` accuracy (logistic) or R^2 (ridge, averaged over outputs) on
            the test split.
        train_score: `[layer]` the same score on the training split.
        directions: `[layer, d, n_out]` probe weights in the original feature space:
            the probe's output for activation `x` at layer `l` is
            `x @ directions[l] + biases[l]` (logits for logistic, predictions for ridge).
            `n_out` is the number of classes (logistic) or of regression targets (ridge).
        biases: `[layer, n_out]`.
        kind: `"logistic"` or `"ridge"`.
        backend: `"torch"` or `"sklearn"`.
        classes: Logistic: the label value of each output column; ridge: `()`.
        train_index: `[n_train]` indices of the training examples.
        test_index: `[n_test]` indices of the test examples.
        l2: The penalty used (`None`: chosen per layer by cross-validation, sklearn only).
        majority_baseline: Logistic: accuracy on the test split of always predicting the
            most frequent training class (chance level); ridge: `nan`.
    """

    test_score: Tensor
    train_score: Tensor
    directions: Tensor
    biases: Tensor
    kind: str
    backend: str
    classes: tuple[int, ...]
    train_index: Tensor
    test_index: Tensor
    l2: float | None
    majority_baseline: float = math.nan

    def __post_init__(self) -> None:
        n_layers = self.test_score.shape[0]
        if self.directions.ndim != 3 or self.biases.ndim != 2:
            raise ValueError(
                f"ProbeResult: directions must be [layer, d, n_out] and biases [layer, n_out], "
                f"got {tuple(self.directions.shape)} and {tuple(self.biases.shape)}"
            )
        if {self.train_score.shape[0], self.directions.shape[0], self.biases.shape[0]} != {
            n_layers
        }:
            raise ValueError("ProbeResult: scores, directions and biases disagree on layers")

    @property
    def metric(self) -> str:
        """`"accuracy"` (logistic) or `"r2"` (ridge)."""
        return "accuracy" if self.kind == "logistic" else "r2"

    @property
    def n_layers(self) -> int:
        return int(self.test_score.shape[0])

    def predict(self, features: Float[Tensor, "layer n d"]) -> Float[Tensor, "layer n n_out"]:
        """Each layer's probe output (logits or predictions) on `features`."""
        check_features(features)
        if features.shape[0] != self.n_layers or features.shape[2] != self.directions.shape[1]:
            raise ValueError(
                f"predict: features {tuple(features.shape)} do not match probes "
                f"[{self.n_layers}, n, {self.directions.shape[1]}]"
            )
        weights = self.directions.to(features.device, features.dtype)
        biases = self.biases.to(features.device, features.dtype)
        return torch.baddbmm(biases[:, None, :], features, weights)

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: layer, test_score, train_score, metric, kind, backend."""
        return pd.DataFrame(
            {
                "layer": range(self.n_layers),
                "test_score": self.test_score.tolist(),
                "train_score": self.train_score.tolist(),
                "metric": self.metric,
                "kind": self.kind,
                "backend": self.backend,
            }
        )

    def save(self, run: Run | str | os.PathLike[str], name: str = "probes") -> None:
        """Write `artifacts/<name>.safetensors` (tensors) and `artifacts/<name>.json` (the rest)."""
        run = Run.open(run)
        run.save_tensors(
            name,
            {
                "test_score": self.test_score,
                "train_score": self.train_score,
                "directions": self.directions,
                "biases": self.biases,
                "train_index": self.train_index,
                "test_index": self.test_index,
            },
        )
        run.save_json(
            name,
            {
                "kind": self.kind,
                "backend": self.backend,
                "classes": list(self.classes),
                "l2": self.l2,
                "majority_baseline": None
                if math.isnan(self.majority_baseline)
                else self.majority_baseline,
            },
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "probes") -> ProbeResult:
        """The result written by `save(run, name)`."""
        run = Run.open(run)
        meta = run.load_json(name)
        tensors = run.load_tensors(name)
        baseline = meta.get("majority_baseline")
        return cls(
            test_score=tensors["test_score"],
            train_score=tensors["train_score"],
            directions=tensors["directions"],
            biases=tensors["biases"],
            kind=str(meta["kind"]),
            backend=str(meta["backend"]),
            classes=tuple(int(c) for c in meta["classes"]),
            train_index=tensors["train_index"],
            test_index=tensors["test_index"],
            l2=None if meta["l2"] is None else float(meta["l2"]),
            majority_baseline=math.nan if baseline is None else float(baseline),
        )


@dataclass(frozen=True)
class ProbeSweep:
    """Probe test scores over several seeds (each seed a different split), with an interval.

    Attributes:
        scores: `[seed, layer]` test score of each seed's probes.
        seeds: The seeds, one per row of `scores`.
        mean: `[layer]` mean over seeds.
        low: `[layer]` lower end of the `level` confidence interval of the mean.
        high: `[layer]` upper end.
        level: Confidence level of the interval (0.95).
        kind: `"logistic"` or `"ridge"`.
        backend: `"torch"` or `"sklearn"`.
    """

    scores: Tensor
    seeds: tuple[int, ...]
    mean: Tensor
    low: Tensor
    high: Tensor
    level: float
    kind: str
    backend: str

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: layer, mean, low, high, n_seeds, metric, kind, backend."""
        return pd.DataFrame(
            {
                "layer": range(self.scores.shape[1]),
                "mean": self.mean.tolist(),
                "low": self.low.tolist(),
                "high": self.high.tolist(),
                "n_seeds": len(self.seeds),
                "metric": "accuracy" if self.kind == "logistic" else "r2",
                "kind": self.kind,
                "backend": self.backend,
            }
        )

    def save(self, run: Run | str | os.PathLike[str], name: str = "probe_sweep") -> None:
        """Write `artifacts/<name>.safetensors` (scores) and `artifacts/<name>.json`."""
        run = Run.open(run)
        run.save_tensors(name, {"scores": self.scores})
        run.save_json(
            name,
            {
                "seeds": list(self.seeds),
                "level": self.level,
                "kind": self.kind,
                "backend": self.backend,
            },
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "probe_sweep") -> ProbeSweep:
        """The sweep written by `save(run, name)` (interval recomputed from the scores)."""
        run = Run.open(run)
        meta = run.load_json(name)
        scores = run.load_tensors(name)["scores"]
        bounds = score_bounds(str(meta["kind"]))
        mean, low, high = confidence_interval(scores, level=float(meta["level"]), bounds=bounds)
        return cls(
            scores=scores,
            seeds=tuple(int(s) for s in meta["seeds"]),
            mean=mean,
            low=low,
            high=high,
            level=float(meta["level"]),
            kind=str(meta["kind"]),
            backend=str(meta["backend"]),
        )



def score_bounds(kind: str) -> tuple[float | None, float | None]:
    """The range of a probe's test score: accuracy (`logistic`) in [0, 1], R^2 (`ridge`)
    at most 1."""
    return (0.0, 1.0) if kind == "logistic" else (None, 1.0)


def confidence_interval(
    scores: Float[Tensor, "seed layer"],
    level: float = 0.95,
    bounds: tuple[float | None, float | None] = (None, None),
) -> tuple[Float[Tensor, " layer"], Float[Tensor, " layer"], Float[Tensor, " layer"]]:
    """Mean over seeds and the Student-t `level` interval of that mean, per layer, cut to
    `bounds` (low, high; None for no bound: `score_bounds` gives a score's range).

    With one seed the interval is the mean itself (no spread can be estimated).
    """
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be [seed, layer] with >= 1 seed, got {tuple(scores.shape)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    scores = scores.double()
    n_seeds = scores.shape[0]
    mean = scores.mean(dim=0)
    if n_seeds == 1:
        return mean.float(), mean.float(), mean.float()
    from scipy.stats import t as student_t

    half = (
        float(student_t.ppf(0.5 + level / 2, df=n_seeds - 1))
        * scores.std(dim=0)
        / math.sqrt(n_seeds)
    )
    low, high = mean - half, mean + half
    if bounds[0] is not None:
        low = low.clamp(min=bounds[0])
    if bounds[1] is not None:
        high = high.clamp(max=bounds[1])
    return mean.float(), low.float(), high.float()


def check_features(features: Tensor) -> None:
    """A one-line ValueError unless `features` is a finite float tensor `[layer, n, d]`."""
    if not isinstance(features, Tensor):
        raise ValueError(f"features must be a tensor [layer, n, d], got {type(features).__name__}")
    if features.ndim != 3:
        hint = " (add a layer axis with features[None])" if features.ndim == 2 else ""
        raise ValueError(f"features must be [layer, n, d], got shape {tuple(features.shape)}{hint}")
    if not torch.is_floating_point(features):
        raise ValueError(f"features must be floating point, got dtype {features.dtype}")
    # NaN propagates through amax / amin: two reductions, no [layer, n, d] bool temporary
    if features.numel() and not (
        bool(torch.isfinite(features.amax())) and bool(torch.isfinite(features.amin()))
    ):
        raise ValueError("features contain NaN or infinite values")
