"""Where collected activations live: `ActivationSet`, in memory or as safetensors shards.

On disk a set is a folder of safetensors shards plus a JSON index, and tensors are read back
lazily, one hook at a time:

```
out_dir/index.json                          names, shapes, dtypes, examples, shard files
out_dir/gen-<id>/shard_00000.safetensors    examples [0, shard_size) of every hook
out_dir/gen-<id>/shard_00001.safetensors    ...
```

Each write is a new generation: its shards go to a private staging folder, which is renamed
to `gen-<id>`; then the index is replaced atomically (`interp.atomic_io`) to name them, and
only then is the earlier generation deleted. So at every moment the index names one complete
set of shards, and a crash leaves the old set or the new one, never a mix. Sets of version 1
(shards beside the index) still load. Nothing is ever unpickled.

Only folders this module made are ever deleted: `gen-<id>` and `.staging-<id>` with `<id>`
of the exact form it writes (16 hex digits, or the 8 characters of `tempfile.mkdtemp` that
earlier versions used) and holding nothing but `shard_NNNNN.safetensors` files; so a
user's `gen-results` folder, or one holding anything else, survives. A writer that opens a
folder (`overwrite=True`, or a folder holding no set yet) first deletes the staging folders
a killed earlier write left behind; two writers must not write to one folder at once.

`collect` feeds each batch of activations to a sink: `_MemoryCollector` (concatenated at
the end) or `_ShardWriter` (buffered on CPU, written a shard at a time).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from interp.activations.suggestions import _suggestion
from interp.atomic_io import atomic_write_text, fsync_dir

INDEX_FILE = "index.json"
SHARD_FILE = "shard_{:05d}.safetensors"
INDEX_FORMAT = "interp.activations"
INDEX_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1 kept the shards beside the index; version 2 keeps them in a `gen-*` folder."""
GENERATION_PREFIX = "gen-"
STAGING_PREFIX = ".staging-"
_FOLDER_ID = r"(?:[0-9a-f]{16}|[a-z0-9_]{8})"  # ours; the second: older `tempfile.mkdtemp` ids
_GENERATION_NAME = re.compile(re.escape(GENERATION_PREFIX) + _FOLDER_ID)
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + _FOLDER_ID)
_SHARD_NAME = re.compile(r"shard_\d{5,}\.safetensors")


