"""Experiment configs: YAML files, `--set` overrides, validation before anything runs.

A config is a YAML mapping with a `kind:` key naming an experiment kind (see
`interp.experiments`). It is validated in full by that kind's pydantic model; the first
problem is reported as one line naming the file and the dotted key:

    experiments/grokking.yaml: task.pp: unknown key
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from interp.experiments import (
    PENDING_KEY,
    STORE_KEY,
    ExperimentConfig,
    ExperimentKind,
    KindLoadError,
    load_kinds,
)
from interp.runs import RunStore


class ConfigError(ValueError):
    """A config is invalid; the message is one line naming the file and the key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"task.p=61"` -> (["task", "p"], 61). The value is read as YAML (numbers, lists...)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set task.p=61")
    parts = key.split(".")
    if any(not part for part in parts):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({error.problem})") from error
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 as a string; users mean a number
    return parts, value


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `raw` with each `KEY=VALUE` override set (nested keys by dots)."""
    result = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {text!r}: {where} is not a mapping")
            node = child
        node[parts[-1]] = value
    return result


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML file, or a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    return data


def validation_message(
    source: str, error: ValidationError, raw: Any = None, overrides: Sequence[str] = ()
) -> str:
    """The first problem in a pydantic error, as `source: dotted.key: what is wrong`, with
    `(from --set KEY=VALUE)` when one of `overrides` set that key or a key within it.

    An unknown key is reported before the other problems (a misspelt key is also a
    missing one, and the misspelling is the news), then a wrong value before a missing
    key (a wrong `task.p` leaves the sizes it fills in missing). A check of the whole
    config (a model that does not fit its task) names its keys in its own message."""
    errors = error.errors()
    rank = {"extra_forbidden": 0, "missing": 2}
    first = min(errors, key=lambda e: rank.get(e["type"], 1))
    key = ".".join(_input_path(first["loc"], raw, keep_last=first["type"] == "missing"))
    return f"{_problem(source, first, key)}{_override_note(key, overrides)}"


def _override_note(key: str, overrides: Sequence[str]) -> str:
    """` (from --set ...)` for the last override that set `key`, a key within it, or the
    mapping or list holding it (`--set train.betas=[0.9]` for `train.betas.1`)."""
    if not key:
        return ""
    for text in reversed(overrides):
        name = text.partition("=")[0].strip()
        if name == key or name.startswith(f"{key}.") or key.startswith(f"{name}."):
            return f" (from --set {text})"
    return ""


def _problem(source: str, first: Any, key: str) -> str:
    """`source: key: what is wrong` for one pydantic error."""
    if not key and first["type"] == "value_error":
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    key = key or "(top level)"
    if first["type"] == "extra_forbidden":
        what = "unknown key"
    elif first["type"] == "missing":
        what = "missing required key"
    else:
        what = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], dict | list):
            what += f" (got {first['input']!r})"
    return f"{source}: {key}: {what}"


def _input_path(loc: tuple[Any, ...], raw: Any, keep_last: bool = True) -> list[str]:
    """The parts of an error location that are keys of the input. Pydantic also puts the
    chosen member of a union into locations (e.g. `task.induction.half_len`, or
    `model.checkpoint` for a check of the whole reference); those parts are not in the
    input and are dropped, except a last one with `keep_last` (a missing key)."""
    path, node = [], raw
    for depth, part in enumerate(loc):
        if _has_key(node, part):
            node = node[part]
        elif depth < len(loc) - 1 or not keep_last:
            continue
        path.append(str(part))
    return path


def _has_key(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def validate_config(
    raw: dict[str, Any],
    source: str,
    kinds: Mapping[str, ExperimentKind] | None = None,
    config_dir: Path | None = None,
    store: RunStore | str | os.PathLike[str] | None = None,
    pending: dict[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> tuple[ExperimentKind, ExperimentConfig]:
    """Validate a raw config mapping; returns its kind and the validated config.
    `overrides`: the `--set` texts applied to `raw`, named in an error about their keys.

    `config_dir` (the folder of the config file) lets kinds check files the config names.
    With a run `store`, every `{run: X}` reference must resolve in it (or name a member
    that runs earlier in the same suite: `pending`, filled in by the suite kind), and the
    referenced checkpoint's sizes must fit the task; without one these wait for the run.
    """
    kinds = load_kinds() if kinds is None else kinds
    kind_name = raw.get("kind")
    if kind_name is None:
        raise ConfigError(f"{source}: kind: missing required key (one of {sorted(kinds)})")
    if not isinstance(kind_name, str) or kind_name not in kinds:
        raise ConfigError(f"{source}: kind: unknown kind {kind_name!r} (one of {sorted(kinds)})")
    try:
        kind = kinds[kind_name]
    except KindLoadError as error:
        raise ConfigError(f"{source}: kind: {error}") from None
    if store is not None and not isinstance(store, RunStore):
        store = RunStore(store)
    context = {"config_dir": config_dir, STORE_KEY: store, PENDING_KEY: pending}
    try:
        config = kind.config_model.model_validate(raw, context=context)
    except ValidationError as error:
        raise ConfigError(validation_message(source, error, raw, overrides)) from None
    return kind, config


def load_config(
    path: str | Path,
    overrides: list[str] | None = None,
    kinds: Mapping[str, ExperimentKind] | None = None,
    store: RunStore | str | os.PathLike[str] | None = None,
    pending: dict[str, Any] | None = None,
) -> tuple[ExperimentKind, ExperimentConfig]:
    """Read, override and validate a config file. The experiment name defaults to the
    file's stem. `store` and `pending`: see `validate_config`."""
    path = Path(path)
    kinds = load_kinds() if kinds is None else kinds
    raw = read_yaml(path)
    _check_suite_overrides(raw, overrides or [], str(path), kinds)
    raw = apply_overrides(raw, overrides or [])
    raw.setdefault("name", path.stem)
    return validate_config(
        raw, str(path), kinds, config_dir=path.parent, store=store, pending=pending,
        overrides=overrides or [],
    )


def _check_suite_overrides(
    raw: dict[str, Any], overrides: list[str], source: str, kinds: Mapping[str, ExperimentKind]
) -> None:
    """A suite's own keys are few; `--set train.steps=5` on a suite means its members, whose
    overrides go in each member's `set:` list. Say so rather than `train: unknown key`."""
    if raw.get("kind") != "suite" or "suite" not in kinds:
        return
    suite = kinds["suite"]
    for text in overrides:
        parts, _ = parse_override(text)
        if parts[0] not in suite.config_model.model_fields:
            raise ConfigError(
                f"{source}: --set {text!r}: a suite has no key {parts[0]!r}; overrides of a "
                "suite's members go in each member's `set:` list "
                "(experiments: [{config: FILE, set: [KEY=VALUE]}])"
            )


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """The resolved config as plain YAML-safe data (what `config.yaml` records)."""
    return config.model_dump(mode="json")
