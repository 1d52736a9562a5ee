"""The `suite` kind: members validated with the suite, a suite that includes itself refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from interp import suite
from interp.config import ConfigError, load_config

MEMBER = """
kind: train
model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, attn_only: true}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 64}
"""


def test_a_suite_including_itself_through_another_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: suite\nexperiments: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("kind: suite\nexperiments: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"a suite includes itself: b.yaml -> a.yaml -> b.yaml"):
        load_config(tmp_path / "a.yaml")
    assert suite._LOADING.get() == ()  # the chain is unwound after the error


def test_threads_loading_suites_do_not_share_the_chain(tmp_path: Path) -> None:
    """While this thread is inside `member.yaml`, another thread loads a suite of it: with
    a chain shared between threads it would look like a self-inclusion."""
    member = tmp_path / "member.yaml"
    member.write_text(MEMBER)
    (tmp_path / "suite.yaml").write_text("kind: suite\nexperiments: [member.yaml]\n")
    results: list[object] = []

    def load_in_thread() -> None:
        try:
            results.append(load_config(tmp_path / "suite.yaml")[0].name)
        except Exception as error:  # reported by the assert below
            results.append(error)

    token = suite._LOADING.set((member.resolve(),))
    try:
        thread = threading.Thread(target=load_in_thread)
        thread.start()
        thread.join()
    finally:
        suite._LOADING.reset(token)
    assert results == ["suite"]
