"""Controls for probes: is a high probe accuracy about the representation, or the probe?

- Control tasks and selectivity (Hewitt & Liang 2019, "Designing and Interpreting Probes
  with Control Tasks"): every word type gets a random label; a probe that also does well on
  this control task is memorising types, not reading a property. Selectivity = task
  accuracy - control accuracy, with the same probe on the same splits.
- Minimum description length by online code (Voita & Titov 2020, "Information-Theoretic
  Probing with Minimum Description Length"): the bits needed to send the labels when each
  block is coded by a probe trained on all blocks before it; compression = uniform code /
  online code. Logistic probes only.
- A random-initialisation baseline: the same architecture with fresh weights, to probe the
  same way (a property decodable from a random model says little about training).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp.runs import Run
from probes.linear import fit_probes_on_split, split_examples
from probes.results import confidence_interval, score_bounds

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "DEFAULT_FRACTIONS",
    "MDLResult",
    "SelectivityResult",
    "control_labels",
    "online_codelength",
    "randomly_initialised",
    "selectivity",
]

DEFAULT_FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
"""Block boundaries of the online code, as fractions of the examples (Voita & Titov 2020)."""
PROBABILITY_FLOOR = 1e-6
"""The online code uses `(1 - f) p + f / K` for the probe's `p`: a confident wrong
prediction costs at most `log2(K / f)` bits instead of infinity."""
_FIT_KEYS = frozenset({"kind", "backend", "l2", "epochs", "device", "test_fraction"})


def _check_features(features: Tensor) -> tuple[int, int]:
    """(n_layers, n) of `[layer, n, d]` features; the rest is checked by the probe fit."""
    if not isinstance(features, Tensor) or features.ndim != 3:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be [layer, n, d], got {shape}")
    return features.shape[0], features.shape[1]


def _check_ids(values: Tensor, n: int | None, what: str) -> Tensor:
    """`values` as a `[n]` integer tensor (any `n` when None)."""
    if not isinstance(values, Tensor) or values.ndim != 1 or torch.is_floating_point(values):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{what} must be a 1-d integer tensor, got {shape}")
    if n is not None and values.shape[0] != n:
        raise ValueError(f"{what} has {values.shape[0]} entries, expected {n} (one per example)")
    if values.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    return values


# -- control tasks


def control_labels(
    types: Int[Tensor, " n"], labels: Int[Tensor, " n"], seed: int
) -> Int[Tensor, " n"]:
    """A control task (Hewitt & Liang 2019, section 2): each distinct type (token id, word)
    gets one label drawn from the empirical distribution of `labels`, and every occurrence
    of that type carries it. Same `types`, `labels` and `seed`: same control labels."""
    types = _check_ids(types, None, "types")
    labels = _check_ids(labels, types.shape[0], "labels")
    _, type_of = torch.unique(types.cpu(), return_inverse=True)
    generator = torch.Generator().manual_seed(int(seed))
    # drawing a random example's label draws from the labels' empirical distribution
    drawn = labels.cpu()[torch.randint(len(labels), (int(type_of.max()) + 1,), generator=generator)]
    return drawn[type_of].to(labels.device)


def _check_control(control: Int[Tensor, " n"], types: Int[Tensor, " n"], seed: int) -> Tensor:
    """`control` unchanged, or a one-line ValueError if every type drew the same label (the
    control task has one class, so no probe can be fitted on it)."""
    if len(torch.unique(control)) < 2:
        n_types = len(torch.unique(types))
        raise ValueError(
            f"selectivity: the control task of seed {seed} has a single class: all "
            f"{n_types} word type(s) drew the same label; too few word types for a control "
            "task, or try another seed"
        )
    return control


@dataclass(frozen=True)
class SelectivityResult:
    """Probe accuracy on a task and on its control task, per layer (Hewitt & Liang 2019).

    Attributes:
        task_scores, control_scores: `[seed, layer]` test accuracy of each seed's probe.
        seeds: One per row (the seed of the split and of the control labels).
        level: Confidence level of the Student-t intervals.
        task_mean, task_low, task_high: `[layer]` mean task accuracy and its interval.
        control_mean, control_low, control_high: `[layer]` the same on the control task.
        selectivity: `[layer]` `task_mean - control_mean`.
    """

    task_scores: Tensor
    control_scores: Tensor
    seeds: tuple[int, ...]
    level: float
    task_mean: Tensor
    task_low: Tensor
    task_high: Tensor
    control_mean: Tensor
    control_low: Tensor
    control_high: Tensor
    selectivity: Tensor

    @classmethod
    def from_scores(
        cls, task: Tensor, control: Tensor, seeds: Sequence[int], level: float = 0.95
    ) -> SelectivityResult:
        """The result from `[seed, layer]` accuracies (intervals by `confidence_interval`)."""
        if task.ndim != 2 or task.shape != control.shape or task.shape[0] != len(seeds):
            raise ValueError(
                f"task and control scores must both be [seed={len(seeds)}, layer], got "
                f"{tuple(task.shape)} and {tuple(control.shape)}"
            )
        accuracy = score_bounds("logistic")
        fields = (
            *confidence_interval(task, level, accuracy),
            *confidence_interval(control, level, accuracy),
        )
        return cls(task, control, tuple(map(int, seeds)), level, *fields, fields[0] - fields[3])

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: layer, task_mean/low/high, control_mean/low/high, selectivity."""
        names = ("task_mean", "task_low", "task_high", "control_mean", "control_low")
        columns = {name: getattr(self, name).tolist() for name in (*names, "control_high")}
        columns["selectivity"] = self.selectivity.tolist()
        return pd.DataFrame({"layer": range(self.task_mean.shape[0]), **columns})

    def save(self, run: Run | str | os.PathLike[str], name: str = "selectivity") -> None:
        """Write `artifacts/<name>.safetensors` (the scores) and `artifacts/<name>.json`."""
        run = Run.open(run)
        scores = {"task_scores": self.task_scores, "control_scores": self.control_scores}
        run.save_tensors(name, scores)
        run.save_json(name, {"seeds": list(self.seeds), "level": self.level})

    @classmethod
    def load(
        cls, run: Run | str | os.PathLike[str], name: str = "selectivity"
    ) -> SelectivityResult:
        """The result written by `save(run, name)` (intervals recomputed from the scores)."""
        run = Run.open(run)
        meta, tensors = run.load_json(name), run.load_tensors(name)
        return cls.from_scores(
            tensors["task_scores"], tensors["control_scores"], meta["seeds"], float(meta["level"])
        )


