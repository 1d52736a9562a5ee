from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from quick_run import split_dispatch

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(?P<what>.+): ours (?P<ours>[\d.]+) s, reference (?P<ref>[\d.]+) s, "
    r"speedup [\d.]+x, max \|diff\| (?P<diff>0|[\d.e+-]+)$"
)


@pytest.mark.slow
def test_quick_grokking_benchmark_prints_the_standard_lines() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/grokking.py", "--quick", "--device", "cpu"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines, counted = split_dispatch(done.stdout.strip().splitlines())
    assert [match["what"] for match in counted] == [
        "1 seed", "4 seeds", "4 seeds, vmapped"
    ], done.stdout
    timed = [LINE.match(line) for line in lines[:4]]
    assert all(timed), done.stdout
    # Ours and the plain loop start from the same weights: the loss curves must agree.
    assert all(float(match["diff"]) < 1e-4 for match in timed)
    assert lines[4].startswith("epochs to test acc 0.99 in all 4 seeds"), done.stdout
