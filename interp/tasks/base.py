"""The task contract: token batches (clean, corrupted), answers, and the position a metric reads.

A task is a deterministic generator of examples. Its examples are a `datasets.Dataset`
(so users can bring their own from files or the hub), and the tensors analyses consume are
a `TaskBatch`. Patching, circuit discovery, probing and training all read the same
`TaskBatch` fields, so any task works with any analysis.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import datasets
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.models import model_sizes

IGNORE_INDEX = -100
"""Value of `TaskBatch.targets` at positions that carry no training target."""

MetricFn = Callable[[Float[Tensor, "batch pos vocab"], "TaskBatch"], Float[Tensor, " batch"]]
"""A metric maps a model's logits on a batch to one number per example."""


@dataclass(frozen=True)
class TaskBatch:
    """Tensors for one batch of a task. Every field has the batch on its first axis.

    Attributes:
        clean: Token ids of the clean prompts, `[batch, pos]`.
        corrupted: Token ids of the corrupted prompts, same shape as `clean`.
        answer: The correct next token at `position` on the clean prompt, `[batch]`.
        wrong: The competing token for logit-difference metrics, `[batch]` (for most
            tasks the answer of the corrupted prompt).
        position: The position whose logits the metric reads, `[batch]` (prompts may be
            right-padded, so it is not always the last position).
        targets: Optional next-token targets for training, `[batch, pos]`, with
            `IGNORE_INDEX` where there is no target. When absent, training reads `answer`
            at `position`.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer: Int[Tensor, " batch"]
    wrong: Int[Tensor, " batch"]
    position: Int[Tensor, " batch"]
    targets: Int[Tensor, "batch pos"] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "targets":
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"TaskBatch.{f.name} must be a tensor, got {type(value).__name__}")
            _integer_ids(f.name, value)
        n = self.clean.shape[0]
        if self.clean.ndim != 2:
            raise ValueError(f"TaskBatch.clean must be [batch, pos], got {tuple(self.clean.shape)}")
        if self.corrupted.shape != self.clean.shape:
            raise ValueError(
                f"TaskBatch.corrupted {tuple(self.corrupted.shape)} must match "
                f"clean {tuple(self.clean.shape)}"
            )
        for name in ("answer", "wrong", "position"):
            value = getattr(self, name)
            if value.shape != (n,):
                raise ValueError(f"TaskBatch.{name} must be [{n}], got {tuple(value.shape)}")
        if self.targets is not None and self.targets.shape != self.clean.shape:
            raise ValueError("TaskBatch.targets must have the shape of clean")

    def __len__(self) -> int:
        return self.clean.shape[0]

    def check_fits(self, model: Any) -> None:
        """Raise a one-line ValueError unless `model` (a bridge; its `cfg`) can run this
        batch: at least one example of at least one position, at most `n_ctx` positions,
        token ids inside the input vocabulary, `answer` and `wrong` inside the output
        vocabulary, and each `position` inside the prompts. One host sync for the ranges."""
        n, n_pos = self.clean.shape
        if n == 0 or n_pos == 0:
            raise ValueError(f"the batch is empty: {n} prompts of {n_pos} positions")
        cfg = getattr(model, "cfg", None)
        if cfg is None:
            raise ValueError(f"model must be a TransformerBridge, got {type(model).__name__}")
        d_vocab, d_vocab_out, n_ctx = model_sizes(cfg)
        if n_ctx is not None and n_pos > n_ctx:
            raise ValueError(f"the prompts have {n_pos} positions; the model takes at most {n_ctx}")
        fields_and_limits = (
            ("clean", d_vocab), ("corrupted", d_vocab), ("answer", d_vocab_out),
            ("wrong", d_vocab_out), ("position", n_pos),
        )
        tensors = [getattr(self, name).to(self.clean.device) for name, _ in fields_and_limits]
        spans = torch.stack([torch.stack(torch.aminmax(t)) for t in tensors]).tolist()
        for (name, limit), (low, high) in zip(fields_and_limits, spans, strict=True):
            if low < 0 or high >= limit:
                raise ValueError(
                    f"TaskBatch.{name} spans {low}..{high}, outside 0..{limit - 1} for this model"
                )

    @staticmethod
    def checked(batch: object, model: Any) -> TaskBatch:
        """`batch`, once it is known to be a `TaskBatch` that `model` can run
        (`check_fits`); a one-line ValueError otherwise. The entry check of every
        analysis that takes a batch."""
        if not isinstance(batch, TaskBatch):
            raise ValueError(f"batch must be a TaskBatch, got {type(batch).__name__}")
        batch.check_fits(model)
        return batch

    def _map(self, fn: Callable[[Tensor], Tensor]) -> TaskBatch:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return replace(self, **changes)

    def for_autograd(self) -> TaskBatch:
        """A copy made of ordinary tensors, even when the batch was built (or is used) under
        `torch.inference_mode`, whose tensors autograd cannot save for a backward pass."""
        with torch.inference_mode(False):
            return self._map(lambda t: t.clone())

    def to(self, device: torch.device | str) -> TaskBatch:
        """The same batch on `device`."""
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index: slice | Tensor | list[int]) -> TaskBatch:
        """Select examples (an int, negative from the end, a slice, a list of indices, or an
        index/bool tensor); an int gives a batch of one."""
        if isinstance(index, int) and not isinstance(index, bool):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"example {index} outside a batch of {n}")
            index %= n
            index = slice(index, index + 1)
        elif not isinstance(index, slice | list | Tensor):
            kind = type(index).__name__
            raise TypeError(f"a TaskBatch is indexed by an int, slice, list or tensor, not {kind}")
        return self._map(lambda t: t[index])

    def chunks(self, batch_size: int) -> Iterator[TaskBatch]:
        """Consecutive sub-batches of at most `batch_size` examples."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self[start : start + batch_size]

    def split_indices(self, frac_train: float, seed: int) -> tuple[Tensor, Tensor]:
        """The example indices of a random train/test split (see `split`)."""
        if not 0.0 < frac_train < 1.0:
            raise ValueError(f"frac_train must lie in (0, 1), got {frac_train}")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        n_train = int(round(frac_train * len(self)))
        n_train = min(max(n_train, 1), len(self) - 1)
        return order[:n_train], order[n_train:]

    def split(self, frac_train: float, seed: int) -> tuple[TaskBatch, TaskBatch]:
        """A random train/test split by example; the same seed gives the same split."""
        train, test = self.split_indices(frac_train, seed)
        return self[train], self[test]

    def to_dataset(self) -> datasets.Dataset:
        """The batch as a `datasets.Dataset` with one row per example."""
        columns = {
            f.name: getattr(self, f.name).tolist()
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return datasets.Dataset.from_dict(columns)

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset) -> TaskBatch:
        """Build a batch from a dataset with columns clean, corrupted, answer, wrong,
        position and optionally targets (one row per example, equal-length token lists)."""
        required = ("clean", "corrupted", "answer", "wrong", "position")
        missing = [c for c in required if c not in dataset.column_names]
        if missing:
            raise ValueError(f"dataset lacks the column(s) {missing} that a TaskBatch needs")
        return cls.from_columns(dataset.with_format("torch")[:])

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> TaskBatch:
        """A batch from a mapping that holds the fields (tensors or lists of ints); other
        keys, such as readable prompts, are ignored."""
        kwargs = {}
        for f in fields(cls):
            if f.name not in columns or columns[f.name] is None:
                continue
            try:
                value = torch.as_tensor(columns[f.name])
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(
                    f"TaskBatch.{f.name}: rows of different lengths or not numbers"
                ) from None
            kwargs[f.name] = _integer_ids(f.name, value).long()
        return cls(**kwargs)


