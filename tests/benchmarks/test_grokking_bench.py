from __future__ import annotations

import importlib
import re

import pytest
import torch
from quick_run import REPO, run_quick, split_dispatch

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


@pytest.fixture()
def grokking_bench(monkeypatch: pytest.MonkeyPatch):
    """`benchmarks/grokking.py`, imported the way its scripts import their helpers."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("grokking")


def test_graph_lines_say_so_when_no_graph_was_captured(grokking_bench, monkeypatch):
    # A trainer that warned at capture and trains on eagerly has no graph (`_graph` None):
    # its epochs must not be reported as the graph's. On a CPU no trainer captures one,
    # which stands for that case.
    make_pair = grokking_bench.make_pair
    monkeypatch.setattr(grokking_bench, "make_pair",
                        lambda *args, cuda_graph=False, **kwargs: make_pair(*args, **kwargs))
    lines = list(grokking_bench.graph_lines(grokking_bench.QUICK, torch.device("cpu"), (1,)))
    assert len(lines) == 1 and "capture failed (eager)" in lines[0], lines
    assert " ours " not in lines[0] and "speedup" not in lines[0], lines


def test_graph_lines_time_a_captured_graph(grokking_bench, monkeypatch):
    make_pair = grokking_bench.make_pair

    def with_graph(*args, cuda_graph=False, **kwargs):
        trainer, plain, test = make_pair(*args, **kwargs)
        if cuda_graph:
            trainer._graph = object()  # as after a capture that worked
        return trainer, plain, test

    monkeypatch.setattr(grokking_bench, "make_pair", with_graph)
    lines = list(grokking_bench.graph_lines(grokking_bench.QUICK, torch.device("cpu"), (1, 2)))
    matches = [LINE.match(line) for line in lines]
    assert len(lines) == 2 and all(matches), lines
    assert all("CUDA graph (ours, opt-in) vs eager step" in m["what"] for m in matches)
    assert all(float(m["diff"]) == 0 for m in matches), lines  # the same eager steps here


def test_graph_flags(grokking_bench, capsys):
    with pytest.raises(SystemExit):
        grokking_bench.main(["--graph-only", "--no-graph", "--device", "cpu"])
    assert "leave nothing to run" in capsys.readouterr().err
