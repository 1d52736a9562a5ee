"""What the benchmark smoke tests share: the printed line's pattern and a `--quick` run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(?P<what>.+): ours (?P<ours>\d+\.\d{3}) s, reference (?P<ref>\d+\.\d{3}) s, "
    r"speedup (?P<speedup>\d+\.\d)x, max \|diff\| (?P<diff>-|0|\d(?:\.\d+)?e[+-]\d\d)$"
)
"""`<what>: ours 0.123 s, reference 1.234 s, speedup 10.0x, max |diff| 3e-06`."""
DISPATCH = re.compile(
    r"^# (?P<what>.+): aten ops per (?:call|epoch) ours (?P<ours>[\d,]+) ops "
    r"\((?P<ours_kernels>[\d,]+) not views\), \d+ syncs, (?P<reference>.+?) "
    r"(?P<ref>[\d,]+) ops \((?P<ref_kernels>[\d,]+) not views\), \d+ syncs, "
    r"(?P<fewer>\d+\.\d|inf)x fewer not views$"
)
"""`# <what>: aten ops per call ours 1,234 ops (567 not views), 5 syncs, reference ...`, the
comment line after a comparison whose dispatched ops were counted."""


def split_dispatch(lines: list[str]) -> tuple[list[str], list[re.Match[str]]]:
    """The lines other than the op counts, and the op-count lines matched (each must)."""
    counted = [line for line in lines if " aten ops per " in line]
    matches = [DISPATCH.match(line) for line in counted]
    assert all(matches), counted
    return [line for line in lines if line not in counted], matches  # type: ignore[misc]


def run_quick(script: str, *extra: str, timeout: int = 300) -> list[str]:
    """Lines printed by `python benchmarks/<script> --quick --device cpu <extra>` (one
    thread, offline); fails the test with the end of stderr if the script fails."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick", "--device", "cpu", *extra],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()
