"""Files that are never half-written: atomic replace for whole files, flushed JSON lines.

`atomic_write_bytes` (or `atomic_write_with`, for a file a callback writes) writes to a
temporary file in the target's folder, fsyncs it and renames it over the target
(`os.replace`), so a reader (or a crash) sees the old file or the new one, never a mix.
`read_jsonl` reads an append-only JSON-lines file, skipping a last line that a crash cut
short.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half.

    The bytes go to a temporary file in the same folder, which is fsynced and then renamed
    over `path` (`os.replace`, atomic on POSIX and Windows). On any failure the temporary
    file is removed and the old `path`, if any, is left untouched. Missing parent folders
    are created.
    """
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """`atomic_write_bytes` for a file that `write(tmp_path)` writes itself (e.g.
    `safetensors.torch.save_file`, which streams tensors without a copy in memory)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp_name))
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write `obj` as indented JSON.

    Tensors and numpy values become numbers or lists, paths and datetimes strings. Raises
    ValueError (before touching the file) if something in `obj` has no JSON form.
    """
    atomic_write_text(path, dumps_json(obj, where=str(path), indent=2) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a missing file gives [].

    A last line cut short by a crash is skipped silently. An unreadable line in the middle
    (left by a crash before a later process appended) is skipped with a warning.
    """
    source = Path(path)
    if not source.exists():
        return []
    lines = source.read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif number < len(lines):
            warnings.warn(f"{source}: skipping unreadable line {number}", stacklevel=2)
    return rows


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entry list to disk so a rename survives a power cut (POSIX only)."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def json_default(obj: Any) -> Any:
    """JSON form of values `json` does not know: tensors, numpy, paths, datetimes, sets."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(f"values of type {type(obj).__name__} have no JSON form")


def dumps_json(obj: Any, where: str, indent: int | None = None) -> str:
    """`json.dumps` with `json_default`; a ValueError naming `where` if `obj` has no JSON form."""
    try:
        return json.dumps(obj, indent=indent, default=json_default)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot write {where} as JSON: {error}") from None
