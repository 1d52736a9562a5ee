"""Smoke test of benchmarks/patching.py: the quick run prints the standard lines and agrees."""

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
def test_quick_patching_benchmark_matches_transformer_lens() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/patching.py", "--quick", "--device", "cpu"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 5, done.stdout
    matches = [LINE.match(line) for line in lines[:4]]
    assert all(matches), done.stdout
    whats = [match["what"] for match in matches]
    assert all(what.startswith("native 2L 4h d64, 4x8 tokens") for what in whats), whats
    assert "resid_pre [layer, pos]" in whats[0] and "z [layer, head]" in whats[2], whats
    exact = [matches[0], matches[2]]
    assert all(re.search(r"ours max_batch \d+$", match["what"]) for match in exact), whats
    # Ours and TransformerLens patch the same activations: the value grids must agree.
    assert all(float(match["diff"]) < 1e-4 for match in exact), done.stdout
    for match in (matches[1], matches[3]):
        found = re.search(
            r"attribution vs our exact patching \(reference\), correlation (\S+)$", match["what"]
        )
        assert found and -1.0 <= float(found[1]) <= 1.0, match["what"]
    assert lines[4].startswith("# load average "), done.stdout
