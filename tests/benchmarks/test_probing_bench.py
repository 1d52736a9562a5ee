"""Smoke test of benchmarks/probing.py: the quick run prints the standard lines and agrees."""

from __future__ import annotations

import pytest
from quick_run import LINE, run_quick


@pytest.mark.slow
def test_quick_probes_benchmark_prints_agreeing_lines() -> None:
    lines = run_quick("probing.py")
    assert len(lines) == 3, lines
    matches = [LINE.match(line) for line in lines[:2]]
    assert all(matches), lines
    assert matches[0]["what"].startswith("logistic probes") and "ridge" in matches[1]["what"]
    # torch and scikit-learn agree within one point of accuracy / R^2
    assert all(float(match["diff"]) <= 0.01 for match in matches), lines
    assert lines[2].startswith("# load average "), lines
