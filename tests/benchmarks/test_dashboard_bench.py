"""Smoke test of benchmarks/dashboard.py: the quick run times the Runs page of its store."""

from __future__ import annotations

import re

import pytest
from quick_run import run_quick

TARGET_LINE = re.compile(
    r"^runs page (?P<which>first render|rerun), (?P<runs>\d+) runs, (?P<rows>\d+) rows shown: "
    r"ours (?P<ours>\d+\.\d{3}) s, target 2\.000 s, (?P<verdict>met|missed)$"
)
"""`runs page first render, 10 runs, 10 rows shown: ours 0.196 s, target 2.000 s, met`."""
QUICK_RUNS = 10


@pytest.mark.slow
def test_quick_dashboard_benchmark_times_the_runs_page() -> None:
    lines = run_quick("dashboard.py")
    assert len(lines) == 4, lines
    matches = [TARGET_LINE.match(line) for line in lines[:2]]
    assert all(matches), lines
    assert [match["which"] for match in matches] == ["first render", "rerun"]
    for match in matches:
        # the page listed every run of the store the script built
        assert int(match["runs"]) == int(match["rows"]) == QUICK_RUNS, lines
        ours = float(match["ours"])
        assert ours > 0, lines
        assert match["verdict"] == ("met" if ours <= 2.0 else "missed"), lines
    assert lines[2].startswith("# RunStore.table() alone ") and f"({QUICK_RUNS} runs)" in lines[2]
    assert lines[3].startswith("# load average "), lines
