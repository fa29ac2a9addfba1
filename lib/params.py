"""Reading a stage's or selector's parameters: the validated value, else the constructor default."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from pydantic import Field

# Parameter types whose range the config check enforces (pipeline/config.py validates a stage's
# constructor signature), so `min_score: 2` fails `curate plan` in one line, not a Ray actor.
Fraction = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]


def param(cls, params: dict, name: str) -> Any:
    """A parameter from a stage's (or selector's) validated parameters, else its constructor default."""
    if name in params:
        return params[name]
    default = inspect.signature(cls.__init__).parameters[name].default
    if default is inspect.Parameter.empty:
        raise KeyError(f"{cls.__name__}: parameter {name!r} has no value and no default")
    return default
