"""What the checklist judges (TICK/STICK in tick.py, DeCRIM in decrim.py) share: a list of items
written for a prompt, a YES/NO judgement of a response per item, a score (the fraction YES), and
optional refinement rounds from the failed items, each refinement judged against the same items.

A judge subclass names its prompt files and verifier, and may parse items its own way
(`parse_items`) or check some items without the model (`local_items`: DeCRIM's verifiable
constraints). The rounds are read from how many completions a row has so far: the items (1),
their answers (1 + k), then per refinement round the rewrite (1) and its answers (k).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Callable, ClassVar

import pyarrow as pa

from curate.generators.backends.base import ChatRequest, Completion, Sampling
from curate.generators.base import FollowUp, Judged, LLMTask, row_meta
from curate.generators.prompts_io import template, turns
from curate.stages.base import param
from curate.storage import schema as S

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
    turns_ = [m for m in prompt_turns(messages) if m["role"] in ("user", "system")]
    if len(turns_) == 1:
        return turns_[0]["content"]
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in turns_)


def last_response(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")


def list_lines(text: str, question: bool, max_items: int, skip: frozenset[str] = frozenset()) -> list[str]:
    """Items of a list reply: after its last `Answer:` if it has one, each line with at least
    three words, ending in `?` when `question` (else marked as a list item: a bullet or a number,
    so a chatty opening line is no constraint), bullets and numbering removed, repeats
    (case-insensitively) and lines in `skip` (lower case) removed, at most `max_items`."""
    found = re.search(r"(?im)^\s*answer\s*:", text)
    body = re.split(r"(?im)^\s*answer\s*:", text)[-1] if found else text
    out, seen = [], set(skip)
    for line in body.splitlines():
        item = _BULLET.sub("", line).strip().strip("*").strip()
        marked = item != line.strip()
        if (not item.endswith("?") if question else not marked) or len(item.split()) < 3 or item.lower() in seen:
            continue
        seen.add(item.lower())
        out.append(item)
        if len(out) == max_items:
            break
    return out


@functools.lru_cache(maxsize=None)
def example_lines(prompt: str, question: bool) -> frozenset[str]:
    """The list items of a prompt file's worked examples (assistant turns), lower case: a small
    judge copies them, and a copied example is not about the instruction at hand."""
    parts = re.split(r"^<<(user|assistant)>>\n", template(prompt), flags=re.MULTILINE)
    lines = (line.strip() for role, text in zip(parts[1::2], parts[2::2]) if role == "assistant" for line in text.splitlines())
    return frozenset(_BULLET.sub("", line).lower() for line in lines if line and (line.endswith("?") or not question))


_STOP = frozenset("does response answer that this with from have give gives each more than what which their they them "
                  "into about should would could there these those your".split())


def content_words(text: str) -> set[str]:
    """Lower-case words of four letters or more, less a few that say nothing about a topic."""
    return {w for w in re.findall(r"[a-z]{4,}", text.lower())} - _STOP


def copied_examples(prompt: str, question: bool, instruction: str) -> frozenset[str]:
    """The prompt's example items that share no content word with `instruction`: copies of the
    examples, not about the instruction at hand (an example question that fits it, "Does the
    response show the steps?" for "Show your work", stays)."""
    words = content_words(instruction)
    return frozenset(line for line in example_lines(prompt, question) if not content_words(line) & words)


@functools.lru_cache(maxsize=None)
def scaffold_labels(prompt: str) -> tuple[str, ...]:
    """The labels a prompt file puts at the start of its lines (`INSTRUCTION:`, `FAILED
    QUESTIONS:`): a rewrite that reaches one has started to repeat the prompt."""
    return tuple(sorted({m.group(0) for m in re.finditer(r"(?m)^[A-Z][A-Z ]{2,}:", template(prompt))}))


def cut_at_labels(text: str, labels: tuple[str, ...]) -> str:
    """`text` up to the first line that starts with one of `labels` (a leading one is dropped:
    a reply that opens with `IMPROVED RESPONSE:` keeps what follows it)."""
    lines = text.strip().splitlines()
    if lines and lines[0].startswith(labels):
        first = lines[0]
        lines[0] = first[next(len(l) for l in labels if first.startswith(l)):].strip()
    end = next((i for i, line in enumerate(lines) if i > 0 and line.strip().startswith(labels)), len(lines))
    return "\n".join(lines[:end]).strip()


def parse_answer(text: str) -> bool | None:
    """A judge's answer to one item: True for YES, False for NO (the first word, any case, after
    punctuation), None for anything else."""
    found = _ANSWER.match(text or "")
    return None if found is None else found.group(1).lower() == "yes"


class ChecklistJudge(LLMTask):
    """The shared flow (module docstring). Per row with a response and no `<score>` yet
    (`rejudge`: judge scored rows again): items for its prompt (`checklist_max_tokens`, greedy),
    one YES/NO judgement per item (`judge_max_tokens`, greedy), plus the items `local_items`
    checks itself; stores score `<score>` (fraction YES, in [0, 1], None when nothing was
    answered) and verdicts of `verifier`: one `checklist` verdict (items, prompt id, raw output;
    strength `unparseable` when no item was found) and one `item` verdict per item (passed = YES,
    raw answer; strength `unparseable` when the answer is neither, `checker` for a local item).
    `min_score`: drop rows scoring below it; unscored rows stay.

    `rounds` > 0: a response that fails some items is rewritten from its failed items, the
    rewrite judged on the same items, and again up to `rounds` times while items fail; the last
    rewrite is a new row beside the original (origin `refined`, parent_ids [the original], meta
    `generator: <refiner>`, `refined_from`, `failed_items`, and `history`: each earlier round's
    rewrite, failed items and raw answers), with its own score and verdicts; the original stays
    in play with its own. A blank or unchanged rewrite ends the rounds: stored as a drop
    (`unparseable` / `unchanged`, raw output in meta.raw) when it was the first."""

    verifier: ClassVar[str]
    checklist_prompt: ClassVar[str]
    judge_prompt: ClassVar[str]
    refine_prompt: ClassVar[str]
    refiner: ClassVar[str]  # meta `generator` of a refinement
    refine_version: ClassVar[str]
    questions: ClassVar[bool] = True  # items are questions (ending in `?`), else statements
    origin = "refined"

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"scores:{param(cls, params, 'score')}", f"verdicts:{cls.verifier}"}

    def setup_judge(self, score: str, max_items: int, checklist_max_tokens: int, judge_max_tokens: int,
                    min_score: float | None, rejudge: bool, rounds: int, refine_max_tokens: int, refine_temperature: float,
                    seed: int) -> None:
        if min_score is not None and not 0 <= min_score <= 1:
            raise ValueError(f"min_score is a fraction of items answered YES, in [0, 1]; got {min_score}")
        if max_items < 1 or rounds < 0:
            raise ValueError("max_items must be at least 1 and the refinement rounds at least 0")
        self.score, self.max_items, self.min_score, self.rejudge, self.rounds = score, max_items, min_score, rejudge, rounds
        self.checklist_sampling = Sampling(temperature=0.0, max_tokens=checklist_max_tokens, seed=seed)
        self.judge_sampling = Sampling(temperature=0.0, max_tokens=judge_max_tokens, seed=seed)
        self.refine_sampling = Sampling(temperature=refine_temperature, max_tokens=refine_max_tokens, seed=seed)

    # --- what a judge may change ------------------------------------------------------------

    def parse_items(self, raw: str, row: dict) -> list[str]:
        """The items of the reply, copies of the prompt's examples unrelated to the row's
        instruction left out (`copied_examples`)."""
        skip = copied_examples(self.checklist_prompt, self.questions, instruction_text(row["messages"]))
        return list_lines(raw, self.questions, self.max_items, skip)

    def local_items(self, row: dict) -> list[tuple[str, Callable[[str], bool | None]]]:
        """Items checked without the model: (description, check(response) → passed or None)."""
        return []

    # --- requests ---------------------------------------------------------------------------

    def selects(self, batch: pa.Table) -> list[bool] | None:
        has_response = [any(m["role"] == "assistant" for m in c or ()) for c in batch["messages"].to_pylist()]
        column = S.SCORE_PREFIX + self.score
        if self.rejudge or column not in batch.column_names:
            return has_response
        return [r and v is None for r, v in zip(has_response, batch[column].to_pylist())]

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:
        return [[self.checklist_request(c)] for c in batch["messages"].to_pylist()]

    def checklist_request(self, messages: list[dict]) -> ChatRequest:
        return ChatRequest(turns(self.checklist_prompt, instruction=instruction_text(messages)), self.checklist_sampling)

    def judge_request(self, messages: list[dict], item: str) -> ChatRequest:
        return ChatRequest(turns(self.judge_prompt, instruction=instruction_text(messages), response=last_response(messages),
                                 question=item), self.judge_sampling)

    def refine_request(self, messages: list[dict], failed: list[str]) -> ChatRequest:
        return ChatRequest(turns(self.refine_prompt, instruction=instruction_text(messages), response=last_response(messages),
                                 failed="\n".join(f"- {q}" for q in failed)), self.refine_sampling)

    # --- the rounds -------------------------------------------------------------------------

    def parse(self, row: dict, completions: list[list[Completion]]) -> Judged | FollowUp:
        messages, pid = row["messages"], prompt_id(row["messages"])
        raw = completions[0][0].text
        items, local = self.parse_items(raw, row), self.local_items(row)
        if not items and not local:
            return Judged({self.score: None}, [self.checklist_verdict([], pid, raw, completions[0][0].finish_reason)])
        k, at = len(items), 1
        if len(completions) < at + k:
            return FollowUp([self.judge_request(messages, q) for q in items])
        judged = self.judgement(items, local, completions[at:at + k], last_response(messages), pid, raw)
        at += k
        current, last, history, first_failed = messages, judged, [], self.failed_items(judged)
        for _ in range(self.rounds):
            failed = self.failed_items(last)
            if not failed:
                break
            if len(completions) == at:
                return FollowUp([self.refine_request(current, failed)])
            rewrite = completions[at][0]
            at += 1
            text = cut_at_labels(rewrite.text, scaffold_labels(self.refine_prompt))
            meta = {**row_meta(row["meta"]), **self.meta(self.refine_sampling, rewrite, generator=self.refiner,
                                                         template=self.refine_version, refined_from=row["id"],
                                                         failed_items=first_failed)}
            truncated = rewrite.finish_reason == "length"  # cut off (a small model repeating itself): not a rewrite
            if not text or text == last_response(current).strip() or truncated:
                if not history:  # nothing refined: the failed rewrite is stored as a drop, under the prompt it answers
                    why = "truncated" if truncated and text else "unchanged" if text else "unparseable"
                    turns_ = [*prompt_turns(messages), {"role": "assistant", "content": rewrite.text.strip() or "(empty output)"}]
                    judged.children = [(self.failed(rewrite.text, why, meta, parent_ids=[row["id"]], messages=turns_), None)]
                break
            candidate = [*prompt_turns(messages), {"role": "assistant", "content": text}]
            if len(completions) < at + k:
                return FollowUp([self.judge_request(candidate, q) for q in items])
            last = self.judgement(items, local, completions[at:at + k], text, prompt_id(candidate), raw)
            at += k
            history.append({"response": text, "failed": self.failed_items(last),
                            "raw_answers": [json.loads(v["detail"])["raw"] for v in last.verdicts[1:]]})
            current = candidate
        if history:
            meta["history"], meta["rounds"] = history[:-1], len(history)
            child = self.child(current, meta, parent_ids=[row["id"]])
            if last.reason:
                child["reason"] = last.reason  # below min_score: stored as a drop, with its judgement
            judged.children = [(child, last)]
        return judged

    def failed_items(self, judged: Judged) -> list[str]:
        return [json.loads(v["detail"])["question"] for v in judged.verdicts[1:] if v["passed"] is False]

    def judgement(self, items: list[str], local, answers: list[list[Completion]], response: str, pid: str, raw: str) -> Judged:
        """Score and verdicts of one response from its judge's answers and its local checks."""
        texts = [a[0].text for a in answers]
        passed = [parse_answer(t) for t in texts]
        verdicts = [self.checklist_verdict(items, pid, raw)]
        verdicts += [self.item_verdict(k, q, t, p, pid, finish=a[0].finish_reason)
                     for k, (q, t, p, a) in enumerate(zip(items, texts, passed, answers))]
        for j, (description, check) in enumerate(local):
            ok = check(response)
            passed.append(ok)
            verdicts.append(self.item_verdict(len(items) + j, description, None, ok, pid, strength="checker"))
        answered = [p for p in passed if p is not None]
        score = sum(answered) / len(answered) if answered else None
        reason = None
        if self.min_score is not None and score is not None and score < self.min_score:
            reason = f"{self.score}<{self.min_score:g} ({score:.3g})"  # a filter's form: kind `<score>`, value in drops
        return Judged({self.score: score}, verdicts, reason)

    def checklist_verdict(self, items: list[str], pid: str, raw: str, finish: str | None = None) -> dict:
        """`finish`: the reply's finish reason, kept when it was not a plain stop (`length`, and
        `prompt_too_long` when the prompt did not fit the engine's context)."""
        strength = "checklist" if items else "unparseable"
        detail = {"kind": strength, "prompt_id": pid, "questions": items, "raw": raw}
        if finish not in (None, "stop"):
            detail["finish_reason"] = finish
        return {"verifier": self.verifier, "passed": None, "strength": strength,
                "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True)}

    def item_verdict(self, k: int, item: str, answer: str | None, passed: bool | None, pid: str, strength: str = "item",
                     finish: str | None = None) -> dict:
        detail = {"kind": "item", "item": k, "question": item, "raw": answer, "prompt_id": pid}
        if finish not in (None, "stop"):
            detail["finish_reason"] = finish
        return {"verifier": self.verifier, "passed": passed, "strength": strength if passed is not None else "unparseable",
                "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True)}
