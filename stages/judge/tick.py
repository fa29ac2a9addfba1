"""TICK: checklist judging (Cook et al. 2024, "TICKing All the Boxes: Generated Checklists
Improve LLM Evaluation and Generation", arXiv:2410.03608).

Per instruction, the judge model writes a checklist of YES/NO questions (the paper's §3.1 and
its checklist-generation prompt, Appendix; generators/prompts/tick_checklist.txt); each
response is then judged against every question (§3.2), and its score is the fraction answered
YES (the paper's "pass rate"). What is stored, per judged row:

- score `<score>` (default `tick`): YES / questions answered; null when the checklist or every
  answer was unparseable;
- verdicts of verifier `tick`: one `checklist` verdict (passed null; detail: the questions, the
  prompt's id and the judge's raw output, from which the `checklists` view reads), and one `item`
  verdict per question (passed: YES; detail: the question, its index and the raw answer; an
  answer that is neither YES nor NO has passed null and strength `unparseable`). An unparseable
  checklist is one `checklist` verdict of strength `unparseable` with the raw text.

Departures from the paper: each question is asked in its own request (the paper asks the
evaluator for all answers in one completion), so a small judge cannot lose its place in a list
and one malformed answer costs one item, not the row; the answer is read from the first word,
not from a format the judge must keep. A checklist is asked once per distinct prompt (the n
responses of one instruction share it: generators/base.py `distinct_calls`, and the LLM cache).
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa

from curate.generators.backends.base import ChatRequest, Completion, Sampling
from curate.generators.base import FollowUp, Judged, LLMTask, row_meta
from curate.generators.prompts_io import template, turns
from curate.stages.base import Resources, param
from curate.storage import schema as S

TEMPLATE_VERSION = "tick/1"
REFINE_VERSION = "stick/1"
VERIFIER = "tick"
MAX_ITEMS = 8  # the paper's prompt asks for two to eight questions
_BULLET = re.compile(r"^\s*(?:[-*•]|\(?\d{1,2}[.):]|Q\d{1,2}[.):]?)\s*", re.IGNORECASE)
_ANSWER = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def prompt_turns(messages: list[dict]) -> list[dict]:
    """The turns a response answers: everything before the last assistant turn."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return messages[:last]


def prompt_id(messages: list[dict]) -> str:
    """The id of a row's prompt (its turns before the last assistant turn): responses to the same
    prompt share it, and so share a checklist."""
    return hashlib.blake2b(S.canonical_messages(prompt_turns(messages)).encode("utf-8"), digest_size=16).hexdigest()


def instruction_text(messages: list[dict]) -> str:
    """What the checklist is written for: the prompt's user turns (the last one alone for a single
    turn), earlier turns labelled so a multi-turn instruction keeps its context."""
    turns = [m for m in prompt_turns(messages) if m["role"] in ("user", "system")]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in turns)


def example_questions() -> frozenset[str]:
    """The questions of the checklist prompt's worked examples (lower case): a small judge
    copies them, and a copied example is not about the instruction at hand."""
    return frozenset(line.strip().lower() for line in template("tick_checklist.txt").splitlines() if line.strip().endswith("?"))


def parse_checklist(text: str, max_items: int = MAX_ITEMS) -> list[str]:
    """The questions of a checklist reply: after its last `Answer:` if it has one, each line that
    ends in a question mark and has at least three words, bullets and numbering removed,
    repeats (case-insensitively) and copies of the prompt's example questions removed, at most
    `max_items`. [] when none is found."""
    body = re.split(r"(?im)^\s*answer\s*:", text)[-1] if re.search(r"(?im)^\s*answer\s*:", text) else text
    out, seen = [], set(example_questions())
    for line in body.splitlines():
        question = _BULLET.sub("", line).strip().strip("*").strip()
        if not question.endswith("?") or len(question.split()) < 3:
            continue
        if question.lower() in seen:
            continue
        seen.add(question.lower())
        out.append(question)
        if len(out) == max_items:
            break
    return out


def parse_answer(text: str) -> bool | None:
    """A judge's answer to one question: True for YES, False for NO (the first word, any case,
    after punctuation), None for anything else."""
    found = _ANSWER.match(text or "")
    return None if found is None else found.group(1).lower() == "yes"


def checklist_verdict(questions: list[str], pid: str, raw: str) -> dict:
    strength = "checklist" if questions else "unparseable"
    detail = {"kind": strength, "prompt_id": pid, "questions": questions, "raw": raw}
    return {"verifier": VERIFIER, "passed": None, "strength": strength, "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True)}


def item_verdict(k: int, question: str, answer: str, passed: bool | None, pid: str) -> dict:
    detail = {"kind": "item", "item": k, "question": question, "raw": answer, "prompt_id": pid}
    return {"verifier": VERIFIER, "passed": passed, "strength": "item" if passed is not None else "unparseable",
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True)}


