"""The docs match the code.

Every registered stage and selector (pipeline/registry.py STAGES, SELECTORS) has a section in
docs/*.md headed by its config key (`## `key``) with a parameter table, and that table lists
exactly the parameters the config accepts, each with its default, both read from where the
config validation reads them (pipeline/config.py `_params_model`: the class's constructor).
Selector sections are in docs/selectors.md, stage sections in the other pages (`ifd` is both).
A table row is `| `name` | default | meaning |`; a default is rendered by `render` below
(`null`, `true`, `[a, b]`, `""`, `1e-6`) in backticks, or the word `required`.

Every relative link in README.md, docs/*.md and bench/README.md points to a file that exists,
and a `#fragment` into a Markdown file to one of its headings (GitHub's anchors).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from curate.pipeline.config import _params_model
from curate.pipeline.registry import SELECTORS, STAGES, selector_class, stage_class

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SELECTOR_PAGE = DOCS / "selectors.md"
LINKED_PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def render(value) -> str:
    """A default as the docs write it: YAML-like scalars, flow lists, floats without a padded exponent."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))  # 1e-06 -> 1e-6
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no docs rendering for a default of type {type(value).__name__}: {value!r}")


def expected_parameters(cls) -> dict[str, str]:
    """{parameter: its table cell}, from the model the config validates parameters with."""
    fields = _params_model(cls).model_fields
    return {name: "required" if f.is_required() else f"`{render(f.default)}`" for name, f in fields.items()}


def _lines_outside_code(text: str):
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def _cells(row: str) -> list[str]:
    """A table row's cells; `\\|` is a pipe inside a cell."""
    inner = row.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def sections(page: Path) -> dict[str, list[dict[str, str]]]:
    """{key: [its parameter tables, one per section headed `key`]} for the page's sections
    headed by a code span alone. A section runs to the next heading of its level or above; its
    parameter rows are those of tables whose header starts with `parameter`."""
    found: dict[str, list[dict[str, str]]] = {}
    current, level, in_params = None, 0, False
    for line in _lines_outside_code(page.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if m:
            if current is not None and len(m.group(1)) <= level:
                current = None
            key = re.fullmatch(r"`([^`]+)`", m.group(2))
            if key:
                current, level = {}, len(m.group(1))
                found.setdefault(key.group(1), []).append(current)
            in_params = False
            continue
        if current is None:
            continue
        if not line.lstrip().startswith("|"):
            in_params = False
            continue
        cells = _cells(line)
        if cells[0].lower() == "parameter":
            in_params = True
        elif in_params and not set(cells[0]) <= set("-: "):
            name = re.fullmatch(r"`([^`]+)`", cells[0])
            assert name, f"{page.name}: a parameter table row without a `name` in its first cell: {line}"
            assert len(cells) >= 3, f"{page.name}: a parameter row needs name, default and meaning: {line}"
            assert name.group(1) not in current, f"{page.name}: {name.group(1)} listed twice in one table"
            current[name.group(1)] = cells[1]
    return found


def documented(key: str, pages: list[Path]) -> dict[str, str]:
    hits = [(page, table) for page in pages for table in sections(page).get(key, [])]
    where = ", ".join(p.name for p in pages) if len(pages) < 3 else "docs/*.md but selectors.md"
    assert hits, f"no section headed `{key}` in {where}"
    assert len(hits) == 1, f"`{key}` has {len(hits)} sections: {', '.join(p.name for p, _ in hits)}"
    page, table = hits[0]
    assert table, f"{page.name}: the `{key}` section has no parameter table (| parameter | default | meaning |)"
    return table


def compare(key: str, cls, table: dict[str, str]) -> None:
    expected = expected_parameters(cls)
    problems = [f"{name}: not documented (default {cell})" for name, cell in expected.items() if name not in table]
    problems += [f"{name}: documented, but {cls.__name__} takes no such parameter" for name in table if name not in expected]
    problems += [f"{name}: the docs say {table[name]}, the code {cell}"
                 for name, cell in expected.items() if name in table and table[name] != cell]
    assert not problems, f"`{key}` ({cls.__module__}.{cls.__name__}):\n  " + "\n  ".join(problems)


STAGE_PAGES = [p for p in sorted(DOCS.glob("*.md")) if p != SELECTOR_PAGE]


@pytest.mark.parametrize("key", sorted(STAGES))
def test_stage_parameters_documented(key):
    compare(key, stage_class(key), documented(key, STAGE_PAGES))


@pytest.mark.parametrize("key", sorted(SELECTORS))
def test_selector_parameters_documented(key):
    compare(key, selector_class(key), documented(key, [SELECTOR_PAGE]))


def test_render():
    assert [render(v) for v in (None, True, False, "", "rouge", 1e-06, 2e-05, 4.0, 0.1, 512, ("a", "b"), [1.0])] == \
        ["null", "true", "false", '""', "rouge", "1e-6", "2e-5", "4.0", "0.1", "512", "[a, b]", "[1.0]"]


def test_a_missing_parameter_fails():
    """The check catches a parameter the docs lack, one they keep after it went, and a wrong default."""

    class Probe:
        def __init__(self, budget: float | int = 0.1, seed: int = 0, extra: str | None = None):
            pass

    with pytest.raises(AssertionError, match="extra: not documented"):
        compare("probe", Probe, {"budget": "`0.1`", "seed": "`0`"})
    with pytest.raises(AssertionError, match="gone: documented"):
        compare("probe", Probe, {"budget": "`0.1`", "seed": "`0`", "extra": "`null`", "gone": "`1`"})
    with pytest.raises(AssertionError, match="seed: the docs say `1`"):
        compare("probe", Probe, {"budget": "`0.1`", "seed": "`1`", "extra": "`null`"})


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _lines_outside_code(page.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    links = []
    for line in _lines_outside_code(page.read_text(encoding="utf-8")):
        links += [t for t in LINK.findall(CODE_SPAN.sub("", line)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    return links


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: {file.name} has no heading with the anchor #{fragment}")
    assert not broken, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(broken)


def test_docs_sections_name_registered_components():
    """A section headed by a code span that looks like a component key but names none (a renamed
    or removed stage) is stale."""
    known = set(STAGES) | set(SELECTORS)
    stale = [f"{page.name}: `{key}`" for page in sorted(DOCS.glob("*.md"))
             for key, tables in sections(page).items() if any(tables) and key not in known]
    assert not stale, "sections with a parameter table for no registered stage or selector: " + ", ".join(stale)
