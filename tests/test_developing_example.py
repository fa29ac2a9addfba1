"""The examples of docs/developing.md run: the CPU stage on a small Arrow table, the LLM task on a
test-double backend with recorded outputs, the selector on a small DuckDB pool, all three
registered and checked by the config; and the code blocks of the page are the example files,
character for character, so the page cannot drift from code that is tested."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from curate.generators.backends.base import Backend, Completion
from curate.pipeline.dag import apply_stage
from curate.storage import schema as S
from checks import stream_batch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
PAGE = ROOT / "docs" / "developing.md"
MODEL = {"kind": "openai", "model": "recorded"}


def example(name: str):
    """A module of docs/examples, imported under its file name (as the registry test below finds it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


batch_of = stream_batch


def qa(question: str, answer: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": question}]
    return turns + [{"role": "assistant", "content": answer}] if answer is not None else turns


# --- (a) the CPU stage -------------------------------------------------------------------------


def test_word_count_stage_splits_and_scores():
    WordCount = example("word_count_stage").WordCount
    batch = batch_of([qa("Name a fruit.", "An apple, usually red."), qa("Say hi.", "Hi!"), qa("No answer yet."),
                      qa("Count to three.", "one two three")])
    result = WordCount(min_words=3)(batch)
    assert result.kept["messages"].to_pylist() == [batch["messages"][0].as_py(), batch["messages"][3].as_py()]
    assert [m[0]["content"] for m in result.dropped["messages"].to_pylist()] == ["Say hi.", "No answer yet."]
    assert result.reasons == ["response_words<3 (1)", "response_words<3 (0)"]
    assert result.score("word_count.words") == [4, 3, 1, 0]  # kept rows, then dropped rows


def test_word_count_stage_in_the_stream_stores_what_it_declares():
    WordCount = example("word_count_stage").WordCount
    batch = batch_of([qa("Name a fruit.", "An apple."), qa("Say hi.", "Hi!")])
    out = apply_stage(WordCount(min_words=2), "word_count", batch, writes=WordCount.writes({})).to_pylist()
    assert [(r[S.STATUS], r[S.REASON], r["_score:word_count.words"]) for r in out] == \
        [("kept", None, 2.0), ("dropped", "response_words<2 (1)", 1.0)]


# --- (b) the LLM task --------------------------------------------------------------------------


class Recorded(Backend):
    """A test double: answers each request with the recorded output for the instruction it
    quotes (its prompt's last line), and logs every call."""

    model = "recorded"

    def __init__(self, outputs: dict[str, str]):
        self.outputs = outputs
        self.calls: list[list] = []

    def generate(self, requests):
        self.calls.append(list(requests))
        return [[Completion(self.outputs[r.messages[-1]["content"].splitlines()[-1]], "stop", 20, 6)] for r in requests]


def test_five_word_summary_makes_children_and_failed_rows():
    FiveWordSummary = example("five_word_summary").FiveWordSummary
    stage = FiveWordSummary(backend=MODEL, max_tokens=12)
    stage.backend = Recorded({"Write a short poem about the sea.": "Short poem about the sea.",
                              "Explain why the sky is blue.": "I cannot summarise that, sorry, it is too long."})
    batch = batch_of([qa("Write a short poem about the sea."), qa("Explain why the sky is blue.")])
    out = apply_stage(stage, "five_word_summary", batch, writes=FiveWordSummary.writes({})).to_pylist()

    # the requests: one backend call, one request per row, in row order, with the stage's sampling
    (call,) = stage.backend.calls
    assert [r.messages[-1]["content"].splitlines()[-1] for r in call] == ["Write a short poem about the sea.", "Explain why the sky is blue."]
    assert call[0].messages[0]["content"].startswith("Summarise this instruction in exactly five words.")
    assert call[0].sampling.max_tokens == 12 and call[0].sampling.temperature == 0.0

    poem, sky = batch["id"][0].as_py(), batch["id"][1].as_py()
    (child,) = [r for r in out if r["origin"] == "summary" and r[S.REASON] is None]
    assert child[S.STATUS] == "kept" and child["parent_ids"] == [poem] and child["source"] == "five_word_summary:recorded"
    assert child["messages"][-1] == {"role": "assistant", "content": "Short poem about the sea"}
    meta = json.loads(child["meta"])
    assert (meta["generator"], meta["template"], meta["finish_reason"], meta["completion_tokens"]) == \
        ("five_word_summary", "five_word_summary/1", "stop", 6)
    assert next(r for r in out if r["id"] == poem)[S.STATUS] == "expanded"  # the parent, replaced by its child

    (failed,) = [r for r in out if r[S.REASON] == "not_five_words"]
    assert failed[S.STATUS] == "dropped" and failed["parent_ids"] == [sky]
    assert json.loads(failed["meta"])["raw"] == "I cannot summarise that, sorry, it is too long."
    assert failed["messages"] == [{"role": "user", "content": "I cannot summarise that, sorry, it is too long."}]
    assert next(r for r in out if r["id"] == sky)[S.STATUS] == "kept"  # its child failed: the parent stays in play
    assert abs(sum(r[S.WEIGHT] for r in out) - 2.0) < 1e-9  # every input row accounted for


# --- (c) the selector --------------------------------------------------------------------------


def test_top_score_selector_on_a_small_pool():
    TopScore = example("top_score_selector").TopScore
    con = duckdb.connect()
    con.execute("CREATE TABLE _pool AS SELECT * FROM (VALUES ('a'), ('b'), ('c'), ('d')) t(id)")
    con.execute("CREATE TABLE scores (run_id VARCHAR, id VARCHAR, name VARCHAR, value DOUBLE)")
    con.executemany("INSERT INTO scores VALUES (?, ?, ?, ?)",
                    [("r", "a", "word_count.words", 3.0), ("r", "b", "word_count.words", 9.0), ("r", "c", "word_count.words", 5.0),
                     ("r", "d", "other", 99.0), ("old", "a", "word_count.words", 100.0)])
    assert TopScore(budget=2).select(con, "r", "_pool", 2) == [("b", 9.0), ("c", 5.0)]
    assert TopScore.reads({}) == {"scores:word_count.words"} and TopScore.reads({"score": "x"}) == {"scores:x"}


# --- registering them ----------------------------------------------------------------------------


@pytest.fixture
def registered(monkeypatch):
    """The three examples in the registry, as the page says to add them."""
    from curate.pipeline import registry

    for name in ("word_count_stage", "five_word_summary", "top_score_selector"):
        example(name)
    monkeypatch.setitem(registry.STAGES, "word_count", "word_count_stage:WordCount")
    monkeypatch.setitem(registry.STAGES, "five_word_summary", "five_word_summary:FiveWordSummary")
    monkeypatch.setitem(registry.SELECTORS, "top_score", "top_score_selector:TopScore")


def test_registered_examples_pass_the_config_checks(registered):
    from curate.errors import CurateError
    from curate.pipeline.config import load_config

    config = load_config(None, stages=[{"five_word_summary": {"backend": MODEL}}, {"word_count": {"min_words": 2}}],
                         selectors=[{"top_score": {"budget": 10}}])
    assert [(s.key, s.params["backend"] if "backend" in s.params else s.params["min_words"]) for s in config.stages] == \
        [("five_word_summary", MODEL), ("word_count", 2)]
    assert config.stages[0].params["max_tokens"] == 16  # the constructor's defaults fill in
    with pytest.raises(CurateError, match=r"top_score needs scores 'word_count\.words'"):  # the selector reads a score no stage stores
        load_config(None, stages=[], selectors=[{"top_score": {"budget": 10}}])
    with pytest.raises(CurateError, match="word_count: min_words: Input should be a valid integer"):  # parameters are checked against the constructor
        load_config(None, stages=[{"word_count": {"min_words": "many"}}])


# --- the page quotes the files ---------------------------------------------------------------------

INCLUDE = re.compile(r"^<!-- example: (\S+) -->$")


def quoted_blocks(text: str) -> dict[str, str]:
    """{file: the fenced block after its `<!-- example: FILE -->` line}."""
    lines, found = text.splitlines(keepends=True), {}
    for i, line in enumerate(lines):
        m = INCLUDE.match(line.strip())
        if not m:
            continue
        assert lines[i + 1].startswith("```python"), f"developing.md: no ```python block right after {line.strip()}"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].rstrip() == "```")
        found[m.group(1)] = "".join(lines[i + 2: end])
    return found


def test_the_page_quotes_every_example_file_exactly():
    blocks = quoted_blocks(PAGE.read_text(encoding="utf-8"))
    files = sorted(p.relative_to(ROOT / "docs").as_posix() for p in EXAMPLES.glob("*.py"))
    assert sorted(blocks) == files
    for name, block in blocks.items():
        assert block == (ROOT / "docs" / name).read_text(encoding="utf-8"), f"docs/developing.md quotes {name} with changes"
