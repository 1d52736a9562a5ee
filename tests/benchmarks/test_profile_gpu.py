"""Smoke test of benchmarks/device/profile_gpu.py: on a CPU it profiles the same four calls
it profiles on a GPU lease, so its plumbing cannot rot before one."""

from __future__ import annotations

import re

import pytest
from quick_run import run_quick

HEADER = re.compile(
    r"^== (?P<what>.+): wall [\d.]+ ms \(unprofiled\), kernels [\d.]+ ms of device time, "
    r"\d+ launches, \d+ sync/copy calls, (?P<aten>\d+) aten events$"
)


@pytest.mark.slow
def test_profile_prints_one_summary_per_call() -> None:
    output = run_quick("device/profile_gpu.py", "--rows", "3")
    headers = [HEADER.match(line) for line in output if line.startswith("== ")]
    assert all(headers) and len(headers) == 4, output[-40:]
    assert [h["what"].split(",")[0] for h in headers] == [
        "ACDC", "patching z", "grokking", "grokking"
    ]
    assert all(int(h["aten"]) > 0 for h in headers)
