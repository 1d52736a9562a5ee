"""Metrics that read a model's logits on a task batch.

Every per-example metric has the `MetricFn` signature
`(logits: Float[Tensor, "batch pos vocab"], batch: TaskBatch) -> Float[Tensor, "batch"]`
and reads the logits at `batch.position` (one position per example, since prompts may be
right-padded). `mean_metric` turns one into the scalar that patching code optimises, and
`normalise` rescales a metric so that the clean run scores 1 and the corrupted run 0
(the normalised logit difference of Wang et al. 2022, "Interpretability in the Wild").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.tasks.base import MetricFn, TaskBatch


def logits_at(
    logits: Float[Tensor, "batch pos vocab"], position: Int[Tensor, " batch"]
) -> Float[Tensor, "batch vocab"]:
    """The logits of example `i` at position `position[i]`."""
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, pos, vocab], got {tuple(logits.shape)}")
    if position.shape != (logits.shape[0],):
        raise ValueError(
            f"position must be [{logits.shape[0]}] to match the logits, got {tuple(position.shape)}"
        )
    position = position.to(logits.device)
    n_pos = logits.shape[1]
    if position.numel():  # one host sync for both ends
        low, high = torch.stack(torch.aminmax(position)).tolist()
        if low < 0 or high >= n_pos:
            raise ValueError(f"position must lie in [0, {n_pos}), got values outside it")
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, position]


def _token_logit(
    final_logits: Float[Tensor, "batch vocab"], token: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    return final_logits.gather(-1, token.to(final_logits.device)[:, None])[:, 0]


def at_least_float32(x: Tensor) -> Tensor:
    """`x` as float32 unless it already has that precision or more (softmax in bf16 is too
    coarse); `x` itself, with no dispatch, when it is float32 or float64."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.to(torch.promote_types(x.dtype, torch.float32))


def logit_diff(
    logits: Float[Tensor, "batch pos vocab"], batch: TaskBatch
) -> Float[Tensor, " batch"]:
    """Logit of `batch.answer` minus logit of `batch.wrong` at `batch.position`."""
    final = logits_at(logits, batch.position)
    return _token_logit(final, batch.answer) - _token_logit(final, batch.wrong)


def answer_logprob(
    logits: Float[Tensor, "batch pos vocab"], batch: TaskBatch
) -> Float[Tensor, " batch"]:
    """Log-probability of `batch.answer` at `batch.position`."""
    final = at_least_float32(logits_at(logits, batch.position))
    return _token_logit(torch.log_softmax(final, dim=-1), batch.answer)


def answer_prob(
    logits: Float[Tensor, "batch pos vocab"], batch: TaskBatch
) -> Float[Tensor, " batch"]:
    """Probability of `batch.answer` at `batch.position`."""
    return answer_logprob(logits, batch).exp()


def accuracy(logits: Float[Tensor, "batch pos vocab"], batch: TaskBatch) -> Float[Tensor, " batch"]:
    """1.0 where the top logit at `batch.position` is `batch.answer`, else 0.0."""
    final = logits_at(logits, batch.position)
    return (final.argmax(dim=-1) == batch.answer.to(final.device)).float()


METRICS: dict[str, MetricFn] = {
    "logit_diff": logit_diff,
    "answer_logprob": answer_logprob,
    "answer_prob": answer_prob,
    "accuracy": accuracy,
}
"""The metrics every task supports, by name (tasks may add their own)."""

_POSITION_ONLY = "_interp_reads_position_only"


def reads_position_only(metric: object) -> bool:
    """Whether `metric` is known to read the logits at `batch.position` only: the metrics
    of `METRICS` (through `logits_at`) and their batch means (`mean_metric`). Engines that
    compute the logits at the read positions alone probe any other metric for reads
    elsewhere (`circuits.patching.metric.refuse_metric_reading_elsewhere`); these skip it."""
    return bool(getattr(metric, _POSITION_ONLY, False))


for _metric in METRICS.values():
    setattr(_metric, _POSITION_ONLY, True)


