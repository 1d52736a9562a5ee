"""Experiment configs: YAML files, `--set` overrides, validation before anything runs.

A config is a YAML mapping with a `kind:` key naming an experiment kind (see
`interp.experiments`). It is validated in full by that kind's pydantic model; the first
problem is reported as one line naming the file and the dotted key:

    experiments/grokking.yaml: task.pp: unknown key
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from interp.experiments import ExperimentConfig, ExperimentKind, load_kinds


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


def validation_message(source: str, error: ValidationError, raw: Any = None) -> str:
    """The first problem in a pydantic error, as `source: dotted.key: what is wrong`."""
    first = error.errors()[0]
    key = ".".join(_input_path(first["loc"], raw)) or "(top level)"
    if first["type"] == "extra_forbidden":
        what = "unknown key"
    elif first["type"] == "missing":
        what = "missing required key"
    else:
        what = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], dict | list):
            what += f" (got {first['input']!r})"
    return f"{source}: {key}: {what}"


def _input_path(loc: tuple[Any, ...], raw: Any) -> list[str]:
    """The parts of an error location that are keys of the input. Pydantic also puts the
    chosen member of a union into locations (e.g. `task.induction.half_len`); those parts
    are not in the input and are dropped."""
    path, node = [], raw
    for depth, part in enumerate(loc):
        if _has_key(node, part):
            node = node[part]
        elif depth < len(loc) - 1:
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
    kinds: dict[str, ExperimentKind] | None = None,
    config_dir: Path | None = None,
) -> tuple[ExperimentKind, ExperimentConfig]:
    """Validate a raw config mapping; returns its kind and the validated config.

    `config_dir` (the folder of the config file) lets kinds check files the config names.
    """
    kinds = load_kinds() if kinds is None else kinds
    kind_name = raw.get("kind")
    if kind_name is None:
        raise ConfigError(f"{source}: kind: missing required key (one of {sorted(kinds)})")
    if not isinstance(kind_name, str) or kind_name not in kinds:
        raise ConfigError(f"{source}: kind: unknown kind {kind_name!r} (one of {sorted(kinds)})")
    kind = kinds[kind_name]
    try:
        config = kind.config_model.model_validate(raw, context={"config_dir": config_dir})
    except ValidationError as error:
        raise ConfigError(validation_message(source, error, raw)) from None
    return kind, config


def load_config(
    path: str | Path,
    overrides: list[str] | None = None,
    kinds: dict[str, ExperimentKind] | None = None,
) -> tuple[ExperimentKind, ExperimentConfig]:
    """Read, override and validate a config file. The experiment name defaults to the
    file's stem."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides or [])
    raw.setdefault("name", path.stem)
    return validate_config(raw, str(path), kinds, config_dir=path.parent)


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """The resolved config as plain YAML-safe data (what `config.yaml` records)."""
    return config.model_dump(mode="json")
