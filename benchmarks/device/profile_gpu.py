"""Where the time of the GPU-bound targets goes: one profiled call of each, for a lease.

    python benchmarks/device/profile_gpu.py [--device cuda|cpu] [--quick]

For each of ACDC on the induction model (`acdc`'s defaults; issue 6), the small model's
head patching sweep (`z`, issue 4), and one grokking epoch of 1 and of 32 models (issue 3),
it prints the call's wall time, the time the device spent in kernels, the kernels
launched, the host syncs (`cudaStreamSynchronize` / `cudaDeviceSynchronize` /
`cudaMemcpy*` to the host), and the `torch.profiler` table of the ops with the most host
(self CPU) time. Wall time well above the kernels' time means the host (Python and
dispatch) bounds the call, so cutting ops is what helps; close to it, the arithmetic.
On a CPU it runs the same calls (no device columns) so that the plumbing is tested here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy")


def profiled(what: str, call: Callable[[], object], device: torch.device, rows: int) -> None:
    """Warm `call` up, time one call, then profile one and print the summary."""
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    syncs = sum(e.count for e in events if e.key.startswith(SYNC_EVENTS))
    aten = sum(e.count for e in events if e.key.startswith("aten::"))
    print(f"== {what}: wall {wall * 1e3:.1f} ms (unprofiled), kernels {kernel_us / 1e3:.1f} ms "
          f"of device time, {launches} launches, {syncs} sync/copy calls, {aten} aten events",
          flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (plumbing)")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available")
    device = torch.device(args.device)

    from circuit_discovery import trained_induction
    from grokking import FULL, QUICK, make_pair
    from patching import FULL as PATCH_FULL
    from patching import QUICK as PATCH_QUICK
    from patching import ours as patching_sweep
    from patching import random_batch

    from circuits.acdc import acdc
    from interp.models import build

    model, batch = trained_induction(args.quick, device)
    profiled("ACDC, induction_2l, acdc() defaults",
             lambda: acdc(model, batch, 0.05, progress=False), device, args.rows)

    sizes = PATCH_QUICK if args.quick else PATCH_FULL
    spec = {"n_layers": 2, "n_heads": 4, "d_model": 64, "d_vocab": sizes.d_vocab,
            "n_ctx": sizes.n_pos, "act_fn": "gelu", "normalization": "LN", "seed": 0}
    small = build(spec, device=device)
    small.eval()
    tokens = random_batch(sizes, seed=0).to(device)
    profiled("patching z, native 2L 4h d64, max_batch 512",
             lambda: patching_sweep(small, tokens, "z", 512), device, args.rows)

    setting = QUICK if args.quick else FULL
    for n_seeds in (1, setting.seeds):
        trainer, _, _ = make_pair(setting, n_seeds, device)
        for _ in range(3):
            trainer.step()
        profiled(f"grokking, one epoch of {n_seeds} model(s), p={setting.p}",
                 trainer.step, device, args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
