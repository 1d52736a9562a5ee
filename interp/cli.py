"""The `interp` command.

    interp run CONFIG.yaml [--set key=value ...] [--runs-dir DIR]
    interp resume RUN [--runs-dir DIR]
    interp validate CONFIG.yaml [--set key=value ...]
    interp list [--runs-dir DIR] [--experiment NAME] [--kind KIND]
    interp show RUN [--runs-dir DIR]
    interp kinds
    interp dashboard [--runs-dir DIR] [--port PORT]

Exit codes: 0 success, 1 a run failed or a run was not found, 2 an invalid config or
command line. Errors are one line on stderr; a failed run's traceback is in its manifest.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from interp.runs import Run, RunStore

DEFAULT_RUNS_DIR = os.environ.get("INTERP_RUNS_DIR", "runs")
EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A command cannot do what was asked (no such run, a corrupt run, no dashboard app);
    reported as one line with exit code 1. Anything else escaping a command is a bug and
    keeps its traceback."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `interp` command."""
    parser = argparse.ArgumentParser(prog="interp", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_runs_dir(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="run store folder")

    def add_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("config", type=Path, help="experiment config (YAML)")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config key, e.g. --set task.p=61 (repeatable)",
        )

    run = commands.add_parser("run", help="run an experiment config")
    add_config(run)
    add_runs_dir(run)
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    validate = commands.add_parser("validate", help="check a config without running it")
    add_config(validate)

    listing = commands.add_parser("list", help="list runs in the store")
    add_runs_dir(listing)
    listing.add_argument("--experiment", default=None)
    listing.add_argument("--kind", default=None)

    resume = commands.add_parser("resume", help="continue a stopped run from its checkpoint")
    resume.add_argument("run", help="experiment/run_id, a run_id, or a run folder")
    add_runs_dir(resume)
    resume.add_argument("--no-progress", action="store_true", help="hide progress bars")

    show = commands.add_parser("show", help="show one run's manifest, config and summary")
    show.add_argument("run", help="experiment/run_id, a run_id, or a run folder")
    add_runs_dir(show)

    commands.add_parser("kinds", help="list the experiment kinds installed")

    dashboard = commands.add_parser("dashboard", help="open the Streamlit dashboard")
    add_runs_dir(dashboard)
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument("--host", default="localhost", help="address to bind (localhost)")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from interp.config import load_config
    from interp.runner import execute
    from interp.runs import RunStore

    kind, config = load_config(args.config, args.overrides)
    store = RunStore(args.runs_dir)
    try:
        run = execute(kind, config, store, args.config.parent, progress=not args.no_progress)
    except KeyboardInterrupt:
        _error("interrupted; the run is marked failed")
        return EXIT_FAILED
    except Exception as error:  # the run folder holds the traceback
        _error(f"run of {args.config} failed: {_one_line(error)}")
        return EXIT_FAILED
    print(f"done: {run.path}")
    for key, value in run.summary.items():
        print(f"  {key}: {value}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from interp.runner import resume
    from interp.runs import RunStore

    store = RunStore(args.runs_dir)
    run = _load_run(store, args.run)
    try:
        resume(run, store, progress=not args.no_progress)
    except KeyboardInterrupt:
        _error("interrupted; the run is marked failed and can be resumed again")
        return EXIT_FAILED
    except Exception as error:
        _error(f"resuming {run.ref} failed: {_one_line(error)}")
        return EXIT_FAILED
    print(f"done: {run.path}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from interp.config import config_to_dict, load_config

    kind, config = load_config(args.config, args.overrides)
    print(f"{args.config}: valid {kind.name} config")
    print(json.dumps(config_to_dict(config), indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from interp.runs import RunStore

    table = RunStore(args.runs_dir).table()
    if args.experiment is not None and len(table):
        table = table[table["experiment"] == args.experiment]
    if args.kind is not None and len(table):
        table = table[table["kind"] == args.kind]
    if not len(table):
        print(f"no runs in {args.runs_dir}")
        return 0
    columns = [c for c in ("experiment", "run_id", "kind", "status", "started") if c in table]
    print(table[columns].to_string(index=False))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from interp.runs import RunStore

    run = _load_run(RunStore(args.runs_dir), args.run)
    print(f"run {run.experiment}/{run.run_id} at {run.path}")
    print("manifest:", json.dumps(run.manifest, indent=2, default=str))
    print("summary:", json.dumps(run.summary, indent=2, default=str))
    print("config:", json.dumps(run.config, indent=2, default=str))
    return 0


def _load_run(store: RunStore, ref: str) -> Run:
    """The run `ref` names; a `CommandError` when there is none, it is ambiguous, or its
    folder is corrupt (`RunStore.load` raises ValueErrors, `RunNotFound` and `CorruptRun`
    among them, only for these)."""
    try:
        return store.load(ref)
    except ValueError as error:
        raise CommandError(_one_line(error)) from error


def cmd_kinds(args: argparse.Namespace) -> int:
    from interp.experiments import load_kinds

    for name, kind in sorted(load_kinds().items()):
        print(f"{name:12s} {kind.description}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    app = _dashboard_app()
    runs_dir = str(Path(args.runs_dir).resolve())
    print(f"dashboard for {runs_dir} at http://{args.host}:{args.port}", flush=True)
    command = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", args.host, "--server.port", str(args.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--", "--runs-dir", runs_dir,
    ]
    env = {**os.environ, "INTERP_RUNS_DIR": runs_dir}
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


def _dashboard_app() -> Path:
    """The Streamlit app of the `dashboards` package, found without importing it (the
    core imports nothing built on it)."""
    spec = importlib.util.find_spec("dashboards")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    apps = [Path(folder) / "app.py" for folder in folders if (Path(folder) / "app.py").is_file()]
    if not apps:
        raise CommandError("the dashboards package (and its app.py) is not installed")
    return apps[0]


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "validate": cmd_validate,
    "list": cmd_list,
    "show": cmd_show,
    "kinds": cmd_kinds,
    "dashboard": cmd_dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `interp` console script; returns the exit code."""
    from interp.config import ConfigError
    from interp.models import ModelLoadError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:  # already one line naming the file and the key
        _error(str(error))
        return EXIT_USAGE
    except (CommandError, ModelLoadError) as error:  # e.g. no run of that name, offline
        _error(_one_line(error))
        return EXIT_FAILED


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return (text.splitlines() or [type(error).__name__])[0]


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
