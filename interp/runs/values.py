"""Turning Python values into the plain data a run folder holds: config.yaml mappings,
metrics.jsonl values, and flat "a.b" keys for tables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = ["flatten_dict", "plain_config", "plain_metric"]


def flatten_dict(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": 2} -> {"a.b": 1, "c": 2}. Lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_dict(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def plain_config(value: Any, where: str) -> Any:
    """`value` as plain dicts, lists, strings and numbers that yaml.safe_dump can write."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "model_dump"):  # a pydantic model
        return plain_config(value.model_dump(mode="json"), where)
    if is_dataclass(value) and not isinstance(value, type):
        return plain_config(asdict(value), where)
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str | int | float | bool):
                raise ValueError(
                    f"config key {key!r} at {where!r} is a {type(key).__name__}; config.yaml "
                    "keys must be strings or numbers"
                )
        return {key: plain_config(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Enum):
        return plain_config(value.value, where)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy values, tensors
        return plain_config(value.tolist(), where)
    raise ValueError(
        f"config value at {where!r} has type {type(value).__name__}, which config.yaml cannot "
        "hold (use dicts, lists, strings, numbers, booleans or None)"
    )


def plain_metric(value: Any, key: str) -> Any:
    """A logged value as a JSON scalar or (nested) list; tensors and numpy via .tolist()."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain_metric(item, key) for item in value]
    raise ValueError(
        f"log(): value of {key!r} has type {type(value).__name__}; "
        "log numbers, strings, lists or tensors"
    )
