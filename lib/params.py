"""Reading a stage's or selector's parameters: the validated value, else the constructor default."""

from __future__ import annotations

import inspect
from typing import Any


def param(cls, params: dict, name: str) -> Any:
    """A parameter from a stage's (or selector's) validated parameters, else its constructor default."""
    if name in params:
        return params[name]
    default = inspect.signature(cls.__init__).parameters[name].default
    if default is inspect.Parameter.empty:
        raise KeyError(f"{cls.__name__}: parameter {name!r} has no value and no default")
    return default
