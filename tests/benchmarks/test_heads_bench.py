"""Smoke test of benchmarks/heads.py: the quick run prints the standard lines and agrees."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(?P<what>.+): ours (?P<ours>\d+\.\d{3}) s, reference (?P<ref>\d+\.\d{3}) s, "
    r"speedup (?P<speedup>\d+\.\d)x, max \|diff\| (?P<diff>0|\d(?:\.\d+)?e[+-]\d\d)$"
)


@pytest.mark.slow
def test_quick_heads_benchmark_prints_agreeing_lines() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/heads.py", "--quick", "--device", "cpu"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 5, done.stdout
    matches = [LINE.match(line) for line in lines[:3]]
    assert all(matches), done.stdout
    whats = [match["what"] for match in matches]
    assert all(what.startswith("native 2L 4h d64 v1000") for what in whats), whats
    assert "all pattern scores vs one forward caching the patterns" in whats[0]
    assert "Q/K/V composition" in whats[1] and "mean-ablation importance" in whats[2]
    # both sides compute the same numbers
    assert all(float(match["diff"]) < 1e-4 for match in matches), done.stdout
    assert lines[3].startswith("# copying scores"), done.stdout
    assert lines[4].startswith("# load average "), done.stdout
