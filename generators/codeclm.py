"""CodecLM (Wang et al. 2024, "CodecLM: Aligning Language Models with Tailored Synthetic Data",
NAACL 2024 Findings, arXiv:2404.05875): a strong LLM as a codec for instructions.

Per seed instruction (the paper's §4.1 and §4.2; prompts after its Appendix A.9, Figures 7 to 10,
in our own words: generators/prompts/codeclm_*.txt):

1. ENCODE: the seed's metadata, its use case and at most three transferable skills
   (`Use case: ...` / `Skills: a, b, c`; `parse_metadata`).
2. DECODE: `per_seed` new instructions for that use case that need those skills (a numbered
   list; `parse_instructions`), the "basic instructions".
3. SELF-RUBRICS (`rubric_rounds` > 0): rubrics of how demanding an instruction of this metadata
   is, with one action per rubric that would make it more challenging (`parse_rubric`; asked once
   per seed, as the paper asks per metadata); then each basic instruction is rewritten by one
   action picked at random (fixed by `seed`, the seed row and the round), `rubric_rounds` times.

Each final instruction is a new row (origin `codeclm`, parent_ids [the seed], one user turn;
meta: `use_case`, `skills`, and when Self-Rubrics ran `rubric`, `action`, `basic_instruction`,
`history`), which replaces its seed (stored as `expanded`), as Evol-Instruct's rewrites do;
`respond` answers it and `contrastive_filter` (stages/judge/contrastive.py) selects from the
answers (§4.3). Every raw output is kept: a reply that does not parse is a failed row (reason
`unparseable`, `meta.step` naming the step, the raw text in `meta.raw`); an encoding that copies
a worked example's skills is `copied_example`, a rewrite equal to its input `unchanged`. A seed
whose metadata or decoding fails yields no instruction and stays in play, as a failed evolution's
parent does.

Departures: the paper augments metadata by mixing use cases and skills across seeds (A.3) and
decodes per metadata pair; here each seed's own metadata is decoded. The prompts carry worked
examples of ours as earlier turns (three for the encoding, as the paper's; one elsewhere: a small
base model follows a transcript; the paper's decode prompt has none, against copying), and copies
of the examples' lines are dropped. Instructions
whose rewrite ties with the target model are not sent back to Self-Rubrics: the contrastive
filter drops them (docs/judges.md).
"""

from __future__ import annotations

import functools
import hashlib
import re

import pyarrow as pa

from curate.generators.backends.base import ChatRequest, Completion, Sampling
from curate.generators.base import EMPTY_OUTPUT, FollowUp, LLMTask, instruction
from curate.generators.evol import parse_evolved
from curate.generators.prompts_io import template, turns

TEMPLATE_VERSION = "codeclm/1"
MAX_SKILLS = 3  # the paper's encoding prompt: "at most 3 skills"
_ITEM = re.compile(r"^\s*(?:[-*•]|\(?\d{1,2}[.):])\s+")
_USE_CASE = re.compile(r"^\W*(?:use[ _-]?case|task)\W*?\s*[:：]\s*(.*)$", re.IGNORECASE)
_SKILLS = re.compile(r"^\W*skills?\W*?\s*[:：]\s*(.*)$", re.IGNORECASE)
_RUBRICS_HEAD = re.compile(r"^\W*rubrics?\W*?\s*[:：]?\s*\**\s*$", re.IGNORECASE)
_ACTIONS_HEAD = re.compile(r"^\W*actions?\W*?\s*[:：]?\s*\**\s*$", re.IGNORECASE)
# A line where a base model starts a new prompt of the transcript: the answer ended before it.
_NEXT_PROMPT = re.compile(r"^\W*(?:use[ _-]?case|skills?|instruction|action|rubrics?|actions?)\s*[:：]", re.IGNORECASE)


def _clean(text: str, period: bool = True) -> str:
    """Emphasis and quotes removed; a final full stop too when `period` (a label's value)."""
    text = text.strip().strip("*_`\"'“”").strip()
    return text.rstrip(".").strip() if period else text


