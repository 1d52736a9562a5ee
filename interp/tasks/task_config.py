"""The base of every task's pydantic config, and one-line errors for bad configs.

`parse_config` and `describe_validation_error` live in `interp.validation` (model specs use
them too); they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from interp.validation import Seed, describe_validation_error, parse_config

__all__ = ["ConfigT", "TaskConfig", "describe_validation_error", "parse_config", "resolve_config"]

ConfigT = TypeVar("ConfigT", bound="TaskConfig")


class TaskConfig(BaseModel):
    """Fields shared by every task config. Subclasses add `name: Literal["<task>"]`.

    Configs are frozen and reject unknown fields, so a typo in a YAML file is an error.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: Seed = 0
    """Every random choice of the task comes from this seed."""


def resolve_config(
    config_class: type[ConfigT],
    config: ConfigT | Mapping[str, Any] | None,
    fields: dict[str, Any],
) -> ConfigT:
    """A task constructor's config: given whole (`config`) or as keyword `fields`, not both."""
    if config is not None and fields:
        raise ValueError(
            f"give a {config_class.__name__} or keyword fields, not both (got {sorted(fields)})"
        )
    return parse_config(config_class, fields if config is None else config)
