"""Shared pieces of the side-by-side benchmarks: arguments, timing, the printed line.

Every script in `benchmarks/` runs ours and a reference on the same inputs in one process and
prints one line per comparison (see `format_line`):

```
<what>: ours 0.123 s, reference 1.234 s, speedup 10.0x, max |diff| 3e-06
```

A script imports this module as `from _common import ...`: run as `python benchmarks/x.py`,
Python puts `benchmarks/` first on `sys.path`. Running this file itself does nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from interp import models, random_models
from interp.dispatch_count import count_dispatch, dispatch_of

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class BenchArgs:
    """The command line every benchmark takes.

    Attributes:
        quick: Tiny sizes, so that CI runs the script in seconds.
        device: Where models and forward passes run (`--device auto` resolved).
        options: The script's own options (`parse_args(add_options=...)`), by name.
    """

    quick: bool
    device: torch.device
    options: dict[str, Any] = field(default_factory=dict)


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    add_options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> BenchArgs:
    """Parse `[--quick] [--device cpu|cuda|auto]` and the options `add_options` adds to the
    parser; `--device cuda` without CUDA exits."""
    parser = argparse.ArgumentParser(description=description)
    if add_options is not None:
        add_options(parser)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where the models run; auto is CUDA when available (default: auto)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    options = {k: v for k, v in vars(args).items() if k not in ("quick", "device")}
    return BenchArgs(bool(args.quick), torch.device(args.device), options)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work on `device` (nothing to wait for on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(run: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of `run`, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def max_abs_diff(ours: Tensor, reference: Tensor) -> float:
    """The largest `|ours - reference|`, computed in float64 on CPU; shapes must agree."""
    if ours.shape != reference.shape:
        raise ValueError(
            f"ours has shape {tuple(ours.shape)}, the reference {tuple(reference.shape)}"
        )
    if ours.numel() == 0:
        return 0.0
    difference = ours.detach().cpu().double() - reference.detach().cpu().double()
    return float(difference.abs().max())


@dataclass(frozen=True)
class Comparison:
    """One timed comparison: median seconds of each side and how far their outputs differ.

    Attributes:
        what: What was compared, the start of the printed line.
        ours_s: Median wall-clock seconds of ours.
        reference_s: Median wall-clock seconds of the reference.
        max_diff: Largest absolute difference between the two outputs.
        ours_ops: The aten ops and host syncs one call of ours dispatches (None: not
            counted).
        reference_ops: The same for the reference.
    """

    what: str
    ours_s: float
    reference_s: float
    max_diff: float
    ours_ops: count_dispatch | None = None
    reference_ops: count_dispatch | None = None

    def line(self) -> str:
        """The comparison in the project's one-line format."""
        return format_line(self.what, self.ours_s, self.reference_s, self.max_diff)

    def lines(self) -> list[str]:
        """`line()`, then `dispatch_line()` when the ops were counted."""
        return [self.line()] + ([self.dispatch_line()] if self.ours_ops is not None else [])

    def dispatch_line(self) -> str:
        """`# <what>: aten ops per call ours 1,234 ops (567 not views), 5 syncs, reference
        ..., 8.0x fewer`: the ratio of ops that are not views, which a GPU's speedup tends
        to where launches bound it."""
        if self.ours_ops is None or self.reference_ops is None:
            raise ValueError(f"{self.what}: the ops were not counted (compare(count_ops=True))")
        return format_dispatch(self.what, self.ours_ops, self.reference_ops)


def compare(
    what: str,
    ours: Callable[[], Tensor | None],
    reference: Callable[[], Tensor | None],
    *,
    device: torch.device,
    repeats: int,
    count_ops: bool = False,
    reference_once: bool = False,
) -> Comparison:
    """Warm each side up once, then time `repeats` interleaved calls of both; medians.

    The outputs compared are those of the warm-up calls (both sides are deterministic);
    a side returning None has nothing to compare (different work timed side by side), and
    the line's max |diff| reads "-".
    With `count_ops`, one more untimed call of each side counts its aten ops and host
    syncs (`interp.dispatch_count`).
    With `reference_once`, the reference runs once, unwarmed, and that call is both its
    output and its time: for a slow reference on the host (scikit-learn) whose repeats a
    GPU lease's time limit does not hold.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if reference_once and count_ops:
        raise ValueError("count_ops would run the reference again: not with reference_once")
    ours_out = ours()
    reference_times: list[float] = []
    if reference_once:
        synchronize(device)
        start = time.perf_counter()
        reference_out = reference()
        synchronize(device)
        reference_times.append(time.perf_counter() - start)
    else:
        reference_out = reference()
    diff = (
        float("nan") if ours_out is None or reference_out is None
        else max_abs_diff(ours_out, reference_out)
    )
    counted = (dispatch_of(ours), dispatch_of(reference)) if count_ops else (None, None)
    ours_times = []
    for _ in range(repeats):
        ours_times.append(time_once(ours, device))
        if not reference_once:
            reference_times.append(time_once(reference, device))
    return Comparison(
        what, statistics.median(ours_times), statistics.median(reference_times), diff, *counted
    )


def format_line(what: str, ours_s: float, reference_s: float, max_diff: float) -> str:
    """`<what>: ours 0.123 s, reference 1.234 s, speedup 10.0x, max |diff| 3e-06`."""
    speedup = reference_s / ours_s if ours_s > 0 else float("inf")
    diff = "-" if math.isnan(max_diff) else "0" if max_diff == 0 else f"{max_diff:.0e}"
    return (
        f"{what}: ours {ours_s:.3f} s, reference {reference_s:.3f} s, "
        f"speedup {speedup:.1f}x, max |diff| {diff}"
    )


def format_dispatch(
    what: str,
    ours: count_dispatch,
    reference: count_dispatch,
    per: str = "call",
    reference_name: str = "reference",
) -> str:
    """`# <what>: aten ops per <per> ours 1,234 ops (567 not views), 5 syncs, <reference_name>
    ..., 8.0x fewer not views` (`interp.dispatch_count`)."""
    fewer = reference.kernels / ours.kernels if ours.kernels else float("inf")
    return (
        f"# {what}: aten ops per {per} ours {ours.summary()}, "
        f"{reference_name} {reference.summary()}, {fewer:.1f}x fewer not views"
    )


def load_line() -> str:
    """`# load average ...`: how busy the machine was while the timings ran."""
    one, five, fifteen = os.getloadavg()
    return (
        f"# load average {one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) "
        f"on {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )


def random_pretrained(family: str, device: torch.device, **shape: int) -> TransformerBridge:
    """A random model of a Hugging Face `family` (one of `interp.random_models.FAMILIES`:
    "gpt2", "neox", "llama", "gemma2", ...; the class's own initialisation, seed 0) written to a
    temporary folder and booted from it as a pretrained model, as its hub checkpoints
    would be; in eval mode. `shape`: n_layers, n_heads, d_model, d_vocab, n_ctx."""
    with tempfile.TemporaryDirectory() as folder:
        random_models.write_model(folder, family, **shape)
        return models.load(folder, device=device).eval()
