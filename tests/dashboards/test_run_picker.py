"""The run picker shared by the result pages (`dashboards.run_picker`) and the Refresh
button's `dashboards.loaders.clear_caches`, on hand-made run stores."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from streamlit.runtime.caching.cache_utils import CachedFunc

from dashboards import loaders, run_picker
from dashboards.run_picker import no_runs_message, runs_of_kind, status_notice
from interp.runs import RunInfo, RunStore

DASHBOARDS = Path(loaders.__file__).resolve().parent


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    """Two `probe` runs (the second failed) in experiment "p"; corrupt folders: one in "p",
    one elsewhere whose config names kind `probe`, one of another kind; a `train` run."""
    store = RunStore(tmp_path / "runs")
    with store.create("p", "probe", {"kind": "probe"}, run_id="a-done"):
        pass
    with pytest.raises(RuntimeError), store.create("p", "probe", {}, run_id="b-failed"):
        raise RuntimeError("boom")
    with store.create("t", "train", {"kind": "train"}, run_id="t-done"):
        pass
    for experiment, run_id, kind in (("p", "c1", "probe"), ("q", "c2", "probe"),
                                     ("t", "c3", "train")):
        corrupt = store.create(experiment, kind, {"kind": kind}, run_id=run_id)
        (corrupt.path / "manifest.json").write_text("{ not json")
    (store.root / "p" / "c1" / "config.yaml").write_text("kind: [unclosed")
    return store


def test_runs_of_kind_lists_newest_first_and_the_corrupt_folders_of_that_kind(
    store: RunStore,
) -> None:
    runs_of_kind.clear()
    infos, corrupt, others = runs_of_kind(str(store.root), "probe")
    assert [i.ref for i in infos] == ["p/b-failed", "p/a-done"]
    assert sorted(i.ref for i in corrupt) == ["p/c1", "q/c2"]  # same experiment; config kind
    assert others == 1
    infos, corrupt, others = runs_of_kind(str(store.root), "train")
    assert [i.ref for i in infos] == ["t/t-done"] and [i.ref for i in corrupt] == ["t/c3"]
    assert others == 2


def test_refresh_clears_the_cached_listing(store: RunStore) -> None:
    runs_of_kind.clear()
    assert len(runs_of_kind(str(store.root), "probe")[0]) == 2
    with store.create("p", "probe", {}, run_id="d-new"):
        pass
    assert len(runs_of_kind(str(store.root), "probe")[0]) == 2  # still the cached listing
    loaders.clear_caches()
    assert [i.run_id for i in runs_of_kind(str(store.root), "probe")[0]][0] == "d-new"


def test_clear_caches_clears_every_cached_reader_of_every_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every `loaders_<kind>.py` is listed, and every `st.cache_data` function of every
    listed module (and of `loaders`) is cleared by `loaders.clear_caches()`."""
    names = {f"dashboards.{p.stem}" for p in DASHBOARDS.glob("loaders_*.py")}
    assert names | {"dashboards.run_picker"} == set(loaders.PAGE_LOADERS)
    cleared: list[str] = []
    expected = []
    for name in ("dashboards.loaders", *loaders.PAGE_LOADERS):
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if isinstance(value, CachedFunc) and value.__module__ == name:
                label = f"{name}.{attribute}"
                expected.append(label)
                monkeypatch.setattr(value, "clear", lambda label=label: cleared.append(label))
    assert len(expected) >= 10
    loaders.clear_caches()
    assert sorted(cleared) == sorted(expected)


def _info(tmp_path: Path, status: str, error: str | None = None) -> RunInfo:
    return RunInfo("g", "r", tmp_path, status, error=error)


@pytest.mark.parametrize(
    ("status", "error", "level", "text"),
    [("done", None, None, None), ("done", "summary.json is unreadable", "warning", "unreadable"),
     ("running", None, "info", "still running"), ("failed", "boom", "warning", "failed: boom"),
     ("corrupt", "boom", "warning", "is corrupt"), ("died", None, "warning", "died before"),
     ("resumable", None, "warning", "interp resume g/r")],
)
def test_status_notices(
    tmp_path: Path, status: str, error: str | None, level: str | None, text: str | None
) -> None:
    for shows_partial in (True, False):
        notice = status_notice(_info(tmp_path, status, error), shows_partial)
        if level is None:
            assert notice is None
            continue
        assert notice is not None and notice[0] == level and text in notice[1]
        said = "saved so far is shown" if shows_partial else "Nothing is drawn"
        assert (said in notice[1]) == (status not in ("done", "corrupt"))


@pytest.mark.parametrize(
    ("status", "partial_page", "finished_only_page"),
    [("done", True, True), ("running", True, False), ("failed", True, False),
     ("died", True, False), ("corrupt", False, False)],
)
def test_show_status_says_whether_to_draw(
    tmp_path: Path, status: str, partial_page: bool, finished_only_page: bool
) -> None:
    assert run_picker.show_status(_info(tmp_path, status), True) is partial_page
    assert run_picker.show_status(_info(tmp_path, status), False) is finished_only_page


def test_no_runs_message_names_how_to_make_one(tmp_path: Path) -> None:
    folder = tmp_path / "missing"
    missing = no_runs_message(folder, "heads")
    assert missing.startswith(f"No runs folder at `{folder}`.")
    for config in run_picker.example_configs("heads"):  # every config of the kind, named
        assert f"`{config}`" in missing
    assert f"interp run experiments/heads_induction.yaml --runs-dir {folder}" in missing
    told = no_runs_message(tmp_path, "grokking", how="`make demo`")
    assert "Make one with `make demo`." in told and "experiments/" not in told
    assert "No runs folder" not in told
    assert "configs that make one" not in no_runs_message(tmp_path, "no-such-kind")


def test_example_configs_read_the_kind_line(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("# kind: probe in a comment\nkind: 'probe'\n")
    (tmp_path / "b.yaml").write_text("name: x\nkind: train\n")
    (tmp_path / "c.yaml").write_text("model:\n  kind: probe\n")  # not top level
    assert run_picker.example_configs("probe", str(tmp_path)) == ["experiments/a.yaml"]
    assert run_picker.example_configs("probe", str(tmp_path / "none")) == []
