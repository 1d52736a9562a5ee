"""Smoke test of benchmarks/patching.py: the quick run prints the standard lines and agrees."""

from __future__ import annotations

import re

import pytest
from quick_run import LINE, run_quick, split_dispatch


@pytest.mark.slow
def test_quick_patching_benchmark_matches_transformer_lens() -> None:
    lines, counted = split_dispatch(run_quick("patching.py"))
    # 6 per model (native, GPT-2, GPT-NeoX, Llama, Gemma 2, GPT-Neo, Phi, BLOOM): per target
    # exact patching, attribution vs exact, attribution's two runs; then the load line
    assert len(lines) == 49, lines
    assert len(counted) == 32, counted  # (the first two lines of each target count ops)
    # One forward pass per index (TransformerLens) against one pass per chunk of indices.
    assert all(float(counted[i]["fewer"]) > 1.0 for i in range(0, 32, 2)), counted
    matches = [LINE.match(line) for line in lines[:48]]
    assert all(matches), lines
    whats = [match["what"] for match in matches]
    families = ("native", "GPT-2 (HF)", "GPT-NeoX (HF)", "Llama (HF)", "Gemma 2 (HF)",
                "GPT-Neo (HF)", "Phi (HF)", "BLOOM (HF)")
    for first, family in zip(range(0, 48, 6), families, strict=True):
        assert all(
            what.startswith(f"{family} 2L 4h d64, 4x8 tokens") for what in whats[first:first + 6]
        ), whats
        assert "resid_pre [layer, pos]" in whats[first] and "z [layer, head]" in whats[first + 3]
        exact = [matches[first], matches[first + 3]]
        assert all(re.search(r"ours max_batch \d+$", match["what"]) for match in exact), whats
        # Ours and TransformerLens patch the same activations: the value grids must agree.
        assert all(float(match["diff"]) < 1e-4 for match in exact), lines
        for match in (matches[first + 1], matches[first + 4]):
            found = re.search(
                r"attribution vs our exact patching \(reference\), correlation (\S+)$",
                match["what"],
            )
            assert found and -1.0 <= float(found[1]) <= 1.0, match["what"]
        # a head's output enters the rest of the model linearly: first order tracks it
        assert float(re.search(r"correlation (\S+)$", matches[first + 4]["what"])[1]) > 0.5
        for match in (matches[first + 2], matches[first + 5]):  # the same estimates twice
            assert "runs through interp.functional (ours) vs through the bridge's hooks" in (
                match["what"])
            assert float(match["diff"]) < 1e-4, match["what"]
    assert lines[48].startswith("# load average "), lines


@pytest.mark.slow
def test_native_only_and_family_pick_the_models() -> None:
    native = run_quick("patching.py", "--native-only")
    assert len(native) == 11 and all(line.startswith(("native 2L", "# native 2L", "# load"))
                                    for line in native), native
    llama = run_quick("patching.py", "--family", "llama")
    assert len(llama) == 11 and all(line.startswith(("Llama (HF) 2L", "# Llama (HF) 2L",
                                                    "# load")) for line in llama), llama
