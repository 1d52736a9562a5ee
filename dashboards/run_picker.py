"""Choosing runs on the result pages: which runs of an experiment kind exist, a selector to
pick one (`pick_run`) or several (`pick_runs`), and the notice a page shows for a run that is
not a finished, readable run (still running, failed, died, corrupt) instead of failing.

A corrupt run folder has no readable manifest, hence no kind; it counts as a folder of a
kind when its config.yaml names that kind or when its experiment folder holds runs of that
kind. Such folders cannot be drawn, so they are never offered in a selector: each gets a
warning above it saying why, and the other corrupt folders of the store are counted.

Everything is read through `interp.runs`; nothing here runs a model or imports torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from dashboards.loaders import CACHE_TTL_S
from interp.runs import (
    STATUS_CORRUPT,
    STATUS_DIED,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_RESUMABLE,
    STATUS_RUNNING,
    RunInfo,
    RunStore,
)
from interp.runs.errors import CorruptRun
from interp.runs.records import read_config

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
"""The checkout's experiment configs, named in the hint shown when a kind has no runs."""

_KIND_LINE = re.compile(r"^kind:\s*['\"]?([A-Za-z0-9_-]+)", re.MULTILINE)


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def example_configs(kind: str, experiments_dir: str = str(EXPERIMENTS_DIR)) -> list[str]:
    """`experiments/<name>.yaml` files whose top-level `kind:` is `kind`, sorted."""
    folder = Path(experiments_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.yaml")):
        match = _KIND_LINE.search(path.read_text(encoding="utf-8", errors="replace"))
        if match and match.group(1) == kind:
            found.append(f"experiments/{path.name}")
    return found


def _config_kind(run_dir: Path) -> str | None:
    """The `kind` config.yaml names, or None when it cannot be read."""
    try:
        kind = read_config(run_dir).get("kind")
    except (CorruptRun, OSError):
        return None
    return kind if isinstance(kind, str) else None


@st.cache_data(ttl=CACHE_TTL_S, max_entries=16, show_spinner=False)
def runs_of_kind(runs_dir: str, kind: str) -> tuple[list[RunInfo], list[RunInfo], int]:
    """(the readable runs of `kind`, newest first; the corrupt folders that seem to be of
    `kind` (see the module docstring); how many other corrupt folders the store holds)."""
    infos = RunStore(runs_dir).runs()
    mine = [info for info in infos if info.kind == kind]
    experiments = {info.experiment for info in mine}
    corrupt = [info for info in infos if info.status == STATUS_CORRUPT]
    near = [
        info for info in corrupt
        if info.experiment in experiments or _config_kind(info.path) == kind
    ]
    return mine[::-1], near, len(corrupt) - len(near)


def no_runs_message(runs_dir: Path, kind: str, how: str | None = None) -> str:
    """Why a page has nothing to show, and how to make a run of `kind`: `how` when given,
    else the example configs of that kind."""
    where = f"No runs folder at `{runs_dir}`. " if not runs_dir.is_dir() else ""
    text = f"{where}No `{kind}` runs in `{runs_dir}` yet."
    configs = example_configs(kind)
    if how is not None:
        text += f" Make one with {how}."
    elif configs:
        command = f"interp run {configs[0]} --runs-dir {runs_dir}"
        text += (
            f" The configs that make one: {', '.join(f'`{c}`' for c in configs)}; "
            f"e.g. `{command}`."
        )
    return text + " Or pick another runs folder in the sidebar."


def status_notice(info: RunInfo, shows_partial: bool = True) -> tuple[str, str] | None:
    """("warning" | "info", message) for a run that is not a readable, finished run; None
    for a done run with nothing to report. `shows_partial`: whether the page draws what an
    unfinished run saved so far (said in the message)."""
    ref, error = f"`{info.ref}`", info.error or "no error was recorded"
    partial = (
        " What it saved so far is shown." if shows_partial
        else " Nothing is drawn until a run finishes."
    )
    if info.status == STATUS_CORRUPT:
        return "warning", f"{ref} is corrupt and cannot be shown: {error}"
    if info.status == STATUS_FAILED:
        return "warning", f"{ref} failed: {error}.{partial}"
    if info.status == STATUS_RUNNING:
        return "info", f"{ref} is still running (Refresh to see more).{partial}"
    if info.status == STATUS_RESUMABLE:
        return "warning", (
            f"{ref} stopped before finishing; `interp resume {info.ref}` continues it.{partial}"
        )
    if info.status == STATUS_DIED:
        return "warning", f"{ref} died before finishing.{partial}"
    if info.status == STATUS_DONE and info.error:
        return "warning", f"{ref}: {error}"
    if info.status != STATUS_DONE:
        return "warning", f"{ref} has status {info.status!r}.{partial}"
    return None


def show_status(info: RunInfo, shows_partial: bool = True) -> bool:
    """Show `status_notice(info)` on the page, if any. True when the page should draw the
    run: it is not corrupt, and it is done unless the page `shows_partial` results."""
    notice = status_notice(info, shows_partial)
    if notice is not None:
        level, message = notice
        (st.warning if level == "warning" else st.info)(message)
    if info.status == STATUS_CORRUPT:
        return False
    return shows_partial or info.status == STATUS_DONE


def _listing(runs_dir: Path, kind: str, how: str | None) -> list[RunInfo]:
    """The readable runs of `kind`, newest first, after a warning per corrupt folder of that
    kind; [] after an info saying how to make one when there are none."""
    if not runs_dir.is_dir():
        st.info(no_runs_message(runs_dir, kind, how))
        return []
    infos, corrupt, others = runs_of_kind(str(runs_dir), kind)
    for info in corrupt:
        show_status(info)
    if others:
        st.caption(f"{others} other corrupt run folder(s) in the store (see the Runs page).")
    if not infos:
        st.info(no_runs_message(runs_dir, kind, how))
    return infos


def _label(by_ref: dict[str, RunInfo]) -> object:
    return lambda ref: f"{ref} ({by_ref[ref].status})"


def pick_run(
    runs_dir: Path, kind: str, key: str, *, how: str | None = None, shows_partial: bool = False
) -> RunInfo | None:
    """A selectbox of the runs of `kind` (the newest finished run chosen first); the chosen
    run when the page should draw it (see `show_status`), else None after saying why.

    Args:
        runs_dir: The run store.
        kind: The experiment kind the page shows.
        key: The selectbox's widget key.
        how: How to make a run of `kind` (markdown), said when there is none; default:
            the example configs of that kind.
        shows_partial: Whether the page can draw what an unfinished run saved so far.
    """
    infos = _listing(runs_dir, kind, how)
    if not infos:
        return None
    by_ref = {info.ref: info for info in infos}
    done = [index for index, info in enumerate(infos) if info.status == STATUS_DONE]
    ref = st.selectbox(
        "Run", list(by_ref), index=done[0] if done else 0, key=key,
        format_func=_label(by_ref), help="newest first",
    )
    info = by_ref[ref] if ref is not None else infos[0]
    return info if show_status(info, shows_partial) else None


def pick_runs(
    runs_dir: Path, kind: str, key: str, *, how: str | None = None, n_default: int = 3,
    shows_partial: bool = True,
) -> list[RunInfo]:
    """A multiselect of the runs of `kind` (the `n_default` newest chosen first); the chosen
    runs the page should draw, after a notice for each one that is not a finished run."""
    infos = _listing(runs_dir, kind, how)
    if not infos:
        return []
    by_ref = {info.ref: info for info in infos}
    chosen = st.multiselect(
        "Runs", list(by_ref), default=list(by_ref)[:n_default], key=key,
        format_func=_label(by_ref), help="runs to overlay, newest first",
    )
    return [by_ref[ref] for ref in chosen if show_status(by_ref[ref], shows_partial)]


def clear_caches() -> None:
    """Forget the cached listings."""
    runs_of_kind.clear()
    example_configs.clear()
