"""Tests of the run store: atomic files, metrics lines, statuses, listing, loading, artifacts."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pydantic import BaseModel

from interp import atomic_io
from interp.runs import (
    CorruptRun,
    Run,
    RunExists,
    RunNotFound,
    RunStore,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


def _config(n_layers: int = 2) -> dict:
    return {"model": {"n_layers": n_layers, "d_model": 64}, "lr": 1e-3, "tags": ["a", "b"]}


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------- atomic files


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_atomic_write_keeps_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "file.json"
    atomic_write_text(target, "old contents")

    def crash(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(atomic_io.os, failing, crash)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(target, b"new contents that never land")
    monkeypatch.undo()
    assert target.read_text() == "old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]


def test_atomic_write_json_refuses_unserialisable_before_touching_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"acc": np.float32(0.5), "w": torch.tensor([1, 2]), "p": Path("x")})
    assert json.loads(target.read_text()) == {"acc": 0.5, "w": [1, 2], "p": "x"}
    with pytest.raises(ValueError, match="summary.json"):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text())["acc"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_read_jsonl_skips_truncated_last_line_silently(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "lo')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"step": 0}, {"step": 1}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


# ---------------------------------------------------------------------------- metrics


def test_log_appends_one_line_per_call_with_tensors_converted(store: RunStore) -> None:
    run = store.create("exp", "train", _config())
    run.log(0, loss=torch.tensor(2.5), acc=np.float64(0.25), vec=torch.tensor([1.0, 2.0]))
    run.log(np.int64(1), loss=1.5, note="halfway")
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["step"] == 0 and first["loss"] == 2.5 and first["vec"] == [1.0, 2.0]
    assert isinstance(first["time"], float)
    frame = run.metrics()
    assert list(frame.columns[:2]) == ["step", "time"]
    assert frame["loss"].tolist() == [2.5, 1.5]
    assert frame["note"].iloc[1] == "halfway"


def test_log_rejects_bad_input(store: RunStore) -> None:
    run = store.create("exp", "train", {})
    with pytest.raises(ValueError, match="step"):
        run.log(1.5, loss=1.0)
    with pytest.raises(ValueError, match="reserved"):
        run.log(0, time=3.0)
    with pytest.raises(ValueError, match="'model'"):
        run.log(0, model=object())
    assert run.metrics().empty


def test_metrics_survive_a_crash_mid_line(store: RunStore) -> None:
    run = store.create("exp", "train", {})
    run.log(0, loss=3.0)
    run.log(1, loss=2.0)
    with open(run.path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 2, "loss": 1.')  # the process died here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load(run.ref).metrics()["step"].tolist() == [0, 1]
    resumed = store.load(run.ref)
    resumed.log(3, loss=0.5)  # starts on a fresh line: only the cut line is lost
    with pytest.warns(UserWarning, match="line 3"):
        frame = resumed.metrics()
    assert frame["step"].tolist() == [0, 1, 3]
    assert frame["loss"].tolist() == [3.0, 2.0, 0.5]


# ---------------------------------------------------------------------------- create / status


def test_create_writes_config_and_manifest(store: RunStore) -> None:
    class ModelConfig(BaseModel):
        n_layers: int = 2
        zeta: float = 0.1
        alpha: str = "x"

    run = store.create("grok", "train", {"z": 1, "model": ModelConfig(), "a": (1, 2)}, seed=7,
                       device="cpu")
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run.run_id)
    assert run.path == store.root / "grok" / run.run_id
    assert run.artifacts_dir.is_dir()
    text = (run.path / "config.yaml").read_text()
    assert text == yaml.safe_dump(
        {"z": 1, "model": {"n_layers": 2, "zeta": 0.1, "alpha": "x"}, "a": [1, 2]},
        sort_keys=False,
    )
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["kind"] == "train" and manifest["experiment"] == "grok"
    assert manifest["status"] == "running" and manifest["seed"] == 7
    assert manifest["device"] == "cpu" and manifest["pid"] == os.getpid()
    assert manifest["hostname"] == socket.gethostname()
    assert manifest["packages"]["torch"] == importlib.metadata.version("torch")
    assert manifest["python"] == ".".join(map(str, sys.version_info[:3]))
    assert manifest["argv"] == sys.argv and "git_commit" in manifest
    assert run.status == "running"
    assert [p.name for p in run.path.parent.iterdir()] == [run.run_id]  # no staging folder


def _git(folder: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    result = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                            check=True, env=env)
    return result.stdout.strip()


def test_provenance_records_the_code_commit_from_any_folder_and_a_dirty_tree(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from interp import provenance

    try:
        repo = tmp_path / "repo"
        repo.mkdir()
        _git(repo, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", "code.py")
    _git(repo, "commit", "-q", "-m", "first")
    commit = _git(repo, "rev-parse", "HEAD")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not a checkout: the folder asked about decides
    clean = provenance.git_state(repo)
    assert clean == {"git_commit": commit, "git_dirty": False, "git_diff_hash": None}
    (repo / "code.py").write_text("x = 2\n")
    dirty = provenance.git_state(repo)
    assert dirty["git_commit"] == commit and dirty["git_dirty"] is True
    assert re.fullmatch(r"[0-9a-f]{12}", dirty["git_diff_hash"])
    (repo / "code.py").write_text("x = 3\n")
    assert provenance.git_state(repo)["git_diff_hash"] != dirty["git_diff_hash"]
    (repo / "untracked").mkdir()
    assert provenance.git_commit(repo / "untracked") is None  # git tracks nothing there
    assert provenance.git_state(elsewhere)["git_commit"] is None

    # A run started outside any checkout records the commit of the package's own folder.
    manifest = store.create("exp", "train", {}).manifest
    assert {"git_commit", "git_dirty", "git_diff_hash"} <= set(manifest)
    assert manifest["git_commit"] == provenance.git_commit(provenance.PACKAGE_DIR)
    package_checkout = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=provenance.PACKAGE_DIR,
        capture_output=True, check=False,
    ).returncode == 0
    if package_checkout:
        assert manifest["git_commit"] == _git(provenance.PACKAGE_DIR, "rev-parse", "HEAD")
        assert isinstance(manifest["git_dirty"], bool)


def test_create_rejects_existing_run_and_bad_names(store: RunStore) -> None:
    store.create("exp", "train", {}, run_id="r1")
    with pytest.raises(RunExists, match="exp/r1"):
        store.create("exp", "train", {}, run_id="r1")
    for bad in ["", "a b", "../up", ".hidden", "x/y"]:
        with pytest.raises(ValueError, match="experiment name"):
            store.create(bad, "train", {})
    with pytest.raises(ValueError, match="config.bad"):
        store.create("exp", "train", {"bad": object()})
    with pytest.raises(ValueError, match=r"config key \(1, 2\) at 'config' is a tuple"):
        store.create("exp", "train", {(1, 2): 3})  # YAML could write it, safe_load not read it
    with pytest.raises(ValueError, match="compare takes a list of run refs"):
        store.compare("exp/r1")
    assert sorted(p.name for p in (store.root / "exp").iterdir()) == ["r1"]


def test_context_manager_marks_done(store: RunStore) -> None:
    with store.create("exp", "train", _config(), seed=0) as run:
        run.write_summary({"acc": 1.0})
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["status"] == "done" and run.status == "done"
    assert manifest["ended"] is not None and manifest["duration_s"] >= 0
    assert manifest["error"] is None


def test_context_manager_marks_failed_with_message_and_reraises(store: RunStore) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.create("exp", "train", {}) as run:
        raise RuntimeError("boom\nsecond line of detail")
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["error"] == "RuntimeError: boom"
    assert "Traceback" in manifest["traceback"] and "second line of detail" in manifest["traceback"]
    (info,) = store.runs()
    assert info.status == "failed" and info.error == "RuntimeError: boom"


def test_keyboard_interrupt_marks_failed_interrupted(store: RunStore) -> None:
    with pytest.raises(KeyboardInterrupt), store.create("exp", "train", {}) as run:
        raise KeyboardInterrupt
    assert run.manifest["status"] == "failed" and run.manifest["error"] == "interrupted"
    assert json.loads((run.path / "manifest.json").read_text())["error"] == "interrupted"


def test_killed_run_is_listed_as_died_without_rewriting_files(store: RunStore) -> None:
    run = store.create("exp", "train", {}, run_id="killed")
    run.update_manifest(pid=_dead_pid(), process_start_ticks=None)
    before = (run.path / "manifest.json").read_bytes()
    alive = store.create("exp", "train", {}, run_id="alive")
    elsewhere = store.create("exp", "train", {}, run_id="elsewhere")
    elsewhere.update_manifest(pid=_dead_pid(), hostname="another-host")

    statuses = {info.run_id: info.status for info in store.runs()}
    assert statuses == {"killed": "died", "alive": "running", "elsewhere": "running"}
    assert store.load("exp/killed").status == "died"
    assert alive.status == "running"
    assert (run.path / "manifest.json").read_bytes() == before

    run.update_manifest(resumable=True)
    assert store.load("exp/killed").status == "resumable"
    assert json.loads((run.path / "manifest.json").read_text())["status"] == "running"


def test_reused_pid_is_not_taken_for_the_run(store: RunStore) -> None:
    run = store.create("exp", "train", {})
    if run.manifest["process_start_ticks"] is None:
        pytest.skip("no /proc here")
    run.update_manifest(process_start_ticks=run.manifest["process_start_ticks"] + 1)
    assert run.status == "died"


# ---------------------------------------------------------------------------- listing


def test_corrupt_folders_are_listed_and_do_not_hide_the_others(store: RunStore) -> None:
    with store.create("exp", "train", _config(), run_id="good") as good:
        good.write_summary({"acc": 0.75})
    bad_manifest = store.create("exp", "train", {}, run_id="bad-manifest")
    (bad_manifest.path / "manifest.json").write_text('{"kind": "tr')
    no_config = store.create("exp", "train", {}, run_id="no-config")
    (no_config.path / "config.yaml").unlink()
    (store.root / "exp" / "empty-folder").mkdir()
    (store.root / "stray-file.txt").write_text("not a run")

    infos = {info.run_id: info for info in store.runs()}
    assert set(infos) == {"good", "bad-manifest", "no-config", "empty-folder"}
    assert infos["good"].status == "done" and infos["good"].summary == {"acc": 0.75}
    assert infos["bad-manifest"].status == "corrupt"
    assert "manifest.json" in infos["bad-manifest"].error
    assert infos["no-config"].status == "corrupt" and "config.yaml" in infos["no-config"].error
    assert "manifest.json is missing" in infos["empty-folder"].error

    table = store.table()
    assert len(table) == 4
    assert table.set_index("run_id").loc["bad-manifest", "status"] == "corrupt"
    with pytest.raises(CorruptRun, match="manifest.json"):
        store.load("exp/bad-manifest")


def test_table_has_one_row_per_run_with_flat_summary(store: RunStore) -> None:
    assert store.table().empty and list(store.table().columns[:4]) == [
        "experiment", "run_id", "kind", "status"
    ]
    with store.create("a", "train", {}, seed=3, run_id="r1") as run:
        run.write_summary({"acc": 0.5, "loss": {"train": 0.1, "test": 0.2}, "curve": [1, 2]})
    with store.create("b", "probe", {}, run_id="r2") as run:
        run.write_summary({"acc": 0.9, "status": "shadowed"})
    table = store.table()
    assert table["run_id"].tolist() == ["r1", "r2"]
    assert table["kind"].tolist() == ["train", "probe"]
    assert table["acc"].tolist() == [0.5, 0.9]
    assert table.loc[0, "loss.test"] == 0.2 and "curve" not in table.columns
    assert table.loc[1, "summary.status"] == "shadowed" and table.loc[1, "status"] == "done"
    assert table.loc[0, "seed"] == 3
    assert str(table["started"].dtype).startswith("datetime64")
    assert store.table(kind="probe")["run_id"].tolist() == ["r2"]
    assert [i.run_id for i in store.runs(experiment="a")] == ["r1"]


def test_latest_is_newest_done_run(store: RunStore) -> None:
    assert store.latest("exp") is None
    with store.create("exp", "train", {}, run_id="first"):
        pass
    with store.create("exp", "train", {}, run_id="second"):
        pass
    with pytest.raises(ValueError), store.create("exp", "train", {}, run_id="third"):
        raise ValueError("failed run")
    store.create("exp", "train", {}, run_id="fourth")  # still running
    latest = store.latest("exp")
    assert isinstance(latest, Run) and latest.run_id == "second"


# ---------------------------------------------------------------------------- loading


def test_load_by_every_ref_form(store: RunStore, tmp_path: Path, monkeypatch) -> None:
    run = store.create("exp", "train", _config(), run_id="r1")
    store.create("other", "train", {}, run_id="shared-id")
    store.create("exp", "train", {}, run_id="shared-id")
    for ref in ["exp/r1", "r1", run.path, str(run.path), str(run.path) + "/"]:
        loaded = store.load(ref)
        assert (loaded.experiment, loaded.run_id) == ("exp", "r1")
        assert loaded.config == _config() and loaded.manifest["kind"] == "train"
    monkeypatch.chdir(tmp_path)
    assert store.load("runs/exp/r1").run_id == "r1"  # a relative path

    for unknown in ["exp/nope", "nope", "nope/r1", str(tmp_path / "missing"), "a/b/c"]:
        with pytest.raises(RunNotFound) as caught:
            store.load(unknown)
        message = str(caught.value)
        assert unknown in message and "\n" not in message
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, LookupError)
    with pytest.raises(ValueError, match="ambiguous"):
        store.load("shared-id")


# ---------------------------------------------------------------------------- artifacts


def test_tensors_round_trip(store: RunStore) -> None:
    run = store.create("exp", "train", {})
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "transposed": base.T,  # not contiguous
        "row": base[1],  # shares memory with the others
        "half": torch.ones(2, dtype=torch.bfloat16),
        "ints": torch.tensor([1, 2, 3]),
        "empty": torch.zeros(0),
        "grad": torch.ones(2, requires_grad=True),
    }
    path = run.save_tensors("weights", tensors)
    assert path == run.artifacts_dir / "weights.safetensors"
    loaded = store.load(run.ref).load_tensors("weights")
    assert set(loaded) == set(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor.detach())
    with pytest.raises(ValueError, match="not a torch.Tensor"):
        run.save_tensors("bad", {"x": np.zeros(2)})
    with pytest.raises(FileNotFoundError, match="missing"):
        run.load_tensors("missing")


def test_tables_and_json_round_trip(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    run = store.create("exp", "probe", {})
    table = pd.DataFrame({"layer": [0, 1, 2], "acc": [0.5, 0.75, 1.0], "name": ["a", "b", "c"]})
    assert run.save_table("scores", table).suffix == ".parquet"
    pd.testing.assert_frame_equal(run.load_table("scores"), table)

    def no_parquet(*args: object, **kwargs: object) -> None:
        raise ImportError("no parquet engine")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_parquet)
    assert run.save_table("scores", table).suffix == ".csv"
    assert not (run.artifacts_dir / "scores.parquet").exists()
    pd.testing.assert_frame_equal(run.load_table("scores"), table)

    obj = {"heads": [[0, 1], [1, 3]], "labels": {"0.1": "induction"}, "score": 0.5}
    run.save_json("roles", obj)
    assert run.load_json("roles") == obj
    assert run.artifact_path("ckpt/step_10.safetensors").parent.is_dir()
    for bad in ["../escape", "/abs", "a//b", ""]:
        with pytest.raises(ValueError, match="artifact names"):
            run.artifact_path(bad)


def test_compare_puts_runs_side_by_side(store: RunStore) -> None:
    with store.create("exp", "train", _config(n_layers=1), seed=0, run_id="one") as run:
        run.write_summary({"acc": 0.5})
    with store.create("exp", "train", _config(n_layers=2), seed=0, run_id="two") as run:
        run.write_summary({"acc": 0.9, "extra": 1})
    frame = store.compare(["exp/one", "two"])
    assert list(frame.columns) == ["exp/one", "exp/two"]
    assert frame.loc["config.model.n_layers"].tolist() == [1, 2]
    assert all(type(v) is int for v in frame.loc["config.model.n_layers"])
    assert frame.loc["config.tags"].tolist() == [["a", "b"], ["a", "b"]]
    assert list(frame.index) == [
        "kind", "status", "seed", "config.model.n_layers", "config.model.d_model", "config.lr",
        "config.tags", "summary.acc", "summary.extra",
    ]
    assert frame.loc["config.lr"].tolist() == [1e-3, 1e-3]
    assert frame.loc["summary.acc"].tolist() == [0.5, 0.9]
    assert frame.loc["summary.extra"].tolist() == [None, 1]
    assert frame.loc["status"].tolist() == ["done", "done"]
    diff = store.compare(["exp/one", "exp/two"], only_differences=True)
    assert set(diff.index) == {"config.model.n_layers", "summary.acc", "summary.extra"}
    with pytest.raises(RunNotFound):
        store.compare(["exp/one", "exp/missing"])