def selectivity(
    features: Float[Tensor, "layer n d"],
    labels: Int[Tensor, " n"],
    types: Int[Tensor, " n"],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    groups: Int[Tensor, " n"] | None = None,
    level: float = 0.95,
    **fit_kwargs: Any,
) -> SelectivityResult:
    """The same logistic probe on the task and on its control task, per layer.

    For each seed: a split (by `groups` if given, else stratified by the task labels) from
    `split_examples`, control labels `control_labels(types, labels, seed)`, and two fits by
    `fit_probes_on_split` on that one split. Control classes that the training split lacks
    are kept (never predicted), which needs the torch backend.

    Args:
        features: Activations, one row per example at every layer.
        labels: Task class labels, `[n]`.
        types: The type of each example (e.g. its token id), `[n]`.
        seeds: One split and one control task per seed.
        groups: Optional group per example; splits never separate a group.
        level: Confidence level of the intervals over seeds.
        fit_kwargs: `test_fraction`, `backend`, `l2`, `epochs`, `device` (`kind` must be
            `"logistic"`: a control task is a classification task).
    """
    _, n = _check_features(features)
    labels, types = _check_ids(labels, n, "labels"), _check_ids(types, n, "types")
    if groups is not None:
        groups = _check_ids(groups, n, "groups")
    unknown = set(fit_kwargs) - _FIT_KEYS
    if unknown:
        raise ValueError(f"selectivity: unexpected argument(s) {sorted(unknown)}")
    if fit_kwargs.pop("kind", "logistic") != "logistic":
        raise ValueError("selectivity needs kind='logistic' (control tasks are classification)")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    split = {"test_fraction": fit_kwargs.pop("test_fraction", 0.2), "groups": groups}
    split["labels"] = None if groups is not None else labels  # stratify by the task's labels
    task, control = [], []
    for seed in seeds:
        train, test = split_examples(n, seed=seed, **split)
        task.append(fit_probes_on_split(features, labels, train, test, **fit_kwargs).test_score)
        shuffled = _check_control(control_labels(types, labels, seed), types, seed)
        fit = fit_probes_on_split(
            features, shuffled, train, test, allow_missing_classes=True, **fit_kwargs
        )
        control.append(fit.test_score)
    return SelectivityResult.from_scores(torch.stack(task), torch.stack(control), seeds, level)


