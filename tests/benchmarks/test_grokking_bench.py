from __future__ import annotations

import re

import pytest
from quick_run import run_quick, split_dispatch

LINE = re.compile(
    r"^(?P<what>.+): ours (?P<ours>[\d.]+) s, reference (?P<ref>[\d.]+) s, "
    r"speedup [\d.]+x, max \|diff\| (?P<diff>0|[\d.e+-]+)$"
)


@pytest.mark.slow
def test_quick_grokking_benchmark_prints_the_standard_lines() -> None:
    output = run_quick("grokking.py", timeout=600)
    lines, counted = split_dispatch(output)
    assert [match["what"] for match in counted] == [
        "1 seed", "4 seeds", "4 seeds, vmapped"
    ], output
    timed = [LINE.match(line) for line in lines[:5]]
    assert all(timed), output
    # Ours and the plain loop start from the same weights: the loss curves must agree.
    assert all(float(match["diff"]) < 1e-4 for match in timed)
    assert "first layer from (position, token) tables" in lines[4], output
    assert lines[5].startswith("epochs to test acc 0.99 in all 4 seeds"), output