def _placeholder(text: str) -> bool:
    return not text or (text.startswith("<") and text.endswith(">"))


def parse_metadata(text: str) -> tuple[str, list[str]] | None:
    """(use case, skills) from an encoding reply: the first `Use case:` (or the paper's `Task:`)
    line and the first `Skills:` line, skills split at commas, semicolons and "and", at most
    MAX_SKILLS of at most five words each, repeats removed. None when either is missing, empty or
    a copied placeholder (`<skill>`)."""
    use_case, skills = None, None
    for line in (text or "").splitlines():
        line = line.strip().strip("*").strip()
        if use_case is None and (m := _USE_CASE.match(line)):
            use_case = _clean(m.group(1))
        elif skills is None and (m := _SKILLS.match(line)):
            skills = []
            for part in re.split(r"[,;]|\band\b", m.group(1)):
                skill = _clean(part)
                if skill and not _placeholder(skill) and len(skill.split()) <= 5 and skill.lower() not in map(str.lower, skills):
                    skills.append(skill)
            skills = skills[:MAX_SKILLS]
    if not use_case or _placeholder(use_case) or not skills:
        return None
    return use_case, skills


def _list_items(lines: list[str], skip: frozenset[str], min_words: int, max_items: int) -> list[str]:
    """Numbered or bulleted lines, markers, emphasis and quotes removed, with at least `min_words`
    words, repeats (case-insensitively) and lines in `skip` (lower case) removed."""
    out, seen = [], set(skip)
    for line in lines:
        if not _ITEM.match(line):
            continue
        item = _clean(_ITEM.sub("", line, count=1), period=False)
        key = item.lower().rstrip(".")
        if len(item.split()) < min_words or key in seen:
            continue
        seen.add(key)
        out.append(item)
        if len(out) == max_items:
            break
    return out


def _until_next_prompt(lines: list[str]) -> list[str]:
    """The lines before a base model starts the next prompt of the transcript (a `Use case:` line...)."""
    end = next((i for i, line in enumerate(lines) if _NEXT_PROMPT.match(line) and not _ITEM.match(line)), len(lines))
    return lines[:end]


def example_lines(name: str) -> frozenset[str]:
    """The list items and answers of a prompt file's worked examples (assistant turns), lower case."""
    parts = re.split(r"^<<(user|assistant)>>\n", template(name), flags=re.MULTILINE)
    lines = [line for role, text in zip(parts[1::2], parts[2::2]) if role == "assistant" for line in text.splitlines()]
    return frozenset(_clean(_ITEM.sub("", line, count=1)).lower() for line in lines if line.strip())


@functools.lru_cache(maxsize=None)
def example_skills() -> frozenset[frozenset[str]]:
    """The skill sets of the encoding prompt's worked examples, lower case: a small model copies them."""
    parts = re.split(r"^<<(user|assistant)>>\n", template("codeclm_encode.txt"), flags=re.MULTILINE)
    found = [parse_metadata(text) for role, text in zip(parts[1::2], parts[2::2]) if role == "assistant"]
    return frozenset(frozenset(s.lower() for s in f[1]) for f in found if f)


def parse_instructions(text: str, max_items: int, skip: frozenset[str] = frozenset()) -> list[str]:
    """The instructions of a decoding reply: its numbered or bulleted lines of three words or
    more, up to where a new prompt starts, copies of the worked example and of `skip` removed, at
    most `max_items`. [] when there is none."""
    lines = _until_next_prompt((text or "").splitlines())
    return _list_items(lines, example_lines("codeclm_decode.txt") | skip, 3, max_items)


def parse_rubric(text: str, max_items: int) -> tuple[list[str], list[str]]:
    """(rubrics, actions) of a Self-Rubrics reply: the list items under `Rubrics:` and under
    `Actions:` (two words or more; copies of the worked example removed). Actions are [] when
    the reply has no `Actions:` heading."""
    lines = (text or "").splitlines()
    head = next((i for i, line in enumerate(lines) if _ACTIONS_HEAD.match(line)), None)
    if head is None:
        return _list_items(lines, example_lines("codeclm_rubric.txt"), 2, max_items), []
    before = [line for line in lines[:head] if not _RUBRICS_HEAD.match(line)]
    skip = example_lines("codeclm_rubric.txt")
    return _list_items(before, skip, 2, max_items), _list_items(_until_next_prompt(lines[head + 1:]), skip, 2, max_items)


