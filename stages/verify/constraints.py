"""Verifiable instruction constraints (IFEval-style): a library of types, each with a sampler, the
sentence added to the instruction, and a checker; a generator step that adds sampled
constraints to instructions; a verifier that keeps responses satisfying all of them.

A constraint is recorded in meta as {"id": <type>, "kwargs": {...}}; the checker is a pure
function of the response and those kwargs, so the verdict never depends on a model.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Callable

RELATIONS = ("at least", "less than")
KEYWORD_POOL = ("innovation", "balance", "community", "journey", "resilience", "strategy", "network", "harvest",
                "signal", "horizon", "pattern", "budget", "garden", "engine", "history", "method", "river", "market")
END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "That is all for now.", "Hope this helps.")


def _compare(value: int, relation: str, n: int) -> bool:
    return value >= n if relation == "at least" else value < n


def words(text: str) -> list[str]:
    return re.findall(r"\b[\w'-]+\b", text)


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[*])|\n\s*\n", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def _strip_fence(text: str) -> str:
    s = text.strip()
    m = re.fullmatch(r"```(?:json|JSON)?\s*\n?(.*?)\n?```", s, re.S)
    return m.group(1).strip() if m else s


def _bullets(text: str) -> int:
    return len(re.findall(r"^\s*[*-]\s+\S", text, re.M))


def _sections(text: str, splitter: str) -> int:
    return len(re.findall(rf"^\s*{re.escape(splitter)}\s+\d+", text, re.M | re.I))


@dataclass(frozen=True)
class ConstraintType:
    id: str
    sample: Callable[[random.Random], dict]
    describe: Callable[..., str]
    check: Callable[..., bool]
    conflicts: tuple[str, ...] = ()


def _types() -> dict[str, ConstraintType]:
    t = [
        ConstraintType(
            "length_words",
            lambda r: {"relation": r.choice(RELATIONS), "num_words": r.choice((50, 100, 150, 200, 300))},
            lambda relation, num_words: f"Answer with {relation} {num_words} words.",
            lambda text, relation, num_words: _compare(len(words(text)), relation, num_words)),
        ConstraintType(
            "length_sentences",
            lambda r: {"relation": r.choice(RELATIONS), "num_sentences": r.randint(2, 10)},
            lambda relation, num_sentences: f"Your response should contain {relation} {num_sentences} sentences.",
            lambda text, relation, num_sentences: _compare(len(sentences(text)), relation, num_sentences)),
        ConstraintType(
            "length_paragraphs",
            lambda r: {"num_paragraphs": r.randint(2, 5)},
            lambda num_paragraphs: (f"There should be exactly {num_paragraphs} paragraphs. Paragraphs are separated "
                                    "with the markdown divider: ***"),
            lambda text, num_paragraphs: (len([p for p in re.split(r"\s*\*\*\*\s*", text.strip())]) == num_paragraphs
                                          and all(p.strip() for p in re.split(r"\s*\*\*\*\s*", text.strip()))),
            ("json_format", "sections")),
        ConstraintType(
            "keywords_include",
            lambda r: {"keywords": r.sample(KEYWORD_POOL, r.randint(1, 3))},
            lambda keywords: "Include the keywords " + ", ".join(f'"{k}"' for k in keywords) + " in the response.",
            lambda text, keywords: all(re.search(rf"\b{re.escape(k)}\b", text, re.I) for k in keywords)),
        ConstraintType(
            "keywords_forbidden",
            lambda r: {"forbidden_words": r.sample(KEYWORD_POOL, r.randint(1, 3))},
            lambda forbidden_words: "Do not include the words " + ", ".join(f'"{k}"' for k in forbidden_words)
                                    + " in the response.",
            lambda text, forbidden_words: not any(re.search(rf"\b{re.escape(k)}\b", text, re.I) for k in forbidden_words),
            ("keywords_include",)),
        ConstraintType(
            "keyword_frequency",
            lambda r: {"keyword": r.choice(KEYWORD_POOL), "relation": r.choice(RELATIONS), "frequency": r.randint(1, 4)},
            lambda keyword, relation, frequency: f'In your response, the word "{keyword}" should appear {relation} {frequency} times.',
            lambda text, keyword, relation, frequency: _compare(
                len(re.findall(rf"\b{re.escape(keyword)}\b", text, re.I)), relation, frequency),
            ("keywords_forbidden",)),
        ConstraintType(
            "letter_frequency",
            lambda r: {"letter": r.choice("abcdefghiklmnoprstuwy"), "relation": r.choice(RELATIONS), "let_frequency": r.randint(3, 12)},
            lambda letter, relation, let_frequency: f'In your response, the letter "{letter}" should appear {relation} {let_frequency} times.',
            lambda text, letter, relation, let_frequency: _compare(text.lower().count(letter.lower()), relation, let_frequency)),
        ConstraintType(
            "json_format",
            lambda r: {},
            lambda: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
            lambda text: _is_json(_strip_fence(text)),
            ("length_paragraphs", "bullet_list", "title", "end_checker", "quotation", "postscript", "sections",
             "highlighted_sections", "placeholders", "lowercase", "uppercase", "capital_word_frequency",
             "length_sentences")),
        ConstraintType(
            "bullet_list",
            lambda r: {"num_bullets": r.randint(2, 6)},
            lambda num_bullets: (f"Your answer must contain exactly {num_bullets} bullet points. Use the markdown "
                                 "bullet points such as:\n* This is point 1.\n* This is point 2"),
            lambda text, num_bullets: _bullets(text) == num_bullets),
        ConstraintType(
            "title",
            lambda r: {},
            lambda: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
            lambda text: bool(re.search(r"<<[^<>\n]*\S[^<>\n]*>>", text))),
        ConstraintType(
            "lowercase",
            lambda r: {},
            lambda: "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
            lambda text: text == text.lower() and any(c.isalpha() for c in text),
            ("uppercase", "capital_word_frequency", "title")),
        ConstraintType(
            "uppercase",
            lambda r: {},
            lambda: "Your entire response should be in English, and in all capital letters.",
            lambda text: text == text.upper() and any(c.isalpha() for c in text),
            ("lowercase", "capital_word_frequency", "sections")),
        ConstraintType(
            "capital_word_frequency",
            lambda r: {"relation": r.choice(RELATIONS), "capital_frequency": r.randint(2, 8)},
            lambda relation, capital_frequency: (f"In your response, words with all capital letters should appear "
                                                 f"{relation} {capital_frequency} times."),
            lambda text, relation, capital_frequency: _compare(
                len([w for w in words(text) if len(w) > 1 and w.isupper()]), relation, capital_frequency)),
        ConstraintType(
            "end_checker",
            lambda r: {"end_phrase": r.choice(END_PHRASES)},
            lambda end_phrase: f'Finish your response with this exact phrase "{end_phrase}". No other words should follow this phrase.',
            lambda text, end_phrase: text.strip().strip('"').rstrip().endswith(end_phrase),
            ("postscript", "quotation")),
        ConstraintType(
            "no_comma",
            lambda r: {},
            lambda: "In your entire response, refrain from the use of any commas.",
            lambda text: "," not in text and "，" not in text,
            ("json_format",)),
        ConstraintType(
            "placeholders",
            lambda r: {"num_placeholders": r.randint(1, 4)},
            lambda num_placeholders: (f"The response must contain at least {num_placeholders} placeholders represented "
                                      "by square brackets, such as [address]."),
            lambda text, num_placeholders: len(re.findall(r"\[[^\[\]\n]+\]", text)) >= num_placeholders),
        ConstraintType(
            "sections",
            lambda r: {"section_spliter": r.choice(("Section", "SECTION", "Part")), "num_sections": r.randint(2, 5)},
            lambda section_spliter, num_sections: (f"Your response must have {num_sections} sections. Mark the beginning "
                                                   f"of each section with {section_spliter} X, such as: {section_spliter} 1"),
            lambda text, section_spliter, num_sections: _sections(text, section_spliter) == num_sections),
        ConstraintType(
            "quotation",
            lambda r: {},
            lambda: "Wrap your entire response with double quotation marks.",
            lambda text: len(text.strip()) > 1 and text.strip()[0] == '"' and text.strip()[-1] == '"',
            ("postscript",)),
        ConstraintType(
            "postscript",
            lambda r: {"postscript_marker": r.choice(("P.S.", "P.P.S"))},
            lambda postscript_marker: f"At the end of your response, please explicitly add a postscript starting with {postscript_marker}",
            lambda text, postscript_marker: bool(re.search(rf"^\s*{re.escape(postscript_marker)}\s*\S", text, re.M | re.I))),
        ConstraintType(
            "highlighted_sections",
            lambda r: {"num_highlights": r.randint(1, 4)},
            lambda num_highlights: (f"Highlight at least {num_highlights} sections in your answer with markdown, "
                                    "i.e. *highlighted section*."),
            lambda text, num_highlights: len([h for h in re.findall(r"\*[^\n*]+\*", text) if h.strip("* ")]) >= num_highlights),
    ]
    return {c.id: c for c in t}


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


CONSTRAINTS = _types()


def describe(constraint: dict) -> str:
    return CONSTRAINTS[constraint["id"]].describe(**constraint.get("kwargs", {}))


def check(response: str, constraint: dict) -> bool:
    kind = CONSTRAINTS.get(constraint.get("id"))
    if kind is None:
        raise KeyError(f"unknown constraint type {constraint.get('id')!r} (known: {', '.join(sorted(CONSTRAINTS))})")
    return bool(kind.check(response, **constraint.get("kwargs", {})))


def _conflict(a: str, b: str) -> bool:
    return a == b or b in CONSTRAINTS[a].conflicts or a in CONSTRAINTS[b].conflicts


def sample_constraints(rng: random.Random, k: int, types: list[str] | None = None) -> list[dict]:
    """k mutually compatible constraints (fewer if the allowed types run out)."""
    pool = list(types or CONSTRAINTS)
    rng.shuffle(pool)
    chosen: list[str] = []
    for t in pool:
        if len(chosen) == k:
            break
        if not any(_conflict(t, c) for c in chosen):
            chosen.append(t)
    return [{"id": t, "kwargs": CONSTRAINTS[t].sample(rng)} for t in chosen]

