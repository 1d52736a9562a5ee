"""Smoke test of benchmarks/direct_effects.py: the quick run prints the standard lines, and
ours agrees with TransformerLens's direct logit attribution and logit lens."""

from __future__ import annotations

import pytest
from quick_run import LINE, run_quick


@pytest.mark.slow
def test_quick_direct_effects_benchmark_prints_agreeing_lines() -> None:
    lines = run_quick("direct_effects.py")
    assert len(lines) == 7, lines
    matches = [LINE.match(line) for line in lines[:6]]
    assert all(matches), lines
    whats = [match["what"] for match in matches]
    assert [what.split(",")[0] for what in whats] == [
        "direct logit attribution", "logit lens"] * 3, whats
    assert "native 2L 4h d64 v1000" in whats[0] and "GPT-2 (HF) 2L 4h d64 v1000" in whats[2]
    assert "GPT-2 (HF) 2L 4h d64 v50257" in whats[4], whats
    assert all(float(match["diff"]) < 1e-4 for match in matches), lines
    assert lines[6].startswith("# load average "), lines
