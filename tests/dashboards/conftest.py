"""Fixtures of the dashboard tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def one_torch_thread() -> Callable[[], AbstractContextManager[None]]:
    """A context manager running torch on one thread, for making the tiny fixture runs
    (their matrices are small: more threads only contend on a busy machine)."""
    return lambda: _torch_threads(1)
