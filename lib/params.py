"""Reading a stage's or selector's parameters: the validated value, else the constructor default."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from pydantic import AfterValidator, Field

# Parameter types whose range the config check enforces (pipeline/config.py validates a stage's
# constructor signature), so `min_score: 2` fails `curate plan` in one line, not a Ray actor.
Fraction = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
OpenFraction = Annotated[float, Field(gt=0, le=1)]  # (0, 1]: a similarity threshold that 0 would make meaningless
Cosine = Annotated[float, Field(ge=-1, le=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


def _budget(value: float | int) -> float | int:
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"a fractional budget lies in (0, 1] (a share of the pool; a row count is a whole number), got {value}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"a row budget is at least 1, got {value}")
    return value


# A selector's budget: a row count (an int ≥ 1) or a share of the pool (a float in (0, 1]).
Budget = Annotated[float | int, AfterValidator(_budget)]


def param(cls, params: dict, name: str) -> Any:
    """A parameter from a stage's (or selector's) validated parameters, else its constructor default."""
    if name in params:
        return params[name]
    default = inspect.signature(cls.__init__).parameters[name].default
    if default is inspect.Parameter.empty:
        raise KeyError(f"{cls.__name__}: parameter {name!r} has no value and no default")
    return default
