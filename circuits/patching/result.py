"""The result of an activation-patching sweep: values over an index grid, with labels."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from interp.runs import Run

_VALUES_KEY = "values"


@dataclass(frozen=True)
class PatchingResult:
    """Metric after patching each index of a target.

    Attributes:
        values: One value per index, shaped by `axes`, e.g. `[n_layers, n_pos]`
            (normalised when `normalised` is set: 1 = clean run, 0 = corrupted run).
        axes: Axis names, e.g. `("layer", "pos")`.
        labels: Per axis, one label per index (positions as `"3:tok"` with a tokenizer).
        metric_clean: The metric on the unpatched clean run (not normalised).
        metric_corrupted: The metric on the unpatched corrupted run (not normalised).
        direction: `"denoise"` (clean into corrupted) or `"noise"` (corrupted into clean).
        target: The patched target, e.g. `"resid_pre"` (see `circuits.patching.TARGETS`).
        normalised: Whether `values` were rescaled with `interp.metrics.normalise`.
        method: `"activation"` (exact patching, `circuits.patching.patch`) or
            `"attribution"` (its first-order estimate, `circuits.attribution.attribute`).
    """

    values: Tensor
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    metric_clean: float
    metric_corrupted: float
    direction: str
    target: str
    normalised: bool = False
    method: str = "activation"

    def __post_init__(self) -> None:
        if self.values.ndim != len(self.axes) or len(self.labels) != len(self.axes):
            raise ValueError(
                f"PatchingResult: values {tuple(self.values.shape)}, axes {self.axes} and "
                f"{len(self.labels)} label lists disagree"
            )
        for axis, size, labels in zip(self.axes, self.values.shape, self.labels, strict=True):
            if len(labels) != size:
                raise ValueError(
                    f"PatchingResult: axis {axis!r} has {size} values but {len(labels)} labels"
                )

    @property
    def baseline(self) -> float:
        """The value of an index whose patch changes nothing: the metric of the run patched
        into (the corrupted one when denoising, the clean one when noising), normalised:
        0 when denoising, 1 when noising. An index's effect is `values - baseline`."""
        if self.normalised:
            return 0.0 if self.direction == "denoise" else 1.0
        return self.metric_corrupted if self.direction == "denoise" else self.metric_clean

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per index, columns `<axis>` (int), `<axis>_label`, `value`."""
        rows = []
        flat = self.values.detach().cpu().reshape(-1).tolist()
        grid = itertools.product(*(range(n) for n in self.values.shape))
        for index, value in zip(grid, flat, strict=True):
            row: dict[str, object] = {}
            for axis, i, labels in zip(self.axes, index, self.labels, strict=True):
                row[axis] = i
                row[f"{axis}_label"] = labels[i]
            row["value"] = value
            rows.append(row)
        return pd.DataFrame(rows)

    def save(self, run: Run | str | os.PathLike[str], name: str = "patching") -> None:
        """Write `artifacts/<name>.safetensors` (values) and `artifacts/<name>.json` (the rest)."""
        run = Run.open(run)
        run.save_tensors(name, {_VALUES_KEY: self.values})
        run.save_json(
            name,
            {
                "axes": list(self.axes),
                "labels": [list(labels) for labels in self.labels],
                "metric_clean": self.metric_clean,
                "metric_corrupted": self.metric_corrupted,
                "direction": self.direction,
                "target": self.target,
                "normalised": self.normalised,
                "method": self.method,
            },
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "patching") -> PatchingResult:
        """The result written by `save(run, name)`."""
        run = Run.open(run)
        meta = run.load_json(name)
        values = run.load_tensors(name)[_VALUES_KEY]
        return cls(
            values=values.to(torch.float32),
            axes=tuple(meta["axes"]),
            labels=tuple(tuple(labels) for labels in meta["labels"]),
            metric_clean=float(meta["metric_clean"]),
            metric_corrupted=float(meta["metric_corrupted"]),
            direction=str(meta["direction"]),
            target=str(meta["target"]),
            normalised=bool(meta["normalised"]),
            method=str(meta.get("method", "activation")),
        )
