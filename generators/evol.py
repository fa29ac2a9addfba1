"""Evol-Instruct (WizardLM): rewrite each instruction with one in-depth operation (add
constraints, deepen, concretise, increase reasoning steps, complicate the input) or the
in-breadth mutation, answer the evolved instruction, and eliminate failed evolutions.

One stage is one generation; list `evol_instruct` several times (with `generation: 2`, ...) for
several rounds. A successful evolution replaces its parent (stored as `expanded`) with a new row
(origin `evol`). A failed one is a recorded drop, with what the model wrote, and the parent
stays in the pool unchanged, to be retried by the next round, as in the paper.

Elimination rules (ALGORITHMS.md §6), applied to the evolved instruction and its response:
`unparseable` (no rewritten prompt in the output once a chat model's opening line, headers,
quotes or fence and closing explanation are dropped: `parse_evolved`), `copied_scaffold` (the prompt's markers
leaked into the instruction), `no_information_gain` (the evolved instruction equals the
original once normalised; the paper's LLM "equal" judge is not used), `refusal_response`
("sorry" in a response under 80 words), `empty_response` (only punctuation and stop words).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import pyarrow as pa

from curate.generators.backends.base import ChatRequest, Completion, Sampling
from curate.generators.base import FollowUp, LLMTask, instruction, row_meta, sampling_record
from curate.generators.prompts_io import fill, template
from curate.generators.replies import is_closer, is_interjection, trailing_remarks, unwrap

TEMPLATE_VERSION = "evol/2"
OPERATIONS = ("constraints", "deepen", "concretize", "reasoning", "complicate_input", "breadth")
SCAFFOLD = ("#the given prompt#", "#rewritten prompt#", "#given prompt#", "#created prompt#",
            "given prompt", "rewritten prompt", "created prompt")
STOPWORDS = frozenset("a an the and or but if of to in on at for with is are was were be been it this that i you he she we they".split())
_PROMPT_WORDS = (r"(?:rewritten|created|new|revised|evolved|updated|modified|improved|harder|tougher|complicated|final|"
                 r"more (?:complex|difficult|challenging|detailed|specific|advanced|demanding))")
# A header line that introduces the answer: `#Rewritten Prompt#:`, `**Rewritten Prompt:**`,
# `### New Prompt`, `Rewritten prompt: <text>`, `The Rewritten Prompt:`.
_HEADER = re.compile(
    rf"^\s*(?:#+\s*)?(?:\*\*|__)?\s*#?\s*(?:the\s+|my\s+)?{_PROMPT_WORDS}\s+(?:prompt|instruction|question|task|version)\s*#*\s*"
    r"(?:\([^()\n]{0,40}\)\s*)?"
    r"(?:\*\*|__)?\s*(?:[:\-–—]|(?=\s*$))\s*(?:\*\*|__)?\s*#*\s*", re.IGNORECASE)
# An opening line that announces the rewrite: "Here is the rewritten prompt:", "Rewriting the prompt:".
_OPENER = re.compile(rf"^\W*(?:here(?:'s|’s| is)|below is|i(?:'ve|’ve| have)|this is|(?:the|my) {_PROMPT_WORDS}\s+\w+\s+(?:is|would be|reads))\b"
                     rf".*\b{_PROMPT_WORDS}\b.*[:.!]\s*$|^\W*(?:the|my) {_PROMPT_WORDS}\s+\w+\s+(?:is|would be|reads)\b.*:"
                     r"|^\W*rewriting\b.*:\s*$", re.IGNORECASE)
_LEADING_FENCE = re.compile(r"^(?:```|~~~)[\w+.-]*[ \t]*\n(.*?)\n[ \t]*(?:```|~~~)[ \t]*(?:\n|$)", re.DOTALL)
# An opening line with the answer after its colon: "Sure, here's a harder version: Explain ...".
_INLINE = re.compile(rf"^[^:\n]{{0,80}}\b{_PROMPT_WORDS}\b[^:\n]{{0,40}}:\s*(\S.*)$", re.IGNORECASE)
# A label that ends the answer: `#Explanation#:`, `#Given Prompt#`, `**Explanation:**`.
_LABEL = re.compile(r"^\s*(?:#[^#\n]{2,40}#\s*:?\s*$|#[^#\n]{2,40}#\s*:|(?:\*\*|__)?(?:explanation|rationale|reasoning|changes(?: made)?|notes?|"
                    r"what changed|why)\b[^\n]{0,20}?:)", re.IGNORECASE)
# A paragraph after the answer that explains the rewrite.
_EXPLANATION = re.compile(
    rf"^\W*(?:(?:this|the|in this|in the|my)\s+{_PROMPT_WORDS}\s+(?:prompt|version|instruction|question|task)|"
    r"this (?:version|prompt|rewrite|revision|adds|requires|introduces|makes|increases|incorporates|asks|keeps|forces|now)\b|"
    r"(?:this|the) (?:rewrite|revision|change|new version)|"
    r"i(?:'ve|’ve| have)? (?:added|replaced|introduced|made|included|increased|changed|kept|rewritten|asked|specified|required)|"
    r"(?:by|with) (?:adding|asking|requiring|specifying|replacing|introducing)|the (?:added|new|extra) (?:constraint|requirement|condition)|"
    r"explanation|rationale|changes? made|key changes|note\b|why this)", re.IGNORECASE)
# Chat where the answer should be: "Let me know if ...".
_SIGN_OFF = re.compile(r"^\W*(?:(?:please |do )?let me know (?:if|whether)|feel free|i hope|hope (?:this|these) help|is there anything)", re.IGNORECASE)
# A model that declined to rewrite.
_DECLINED = re.compile(r"^\W*(?:i(?:'m|’m| am) sorry|sorry\b|i (?:can(?:no|')t|cannot|won't|am unable|'m unable)|as an ai\b|unfortunately,? i)",
                       re.IGNORECASE)


def methods() -> dict[str, str]:
    return dict(line.split("\t", 1) for line in template("evol_methods.txt").splitlines() if "\t" in line)


def evolution_prompt(operation: str, instruction: str) -> str:
    if operation == "breadth":
        return fill("evol_breadth.txt", prompt=instruction)
    if operation == "complicate_input":  # the paper's fifth method; not in the released code, so written here with one demo
        return fill("evol_complicate_input.txt", prompt=instruction)
    return fill("evol_depth.txt", method=methods()[operation], prompt=instruction)


def parse_evolved(text: str) -> str | None:
    """The rewritten prompt out of a completion. A base model continues after the prompt's
    `#Rewritten Prompt#:`; a chat model often opens ("Sure, here is the rewritten prompt:"),
    repeats a header (`#Rewritten Prompt#:`, `**Rewritten Prompt:**`, `### New Prompt`), may
    echo the given prompt first, wraps the answer in quotes or a code fence and explains its
    changes after it. The text after the last header is the answer; an opening line before it,
    a fence or quotes around it and a closing explanation are dropped (generators/replies.py).
    None when nothing is left, or the model declined."""
    lines = text.replace("\r\n", "\n").strip().split("\n")
    headers = [i for i, line in enumerate(lines) if _HEADER.match(line)]
    if headers:  # the answer follows the last header; what came before (an echo, chat) is dropped
        i = headers[-1]
        lines = [lines[i][_HEADER.match(lines[i]).end():], *lines[i + 1:]]
    else:  # opening lines: blank, "Sure!", "Here is the rewritten prompt:"; one may carry the answer after its colon
        while lines and (not lines[0].strip() or is_interjection(lines[0]) or _OPENER.match(lines[0])):
            inline = _INLINE.match(lines[0])
            lines = ([inline.group(1)] if inline else []) + lines[1:]
            if inline:
                break
    body = "\n".join(lines).strip()
    fenced = _LEADING_FENCE.match(body)
    if fenced:  # the answer in a code fence, perhaps remarks after it; a prompt that opens with code goes on
        after = body[fenced.end():].strip()
        if not after or _EXPLANATION.match(after) or _LABEL.match(after) or is_closer(after.split("\n")[0], True):
            body = fenced.group(1)
    lines = body.split("\n")
    end = next((i for i, line in enumerate(lines) if i and _LABEL.match(line)), len(lines))  # "#Explanation#:"
    lines = lines[:end]
    lines = lines[:trailing_remarks(lines, _EXPLANATION)]
    answer = unwrap("\n".join(lines))
    if not answer or _DECLINED.match(answer) or _SIGN_OFF.match(answer):
        return None
    return answer


def elimination_reason(original: str, evolved: str | None, response: str | None) -> str | None:
    if not evolved:
        return "unparseable"
    low = evolved.lower()
    if any(marker in low for marker in SCAFFOLD):
        return "copied_scaffold"
    if _norm(evolved) == _norm(original):
        return "no_information_gain"
    if response is not None:
        if "sorry" in response.lower() and len(response.split()) < 80:
            return "refusal_response"
        if not any(w not in STOPWORDS for w in re.findall(r"[^\W_]+", response.lower())):
            return "empty_response"
    return None


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


class EvolInstruct(LLMTask):
    """One Evol-Instruct generation over a batch (Xu et al. 2023, WizardLM, arXiv:2304.12244).
    Per row: its first user turn rewritten by the operation `operation_for(id)` picks
    (`evolution_prompt`), then, when the rewrite survives elimination, the rewrite answered. A
    success is a new row [user: rewrite, assistant: answer] (origin `evol`) that replaces its
    parent; a failure is a dropped row with the reason (`elimination_reason`) and the raw
    rewrite in `meta.raw`, its parent kept. `meta`: the LLM task meta (generators/base.py) of
    the answer call (`sampling`, `finish_reason`: None without an answer; `completion_tokens`
    of both calls), with `operation`, `generation`, `evolve_finish_reason`, `evolve_sampling`.
    Rows whose meta has a `keep_verifiable` key pass through. Raises ValueError for unknown
    operations or a backend without a model."""

    name = "evol_instruct"
    generator = "evol_instruct"
    origin = "evol"
    template_version = TEMPLATE_VERSION
    # As Respond: whole shards per engine call, two at a time in one actor, so one shard's calls
    # are queued in the engine while the other's last sequences finish. Each batch is evolved on its own.

    def __init__(self, backend: dict, operations: Sequence[str] = OPERATIONS, generation: int = 1,
                 temperature: float = 1.0, top_p: float = 0.95, max_tokens: int = 2048, response_max_tokens: int = 2048,
                 seed: int = 0, keep_verifiable: Sequence[str] = ("tests", "answer"), cache: str | None = None):
        unknown = set(operations) - set(OPERATIONS)
        if unknown or not operations:
            raise ValueError(f"operations must be among {OPERATIONS}, got {sorted(unknown) or 'none'}")
        self.operations = list(operations)
        self.generation = generation
        self.seed = seed
        self.evolve_sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed + generation)
        self.answer_sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=response_max_tokens, seed=seed + generation)
        super().__init__(backend, cache)
        # Rows whose meta holds any of these keys (unit tests, a reference answer) pass through
        # unevolved: a rewritten task would no longer match them, and the verifiers need them.
        self.keep_verifiable = list(keep_verifiable)

    def operation_for(self, sample_id: str) -> str:
        """Uniform over the operations, fixed by (seed, generation, row): reruns pick the same."""
        h = hashlib.blake2b(f"{self.seed}:{self.generation}:{sample_id}".encode(), digest_size=8).digest()
        return self.operations[int.from_bytes(h, "little") % len(self.operations)]

    def selects(self, batch: pa.Table) -> list[bool] | None:
        if not self.keep_verifiable:
            return None
        return [not any(k in m for k in self.keep_verifiable) for m in map(row_meta, batch["meta"].to_pylist())]

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:
        return [[ChatRequest([{"role": "user", "content": evolution_prompt(self.operation_for(i), instruction(conv))}], self.evolve_sampling)]
                for i, conv in zip(batch["id"].to_pylist(), batch["messages"].to_pylist())]

    def parse(self, row: dict, completions: list[list[Completion]]) -> list[dict] | FollowUp:
        """Round one: the rewrite; a rewrite that passes the instruction's rules is answered
        (a FollowUp). Then the row: the evolved pair, or the failure with the raw rewrite."""
        original = instruction(row["messages"])
        raw = completions[0][0]
        evolved = parse_evolved(raw.text)
        if len(completions) == 1 and evolved and elimination_reason(original, evolved, None) is None:
            return FollowUp([ChatRequest([{"role": "user", "content": evolved}], self.answer_sampling)])
        answer = completions[1][0] if len(completions) > 1 else None
        response = answer.text.strip() if answer else None
        reason = elimination_reason(original, evolved, response)
        messages = [{"role": "user", "content": evolved or raw.text or "(empty output)"}]
        if response:
            messages.append({"role": "assistant", "content": response})
        meta = self.meta(self.answer_sampling, answer, before=[raw], tokens=("completion_tokens",),
                         operation=self.operation_for(row["id"]), generation=self.generation,
                         evolve_finish_reason=raw.finish_reason, evolve_sampling=sampling_record(self.evolve_sampling))
        if reason:
            return [self.failed(raw.text, reason, meta, messages=messages, parent_ids=[row["id"]])]
        return [self.child(messages, meta, parent_ids=[row["id"]])]
