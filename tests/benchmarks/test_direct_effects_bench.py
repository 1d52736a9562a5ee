"""Smoke test of benchmarks/direct_effects.py: the quick run prints the standard lines, and
ours agrees with TransformerLens's direct logit attribution and logit lens."""

from __future__ import annotations

import pytest
from quick_run import LINE, run_quick


@pytest.mark.slow
def test_quick_direct_effects_benchmark_prints_agreeing_lines() -> None:
    lines = run_quick("direct_effects.py")
    assert len(lines) == 5, lines
    matches = [LINE.match(line) for line in lines[:4]]
    assert all(matches), lines
    whats = [match["what"] for match in matches]
    assert [what.split(",")[0] for what in whats] == [
        "direct logit attribution", "logit lens"] * 2, whats
    assert "native 2L 4h d64" in whats[0] and "GPT-2 (HF) 2L 4h d64" in whats[2], whats
    assert all(float(match["diff"]) < 1e-4 for match in matches), lines
    assert lines[4].startswith("# load average "), lines
