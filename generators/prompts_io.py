"""Prompt templates as text files in generators/prompts/."""

from __future__ import annotations

import functools
import os
import re

PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")


@functools.lru_cache(maxsize=None)
def template(name: str) -> str:
    with open(os.path.join(PROMPTS, name), encoding="utf-8") as f:
        return f.read()


def fill(name: str, **values: str) -> str:
    """Replace {key} slots; plain replacement, so braces in seed text are safe."""
    return _filled(template(name), values)


def _filled(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


_TURN = re.compile(r"^<<(user|assistant)>>\n", re.MULTILINE)


def turns(name: str, **values: str) -> list[dict]:
    """A dialogue template: the file's `<<user>>` / `<<assistant>>` lines start turns (worked
    examples as earlier turns: a base model follows a transcript where it ignores examples
    inside one turn). Slots are filled as `fill` fills them, after the split (a marker inside a
    value is text); each turn's text is stripped."""
    parts = _TURN.split(template(name))
    if parts[0].strip():
        raise ValueError(f"prompt {name}: text before the first <<user>> or <<assistant>> line")
    return [{"role": role, "content": _filled(text, values).strip()} for role, text in zip(parts[1::2], parts[2::2])]