# -- minimum description length


@dataclass(frozen=True)
class MDLResult:
    """Online codelength of the labels given each layer's features (Voita & Titov 2020).

    Attributes:
        block_bits: `[layer, block]` bits to send each block's labels: the first block with
            the uniform code (`size * log2 K`), block `i` with a probe trained on blocks
            `< i`.
        block_sizes: `[block]` examples per block (summing to `n`).
        n_classes: `K`, the number of label values.
        seed: Seed of the example order.
    """

    block_bits: Tensor
    block_sizes: Tensor
    n_classes: int
    seed: int

    @property
    def online_bits(self) -> Float[Tensor, " layer"]:
        """`[layer]` the online codelength, in bits."""
        return self.block_bits.sum(dim=1)

    @property
    def uniform_bits(self) -> float:
        """`n log2 K`: the labels sent with the uniform code."""
        return int(self.block_sizes.sum()) * math.log2(self.n_classes)

    @property
    def compression(self) -> Float[Tensor, " layer"]:
        """`[layer]` uniform codelength / online codelength (1: the features do not help)."""
        return self.uniform_bits / self.online_bits

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: layer, online_bits, uniform_bits, compression."""
        return pd.DataFrame(
            {
                "layer": range(self.block_bits.shape[0]),
                "online_bits": self.online_bits.tolist(),
                "uniform_bits": self.uniform_bits,
                "compression": self.compression.tolist(),
            }
        )

    def save(self, run: Run | str | os.PathLike[str], name: str = "mdl") -> None:
        """Write `artifacts/<name>.safetensors` (block bits and sizes) and `<name>.json`."""
        run = Run.open(run)
        run.save_tensors(name, {"block_bits": self.block_bits, "block_sizes": self.block_sizes})
        run.save_json(name, {"n_classes": self.n_classes, "seed": self.seed})

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "mdl") -> MDLResult:
        """The result written by `save(run, name)`."""
        run = Run.open(run)
        meta, tensors = run.load_json(name), run.load_tensors(name)
        return cls(
            tensors["block_bits"], tensors["block_sizes"], int(meta["n_classes"]), int(meta["seed"])
        )


def _block_ends(n: int, fractions: Sequence[float], min_first_block: int) -> list[int]:
    """End of each block: the first at `max(ceil(fractions[0] n), min_first_block)`, then
    `round(f n)` for each later fraction, dropping ends that would leave a block empty."""
    fractions = [float(f) for f in fractions]
    if not fractions or fractions[-1] != 1.0 or any(f <= 0 for f in fractions):
        raise ValueError(f"fractions must be positive and end at 1.0, got {fractions}")
    if any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
        raise ValueError(f"fractions must be strictly increasing, got {fractions}")
    if min_first_block < 1:
        raise ValueError(f"min_first_block must be >= 1, got {min_first_block}")
    first = max(math.ceil(fractions[0] * n), min_first_block)
    if first >= n:
        raise ValueError(f"the first block ({first} examples) leaves none of the {n} to code")
    ends = [first]
    for end in (round(f * n) for f in fractions[1:]):
        if end > ends[-1]:
            ends.append(end)
    ends[-1] = n
    return ends


def _block_bits(
    features: Tensor, targets: Tensor, train: Tensor, block: Tensor, n_classes: int, **fit: Any
) -> Float[Tensor, " layer"]:
    """Bits to send `block`'s labels with a probe per layer trained on `train`."""
    probe = fit_probes_on_split(features, targets, train, block, allow_missing_classes=True, **fit)
    with torch.no_grad():
        log_p = F.log_softmax(probe.predict(features[:, block.to(features.device)]).double(), -1)
    floor = math.log(PROBABILITY_FLOOR / n_classes)
    log_p = torch.logaddexp(log_p + math.log1p(-PROBABILITY_FLOOR), log_p.new_tensor(floor))
    picked = log_p.gather(-1, targets[block].to(log_p.device).expand(log_p.shape[0], -1)[..., None])
    return -picked.sum(dim=(1, 2)).cpu() / math.log(2)


