"""Counting the aten operations that a piece of code dispatches, and its host syncs.

On a GPU, a small model's work is bound by the host: every aten operation costs some
microseconds of Python, dispatcher and kernel launch whatever its size, and an operation
that reads a value back to Python (`.item()`, `int(t)`, `if t:`) waits for all queued
work. So the number of operations and of syncs a call dispatches, counted on any device,
predicts how it scales where launches dominate; the benchmarks print both for ours and the
reference, and tests bound them so that a change cannot quietly add an op per index.
View ops (`detach`, `transpose`, `reshape` where it can view, ...; the op's schema says
so) launch no kernel and cost about a microsecond each; the others launch one or more,
so `kernels = ops - views` is the closer estimate of launches.

The count is of what reaches the aten dispatcher below autograd and `torch.func`
transforms (a vmapped op counts once, backward ops count as they run). Python-only work
(hook bookkeeping, module calls) is not counted, so on code with heavy Python per op (a
hooked model) the count understates its host time. Syncs are the reads that dispatch
(`.item()`, `int(t)`, `float(t)`, `bool(t)`); `.tolist()`, `.numpy()` and `.cpu()` of a CPU
tensor dispatch nothing, so on a CPU run the reads that would be device-to-host copies
on a GPU are not counted.

    with count_dispatch() as counted:
        model(tokens)
    counted.ops, counted.syncs, counted.by_op.most_common(5)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero"})
"""Aten ops that copy a value to the host, so on a GPU wait for every queued kernel."""


class count_dispatch(TorchDispatchMode):  # noqa: N801 - used as a function-like context
    """A context manager counting the aten ops dispatched under it.

    Attributes:
        ops: Number of aten ops.
        syncs: How many of them read a value back to the host (`SYNC_OPS`).
        views: How many of them may return a view of an input (no kernel launched).
        by_op: Count per op (overload packet name, e.g. `"mm"`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.views = 0
        self.by_op: Counter[str] = Counter()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        name = func.overloadpacket.__name__
        self.ops += 1
        self.syncs += name in SYNC_OPS
        self.views += func.is_view
        self.by_op[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def kernels(self) -> int:
        """Ops that are not views: about the number of kernel launches on a GPU."""
        return self.ops - self.views

    def summary(self) -> str:
        """`"1,234 ops (567 not views), 5 syncs"`."""
        return f"{self.ops:,} ops ({self.kernels:,} not views), {self.syncs} syncs"


def dispatch_of(run: Callable[[], object]) -> count_dispatch:
    """The ops and syncs that one call of `run` dispatches."""
    with count_dispatch() as counted:
        run()
    return counted
