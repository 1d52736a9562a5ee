"""The metric a patching sweep reads on its patched logits, and the checks on it.

A `PatchMetric` maps one patched copy's logits and its batch to a scalar. `scalar_metric`
checks and reduces its value; `CopyMetric` reads it on every copy of a chunk at once; the
engines that compute logits only at `batch.position` (the incremental engine, the pruning
state) use `refuse_metric_reading_elsewhere` and `nan_metric_error` to refuse a metric that
reads other positions.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from interp.metrics import reads_position_only
from interp.tasks.base import TaskBatch

PatchMetric = Callable[[Float[Tensor, "batch pos vocab"], TaskBatch], Tensor]
"""Logits of one patched copy and its batch -> a scalar (or `[batch]`, then averaged)."""


def scalar_metric(metric: PatchMetric, logits: Tensor, batch: TaskBatch) -> Tensor:
    """The metric as a 0-d tensor that keeps its graph; a `[batch]` result is averaged.
    A metric that is not a function (a metric's name, None) is a one-line ValueError."""
    if not callable(metric):
        hint = (
            f" (for a name, interp.metrics.mean_metric(interp.metrics.METRICS[{metric!r}]))"
            if isinstance(metric, str)
            else ""
        )
        raise ValueError(
            f"metric must be a function (logits, batch) -> scalar, got {metric!r}{hint}"
        )
    value = torch.as_tensor(metric(logits, batch))
    if value.ndim == 1 and value.shape[0] == len(batch):
        value = value.mean()
    if value.ndim != 0:
        raise ValueError(
            f"the metric must return a scalar or one value per example, got shape "
            f"{tuple(value.shape)}"
        )
    return value


def _metric_value(metric: PatchMetric, logits: Tensor, batch: TaskBatch) -> Tensor:
    """The metric as a detached 0-d float tensor."""
    return scalar_metric(metric, logits, batch).detach().float()


class CopyMetric:
    """The metric of every patched copy of a chunk, `[copy, batch, pos, vocab]` -> `[copy]`.

    One `torch.func.vmap` call over the copies where the metric allows it (every metric
    of `interp.metrics` does): a handful of batched ops per chunk instead of the metric's
    ops once per copy, which on a GPU is most of a small model's patching time (host-side
    dispatch). A metric that `vmap` cannot run (data-dependent Python control flow on the
    logits, `.item()`, randomness) is called once per copy from then on, with one
    `RuntimeWarning` naming the exception; an error of the metric itself is raised again
    from that call (and no warning given). Either way the values are the same (the metric
    is applied to each copy's own examples); only a metric with side effects can tell, as
    it is called once per group of copies.
    """

    def __init__(self, metric: PatchMetric, batch: TaskBatch) -> None:
        self.metric = metric
        self.batch = batch
        self.vectorised = True
        """Whether the next call tries `vmap` (False once it failed)."""

    def one(self, logits: Float[Tensor, "batch pos vocab"]) -> Tensor:
        """The metric of one copy, a detached 0-d float tensor."""
        return _metric_value(self.metric, logits, self.batch)

    def __call__(self, logits: Float[Tensor, "copy batch pos vocab"]) -> Float[Tensor, " copy"]:
        if len(logits) == 1:
            return self.one(logits[0])[None]
        if not self.vectorised:
            return self.per_copy(logits)
        try:
            return torch.func.vmap(self.one)(logits)
        except Exception as error:  # not vmappable (or failing): per copy, which re-raises
            self.vectorised = False
            values = self.per_copy(logits)
            self._warn_fallback(error)
            return values

    def per_copy(self, logits: Float[Tensor, "copy batch pos vocab"]) -> Float[Tensor, " copy"]:
        """The metric called once per copy."""
        return torch.stack([self.one(copy) for copy in logits])

    def _warn_fallback(self, error: Exception) -> None:
        """Say, once per `CopyMetric`, that the metric is read one copy at a time from now
        on, and why: `vmap` raised `error` where calling it per copy did not."""
        name = getattr(self.metric, "__name__", type(self.metric).__name__)
        lines = str(error).strip().splitlines()
        reason = type(error).__name__ + (f": {lines[0]}" if lines else "")
        warnings.warn(
            f"the metric {name!r} cannot run under torch.func.vmap ({reason}); it is called "
            "once per copy from now on: the same values, with many more operations",
            RuntimeWarning,
            stacklevel=3,
        )


def at_read_positions(batch: TaskBatch, read: Tensor) -> TaskBatch:
    """`batch` with each `position` replaced by its index among the sorted read positions
    `read`: for a metric of `interp.metrics` (which reads `batch.position` only, see
    `interp.metrics.reads_position_only`) on logits `[batch, n_read, vocab]` of the read
    positions alone, the values it reads on the full logits."""
    return dataclasses.replace(batch, position=torch.searchsorted(read, batch.position))


def nan_metric_error(
    metric: PatchMetric, batch: TaskBatch, vocab: int, engine: str, advice: str
) -> ValueError:
    """Why a metric came out NaN on the logits of an engine that computes them only at
    `batch.position` (NaN elsewhere): NaN on all-zero logits too (the metric's own), or
    read at other positions, which `advice` says how to compute."""
    zeros = torch.zeros(*batch.clean.shape, vocab, device=batch.clean.device)
    if bool(scalar_metric(metric, zeros, batch).isnan()):
        return ValueError("the metric returned NaN (on all-zero logits too)")
    return _reads_elsewhere_error(engine, advice)


def _reads_elsewhere_error(engine: str, advice: str) -> ValueError:
    return ValueError(
        f"the metric read logits at positions other than batch.position, which {engine} "
        f"does not compute; {advice}"
    )


def refuse_metric_reading_elsewhere(
    metric: PatchMetric,
    batch: TaskBatch,
    known: Float[Tensor, "batch pos vocab"],
    engine: str,
    advice: str,
) -> None:
    """Raise `nan_metric_error`'s one line when `metric` reads positions that `known` (the
    logits an engine computed, NaN at the positions it did not) leaves out, by reading
    the metric with those positions filled twice: once favouring each example's answer
    (+10 on it, -10 on the wrong token), once the wrong token. A metric that reads only
    what was computed gives the same value twice; NaN, which the engines check for too,
    slips past comparisons and argmax (`argmax(...) == answer` at another position), this
    does not. A NaN value here is left to that check. The library's own metrics, known to
    read `batch.position` only (`interp.metrics.reads_position_only`), are not probed."""
    if reads_position_only(metric):
        return
    unknown = known.isnan().all(dim=-1, keepdim=True)
    if not bool(unknown.any()):
        return
    vocab = known.shape[-1]
    answer, wrong = (F.one_hot(ids.to(known.device), vocab) for ids in (batch.answer, batch.wrong))
    favour = ((answer - wrong) * 10).to(known.dtype)  # (no tensor from host values)
    values = [
        _metric_value(metric, torch.where(unknown, sign * favour[:, None], known), batch)
        for sign in (1.0, -1.0)
    ]
    if bool(values[0].isfinite() & values[1].isfinite()) and not torch.equal(*values):
        raise _reads_elsewhere_error(engine, advice)
