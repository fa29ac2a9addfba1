"""Config key → stage class. A config key is the same word as the class's `name`."""

from __future__ import annotations

import importlib

from curate.errors import CurateError

STAGES = {
    "filters": "curate.stages.filters:Filters",
}


def stage_class(key: str):
    if key not in STAGES:
        raise CurateError(f"unknown stage '{key}' (known: {', '.join(sorted(STAGES))})")
    module, _, cls = STAGES[key].partition(":")
    return getattr(importlib.import_module(module), cls)
