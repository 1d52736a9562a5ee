"""Smoke test of benchmarks/attribution.py: the quick run prints, per query and key target,
the AtP*, integrated-gradients and plain attribution lines against exact patching, an
accuracy line and a line of each ranking's recall of exact patching's strongest indices."""

from __future__ import annotations

import re

import pytest
from quick_run import LINE, run_quick

ACCURACY = re.compile(
    r"^# (?P<target>\w+) over task seeds 0: correlation with exact patching AtP\* fix "
    r"(?P<fix>-?\d\.\d\d), IG (?P<ig>-?\d\.\d\d), plain (?P<plain>-?\d\.\d\d); "
    r"rmse AtP\* fix \d\.\d{3}, IG \d\.\d{3}, plain \d\.\d{3}$"
)
RECALL = re.compile(
    r"^# (?P<target>\w+) over task seeds 0: of exact patching's 10 strongest, among each "
    r"method's 40 strongest: AtP\* fix (?P<fix>\d+), IG \d+, plain \d+, GradDrop \d+$"
)


@pytest.mark.slow
def test_quick_attribution_benchmark_prints_both_estimates_per_target() -> None:
    lines = run_quick("attribution.py")
    assert len(lines) == 4 * 4 + 2 + 1, lines  # recall lines for the by-position targets
    block = 0
    for target in ("q", "k", "q_by_pos", "k_by_pos"):
        fix, integrated, plain = (LINE.match(line) for line in lines[block:block + 3])
        accuracy = ACCURACY.match(lines[block + 3])
        assert fix and integrated and plain and accuracy, lines[block:block + 4]
        if target.endswith("_by_pos"):  # 320 indices (only 8 by head)
            recall = RECALL.match(lines[block + 4])
            assert recall and recall["target"] == target, lines[block + 4]
            assert int(recall["fix"]) >= 8, lines[block + 4]
        assert f", {target}, AtP* query-key fix vs exact patching" in fix["what"]
        assert f", {target}, integrated gradients (16 steps) vs exact patching" in integrated[
            "what"]
        assert f", {target}, plain attribution vs exact patching" in plain["what"]
        assert accuracy["target"] == target
        # the quick model's attention barely saturates: the fix is all but exact there
        assert float(accuracy["fix"]) > 0.95, lines[block + 3]
        block += 5 if target.endswith("_by_pos") else 4
    assert lines[-1].startswith("# load average "), lines
