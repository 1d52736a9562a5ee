"""What the benchmark smoke tests share: the printed line's pattern and a `--quick` run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(?P<what>.+): ours (?P<ours>\d+\.\d{3}) s, reference (?P<ref>\d+\.\d{3}) s, "
    r"speedup (?P<speedup>\d+\.\d)x, max \|diff\| (?P<diff>0|\d(?:\.\d+)?e[+-]\d\d)$"
)
"""`<what>: ours 0.123 s, reference 1.234 s, speedup 10.0x, max |diff| 3e-06`."""


def run_quick(script: str, timeout: int = 300) -> list[str]:
    """Lines printed by `python benchmarks/<script> --quick --device cpu` (one thread,
    offline); fails the test with the end of stderr if the script fails."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick", "--device", "cpu"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()
