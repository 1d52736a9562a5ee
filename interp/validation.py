"""One-line errors for pydantic models built from plain data (task configs, model specs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import BaseModel, Field

ModelT = TypeVar("ModelT", bound=BaseModel)

Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]
"""A seed of a config: any int a 64-bit generator takes (`torch.manual_seed` overflows
past it, deep inside a run, with no word of which seed)."""

Beta = Annotated[float, Field(ge=0, lt=1)]
"""One of Adam's betas, in [0, 1) (what `torch.optim.AdamW` accepts)."""


def describe_validation_error(error: pydantic.ValidationError) -> str:
    """A pydantic error as one line: `field: message; field: message`."""
    parts = []
    for item in error.errors():
        where = ".".join(str(loc) for loc in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_config(config_class: type[ModelT], data: ModelT | Mapping[str, Any]) -> ModelT:
    """Validate `data` (any mapping, or another pydantic model's fields) as a
    `config_class`, raising a one-line ValueError when it is bad."""
    if isinstance(data, config_class):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, Mapping):
        raise ValueError(
            f"a {config_class.__name__} must be a mapping or a {config_class.__name__}, "
            f"got {type(data).__name__}"
        )
    try:
        return config_class.model_validate(dict(data))
    except pydantic.ValidationError as error:
        title = config_class.__name__
        raise ValueError(f"invalid {title}: {describe_validation_error(error)}") from None


def check_positive_int(name: str, value: object) -> None:
    """A one-line ValueError unless `value` is an int >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
