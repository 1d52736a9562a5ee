"""Smoke test of benchmarks/heads.py: the quick run prints the standard lines and agrees."""

from __future__ import annotations

import pytest
from quick_run import LINE, run_quick


@pytest.mark.slow
def test_quick_heads_benchmark_prints_agreeing_lines() -> None:
    lines = run_quick("heads.py")
    assert len(lines) == 5, lines
    matches = [LINE.match(line) for line in lines[:3]]
    assert all(matches), lines
    whats = [match["what"] for match in matches]
    assert all(what.startswith("native 2L 4h d64 v1000") for what in whats), whats
    assert "all pattern scores vs one forward caching the patterns" in whats[0]
    assert "Q/K/V composition" in whats[1] and "mean-ablation importance" in whats[2]
    # both sides compute the same numbers
    assert all(float(match["diff"]) < 1e-4 for match in matches), lines
    assert lines[3].startswith("# copying scores"), lines
    assert lines[4].startswith("# load average "), lines
