"""Tests for interp.activations on disk: sharded activation sets written by
`collect(out_dir=...)` and `ActivationSet.save`, reloaded, overwritten and left whole by a
crash (the in-memory caching is in test_activations.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from activation_test_helpers import HOOKS, N_EXAMPLES, assert_no_hooks
from safetensors import safe_open

from interp import activations
from interp.activations import ActivationSet, collect


def test_aliases_share_one_tensor(model, tokens, tmp_path):
    acts = collect(model, tokens, ["blocks.0.hook_resid_post", "blocks.0.hook_out"], progress=False)
    assert acts["blocks.0.hook_resid_post"] is acts["blocks.0.hook_out"]
    saved = acts.save(tmp_path / "set")
    (first_shard,) = json.loads((tmp_path / "set" / "index.json").read_text())["shards"]
    with safe_open(str(tmp_path / "set" / first_shard["file"]), framework="pt") as f:
        assert list(f.keys()) == ["blocks.0.hook_resid_post"]
    torch.testing.assert_close(saved["blocks.0.hook_out"], acts["blocks.0.hook_out"])


def test_on_disk_shards_reload_identically(model, tokens, tmp_path, monkeypatch):
    renamed: list[str] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(activations.os, "replace", recording_replace)
    in_memory = collect(model, tokens, HOOKS, batch_size=3, progress=False)
    on_disk = collect(
        model, tokens, HOOKS, batch_size=3, out_dir=tmp_path, shard_size=4, progress=False
    )
    monkeypatch.undo()

    # the staging folder becomes a generation in one rename, then the index replaces the old
    (generation,) = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert generation.startswith("gen-") and renamed == [generation, "index.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([generation, "index.json"])
    shards = ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["n_examples"] == N_EXAMPLES
    assert [s["file"] for s in index["shards"]] == [f"{generation}/{name}" for name in shards]
    assert [s["n_examples"] for s in index["shards"]] == [4, 4, 2]

    reloaded = ActivationSet.load(tmp_path)
    assert on_disk.path == tmp_path and in_memory.path is None
    assert reloaded.names == in_memory.names == tuple(HOOKS)
    assert len(reloaded) == N_EXAMPLES
    for name in HOOKS:
        assert reloaded.shape(name) == tuple(in_memory[name].shape)
        assert torch.equal(reloaded[name], in_memory[name]), name
    sizes = [part.shape[0] for part in reloaded.iter_shards("hook_embed")]
    assert sizes == [4, 4, 2]


def test_crash_leaves_no_index(model, tokens, tmp_path):
    def failing_batches():
        yield tokens[:4]
        yield tokens[4:8]
        raise RuntimeError("data source failed")

    with pytest.raises(RuntimeError, match="data source failed"):
        collect(
            model,
            failing_batches(),
            ["hook_embed"],
            batch_size=2,
            out_dir=tmp_path,
            shard_size=2,
            progress=False,
        )
    assert not (tmp_path / "index.json").exists()
    with pytest.raises(ValueError, match="not a complete activation set"):
        ActivationSet.load(tmp_path)
    assert_no_hooks(model)


def test_existing_set_is_not_overwritten(model, tokens, tmp_path):
    collect(model, tokens, ["hook_embed"], out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="overwrite=True"):
        collect(model, tokens, ["hook_embed"], out_dir=tmp_path, progress=False)
    again = collect(
        model, tokens[:2], ["hook_embed"], out_dir=tmp_path, overwrite=True, progress=False
    )
    assert len(ActivationSet.load(tmp_path)) == len(again) == 2


def test_overwrite_replaces_the_old_generation(model, tokens, tmp_path):
    collect(model, tokens, ["hook_embed"], out_dir=tmp_path, progress=False)
    first = {p.name for p in tmp_path.iterdir()}
    collect(model, tokens[:3], ["hook_embed"], out_dir=tmp_path, overwrite=True, progress=False)
    second = {p.name for p in tmp_path.iterdir()}
    assert len(first) == len(second) == 2 and first & second == {"index.json"}
    assert len(ActivationSet.load(tmp_path)) == 3


def _killed_write(folder: Path) -> Path:
    """The staging folder a write killed mid-way leaves (neither finished nor aborted)."""
    from interp.activations import storage

    writer = storage._ShardWriter(folder, shard_size=2, overwrite=True)
    writer.add({"hook_embed": torch.zeros(3, 4)})  # one shard written, one buffered
    (staging,) = [p for p in folder.iterdir() if p.name.startswith(".staging-")]
    assert [p.name for p in staging.iterdir()] == ["shard_00000.safetensors"]
    return staging


@pytest.mark.parametrize("earlier_set", [True, False])
def test_stale_staging_is_removed_by_the_next_writer(model, tokens, tmp_path, earlier_set):
    """A killed `collect(out_dir=...)` leaves its staging folder; the next writer that may
    write there (overwrite=True, or no set there yet) removes it."""
    if earlier_set:
        collect(model, tokens, ["hook_embed"], out_dir=tmp_path, progress=False)
    stale = [_killed_write(tmp_path), _killed_write(tmp_path)]
    collect(
        model, tokens[:3], ["hook_embed"], out_dir=tmp_path, overwrite=earlier_set,
        progress=False,
    )
    assert not any(path.exists() for path in stale)
    (generation,) = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([generation, "index.json"])
    assert len(ActivationSet.load(tmp_path)) == 3


def test_only_folders_this_module_made_are_deleted(model, tokens, tmp_path):
    """A user's `gen-results` or `.staging-notes`, and a folder of our naming that holds
    anything but shards, survive an overwrite; an earlier version's `gen-<8 chars>` folder
    (named by `tempfile.mkdtemp`) does not."""
    keep = {
        "gen-results": "results.csv",
        ".staging-notes": "notes.txt",
        "gen-" + "a" * 16: "mine.txt",
        "gen-0nlyz6g6": "shard_00000.safetensors.bak",
    }
    for name, file in keep.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text("user data")
    collect(model, tokens, ["hook_embed"], out_dir=tmp_path, progress=False)  # no set before
    old_style = tmp_path / "gen-1x_z6g6k"
    old_style.mkdir()
    ActivationSet({"a": torch.zeros(2, 2)}).save(old_style.parent / "scratch")
    for shard in (tmp_path / "scratch").glob("gen-*/shard_*.safetensors"):
        shard.rename(old_style / shard.name)
    collect(model, tokens[:2], ["hook_embed"], out_dir=tmp_path, overwrite=True, progress=False)
    for name, file in keep.items():
        assert (tmp_path / name / file).read_text() == "user data", name
    assert not old_style.exists()
    ours = [p.name for p in tmp_path.iterdir() if p.name not in keep and p.name != "scratch"]
    assert len(ours) == 2 and "index.json" in ours
    assert len(ActivationSet.load(tmp_path)) == 2


def test_failed_index_write_keeps_the_earlier_set_whole(model, tokens, tmp_path, monkeypatch):
    from interp.activations import storage

    collect(model, tokens, ["hook_embed"], out_dir=tmp_path, progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())

    def failing_write(path, text):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "atomic_write_text", failing_write)
    with pytest.raises(OSError, match="disk full"):
        collect(
            model, tokens[:3], ["hook_embed"], out_dir=tmp_path, overwrite=True, progress=False
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no new generation left
    kept = ActivationSet.load(tmp_path)
    assert len(kept) == N_EXAMPLES and kept["hook_embed"].shape[0] == N_EXAMPLES


def test_version_1_sets_load_and_are_replaced_whole(tmp_path):
    original = ActivationSet({"a": torch.arange(12.0).reshape(6, 2)})
    original.save(tmp_path, shard_size=4)
    index = json.loads((tmp_path / "index.json").read_text())
    for shard in index["shards"]:  # the version 1 layout: shards beside the index
        (tmp_path / shard["file"]).rename(tmp_path / Path(shard["file"]).name)
        shard["file"] = Path(shard["file"]).name
    (tmp_path / "index.json").write_text(json.dumps({**index, "version": 1}))
    assert torch.equal(ActivationSet.load(tmp_path)["a"], original["a"])

    ActivationSet({"a": torch.zeros(2, 2)}).save(tmp_path, overwrite=True)
    (generation,) = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([generation, "index.json"])
    assert torch.equal(ActivationSet.load(tmp_path)["a"], torch.zeros(2, 2))


def test_index_naming_files_outside_its_folder_is_refused(tmp_path):
    ActivationSet({"a": torch.zeros(2, 2)}).save(tmp_path / "set")
    index_path = tmp_path / "set" / "index.json"
    index = json.loads(index_path.read_text())
    index["shards"][0]["file"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"lacks shard file\(s\) \['\.\./elsewhere"):
        ActivationSet.load(tmp_path / "set")


def test_empty_set_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="0 examples cannot be written"):
        ActivationSet({"a": torch.zeros(0, 2)}).save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_save_and_load_memory_set(tmp_path):
    original = ActivationSet({"a": torch.arange(12.0).reshape(6, 2), "b": torch.ones(6, 3, 2)})
    saved = original.save(tmp_path, shard_size=4)
    assert [part.shape[0] for part in saved.iter_shards("a")] == [4, 2]
    loaded = ActivationSet.load(tmp_path)
    assert loaded.names == ("a", "b")
    assert torch.equal(loaded["a"], original["a"]) and torch.equal(loaded["b"], original["b"])