class Tick(LLMTask):
    """TICK checklist judge (module docstring). Per row with a response and no `<score>` yet
    (`rejudge`: judge scored rows again): a checklist for its prompt (`checklist_max_tokens`,
    greedy), one YES/NO judgement per question (`judge_max_tokens`, greedy); stores score
    `<score>` (fraction YES, in [0, 1]) and `tick` verdicts. `min_score`: drop rows scoring below
    it (`tick: 0.25 below 0.5`); rows without a score (unparseable) are kept.

    `refine` (STICK, the paper's §5: self-refinement with checklist feedback): a response that
    fails some questions is rewritten once from its failed questions
    (generators/prompts/stick_refine.txt, `refine_max_tokens`, `refine_temperature`) and the
    rewrite judged against the same checklist. The rewrite is a new row beside the original
    (origin `refined`, parent_ids [the original], meta `generator: stick`, `refined_from`,
    `failed_items`), with its own score and verdicts; the original stays in play with its own,
    so a `best_of_n` after this stage keeps whichever scores higher. A blank or unchanged rewrite
    is stored as a drop (`unparseable` / `unchanged`, raw output in meta.raw).

    Raises ValueError for a backend without a model or a min_score outside [0, 1]."""

    name = "tick"
    generator = "tick"
    origin = "refined"
    template_version = TEMPLATE_VERSION
    resources = Resources(num_cpus=0.05, actor=True, concurrency=1, calls_per_actor=2)
    batch_size = None

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"scores:{param(cls, params, 'score')}", f"verdicts:{VERIFIER}"}

    def __init__(self, backend: dict, score: str = "tick", max_items: int = MAX_ITEMS, checklist_max_tokens: int = 256,
                 judge_max_tokens: int = 4, min_score: float | None = None, rejudge: bool = False, refine: bool = False,
                 refine_max_tokens: int = 512, refine_temperature: float = 0.0, seed: int = 0, cache: str | None = None):
        super().__init__(backend, cache)
        if min_score is not None and not 0 <= min_score <= 1:
            raise ValueError(f"min_score is a fraction of questions answered YES, in [0, 1]; got {min_score}")
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.score, self.max_items, self.min_score, self.rejudge = score, max_items, min_score, rejudge
        self.checklist_sampling = Sampling(temperature=0.0, max_tokens=checklist_max_tokens, seed=seed)
        self.judge_sampling = Sampling(temperature=0.0, max_tokens=judge_max_tokens, seed=seed)
        self.refine = refine
        self.refine_sampling = Sampling(temperature=refine_temperature, max_tokens=refine_max_tokens, seed=seed)

    def selects(self, batch: pa.Table) -> list[bool] | None:
        has_response = [any(m["role"] == "assistant" for m in c or ()) for c in batch["messages"].to_pylist()]
        column = S.SCORE_PREFIX + self.score
        if self.rejudge or column not in batch.column_names:
            return has_response
        return [r and v is None for r, v in zip(has_response, batch[column].to_pylist())]

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:
        return [[self.checklist_request(c)] for c in batch["messages"].to_pylist()]

    def checklist_request(self, messages: list[dict]) -> ChatRequest:
        return ChatRequest(turns("tick_checklist.txt", instruction=instruction_text(messages)), self.checklist_sampling)

    def judge_request(self, messages: list[dict], question: str) -> ChatRequest:
        return ChatRequest(turns("tick_judge.txt", instruction=instruction_text(messages), response=last_response(messages),
                                 question=question), self.judge_sampling)

    def refine_request(self, messages: list[dict], failed: list[str]) -> ChatRequest:
        return ChatRequest(turns("stick_refine.txt", instruction=instruction_text(messages), response=last_response(messages),
                                 failed="\n".join(f"- {q}" for q in failed)), self.refine_sampling)

    def parse(self, row: dict, completions: list[list[Completion]]) -> Judged | FollowUp:
        """Rounds, read from how many completions there are: the checklist (1), its k answers
        (1 + k), with `refine` the refinement (2 + k) and its k answers (2 + 2k)."""
        messages, pid = row["messages"], prompt_id(row["messages"])
        raw = completions[0][0].text
        questions = parse_checklist(raw, self.max_items)
        if not questions:
            return Judged({self.score: None}, [checklist_verdict([], pid, raw)])
        k = len(questions)
        if len(completions) == 1:
            return FollowUp([self.judge_request(messages, q) for q in questions])
        judged = self.judgement(questions, [c[0].text for c in completions[1:1 + k]], pid, raw)
        failed = [q for q, v in zip(questions, judged.verdicts[1:]) if v["passed"] is False]
        if not self.refine or not failed:
            return judged
        refined = completions[1 + k][0] if len(completions) > 1 + k else None
        if refined is None:
            return FollowUp([self.refine_request(messages, failed)])
        text = refined.text.strip()
        meta = {**row_meta(row["meta"]), **self.meta(self.refine_sampling, refined, generator="stick", template=REFINE_VERSION,
                                                     refined_from=row["id"], failed_items=failed)}
        if not text or text == last_response(messages).strip():
            judged.children = [(self.failed(refined.text, "unchanged" if text else "unparseable", meta, parent_ids=[row["id"]]), None)]
            return judged
        child_messages = [*prompt_turns(messages), {"role": "assistant", "content": text}]
        if len(completions) == 2 + k:
            return FollowUp([self.judge_request(child_messages, q) for q in questions])
        child = self.child(child_messages, meta, parent_ids=[row["id"]])
        child_judged = self.judgement(questions, [c[0].text for c in completions[2 + k:]], prompt_id(child_messages), raw)
        if child_judged.reason:
            child["reason"] = child_judged.reason  # below min_score: stored as a drop, with its judgement
        judged.children = [(child, child_judged)]
        return judged

    def judgement(self, questions: list[str], answers: list[str], pid: str, raw: str) -> Judged:
        """Score and verdicts of one response from its judge's answers."""
        passed = [parse_answer(a) for a in answers]
        verdicts = [checklist_verdict(questions, pid, raw)] + [item_verdict(k, q, a, p, pid) for k, (q, a, p) in
                                                               enumerate(zip(questions, answers, passed))]
        answered = [p for p in passed if p is not None]
        score = sum(answered) / len(answered) if answered else None
        reason = None
        if self.min_score is not None and score is not None and score < self.min_score:
            reason = f"{VERIFIER}: {score:.2f} below {self.min_score}"
        return Judged({self.score: score}, verdicts, reason)


def last_response(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
