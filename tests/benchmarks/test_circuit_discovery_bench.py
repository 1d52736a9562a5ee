"""Smoke test of benchmarks/circuit_discovery.py: the quick run prints the standard lines."""

from __future__ import annotations

import importlib

import pytest
import torch
from quick_run import LINE, REPO, run_quick, split_dispatch


@pytest.mark.slow
def test_quick_circuits_benchmark_prints_eap_and_acdc_lines() -> None:
    lines, counted = split_dispatch(run_quick("circuit_discovery.py"))
    assert len(lines) == 7, lines
    # Each comparison is followed by its op counts; speculation tests edges in batches, so
    # it dispatches fewer ops than one test at a time.
    assert len(counted) == 6, counted
    assert float(counted[4]["fewer"]) > 1.0, counted[4].string
    eap, eap_gpt2, acdc, hooked, speculative, gemma2 = (LINE.match(line) for line in lines[:6])
    assert eap and eap["what"].startswith("EAP over all 110 edges, native 2L"), lines
    assert eap_gpt2 and eap_gpt2["what"].startswith("EAP over all 110 edges, GPT-2 (HF) 2L")
    assert eap["diff"] == eap_gpt2["diff"] == "-", lines  # scores vs gradients: no diff
    assert acdc and acdc["what"].startswith("ACDC (KL, tau 0.05) on induction_2l"), lines
    assert acdc["diff"] == "0", lines  # incremental and plain ACDC keep the same edges
    assert hooked and "with hooks per test" in hooked["what"], lines
    assert hooked["diff"] == "0", lines  # the hook-based loop keeps the same edges
    assert speculative and "speculation 16 (" in speculative["what"], lines
    assert speculative["diff"] == "0", lines  # speculative batches keep the same edges
    assert gemma2 and gemma2["what"].startswith("ACDC (KL, tau 0.002) on Gemma 2 (HF) 2L"), lines
    assert gemma2["diff"] == "0", lines  # incremental and full passes keep the same edges
    assert lines[6].startswith("# load average "), lines


def test_circuit_difference_names_the_edges_one_side_kept(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = importlib.import_module("circuit_discovery")
    graph = bench.ComputationalGraph(n_layers=1, n_heads=1, has_mlp=False)
    kept = torch.zeros(len(graph), dtype=torch.bool)
    kept[0] = True
    assert bench.circuit_difference(graph, kept.float(), kept) is None
    other = kept.clone()
    other[0], other[1] = False, True
    detail = bench.circuit_difference(graph, kept, other)
    assert detail == (f"edges kept by ours only 1 [{graph.edges[0].name}], by the reference "
                      f"only 1 [{graph.edges[1].name}]")
    many = bench.circuit_difference(graph, torch.ones(len(graph), dtype=torch.bool),
                                    torch.zeros(len(graph), dtype=torch.bool), shown=2)
    assert many.startswith(f"edges kept by ours only {len(graph)} [") and ", ...]" in many