def parse_improved(text: str) -> str | None:
    """The improved instruction of a rewrite reply (Evol-Instruct's reader: headers such as
    `Improved instruction:`, an opening line, quotes and a closing explanation dropped), cut
    where a base model starts a new `Action:` / `Instruction:` prompt. None when nothing is left."""
    lines = (text or "").strip().splitlines()
    end = next((i for i, line in enumerate(lines) if i and _NEXT_PROMPT.match(line)), len(lines))
    return parse_evolved("\n".join(lines[:end]))


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


class CodecLM(LLMTask):
    """CodecLM's encode, decode and Self-Rubrics rounds (module docstring). Params: `backend` (the
    strong LLM), `per_seed` (instructions decoded per seed), `rubric_rounds` (Self-Rubrics
    rewrites per instruction; 0: off), `num_rubrics` (rubrics and actions asked for), sampling
    (`temperature`, `top_p`, `max_tokens` for a decoding or a rewrite, `encode_max_tokens`,
    `rubric_max_tokens`), `seed`, `cache`. Raises ValueError for `per_seed` or `num_rubrics`
    below 1, `rubric_rounds` below 0, or a backend without a model."""

    name = generator = "codeclm"
    origin = "codeclm"
    template_version = TEMPLATE_VERSION

    def __init__(self, backend: dict, per_seed: int = 3, rubric_rounds: int = 1, num_rubrics: int = 4,
                 temperature: float = 0.7, top_p: float = 1.0, max_tokens: int = 512, encode_max_tokens: int = 64,
                 rubric_max_tokens: int = 384, seed: int = 0, cache: str | None = None):
        if per_seed < 1 or num_rubrics < 1 or rubric_rounds < 0:
            raise ValueError("per_seed and num_rubrics must be at least 1, rubric_rounds at least 0")
        super().__init__(backend, cache)
        self.per_seed, self.rubric_rounds, self.num_rubrics, self.seed = per_seed, rubric_rounds, num_rubrics, seed
        self.encode_sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=encode_max_tokens, seed=seed)
        self.sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        self.rubric_sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=rubric_max_tokens, seed=seed)

    # --- requests ---------------------------------------------------------------------------

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:
        return [[ChatRequest(turns("codeclm_encode.txt", instruction=instruction(m)), self.encode_sampling)]
                for m in batch["messages"].to_pylist()]

    def decode_request(self, use_case: str, skills: list[str]) -> ChatRequest:
        return ChatRequest(turns("codeclm_decode.txt", n=str(self.per_seed), use_case=use_case, skills=", ".join(skills)),
                           self.sampling)

    def rubric_request(self, use_case: str, skills: list[str]) -> ChatRequest:
        return ChatRequest(turns("codeclm_rubric.txt", k=str(self.num_rubrics), use_case=use_case, skills=", ".join(skills)),
                           self.rubric_sampling)

    def improve_request(self, action: str, text: str) -> ChatRequest:
        return ChatRequest(turns("codeclm_improve.txt", action=action, instruction=text), self.sampling)

    def action_for(self, row_id: str, k: int, round_: int, actions: list[str]) -> str:
        """One action, uniform over the seed's actions, fixed by (seed, row, instruction, round)."""
        h = hashlib.blake2b(f"{self.seed}:{row_id}:{k}:{round_}".encode(), digest_size=8).digest()
        return actions[int.from_bytes(h, "little") % len(actions)]

    # --- the rounds -------------------------------------------------------------------------

    def parse(self, row: dict, completions: list[list[Completion]]) -> list[dict] | FollowUp:
        """Rounds, read from how many completions the row has: encode (1), decode (2), rubric (3),
        then one rewrite per instruction per Self-Rubrics round."""
        pid = [row["id"]]
        encoded = completions[0][0]
        metadata = parse_metadata(encoded.text)
        if metadata is None:
            return [self.failed(encoded.text, "unparseable", self.meta(self.encode_sampling, encoded, step="encode"), parent_ids=pid)]
        use_case, skills = metadata
        if frozenset(s.lower() for s in skills) in example_skills():  # a worked example's answer, copied
            return [self.failed(encoded.text, "copied_example", self.meta(self.encode_sampling, encoded, step="encode"),
                                parent_ids=pid)]
        found = {"use_case": use_case, "skills": skills}
        if len(completions) == 1:
            return FollowUp([self.decode_request(use_case, skills)])
        decoded = completions[1][0]
        basics = parse_instructions(decoded.text, self.per_seed, frozenset({_clean(instruction(row["messages"])).lower()}))
        if not basics:
            return [self.failed(decoded.text, "unparseable", self.meta(self.sampling, decoded, step="decode", **found), parent_ids=pid)]
        if not self.rubric_rounds:
            return [self.child([{"role": "user", "content": b}], self.meta(self.sampling, decoded, **found), parent_ids=pid)
                    for b in basics]
        if len(completions) == 2:
            return FollowUp([self.rubric_request(use_case, skills)])
        rubric_raw = completions[2][0]
        rubrics, actions = parse_rubric(rubric_raw.text, self.num_rubrics)
        if not actions:  # the basic instructions stand; the rubric reply is kept as a failed row
            failed = self.failed(rubric_raw.text, "unparseable", self.meta(self.rubric_sampling, rubric_raw, step="rubric", **found),
                                 parent_ids=pid)
            return [*(self.child([{"role": "user", "content": b}], self.meta(self.sampling, decoded, **found), parent_ids=pid)
                      for b in basics), failed]
        return self.self_rubrics(row, completions, basics, rubrics, actions, found)

    def self_rubrics(self, row: dict, completions: list[list[Completion]], basics: list[str], rubrics: list[str],
                     actions: list[str], found: dict) -> list[dict] | FollowUp:
        """Each basic instruction rewritten `rubric_rounds` times, one action each time. A rewrite
        that does not parse or changes nothing ends that instruction's rounds (stored as a failed
        row); the instruction stands at its last good version."""
        k, at = len(basics), 3
        current = list(basics)
        last: list[Completion | None] = [None] * k
        history: list[list[dict]] = [[] for _ in basics]
        live = list(range(k))
        failed_rows = []
        for r in range(self.rubric_rounds):
            if not live:
                break
            if len(completions) < at + len(live):
                return FollowUp([self.improve_request(self.action_for(row["id"], j, r, actions), current[j]) for j in live])
            still = []
            for j, answer in zip(live, completions[at: at + len(live)]):
                out, action = answer[0], self.action_for(row["id"], j, r, actions)
                improved = parse_improved(out.text)
                if improved is None or _norm(improved) == _norm(current[j]):
                    meta = self.meta(self.sampling, out, step="improve", action=action, rubric=rubrics, basic_instruction=basics[j],
                                     **found)
                    attempt = [{"role": "user", "content": current[j]}, {"role": "assistant", "content": out.text.strip() or EMPTY_OUTPUT}]
                    failed_rows.append(self.failed(out.text, "unparseable" if improved is None else "unchanged", meta,
                                                   parent_ids=[row["id"]], messages=attempt))
                    continue
                history[j].append({"instruction": current[j], "action": action})
                current[j], last[j] = improved, out
                still.append(j)
            at += len(live)
            live = still
        rows = []
        for j in range(k):
            extra = {**found, "basic_instruction": basics[j], "rubric": rubrics}
            if history[j]:
                extra.update(action=history[j][-1]["action"], history=history[j][:-1], rounds=len(history[j]))
            rows.append(self.child([{"role": "user", "content": current[j]}],
                                   self.meta(self.sampling, last[j] or completions[1][0], **extra), parent_ids=[row["id"]]))
        return rows + failed_rows
