"""Where a run came from: package versions, git commit (and uncommitted changes), and whether
its process still lives.

Everything here is best effort and never raises: provenance must not stop a run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGES_RECORDED = ("torch", "transformer-lens", "transformers", "numpy", "interp-toolkit")
"""Distributions whose installed versions go into every manifest."""


def package_versions(packages: Iterable[str] = PACKAGES_RECORDED) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


PACKAGE_DIR = Path(__file__).resolve().parent
"""The folder of this package: git runs there, so the commit recorded is the code's own,
whatever folder a run is started from."""


def _git(args: list[str], folder: Path) -> bytes | None:
    """Output of `git ARGS` run in `folder`; None when git fails in any way."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=folder,
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_commit(folder: str | os.PathLike[str] | None = None) -> str | None:
    """`git rev-parse HEAD` of the repository holding `folder` (default: this package's
    folder); None when that fails in any way (not a checkout, no git) or when git tracks
    nothing in `folder` (e.g. a copy installed into a virtual environment that sits
    inside some repository: that repository's commit is not the code's)."""
    where = Path(folder) if folder is not None else PACKAGE_DIR
    if _git(["ls-files", "--error-unmatch", "--", "."], where) is None:
        return None
    output = _git(["rev-parse", "HEAD"], where)
    commit = output.decode(errors="replace").strip() if output is not None else ""
    return commit or None


def git_state(folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The code a run ran, as the manifest records it: `git_commit` (as above),
    `git_dirty` (whether tracked files differ from that commit; None when unknown) and
    `git_diff_hash` (the first 12 hex digits of the SHA-256 of `git diff HEAD`, when dirty:
    two runs with the same commit and hash ran the same code)."""
    where = Path(folder) if folder is not None else PACKAGE_DIR
    commit = git_commit(where)
    state: dict[str, Any] = {"git_commit": commit, "git_dirty": None, "git_diff_hash": None}
    if commit is None:
        return state
    diff = _git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"], where)
    if diff is not None:
        state["git_dirty"] = bool(diff)
        state["git_diff_hash"] = hashlib.sha256(diff).hexdigest()[:12] if diff else None
    return state


def process_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, from /proc; None elsewhere."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: Any, start_ticks: Any) -> bool:
    """Whether process `pid` on this machine still runs (and is the same process).

    `start_ticks` (from /proc at creation) tells a reused pid apart. Where nothing can be
    checked (Windows, where signalling would kill), the process is assumed alive.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists but belongs to another user
    except OSError:
        return False
    stat = process_stat(pid)
    if stat is None:
        return True
    state, ticks = stat
    if state in ("Z", "X"):
        return False
    return not (isinstance(start_ticks, int) and ticks != start_ticks)
