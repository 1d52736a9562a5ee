"""Ablation importance of every attention head on a task: knock one head out, read the metric.

A head is ablated by replacing its output `blocks.{l}.attn.hook_z[:, :, h]` (the per-head
mix of values, before `W_O`) with

    "zero"  zeros (zero ablation), or
    "mean"  its mean over the batch's examples at each position, computed on the same
            clean prompts the metric is read on (mean ablation, as in Wang et al. 2022,
            "Interpretability in the Wild", which replaces a head's output by its mean over
            a reference distribution; keeping the position axis keeps what a head does
            on average at each position, so only the example-specific part is removed).
            With right-padded prompts, padded positions take part in the mean like any other.

and the importance of the head is the change of a task metric: `ablated - baseline`
(negative when the head helps the metric). As in Michel et al. 2019, "Are Sixteen Heads
Really Better than One?", and Olsson et al. 2022 ("In-context Learning and Induction
Heads", ablations of induction heads), one head is ablated at a time.

Speed: instead of one forward pass per head, a chunk of K heads is folded into the batch
(the clean prompts repeated K times, K * B examples), and one hook per layer writes, in
copy k only, the replacement of copy k's head; the metric is read on each copy's B
examples. Hooks are removed even when something fails, every module's training flag is
restored, and the caller's model, batch and tensors are left as they were.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.heads.patterns import _as_int, eval_mode
from interp.runs import Run
from interp.tasks.base import TaskBatch
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

AblationMode = Literal["zero", "mean"]
ABLATION_MODES: tuple[AblationMode, ...] = ("zero", "mean")

AblationMetric = Callable[[Float[Tensor, "batch pos vocab"], TaskBatch], Tensor]
"""Logits of one batch and the batch -> a scalar, or one value per example (then averaged),
e.g. `interp.metrics.mean_metric(interp.metrics.logit_diff)` or `logit_diff` itself."""

Head = tuple[int, int]


@dataclass(frozen=True)
class AblationResult:
    """The metric with each head ablated, and without any ablation.

    Attributes:
        values: `Float[Tensor, "layer head"]`, the metric with that one head ablated (NaN
            for heads that were not ablated).
        baseline: The metric of the unablated model on the same batch.
        mode: "zero" or "mean" (see the module docstring).
        metric: Name of the metric.
        n_examples: Number of examples the metric was averaged over.
    """

    values: Tensor
    baseline: float
    mode: str
    metric: str = "metric"
    n_examples: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.ndim != 2:
            shape = tuple(self.values.shape)
            raise ValueError(f"AblationResult.values must be [layer, head], got {shape}")
        if self.mode not in ABLATION_MODES:
            raise ValueError(f"mode must be one of {ABLATION_MODES}, got {self.mode!r}")

    @property
    def change(self) -> Float[Tensor, "layer head"]:
        """`values - baseline`: the change of the metric when the head is ablated."""
        return self.values - self.baseline

    def to_frame(self) -> pd.DataFrame:
        """One row per head: `layer`, `head`, `ablated` (the metric), `change`
        (ablated - baseline) and `abs_change`."""
        n_layers, n_heads = self.values.shape
        layers, heads = torch.meshgrid(
            torch.arange(n_layers), torch.arange(n_heads), indexing="ij"
        )
        change = self.change.detach().cpu().double().reshape(-1)
        return pd.DataFrame(
            {
                "layer": layers.reshape(-1).tolist(),
                "head": heads.reshape(-1).tolist(),
                "ablated": self.values.detach().cpu().double().reshape(-1).tolist(),
                "change": change.tolist(),
                "abs_change": change.abs().tolist(),
            }
        )

    def save(self, run: Run | str | os.PathLike[str], name: str = "head_ablation") -> None:
        """Write `artifacts/<name>.safetensors` (values) and `artifacts/<name>.json`."""
        run = Run.open(run)
        run.save_tensors(name, {"values": self.values.detach().cpu().contiguous()})
        run.save_json(
            name,
            {
                "baseline": self.baseline,
                "mode": self.mode,
                "metric": self.metric,
                "n_examples": self.n_examples,
                "settings": self.settings,
            },
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "head_ablation") -> AblationResult:
        """The result written by `save(run, name)`."""
        run = Run.open(run)
        meta = run.load_json(name)
        return cls(
            values=run.load_tensors(name)["values"],
            baseline=float(meta["baseline"]),
            mode=str(meta["mode"]),
            metric=str(meta.get("metric", "metric")),
            n_examples=int(meta.get("n_examples", 0)),
            settings=dict(meta.get("settings", {})),
        )


def metric_value(metric: AblationMetric, logits: Tensor, batch: TaskBatch) -> float:
    """The metric as a float; a `[batch]` result is averaged."""
    value = torch.as_tensor(metric(logits, batch)).detach()
    if value.ndim == 1 and value.shape[0] == len(batch):
        value = value.float().mean()
    if value.ndim != 0:
        raise ValueError(
            f"the metric must return a scalar or one value per example, got shape "
            f"{tuple(value.shape)}"
        )
    return float(value)


def _z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


_HEADS_FORM = "heads must be a list of (layer, head) pairs of ints"


def _as_head(item: Any) -> Head:
    """One (layer, head) pair of ints, or a one-line ValueError naming what is wrong."""
    if isinstance(item, str | bytes) or not isinstance(item, Sequence | Tensor) or len(item) != 2:
        raise ValueError(f"{_HEADS_FORM}, got the item {item!r}")
    if not all(_as_int(value) is not None for value in item):
        raise ValueError(f"{_HEADS_FORM}, got {tuple(item)!r}")
    return operator.index(item[0]), operator.index(item[1])


def _check_heads(heads: Iterable[Sequence[int]] | None, n_layers: int, n_heads: int) -> list[Head]:
    """The chosen heads in order, each once; None = every head."""
    if heads is None:
        return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    if isinstance(heads, str | bytes) or not isinstance(heads, Iterable):
        raise ValueError(f"{_HEADS_FORM}, got {heads!r}")
    items = list(heads)
    if len(items) == 2 and all(_as_int(value) is not None for value in items):
        raise ValueError(f"{_HEADS_FORM}; for the one head {tuple(items)} pass [{tuple(items)}]")
    chosen: list[Head] = []
    for item in items:
        layer, head = _as_head(item)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head ({layer}, {head}) is outside the model's {n_layers} layers x "
                f"{n_heads} heads"
            )
        if (layer, head) not in chosen:
            chosen.append((layer, head))
    if not chosen:
        raise ValueError("heads is empty: name at least one (layer, head)")
    return chosen


def _chunk_hooks(
    chunk: Sequence[Head], n_examples: int, replacements: dict[int, Tensor]
) -> list[tuple[str, Callable[..., Tensor]]]:
    """One hook per layer of `chunk`; copy k of the batch gets head `chunk[k]` replaced."""
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for copy, (layer, head) in enumerate(chunk):
        by_layer.setdefault(layer, []).append((copy, head))

    def make_hook(layer: int) -> Callable[..., Tensor]:
        copies = by_layer[layer]
        replacement = replacements[layer]  # [pos, head, d_head]

        def write(z: Float[Tensor, "batch pos head d_head"], *, hook: Any) -> Tensor:
            # In place, as TransformerLens's patching does (the tensor is a fresh
            # activation of this forward pass, never one the caller holds).
            out = z.clone() if z.requires_grad else z
            per_copy = out.unflatten(0, (len(chunk), n_examples))
            for copy, head in copies:
                per_copy[copy, :, :, head] = replacement[:, head].to(out.dtype)
            return out

        return write

    return [(_z_hook(layer), make_hook(layer)) for layer in by_layer]


def _model_device(model: TransformerBridge) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def ablation_importance(
    model: TransformerBridge,
    batch: TaskBatch,
    metric: AblationMetric,
    *,
    mode: AblationMode = "mean",
    heads: Iterable[Sequence[int]] | None = None,
    max_batch: int = 256,
    metric_name: str | None = None,
    progress: bool = False,
) -> AblationResult:
    """Ablate each head in turn on `batch.clean` and read `metric` (module docstring).

    Args:
        model: Any `TransformerBridge` with `blocks.{l}.attn.hook_z`; run in eval mode
            under `torch.inference_mode()`, every module's training flag restored after.
        batch: The task's prompts (`clean` is run) and what the metric reads.
        metric: `(logits [batch, pos, vocab], batch) -> scalar or [batch]`.
        mode: "mean" (the head's mean output at each position over the batch) or "zero".
        heads: The (layer, head) pairs to ablate; None = every head.
        max_batch: Most examples in one forward pass; `max_batch // len(batch)` heads
            are ablated per pass, at least one: every pass (the baseline too) runs the
            whole batch, which is never split (a metric over the batch need not be a mean
            of its parts), so a batch of more than `max_batch` examples runs one head per
            pass.
        metric_name: The metric's name in the result; default its `__name__`.
        progress: Show a progress bar over forward passes.

    Returns:
        An `AblationResult`: `values[layer, head]` the ablated metric, and the baseline.
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"mode must be one of {ABLATION_MODES}, got {mode!r}")
    batch = TaskBatch.checked(batch, model)
    check_positive_int("max_batch", max_batch)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    chosen = _check_heads(heads, n_layers, n_heads)
    missing = [_z_hook(layer) for layer, _ in chosen if _z_hook(layer) not in model.hook_dict]
    if missing:
        raise ValueError(f"the model has no hook {missing[0]!r} to ablate a head at")
    batch = batch.to(_model_device(model))
    n_examples = len(batch)
    per_pass = max(1, max_batch // n_examples)
    layers = sorted({layer for layer, _ in chosen})
    names = {_z_hook(layer) for layer in layers}
    values = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)

    with eval_mode(model), torch.inference_mode():
        logits, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n in names)
        baseline = metric_value(metric, logits, batch)
        replacements = {}
        for layer in layers:
            z = cache[_z_hook(layer)]  # [batch, pos, head, d_head]
            replacements[layer] = z.mean(0) if mode == "mean" else torch.zeros_like(z[0])
        del cache, logits
        chunks = [chosen[i : i + per_pass] for i in range(0, len(chosen), per_pass)]
        for chunk in tqdm(chunks, disable=not progress, desc="ablating heads"):
            tokens = batch.clean.repeat(len(chunk), 1)
            with model.hooks(fwd_hooks=_chunk_hooks(chunk, n_examples, replacements)):
                out = model(tokens).unflatten(0, (len(chunk), n_examples))
            for copy, (layer, head) in enumerate(chunk):
                values[layer, head] = metric_value(metric, out[copy], batch)

    return AblationResult(
        values=values.float(),
        baseline=baseline,
        mode=mode,
        metric=metric_name or getattr(metric, "__name__", "metric"),
        n_examples=n_examples,
        settings={"max_batch": max_batch, "n_ablated": len(chosen)},
    )