def kl_divergence(
    logits: Float[Tensor, "batch pos vocab"],
    reference_logits: Float[Tensor, "batch pos vocab"],
    position: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, " batch"]:
    """KL(reference || model) between next-token distributions, one value per example.

    With `position`, compares the distributions at `position[i]` of example `i`;
    without it, averages the KL over every position (padding included).
    This is the faithfulness loss of ACDC (Conmy et al. 2023).
    """
    if logits.shape != reference_logits.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and reference_logits "
            f"{tuple(reference_logits.shape)} must have the same shape"
        )
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, pos, vocab], got {tuple(logits.shape)}")
    if position is not None:
        logits = logits_at(logits, position)[:, None]
        reference_logits = logits_at(reference_logits, position)[:, None]
    return KLReference.of(reference_logits).divergence(logits).mean(dim=-1)


@dataclass(frozen=True)
class KLReference:
    """The reference side of `kl_divergence`, computed once for many models' logits (ACDC
    compares every test's logits with the full model's).

    Attributes:
        probs: The reference distribution, `[..., vocab]` (float32 or wider).
        log_probs: Its log.
        positive: Where `probs` is not 0 (NaN included, so a NaN reference gives a NaN
            divergence); None when that holds everywhere (then no mask is applied: the
            same values, fewer ops).
    """

    probs: Tensor
    log_probs: Tensor
    positive: Tensor | None

    @classmethod
    def of(cls, reference_logits: Float[Tensor, "*lead vocab"]) -> KLReference:
        log_probs = torch.log_softmax(at_least_float32(reference_logits), dim=-1)
        probs = log_probs.exp()
        positive = ~(probs == 0)  # NaN stays in: a NaN reference gives a NaN divergence
        return cls(probs, log_probs, None if bool(positive.all()) else positive)

    def divergence(self, logits: Float[Tensor, "*any *lead vocab"]) -> Tensor:
        """KL(reference || model) of each distribution, `logits` shape minus its last axis
        (`logits` may have leading axes the reference broadcasts over)."""
        log_model = torch.log_softmax(at_least_float32(logits), dim=-1)
        terms = self.probs * (self.log_probs - log_model)
        if self.positive is not None:
            # 0 * log 0 = 0: tokens the reference rules out (-inf logits) contribute nothing
            terms = torch.where(self.positive, terms, 0.0)
        return terms.sum(dim=-1)


def normalise(
    value: Tensor | float, clean: Tensor | float, corrupt: Tensor | float
) -> Tensor | float:
    """`(value - corrupt) / (clean - corrupt)`: 1 at the clean run's value, 0 at the corrupt's.

    Works on floats or broadcastable tensors (returns a float only when all three are
    floats). Raises ValueError where clean equals corrupt, since the scale is then undefined.
    """
    scalars = not any(isinstance(x, Tensor) for x in (value, clean, corrupt))
    value_t, clean_t, corrupt_t = (torch.as_tensor(x) for x in (value, clean, corrupt))
    gap = clean_t - corrupt_t  # not finite where either end is not
    if bool((~gap.isfinite() | (gap == 0)).any()):  # one host sync on the path that passes
        if not bool(gap.isfinite().all()):
            raise ValueError(
                f"cannot normalise: clean={clean_t.tolist()} and corrupt={corrupt_t.tolist()} "
                "must be finite"
            )
        raise ValueError(
            "cannot normalise: the clean and corrupted metric values are equal "
            f"(clean={clean_t.tolist()}, corrupt={corrupt_t.tolist()})"
        )
    result = (value_t - corrupt_t) / gap
    return float(result) if scalars else result


def mean_metric(
    metric: MetricFn,
) -> Callable[[Float[Tensor, "batch pos vocab"], TaskBatch], Float[Tensor, ""]]:
    """The batch mean of a per-example metric: the scalar that patching code wants."""

    def averaged(logits: Float[Tensor, "batch pos vocab"], batch: TaskBatch) -> Tensor:
        return metric(logits, batch).mean()

    averaged.__name__ = f"mean_{getattr(metric, '__name__', 'metric')}"
    averaged.__doc__ = f"Batch mean of {averaged.__name__[5:]}."
    setattr(averaged, _POSITION_ONLY, reads_position_only(metric))
    return averaged
