"""`interp.dispatch_count` against ops whose dispatch is known: a kernel, a view, a sync."""

from __future__ import annotations

import torch

from interp.dispatch_count import count_dispatch, dispatch_of


def test_counts_kernels_views_and_syncs() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    with count_dispatch() as counted:
        y = x + 1.0  # one kernel
        z = y.t()  # one view
        value = float(z.sum())  # a kernel, then a copy to the host
    assert value == 21.0
    assert counted.ops == 4, counted.by_op
    assert counted.views == 1 and counted.kernels == 3, counted.by_op
    assert counted.syncs == 1, counted.by_op
    assert counted.by_op["add"] == 1 and counted.by_op["t"] == 1
    assert counted.summary() == "4 ops (3 not views), 1 syncs"


def test_dispatch_of_counts_one_call_and_nothing_outside_it() -> None:
    x = torch.ones(3)
    x * 2  # before: not counted
    counted = dispatch_of(lambda: torch.stack([x, x]).sum(dim=0))
    assert counted.ops == 2 and counted.syncs == 0, counted.by_op
