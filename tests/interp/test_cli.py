from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interp.cli import main
from interp.runs import RunStore

TINY_TRAIN = """
kind: train
seed: 0
device: cpu
model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, attn_only: true}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 64}
train: {steps: 6, batch_size: 16, eval_every: 3}
"""


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY_TRAIN))
    return path


def test_misspelt_key_exits_2_with_one_line_naming_it(config: Path, tmp_path: Path) -> None:
    config.write_text(config.read_text().replace("batch_size", "batch_sise"))
    result = subprocess.run(
        [sys.executable, "-m", "interp.cli", "run", str(config), "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {config}: train.batch_sise: unknown key"]
    assert not (tmp_path / "tiny").exists()  # nothing ran


def test_run_twice_gives_identical_summaries(config: Path, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    for _ in range(2):
        assert main(["run", str(config), "--runs-dir", str(runs), "--no-progress"]) == 0
    infos = RunStore(runs).runs(experiment="tiny")
    assert [info.status for info in infos] == ["done", "done"]
    first, second = (RunStore(runs).load(info.ref) for info in infos)
    assert first.summary == second.summary and first.summary["steps"] == 6
    assert (first.artifacts_dir / "model" / "model.safetensors").is_file()
    assert [row["step"] for row in first.metrics().to_dict("records")] == [3, 6]
    assert first.config["task"]["half_len"] == 4  # the resolved config, as run


def test_set_override_reaches_the_run(config: Path, tmp_path: Path) -> None:
    argv = ["run", str(config), "--runs-dir", str(tmp_path), "--no-progress"]
    assert main([*argv, "--set", "train.steps=3", "--set", "seed=5"]) == 0
    run = RunStore(tmp_path).latest("tiny")
    assert run.summary["steps"] == 3 and run.manifest["seed"] == 5


def test_list_show_and_kinds(config: Path, tmp_path: Path, capsys) -> None:
    assert main(["run", str(config), "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["list", "--runs-dir", str(tmp_path)]) == 0
    assert "tiny" in capsys.readouterr().out
    run = RunStore(tmp_path).latest("tiny")
    assert main(["show", run.ref, "--runs-dir", str(tmp_path)]) == 0
    assert "final_eval_loss" in capsys.readouterr().out
    assert main(["show", "nope/nothing", "--runs-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["kinds"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "suite" in out


def test_compare_prints_the_rows_where_runs_differ(config: Path, tmp_path: Path, capsys) -> None:
    argv = ["run", str(config), "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert main([*argv, "--set", "train.steps=3"]) == 0
    a, b = (info.ref for info in RunStore(tmp_path).runs("tiny"))
    capsys.readouterr()
    assert main(["compare", a, b, "--runs-dir", str(tmp_path)]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["config.train.steps"] == ["6", "3"] and rows["summary.steps"] == ["6", "3"]
    assert "config.model.d_model" not in rows and "kind" not in rows  # equal: left out
    expected = RunStore(tmp_path).compare([a, b], only_differences=True)
    assert sorted(rows) == sorted(expected.index)
    assert main(["compare", "tiny", "--all", "--runs-dir", str(tmp_path)]) == 0  # experiment
    out = capsys.readouterr().out
    assert "config.model.d_model" in out and a in out and b in out
    assert main(["compare", a, "nope/none", "--runs-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_list_show_and_compare_import_neither_torch_nor_transformer_lens(
    config: Path, tmp_path: Path
) -> None:
    """Browsing the run store takes half a second, not the five that importing torch and
    TransformerLens cost."""
    assert main(["run", str(config), "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    ref = RunStore(tmp_path).latest("tiny").ref
    script = textwrap.dedent(f"""
        import sys
        from interp.cli import main
        assert main(["list", "--runs-dir", {str(tmp_path)!r}]) == 0
        assert main(["show", {ref!r}, "--runs-dir", {str(tmp_path)!r}]) == 0
        assert main(["compare", {ref!r}, "--runs-dir", {str(tmp_path)!r}]) == 0
        heavy = sorted(m for m in ("torch", "transformer_lens") if m in sys.modules)
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


KIND_MODULES = {
    "train": "interp.training", "suite": "interp.suite", "grokking": "interp.grokking.experiment",
    "patching": "circuits.patching_experiment", "heads": "interp.heads.experiment",
    "circuit": "circuits.circuit_experiment", "probe": "probes.probe_experiment",
    "lens": "interp.lens_experiment",
}


def test_kind_modules_are_the_entry_points() -> None:
    from importlib.metadata import entry_points

    declared = {e.name: e.value.split(":")[0] for e in entry_points(group="interp.experiments")}
    assert declared == KIND_MODULES


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (Path(__file__).parents[2] / "experiments").glob("*.yaml"))
)
def test_validate_imports_one_kind_and_no_transformer_lens(name: str, tmp_path: Path) -> None:
    """`interp validate` of a shipped config imports its own kind's module (a suite: its
    members') and neither TransformerLens nor transformers (seconds to import): models are
    only described at validation, never made."""
    import yaml

    path = Path(__file__).parents[2] / "experiments" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    wanted = {raw["kind"]}
    if raw["kind"] == "suite":
        members = [m if isinstance(m, str) else m["config"] for m in raw["experiments"]]
        wanted |= {yaml.safe_load((path.parent / m).read_text())["kind"] for m in members}
    script = textwrap.dedent(f"""
        import sys
        from interp.cli import main
        assert main(["validate", {str(path)!r}, "--runs-dir", {str(tmp_path)!r}]) in (0, 2)
        heavy = sorted(m for m in ("transformer_lens", "transformers") if m in sys.modules)
        assert not heavy, heavy
        print(",".join(k for k, m in {KIND_MODULES!r}.items() if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), f"no output; stderr: {done.stderr[-2000:]}"  # seen once
    assert set(done.stdout.strip().splitlines()[-1].split(",")) == wanted


def test_failed_run_is_marked_failed_not_done(
    config: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import interp.training

    def failing_train(*args, **kwargs):
        raise RuntimeError("the optimiser diverged")

    monkeypatch.setattr(interp.training, "train", failing_train)  # fails inside the run
    argv = ["run", str(config), "--runs-dir", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "diverged" in err and "\n" not in err
    (info,) = RunStore(tmp_path).runs()
    assert info.status == "failed" and "diverged" in info.error
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["status"] == "failed" and not (info.path / "summary.json").exists()
    assert main(["list", "--runs-dir", str(tmp_path)]) == 0  # the listing says why
    listed = capsys.readouterr().out.splitlines()
    assert "error" in listed[0] and "failed" in listed[1] and "diverged" in listed[1], listed


def test_suite_runs_members_and_later_members_load_earlier_checkpoints(
    config: Path, tmp_path: Path
) -> None:
    (tmp_path / "again.yaml").write_text(
        textwrap.dedent(TINY_TRAIN).replace(
            "model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, attn_only: true}",
            "model: {run: tiny}",
        )
    )
    (tmp_path / "suite.yaml").write_text("kind: suite\nexperiments: [tiny.yaml, again.yaml]\n")
    runs = tmp_path / "runs"
    argv = ["run", str(tmp_path / "suite.yaml"), "--runs-dir", str(runs), "--no-progress"]
    assert main(argv) == 0
    store = RunStore(runs)
    suite, tiny, again = store.latest("suite"), store.latest("tiny"), store.latest("again")
    assert suite.summary["run_0"] == tiny.ref and suite.summary["run_1"] == again.ref
    # `again` continued from tiny's trained weights, so it starts where tiny ended.
    assert again.metrics()["train_full_loss"].iloc[0] < tiny.metrics()["train_full_loss"].iloc[0]


def test_corrupt_runs_and_self_including_suites_are_one_line(tmp_path: Path, capsys) -> None:
    store = RunStore(tmp_path / "runs")
    run = store.create("exp", "train", {"seed": 3})
    argv = ["show", f"exp/{run.run_id}", "--runs-dir", str(tmp_path / "runs")]
    (run.path / "summary.json").write_text("{not json")
    assert main(argv) == 0  # manifest and config are shown, the summary marked unreadable
    captured = capsys.readouterr()
    assert captured.err == "" and '"kind": "train"' in captured.out and '"seed": 3' in captured.out
    (line,) = [line for line in captured.out.splitlines() if line.startswith("summary:")]
    assert line.startswith("summary: unreadable (summary.json is unreadable: JSONDecodeError")
    (run.path / "manifest.json").write_text("{not json")
    assert main(argv) == 0  # the config can still be read
    assert "manifest: unreadable (manifest.json is unreadable" in capsys.readouterr().out
    (run.path / "config.yaml").write_text("[not, a, mapping]")
    assert main(argv) == 1  # nothing can be read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "is corrupt" in err[0], err
    suite = tmp_path / "self.yaml"
    suite.write_text("kind: suite\nname: selfref\nexperiments: [self.yaml]\n")
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a suite includes itself" in err[0]


def test_show_of_a_folder_that_is_no_run_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs" / "exp" / "stray").mkdir(parents=True)  # no manifest, config, summary
    for ref in ("exp/stray", "stray", str(tmp_path)):
        assert main(["show", ref, "--runs-dir", str(tmp_path / "runs")]) == 1, ref
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: run {ref} is corrupt: none of its files can be read"]
    store = RunStore(tmp_path / "runs")
    run = store.create("exp", "train", {"seed": 3})  # running: no summary yet, still shown
    assert main(["show", run.ref, "--runs-dir", str(store.root)]) == 0
    assert "summary: {}" in capsys.readouterr().out


@pytest.mark.parametrize("port", ["70000", "0", "-5", "http"])
def test_a_dashboard_port_out_of_range_is_a_usage_error(port: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:  # not streamlit's OverflowError traceback
        main(["dashboard", "--port", port])
    assert info.value.code == 2
    assert "argument --port: " in capsys.readouterr().err


def test_dashboard_finds_its_app_without_importing_dashboards(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import interp.cli

    calls: list[list[str]] = []
    monkeypatch.delitem(sys.modules, "dashboards", raising=False)
    monkeypatch.setattr(interp.cli.subprocess, "call", lambda command, env: calls.append(command))
    main(["dashboard", "--runs-dir", str(tmp_path)])
    (command,) = calls
    app = Path(command[command.index("run") + 1])
    assert app.name == "app.py" and app.parent.name == "dashboards" and app.is_file()
    assert "dashboards" not in sys.modules

    monkeypatch.setattr(interp.cli.importlib.util, "find_spec", lambda name: None)
    assert main(["dashboard", "--runs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the dashboards package (and its app.py) is not installed"]


def test_a_bug_inside_a_command_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    def broken_table(self, experiment=None, kind=None):
        raise ValueError("a bug in the listing")

    monkeypatch.setattr(RunStore, "table", broken_table)
    with pytest.raises(ValueError, match="a bug in the listing"):
        main(["list", "--runs-dir", str(tmp_path)])


def test_ambiguous_run_id_is_one_line(tmp_path: Path, capsys) -> None:
    store = RunStore(tmp_path)
    for experiment in ("a", "b"):
        store.create(experiment, "train", {}, run_id="same").finish()
    assert main(["show", "same", "--runs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ambiguous" in err[0]