def online_codelength(
    features: Float[Tensor, "layer n d"],
    labels: Int[Tensor, " n"],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    l2: float = 1e-3,
    epochs: int = 200,
    min_first_block: int = 10,
    device: str | torch.device | None = None,
) -> MDLResult:
    """Online code (prequential) MDL of the labels given each layer (Voita & Titov 2020, s. 3.2).

    The examples are shuffled with `seed` and cut into blocks at `fractions` of `n`. The
    first block (`max(ceil(fractions[0] n), min_first_block)` examples) is sent with the
    uniform code, `size * log2 K` bits; each later block costs `-sum log2 p(y | x)` under a
    logistic probe (torch backend, all layers at once, `fit_probes_on_split`) trained on
    every example before it. The probe always has the `K` classes of `labels`; `p` is floored
    as `PROBABILITY_FLOOR` says. Logistic (classification) probes only.
    """
    n_layers, n = _check_features(features)
    labels = _check_ids(labels, n, "labels")
    classes, targets = torch.unique(labels.cpu(), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"labels need at least 2 classes for a code, got {len(classes)}")
    ends = _block_ends(n, fractions, min_first_block)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    fit = {"kind": "logistic", "backend": "torch", "l2": l2, "epochs": epochs, "device": device}
    first = torch.full((n_layers,), ends[0] * math.log2(len(classes)), dtype=torch.float64)
    later = [
        _block_bits(features, targets, order[:start], order[start:end], len(classes), **fit)
        for start, end in zip(ends, ends[1:], strict=False)
    ]
    sizes = torch.tensor([ends[0]] + [b - a for a, b in zip(ends, ends[1:], strict=False)])
    return MDLResult(torch.stack([first, *later], dim=1), sizes, len(classes), int(seed))


# -- random-initialisation baseline


def randomly_initialised(model: TransformerBridge, seed: int = 0) -> TransformerBridge:
    """A new model of `model`'s architecture with fresh random weights; `model` is untouched.

    A native model (from `interp.models.build`) is rebuilt from its `ModelSpec` with seed
    `spec.seed + 1 + seed`, so never with its own initialisation. A pretrained one is
    deep-copied and every module of its Hugging Face model re-initialised (the model class's
    own `init_weights`) under `torch.manual_seed(seed)`, the global RNG left as it was. The
    same `model` and `seed` give the same weights. Probing such a model is the untrained
    baseline of Zhang & Bowman 2018 ("Language Modeling Teaches You More than Translation
    Does"): what a probe finds in random features was not learned.
    """
    from interp.models import build, spec_of

    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    spec = spec_of(model)
    parameter = next(model.parameters())
    if spec is not None:
        fresh = spec.model_copy(update={"seed": spec.seed + 1 + int(seed)})
        return build(fresh, device=parameter.device, dtype=parameter.dtype)
    from transformers import PreTrainedModel

    if not isinstance(model.__dict__.get("original_model"), PreTrainedModel):
        raise ValueError("randomly_initialised needs a model from interp.models.build or load")
    clone = copy.deepcopy(model)
    hf_model = clone.original_model
    for tensor in [*hf_model.modules(), *hf_model.parameters(), *hf_model.buffers()]:
        if "_is_hf_initialized" in tensor.__dict__:  # transformers skips flagged tensors
            del tensor.__dict__["_is_hf_initialized"]
    with torch.random.fork_rng(devices=None if parameter.is_cuda else []):
        torch.manual_seed(int(seed))
        hf_model.init_weights()
    return clone
