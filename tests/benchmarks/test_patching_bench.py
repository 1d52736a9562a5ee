"""Smoke test of benchmarks/patching.py: the quick run prints the standard lines and agrees."""

from __future__ import annotations

import re

import pytest
from quick_run import LINE, run_quick, split_dispatch


@pytest.mark.slow
def test_quick_patching_benchmark_matches_transformer_lens() -> None:
    lines, counted = split_dispatch(run_quick("patching.py"))
    assert len(lines) == 13, lines  # 4 per model (native, GPT-2, GPT-NeoX) and the load line
    assert len(counted) == 12, counted
    # One forward pass per index (TransformerLens) against one pass per chunk of indices.
    assert all(float(counted[i]["fewer"]) > 1.0 for i in (0, 2, 4, 6, 8, 10)), counted
    matches = [LINE.match(line) for line in lines[:12]]
    assert all(matches), lines
    whats = [match["what"] for match in matches]
    for first, family in ((0, "native"), (4, "GPT-2 (HF)"), (8, "GPT-NeoX (HF)")):
        assert all(
            what.startswith(f"{family} 2L 4h d64, 4x8 tokens") for what in whats[first:first + 4]
        ), whats
        assert "resid_pre [layer, pos]" in whats[first] and "z [layer, head]" in whats[first + 2]
        exact = [matches[first], matches[first + 2]]
        assert all(re.search(r"ours max_batch \d+$", match["what"]) for match in exact), whats
        # Ours and TransformerLens patch the same activations: the value grids must agree.
        assert all(float(match["diff"]) < 1e-4 for match in exact), lines
        for match in (matches[first + 1], matches[first + 3]):
            found = re.search(
                r"attribution vs our exact patching \(reference\), correlation (\S+)$",
                match["what"],
            )
            assert found and -1.0 <= float(found[1]) <= 1.0, match["what"]
    assert lines[12].startswith("# load average "), lines