def _integer_ids(name: str, value: Tensor) -> Tensor:
    """`value` when it holds integer ids; a one-line ValueError naming the `TaskBatch`
    field when it holds floats, complex numbers or booleans."""
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"TaskBatch.{name} must hold integer ids, got {value.dtype}")
    return value


class Task(ABC):
    """A source of `TaskBatch`es. Subclasses set `name` and `default_metric`.

    Tasks for native models define their vocabulary (`d_vocab`, `d_vocab_out`) and the
    context they need (`n_ctx`); tasks for pretrained models take a tokenizer.
    """

    name: ClassVar[str]
    default_metric: ClassVar[str] = "logit_diff"

    @abstractmethod
    def examples(self) -> datasets.Dataset:
        """All examples of the task, deterministic given its configuration and seed."""

    def batch(self) -> TaskBatch:
        """All examples as one `TaskBatch`."""
        return TaskBatch.from_dataset(self.examples())

    def metrics(self) -> dict[str, MetricFn]:
        """Metrics this task supports, by name. Tasks add their own to the common ones."""
        from interp.metrics import METRICS

        return dict(METRICS)

    def metric(self, name: str | None = None) -> MetricFn:
        """The metric called `name`, or the task's default metric."""
        name = name or self.default_metric
        available = self.metrics()
        if name not in available:
            raise ValueError(
                f"task {self.name!r} has no metric {name!r}; choose from {sorted(available)}"
            )
        return available[name]

    # Vocabulary needs of native models; None where a tokenizer decides.
    d_vocab: int | None = None
    d_vocab_out: int | None = None
    n_ctx: int | None = None
