"""Smoke test of benchmarks/device/profile_gpu.py: on a CPU it profiles the same four calls
it profiles on a GPU lease, so its plumbing cannot rot before one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from quick_run import REPO

HEADER = re.compile(
    r"^== (?P<what>.+): wall [\d.]+ ms \(unprofiled\), kernels [\d.]+ ms of device time, "
    r"\d+ launches, \d+ sync/copy calls, (?P<aten>\d+) aten events$"
)


@pytest.mark.slow
def test_profile_prints_one_summary_per_call() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/device/profile_gpu.py", "--device", "cpu", "--quick",
         "--rows", "3"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    headers = [HEADER.match(line) for line in done.stdout.splitlines() if line.startswith("== ")]
    assert all(headers) and len(headers) == 4, done.stdout[-3000:]
    assert [h["what"].split(",")[0] for h in headers] == [
        "ACDC", "patching z", "grokking", "grokking"
    ]
    assert all(int(h["aten"]) > 0 for h in headers)
