"""Revise: a coach model rewrites a weak instruction-response pair instead of it being filtered
out (CoachLM: Liu et al. 2023, "CoachLM: Automatic Instruction Revisions Improve the Data Quality
in LLM Instruction Tuning", arXiv:2311.13246; the revision criteria are paraphrased in
generators/prompts/coachlm_revise.txt, sources in generators/prompts/README.md). CoachLM fine-tunes
its coach on expert revisions (the paper's Section III); here the coach is any chat model,
prompted with those criteria and one worked example.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from curate.generators.backends.base import ChatRequest, Completion, Sampling
from curate.generators.base import LLMTask, row_meta, row_turns
from curate.generators.prompts_io import fill
from curate.lib.params import Positive
from curate.generators.respond import INHERIT_NOT
from curate.storage import schema as S

TEMPLATE = "coachlm_revise.txt"
TEMPLATE_VERSION = "coachlm_revise/1"
PARTS = {"both": ("instruction", "response"), "instruction": ("instruction",), "response": ("response",)}
TASKS = {
    "both": "Revise both the instruction and the response.",
    "instruction": "Revise only the instruction, so that the response answers it well; keep the response as it is.",
    "response": "Revise only the response; keep the instruction as it is.",
}
# A section header: `### Instruction`, `**Revised response:**`, or `Instruction:` (a label needs a colon).
HEADER = re.compile(r"^[ \t]*(?P<mark>#{1,6}[ \t]*(?:\*\*)?|\*\*)?[ \t]*(?:revised[ \t]+)?(?P<part>instruction|response)\b"
                    r"[ \t]*(?:\*\*)?[ \t]*(?P<colon>:)?[ \t]*(?:\*\*)?[ \t]*", re.I | re.M)


class ReviseWhen(BaseModel):
    """Revise only rows whose stored score `score` is below `below`."""

    model_config = ConfigDict(extra="forbid")
    score: str
    below: float


def scaffold(target: str) -> frozenset[str]:
    """The prompt's own lines (its text and example, headers aside), stripped: a model that goes
    on to repeat them (`Example:`, `Rewritten:`) has ended its revision there."""
    text = fill(TEMPLATE, task=TASKS[target], instruction="", response="")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not _header(line))


def _header(line: str) -> bool:
    m = HEADER.match(line)
    return bool(m and (m.group("mark") or m.group("colon")))


def _until(section: str, stop: frozenset[str]) -> str:
    lines = section.split("\n")
    end = next((i for i, line in enumerate(lines) if line.strip() in stop), len(lines))
    return "\n".join(lines[:end]).strip()


def read_revision(text: str, target: str, stop: frozenset[str] = frozenset()) -> dict[str, str]:
    """The revised parts in a completion, {part: text}, only parts `target` revises. Sections
    start at a header (`HEADER`) and end at the next header or at a line in `stop` (the prompt's
    own lines, `scaffold`); the first non-blank section of each part counts; a completion with
    no header at all is the one part of a single-part target. {} when nothing usable is there."""
    wanted = PARTS[target]
    marks = [m for m in HEADER.finditer(text) if m.group("mark") or m.group("colon")]
    found: dict[str, str] = {}
    if not marks and len(wanted) == 1:
        found[wanted[0]] = _until(text, stop)
    for m, nxt in zip(marks, [*marks[1:], None]):
        part, body = m.group("part").lower(), _until(text[m.end(): nxt.start() if nxt else len(text)], stop)
        if body and part not in found:
            found[part] = body
    return {p: v for p, v in found.items() if p in wanted and v}


class Revise(LLMTask):
    """Per chosen row (an instruction-response pair: a user turn and an assistant turn), one
    completion of the CoachLM revision prompt (generators/prompts/coachlm_revise.txt); the revised
    pair is a new row: the row's messages with the first user turn and/or the last assistant turn
    replaced, origin `revised`, `parent_ids` [the row's id], meta: the parent's task-level meta,
    then `LLMTask.meta` (generator, model, template, sampling, finish reason, tokens) with
    `revised_from` (the row's id), `revise_target`, `revised_parts` (the parts that changed) and
    `revise_when` ({score, below, value}: what triggered it; null without `revise_when`). The
    original is stored as `expanded`, with the scores and verdicts earlier stages gave it.

    Parameters: `backend`, `cache` (every LLM task's); `revise_when` {score, below}: revise only
    rows whose stored score (an earlier stage's) is below `below`, a row without that score
    passes through unrevised; none: every pair. `target`: `both`, `response` or `instruction`,
    what the coach may change (the rest is kept as it was). `temperature`, `max_tokens`, `seed`:
    sampling. `drop_truncated`: a revision cut at `max_tokens` fails (a part that runs to the
    end of an output cut at `max_tokens`; not one the model ended before rambling on). Rows that
    are not pairs pass through.

    A revision that fails is a failed row (a drop carrying `meta.raw`), and the original stays
    kept: `unparseable` (no usable section for the target, blank output), `unchanged` (equal to
    the original after stripping), `truncated`. Raises ValueError for a backend without a model;
    a config whose `revise_when` score no earlier stage writes is rejected (`reads`).
    """

    name = "revise"
    generator = "revise"
    origin = "revised"
    template_version = TEMPLATE_VERSION

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        when = params.get("revise_when")
        return {f"scores:{ReviseWhen.model_validate(when).score}"} if when else set()

    def __init__(self, backend: dict, revise_when: ReviseWhen | None = None,
                 target: Literal["both", "response", "instruction"] = "both", temperature: float = 0.0,
                 max_tokens: Positive = 1024, seed: int = 0, drop_truncated: bool = True, cache: str | None = None):
        super().__init__(backend, cache)
        if target not in PARTS:
            raise ValueError(f"target is one of {', '.join(PARTS)}, got {target!r}")
        self.when = ReviseWhen.model_validate(revise_when) if revise_when is not None else None
        self.target = target
        self.stop = scaffold(target)
        self.drop_truncated = drop_truncated
        self.sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)

    def score(self, row: dict) -> float | None:
        value = row.get(S.SCORE_PREFIX + self.when.score) if self.when else None
        return None if value is None or math.isnan(value) else value

    def selects(self, batch: pa.Table) -> list[bool]:
        columns = [c for c in ("messages", S.SCORE_PREFIX + self.when.score if self.when else None) if c in batch.column_names]
        out = []
        for row in batch.select(columns).to_pylist():
            turns = row["messages"] or ()
            roles = {m["role"] for m in turns}
            value = self.score(row)
            # A response that only calls a tool (no text) has nothing to revise: it passes through.
            texted = {"user", "assistant"} <= roles and turns[self.pair(turns)[1]]["content"].strip() != ""
            out.append(texted and (self.when is None or (value is not None and value < self.when.below)))
        return out

    @staticmethod
    def pair(messages: list[dict]) -> tuple[int, int]:
        """Positions of the instruction (first user turn) and the response (last assistant turn)."""
        return (next(i for i, m in enumerate(messages) if m["role"] == "user"),
                max(i for i, m in enumerate(messages) if m["role"] == "assistant"))

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:
        out = []
        for messages in batch["messages"].to_pylist():
            q, a = self.pair(messages)
            prompt = fill(TEMPLATE, task=TASKS[self.target], instruction=messages[q]["content"], response=messages[a]["content"])
            out.append([ChatRequest([{"role": "user", "content": prompt}], self.sampling)])
        return out

    def parse(self, row: dict, completions: list[list[Completion]]) -> list[dict]:
        (answer,), = completions
        messages = [dict(m) for m in row_turns(row)]
        q, a = self.pair(messages)
        original = {"instruction": messages[q]["content"], "response": messages[a]["content"]}
        parts = read_revision(answer.text, self.target, self.stop)
        changed = [p for p, text in parts.items() if text != original[p].strip()]
        trigger = {"score": self.when.score, "below": self.when.below, "value": self.score(row)} if self.when else None
        meta = self.meta(self.sampling, answer, revised_from=row["id"], revise_target=self.target,
                         revised_parts=changed, revise_when=trigger)
        if not parts or not changed:
            return [self.failed(answer.text, "unparseable" if not parts else "unchanged", meta, parent_ids=[row["id"]])]
        if self.drop_truncated and answer.finish_reason == "length" and any(answer.text.rstrip().endswith(parts[p]) for p in parts):
            return [self.failed(answer.text, "truncated", meta, parent_ids=[row["id"]])]
        for p in changed:
            messages[q if p == "instruction" else a]["content"] = parts[p]
        inherited = {k: v for k, v in row_meta(row["meta"]).items() if k not in INHERIT_NOT}
        return [self.child(messages, {**inherited, **meta}, parent_ids=[row["id"]])]
