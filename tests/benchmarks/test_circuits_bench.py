"""Smoke test of benchmarks/circuits.py: the quick run prints the standard lines."""

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
def test_quick_circuits_benchmark_prints_eap_and_acdc_lines() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/circuits.py", "--quick", "--device", "cpu"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3, done.stdout
    eap, acdc = (LINE.match(line) for line in lines[:2])
    assert eap and eap["what"].startswith("EAP over all 110 edges"), done.stdout
    assert acdc and acdc["what"].startswith("ACDC (KL, tau 0.05) on induction_2l"), done.stdout
    assert acdc["diff"] == "0", done.stdout  # incremental and plain ACDC keep the same edges
    assert lines[2].startswith("# load average "), done.stdout
