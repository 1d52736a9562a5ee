"""Smoke test of benchmarks/patching.py: the quick run prints the standard lines and agrees."""

from __future__ import annotations

import re

import pytest
from quick_run import LINE, run_quick, split_dispatch


@pytest.mark.slow
def test_quick_patching_benchmark_matches_transformer_lens() -> None:
    lines, counted = split_dispatch(run_quick("patching.py"))
    assert len(lines) == 5, lines
    assert len(counted) == 4, counted
    # One forward pass per index (TransformerLens) against one pass per chunk of indices.
    assert all(float(match["fewer"]) > 1.0 for match in (counted[0], counted[2])), counted
    matches = [LINE.match(line) for line in lines[:4]]
    assert all(matches), lines
    whats = [match["what"] for match in matches]
    assert all(what.startswith("native 2L 4h d64, 4x8 tokens") for what in whats), whats
    assert "resid_pre [layer, pos]" in whats[0] and "z [layer, head]" in whats[2], whats
    exact = [matches[0], matches[2]]
    assert all(re.search(r"ours max_batch \d+$", match["what"]) for match in exact), whats
    # Ours and TransformerLens patch the same activations: the value grids must agree.
    assert all(float(match["diff"]) < 1e-4 for match in exact), lines
    for match in (matches[1], matches[3]):
        found = re.search(
            r"attribution vs our exact patching \(reference\), correlation (\S+)$", match["what"]
        )
        assert found and -1.0 <= float(found[1]) <= 1.0, match["what"]
    assert lines[4].startswith("# load average "), lines
