"""Prompt templates as text files in generators/prompts/."""

from __future__ import annotations

import functools
import os

PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")


@functools.lru_cache(maxsize=None)
def template(name: str) -> str:
    with open(os.path.join(PROMPTS, name), encoding="utf-8") as f:
        return f.read()


def fill(name: str, **values: str) -> str:
    """Replace {key} slots; plain replacement, so braces in seed text are safe."""
    text = template(name)
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text