class ActivationSet:
    """Activations of a few hooks over a dataset, examples on the first axis.

    In memory it holds one tensor per stored hook; on disk (see the module docstring) it
    holds only the index and reads a hook's shards when that hook is asked for. Names that
    are aliases of one `HookPoint` (e.g. `blocks.0.hook_resid_post` and `blocks.0.hook_out`)
    share one stored tensor.

    Attributes:
        names: The hook names, in the order they were requested.
        path: The folder the set lives in, or None when it is in memory.
    """

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        """An in-memory set from `{name: tensor}`, every tensor `[n_examples, ...]`.

        The same tensor object under two names is stored once (the names are aliases).
        """
        if not tensors:
            raise ValueError("an ActivationSet needs at least one tensor")
        sizes = {name: int(t.shape[0]) if t.dim() else -1 for name, t in tensors.items()}
        if len(set(sizes.values())) != 1 or -1 in sizes.values():
            raise ValueError(f"every tensor needs the same number of examples first, got {sizes}")
        first_name_of: dict[int, str] = {}
        self._storage_key = {
            name: first_name_of.setdefault(id(t), name) for name, t in tensors.items()
        }
        self._tensors: dict[str, Tensor] | None = {
            key: tensors[key] for key in set(self._storage_key.values())
        }
        self._shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        self._dtypes = {name: t.dtype for name, t in tensors.items()}
        self._n_examples = next(iter(sizes.values()))
        self._shards: list[tuple[str, int]] = []
        self.path: Path | None = None
        self.names: tuple[str, ...] = tuple(tensors)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ActivationSet:
        """Open a set saved by `collect(out_dir=...)` or `save`; tensors are read lazily."""
        folder = Path(directory)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            raise ValueError(f"{folder} holds no {INDEX_FILE}: not a complete activation set")
        index = json.loads(index_path.read_text())
        if index.get("format") != INDEX_FORMAT or index.get("version") not in READABLE_VERSIONS:
            raise ValueError(
                f"{index_path} is not an {INDEX_FORMAT} index of version {READABLE_VERSIONS}"
            )
        self = cls.__new__(cls)
        try:
            shards = [(str(entry["file"]), int(entry["n_examples"])) for entry in index["shards"]]
            self.names = tuple(index["names"])
            self._storage_key = {name: str(index["storage_keys"][name]) for name in self.names}
            self._shapes = {name: tuple(index["shapes"][name]) for name in self.names}
            self._dtypes = {name: _dtype_from_str(index["dtypes"][name]) for name in self.names}
            self._n_examples = int(index["n_examples"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{index_path} is malformed: {error!r}") from None
        outside = [file for file, _ in shards if not _is_inside(file)]
        missing = [file for file, _ in shards if not (folder / file).is_file()]
        if outside or missing:
            raise ValueError(f"{folder} lacks shard file(s) {outside + missing}")
        self._tensors = None
        self._shards = shards
        self.path = folder
        return self

    def __len__(self) -> int:
        """The number of examples."""
        return self._n_examples

    def __contains__(self, name: object) -> bool:
        return name in self._storage_key

    def __iter__(self) -> Iterator[str]:
        """The hook names (as `names`), so `for name in acts: acts[name]` works as on a dict."""
        return iter(self.names)

    def __repr__(self) -> str:
        where = "memory" if self.path is None else str(self.path)
        return f"ActivationSet({len(self)} examples, {len(self.names)} hooks, in {where})"

    def shape(self, name: str) -> tuple[int, ...]:
        """The full shape of `self[name]`, without reading it."""
        return self._shapes[self._check_name(name)]

    def dtype(self, name: str) -> torch.dtype:
        """The dtype of `self[name]`, without reading it."""
        return self._dtypes[self._check_name(name)]

    def __getitem__(self, name: str) -> Tensor:
        """The activations of one hook over every example, `[n_examples, ...]`.

        On disk this reads every shard of that hook each time it is called.
        """
        key = self._storage_key[self._check_name(name)]
        if self._tensors is not None:
            return self._tensors[key]
        out = torch.empty(self._shapes[name], dtype=self._dtypes[name])
        start = 0
        for part in self.iter_shards(name):
            out[start : start + part.shape[0]] = part
            start += part.shape[0]
        return out

    def iter_shards(self, name: str) -> Iterator[Tensor]:
        """One hook's activations shard by shard (in memory: one piece), in example order."""
        key = self._storage_key[self._check_name(name)]
        if self._tensors is not None:
            yield self._tensors[key]
            return
        assert self.path is not None
        for file, _ in self._shards:
            with safe_open(str(self.path / file), framework="pt") as handle:
                yield handle.get_tensor(key)

    def to_dict(self) -> dict[str, Tensor]:
        """Every hook as `{name: tensor}`; aliases map to the same tensor object."""
        loaded: dict[str, Tensor] = {}
        return {name: loaded.setdefault(self._storage_key[name], self[name]) for name in self.names}

    def save(
        self, directory: str | os.PathLike[str], *, shard_size: int = 4096, overwrite: bool = False
    ) -> ActivationSet:
        """Write the set to `directory` in the on-disk layout and return it opened from there."""
        folder = Path(directory)
        if self.path is not None and folder.resolve() == self.path.resolve():
            raise ValueError(f"the set already lives in {folder}")
        writer = _ShardWriter(folder, shard_size=shard_size, overwrite=overwrite)
        try:
            for chunk in self._chunks(shard_size):
                writer.add(chunk)
            return writer.finish(self.names, self._storage_key)
        except BaseException:
            writer.abort()  # an earlier set in `directory` stays as it was
            raise

    def _chunks(self, rows: int) -> Iterator[dict[str, Tensor]]:
        """Every stored tensor, a few examples at a time (in memory: `rows`; on disk: a shard)."""
        keys = sorted(set(self._storage_key.values()))
        if self._tensors is not None:
            for start in range(0, len(self), rows):
                yield {key: self._tensors[key][start : start + rows] for key in keys}
            return
        assert self.path is not None
        for file, _ in self._shards:
            with safe_open(str(self.path / file), framework="pt") as handle:
                yield {key: handle.get_tensor(key) for key in keys}

    def _check_name(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(
                f"an ActivationSet is indexed by hook name ({', '.join(self.names[:3])}...), "
                f"not by {type(name).__name__} {name!r}"
            )
        if name not in self._storage_key:
            raise KeyError(f"{name!r} is not in this set{_suggestion(name, self.names)}")
        return name


class _MemoryCollector:
    """Gathers per-batch activations in memory and concatenates them at the end."""

    def __init__(self) -> None:
        self._chunks: dict[str, list[Tensor]] = {}
        self.n_examples = 0

    def add(self, batch: Mapping[str, Tensor]) -> None:
        for key, tensor in batch.items():
            self._chunks.setdefault(key, []).append(tensor)
        self.n_examples += next(iter(batch.values())).shape[0]

    def finish(self, names: Sequence[str], storage: Mapping[str, str]) -> ActivationSet:
        joined: dict[str, Tensor] = {}
        for key in list(self._chunks):
            joined[key] = _cat_chunks(key, self._chunks.pop(key))
        return ActivationSet({name: joined[storage[name]] for name in names})


def _cat_chunks(key: str, chunks: list[Tensor]) -> Tensor:
    shapes = sorted({tuple(chunk.shape[1:]) for chunk in chunks})
    if len(shapes) > 1:
        raise ValueError(f"hook {key!r} changed shape between batches: {shapes}")
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


class _ShardWriter:
    """Buffers activations on CPU and writes them as safetensors shards into a private
    staging folder inside `folder`. `finish` renames that folder to a new generation
    (`gen-<id>`), atomically replaces the index to name its shards, and only then deletes
    the earlier set's shards; `abort` removes the staging folder. So a failure at any point
    leaves an index that names one complete set, the earlier one or the new one.

    On opening (with `overwrite=True`, or in a folder holding no set) it deletes stale
    staging folders that a killed earlier write left behind (only folders of this module's
    exact naming that hold nothing but shard files; see the module docstring)."""

    def __init__(self, folder: Path, *, shard_size: int, overwrite: bool) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        folder.mkdir(parents=True, exist_ok=True)
        if self._old_files(folder) and not overwrite:
            raise ValueError(f"{folder} already holds an activation set; pass overwrite=True")
        _remove_stale_staging(folder)
        self._target = folder
        self._folder: Path | None = _new_staging_folder(folder)
        self._shard_size = shard_size
        self._buffer: dict[str, list[Tensor]] = {}
        self._buffered = 0
        self._shards: list[tuple[str, int]] = []
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.n_examples = 0

    def add(self, batch: Mapping[str, Tensor]) -> None:
        for key, tensor in batch.items():
            self._buffer.setdefault(key, []).append(tensor.cpu())
        rows = next(iter(batch.values())).shape[0]
        self._buffered += rows
        self.n_examples += rows
        while self._buffered >= self._shard_size:
            self._write_shard(self._shard_size)

    def _write_shard(self, rows: int) -> None:
        """Write the first `rows` buffered examples as the next shard of the staging folder
        (private until `finish`, so written in place; fsynced before the index names it)."""
        assert self._folder is not None
        shard = {key: self._take(key, rows) for key in self._buffer}
        for key, tensor in shard.items():
            if key not in self._shapes:
                self._shapes[key], self._dtypes[key] = tuple(tensor.shape[1:]), tensor.dtype
        file = SHARD_FILE.format(len(self._shards))
        save_file(shard, str(self._folder / file))
        _fsync_file(self._folder / file)
        self._shards.append((file, rows))
        self._buffered -= rows

    def _take(self, key: str, rows: int) -> Tensor:
        """Remove the first `rows` examples of `key` from the buffer, as one new tensor."""
        chunks, taken, count = self._buffer[key], [], 0
        while count < rows:
            chunk = chunks.pop(0)
            if count + chunk.shape[0] > rows:
                chunks.insert(0, chunk[rows - count :])
                chunk = chunk[: rows - count]
            taken.append(chunk)
            count += chunk.shape[0]
        shapes = {tuple(chunk.shape[1:]) for chunk in taken} | {self._shapes.get(key)} - {None}
        if len(shapes) > 1:
            raise ValueError(f"hook {key!r} changed shape between batches: {sorted(shapes)}")
        return torch.cat(taken)  # always a fresh, contiguous tensor

    def finish(self, names: Sequence[str], storage: Mapping[str, str]) -> ActivationSet:
        """Make the staged shards the set in the target folder (see the class docstring)."""
        if self._buffered:
            self._write_shard(self._buffered)
        if self.n_examples == 0:
            raise ValueError("an activation set of 0 examples cannot be written to disk")
        assert self._folder is not None
        generation = self._target / (
            GENERATION_PREFIX + self._folder.name.removeprefix(STAGING_PREFIX)
        )
        fsync_dir(self._folder)
        os.replace(self._folder, generation)
        self._folder = generation  # until the index names it, `abort` removes it
        text = json.dumps(self._index(names, storage, generation.name), indent=1)
        atomic_write_text(self._target / INDEX_FILE, text)
        self._folder = None  # the set now: no longer ours to remove
        _remove_earlier_generations(self._target, keep=generation.name)
        return ActivationSet.load(self._target)

    def _index(
        self, names: Sequence[str], storage: Mapping[str, str], generation: str
    ) -> dict[str, Any]:
        """The index of the written set, its shards named relative to the target folder."""
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "n_examples": self.n_examples,
            "names": list(names),
            "storage_keys": {name: storage[name] for name in names},
            "shapes": {n: [self.n_examples, *self._shapes[storage[n]]] for n in names},
            "dtypes": {n: str(self._dtypes[storage[n]]).removeprefix("torch.") for n in names},
            "shards": [
                {"file": f"{generation}/{file}", "n_examples": rows} for file, rows in self._shards
            ],
        }

    def abort(self) -> None:
        """Remove the staging folder (or the generation no index names yet) and its files."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    @staticmethod
    def _old_files(folder: Path) -> list[Path]:
        """An earlier set's files and generation folders in `folder`, its index first."""
        return [path for path in [folder / INDEX_FILE, *_shard_paths(folder)] if path.exists()]


def _shard_paths(folder: Path) -> list[Path]:
    """Shards of any generation in `folder`: version 1 files beside the index, and
    version 2 generation folders this module made (`_our_folders`)."""
    files = sorted(
        path
        for path in folder.iterdir()
        if _SHARD_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink()
    )
    return [*files, *_our_folders(folder, _GENERATION_NAME)]


def _our_folders(folder: Path, name: re.Pattern[str]) -> list[Path]:
    """Folders in `folder` (not links) whose name is `name` exactly and that hold nothing
    but shard files: the only folders this module ever deletes."""
    return sorted(
        path
        for path in folder.iterdir()
        if name.fullmatch(path.name)
        and path.is_dir()
        and not path.is_symlink()
        and _holds_only_shards(path)
    )


def _holds_only_shards(folder: Path) -> bool:
    """Whether every entry of `folder` is a `shard_NNNNN.safetensors` file (or it is empty)."""
    return all(
        _SHARD_NAME.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink()
        for entry in folder.iterdir()
    )


def _new_staging_folder(folder: Path) -> Path:
    """A new, empty `.staging-<16 hex digits>` folder inside `folder`."""
    while True:
        path = folder / (STAGING_PREFIX + secrets.token_hex(8))
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return path


def _remove_stale_staging(folder: Path) -> None:
    """Delete the staging folders an earlier, killed write left in `folder`."""
    for path in _our_folders(folder, _STAGING_NAME):
        shutil.rmtree(path, ignore_errors=True)


def _remove_earlier_generations(folder: Path, keep: str) -> None:
    """Delete every version 1 shard file and every generation folder this module made in
    `folder` (see `_shard_paths`), but the `keep` folder."""
    for path in _shard_paths(folder):
        if path.name == keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _is_inside(file: str) -> bool:
    """Whether an index's shard entry names a file inside the set's folder: a relative
    path without `..` (e.g. `gen-ab12/shard_00000.safetensors`)."""
    path = PurePosixPath(file)
    return bool(path.parts) and not path.is_absolute() and "\\" not in file and all(
        part not in ("", ".", "..") for part in path.parts
    )


def _fsync_file(path: Path) -> None:
    """Flush a written file's bytes to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _dtype_from_str(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the activation index")
    return dtype
