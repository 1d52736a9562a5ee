"""The `interp` command.

    interp run CONFIG.yaml [--set key=value ...] [--runs-dir DIR]
    interp resume RUN [--runs-dir DIR]
    interp validate CONFIG.yaml [--set key=value ...] [--runs-dir DIR]
    interp list [--runs-dir DIR] [--experiment NAME] [--kind KIND]
    interp show RUN [--runs-dir DIR]
    interp kinds
    interp dashboard [--runs-dir DIR] [--port PORT]

Exit codes: 0 success, 1 a run failed or a run was not found, 2 an invalid config or
command line. Errors are one line on stderr; a failed run's traceback is in its manifest.
`run` and `validate` check a config against the run store (`--runs-dir`, default
$INTERP_RUNS_DIR or ./runs): a `model: {run: X}` it names must be there (or be a member
that runs earlier in the same suite) and fit the task, before any run folder is made.
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
from typing import TYPE_CHECKING, Any

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
    add_runs_dir(validate)

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

    compare = commands.add_parser(
        "compare", help="configs and summaries of runs side by side (rows that differ)"
    )
    compare.add_argument(
        "runs", nargs="+", help="runs (experiment/run_id, a run_id, or a run folder), or one "
        "experiment name for all of its runs",
    )
    compare.add_argument("--all", action="store_true", help="also the rows equal in every run")
    add_runs_dir(compare)

    commands.add_parser("kinds", help="list the experiment kinds installed")

    dashboard = commands.add_parser("dashboard", help="open the Streamlit dashboard")
    add_runs_dir(dashboard)
    dashboard.add_argument("--port", type=_port, default=8501, help="port to serve on (8501)")
    dashboard.add_argument("--host", default="localhost", help="address to bind (localhost)")
    return parser


def _port(text: str) -> int:
    """A `--port` value: an int in 1..65535 (else argparse's one-line usage error)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1..65535)")
    return port


def cmd_run(args: argparse.Namespace) -> int:
    from interp.config import load_config
    from interp.runner import execute
    from interp.runs import RunStore

    store = RunStore(args.runs_dir)
    kind, config = load_config(args.config, args.overrides, store=store)
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
    from interp.model_refs import checkpoint_run, find_checkpoints
    from interp.runs import RunStore

    store = RunStore(args.runs_dir)
    kind, config = load_config(args.config, args.overrides, store=store)
    print(f"{args.config}: valid {kind.name} config")
    for path, ref in find_checkpoints(config):  # they resolve: validation checked
        print(f"{path}: {{run: {ref.run}}} is run {checkpoint_run(ref, store).ref} now")
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
    shown = table[columns].copy()
    if "error" in table and table["error"].notna().any():  # why a run failed or is unreadable
        shown["error"] = table["error"].map(_short_error)
    print(shown.to_string(index=False))
    return 0


def _short_error(error: Any, width: int = 60) -> str:
    """A run's error on one line, cut to `width` characters ("" for none)."""
    if not isinstance(error, str) or not error.strip():
        return ""
    line = error.strip().splitlines()[0]
    return line if len(line) <= width else line[: width - 3] + "..."


def cmd_show(args: argparse.Namespace) -> int:
    """Print a run's manifest, summary and config, each on its own: a part that cannot be
    read is marked unreadable (one line) and the others are still shown. Exit 1 only when
    no part could be read (or there is no such run); a summary that is not there yet (a
    run still running) counts as read only beside a readable manifest or config, so a
    folder that is no run at all is not shown as one."""
    from interp.runs import CorruptRun, RunStore
    from interp.runs.layout import SUMMARY_FILE
    from interp.runs.records import read_config, read_manifest, read_summary

    store = RunStore(args.runs_dir)
    try:
        folder = store.load(args.run).path
    except CorruptRun:  # manifest or config unreadable: show what can be read
        folder = _run_folder(store, args.run)
    except ValueError as error:
        raise CommandError(_one_line(error)) from error
    print(f"run {folder.parent.name}/{folder.name} at {folder}")
    parts = {"manifest": read_manifest, "summary": read_summary, "config": read_config}
    read: dict[str, Any] = {}
    for name, reader in parts.items():
        try:
            read[name] = reader(folder)
        except ValueError as error:  # CorruptRun is one
            print(f"{name}: unreadable ({_one_line(error)})")
            continue
        if name == "manifest":
            for line in _inputs_lines(read[name]):
                print(line)
        print(f"{name}:", json.dumps(read[name], indent=2, default=str))
    if not read.keys() - {"summary"} and not (folder / SUMMARY_FILE).is_file():
        read.clear()  # the summary read as {} only because there is none
    if not read:
        raise CommandError(f"run {args.run} is corrupt: none of its files can be read")
    return 0


def _inputs_lines(manifest: dict[str, Any]) -> list[str]:
    """One line per run this one read (the manifest's `inputs`): which run a `{run: X}`
    reference resolved to."""
    inputs = manifest.get("inputs")
    if not isinstance(inputs, dict):
        return []
    lines = []
    for path, used in inputs.items():
        if isinstance(used, dict):
            lines.append(
                f"input {path}: run {used.get('run')} (artifact {used.get('artifact')!r}; "
                f"the config names {{run: {used.get('requested')}}})"
            )
    return lines


def _run_folder(store: RunStore, ref: str) -> Path:
    """The folder of a run whose manifest or config is unreadable (so `RunStore.load`
    refuses it): `experiment/run_id`, a bare run id unique in the store, or a folder."""
    parts = ref.strip("/").split("/")
    candidates = []
    if len(parts) == 2:
        candidates = [store.root / parts[0] / parts[1]]
    elif len(parts) == 1 and store.root.is_dir():
        candidates = [d / ref for d in store.root.iterdir() if (d / ref).is_dir()]
    candidates = [c for c in candidates if c.is_dir()] or [Path(ref)]
    if len(candidates) != 1 or not candidates[0].is_dir():
        raise CommandError(f"no single run folder for {ref!r} in {store.root}")
    return candidates[0]


def _load_run(store: RunStore, ref: str) -> Run:
    """The run `ref` names; a `CommandError` when there is none, it is ambiguous, or its
    folder is corrupt (`RunStore.load` raises ValueErrors, `RunNotFound` and `CorruptRun`
    among them, only for these)."""
    try:
        return store.load(ref)
    except ValueError as error:
        raise CommandError(_one_line(error)) from error


def cmd_compare(args: argparse.Namespace) -> int:
    """`RunStore.compare` printed: one column per run, one row per manifest field, config
    key and summary key; by default only the rows where the runs differ."""
    from interp.runs import RunStore

    store = RunStore(args.runs_dir)
    refs = list(args.runs)
    if len(refs) == 1 and "/" not in refs[0] and (store.root / refs[0]).is_dir():
        refs = [info.ref for info in store.runs(refs[0]) if info.status != "corrupt"]
    try:
        frame = store.compare(refs, only_differences=not args.all)
    except ValueError as error:
        raise CommandError(_one_line(error)) from error
    if not len(frame):
        print(f"the {len(refs)} runs agree on every config and summary key (--all shows them)")
        return 0
    print(frame.map(_cell).to_string())
    return 0


def _cell(value: Any, width: int = 40) -> str:
    """A table cell on one line, cut to `width` characters."""
    text = "-" if value is None else json.dumps(value, default=str) if isinstance(
        value, list | dict) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_kinds(args: argparse.Namespace) -> int:
    from interp.experiments import load_kinds

    for name, kind in sorted(load_kinds().loadable().items()):
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
    "compare": cmd_compare,
    "kinds": cmd_kinds,
    "dashboard": cmd_dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `interp` console script; returns the exit code."""
    from interp.config import ConfigError
    from interp.model_errors import ModelLoadError  # (not interp.models: no torch here)

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:  # already one line naming the file and the key
        _error(str(error))
        return EXIT_USAGE
    except (CommandError, ModelLoadError) as error:  # e.g. no run of that name, offline
        _error(_one_line(error))
        return EXIT_FAILED
    except BrokenPipeError:  # the reader went away (`interp show ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return (text.splitlines() or [type(error).__name__])[0]


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
