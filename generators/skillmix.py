"""Instruct-SkillMix (Kaur et al. 2025): extract skills from seed data with the LLM, then have
it write (instruction, response) pairs that need a random pair of them.

Per pool of seed rows, which is a shard: the stage sees each shard's live rows at once, sorted
by (`_row`, `id`) (`pool = "shard"`, see pipeline/dag.py):
1. Extraction: one call per seed asks for the skills the task needs, each with a one-sentence
   definition. The skills go into the seed's `meta.skills_extracted` (the seed stays in the
   pool); the `skills` view lists them all. A reply with no skill in it is a drop
   (`unparseable`) with its raw text.
2. Generation: `per_seed` new pairs per seed row. For each, the skill list is shuffled and the
   first `k` (2 by default) taken, and a query type assigned from the tiled, shuffled list of
   types, as the authors' code does. One call writes the pair; with `refine`, a second turn
   critiques it as the asker would and rewrites it (the paper's turns 3-4). Unparseable or
   cut-off pairs are drops (with `refine`, the draft's raw text is kept too). Both parsers
   read the shapes chat models reply in (other list and header styles, an opening line, a
   closing note: generators/replies.py). `meta.skills` holds the skills with their definitions; `parent_ids`
   are the seeds the skills came from.
The shard is the skill pool, so its prompts are fixed by its rows and the seed, whatever Ray
Data's batching, the order shards arrive in, or which shards a resumed run streams; reruns and
resumed runs hit the cache.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence

import pyarrow as pa

from curate.generators.backends.base import ChatRequest, Sampling
from curate.generators.base import LLMTask, generated_table, instruction, row_meta
from curate.generators.prompts_io import fill, template
from curate.generators.replies import is_closer, is_interjection, is_opener, trailing_remarks, unwrap
from curate.generators.self_instruct import pool_digest
from curate.stages.base import Resources, StageResult

TEMPLATE_VERSION = "skillmix/1"
QUERY_TYPES = ("question", "request for advice", "creative writing request", "request to explain a concept",
               "problem to solve", "request to edit or rewrite a text", "comparison request", "planning request")
_SKILL_LINE = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:[-*•]\s*|\d+\s*[.)]\s*)?(?:\*\*|__)?\s*(?:skill(?:\s+name)?\s*#?\s*\d*\s*:\s*|name\s*:\s*)?(?:\*\*|__)?"
    r"(?P<name>[^|:\n*]{2,80}?)\s*(?:\*\*|__)?\s*(?:\||:|\s[-–—]\s)\s*(?:\*\*|__)?\s*(?P<definition>\S.{4,})$",
    re.IGNORECASE)
# A skill named alone on its line, its definition on the next: "### Skill 1: Arithmetic",
# "1. **Arithmetic**", "- Name: Arithmetic". Structure (a marker, bold, a label) is required.
_NAME_LINE = re.compile(
    r"^\s*(?:(?:#{1,6}\s*|[-*•]\s*|\d+\s*[.)]\s*)(?:\*\*|__)?\s*(?:skill(?:\s+name)?\s*#?\s*\d*\s*:\s*|name\s*:\s*)?|"
    r"(?:\*\*|__)\s*(?:skill(?:\s+name)?\s*#?\s*\d*\s*:\s*|name\s*:\s*)?|(?:skill(?:\s+name)?\s*#?\s*\d*\s*:\s*|name\s*:\s*))"
    r"(?:\*\*|__)?\s*(?P<name>[^|:\n*.?!]{2,60}?)\s*(?:\*\*|__)?\s*:?\s*(?:\*\*|__)?\s*$", re.IGNORECASE)
_DEFINITION_LINE = re.compile(r"^\s*(?:[-*•]\s*)?(?:\*\*|__)?\s*(?:definition|description|meaning)\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*(?P<definition>\S.*)$",
                              re.IGNORECASE)
_DEFINITION_LABEL = re.compile(r"^(?:\*\*|__)?\s*(?:definition|description)\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*", re.IGNORECASE)
_NOT_A_SKILL = re.compile(r"^(?:notes?|skills?|definitions?|names?|summary|examples?|total|answer|response|task|instruction|"
                          r"here\b.*|these\b.*|the (?:skills|above|following)\b.*|in summary|overall|sure\b.*|certainly\b.*)$", re.IGNORECASE)
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(?:\|\s*:?-{2,}:?\s*)*\|?\s*$")
# The pair's headers, in tiers: the prompt's own words first; other words only when they are absent,
# so a response quoting "Question: ... Answer: ..." is not taken for the pair.
_PAIR_WORDS = [("instruction", "response"),
               ("request|user request|query|user query|prompt|user prompt|task", "answer|assistant response|assistant answer|reply|output"),
               ("user|question", "assistant|answer")]
# Meta text after the response: the skills it uses, a critique, an offer of more.
_PAIR_REMARK = re.compile(
    r"^\W*(?:(?:this|the) (?:request|instruction|pair|example|query|question|response|answer|exchange)\s+(?:\w+\s+)?"
    r"(?:requires|needs|tests|combines|uses|draws|demonstrates|exercises|calls|involves|blends|showcases|highlights|shows)|"
    r"skills? (?:used|required|tested|demonstrated|needed|involved|applied|combined)|(?:both )?skills? (?:are|is)\b|"
    r"critique|explanation|note\b|notes\b|why this|let me know if you(?:'d|’d| would)? (?:like|want|need) (?:me to )?(?:\w+ ){0,3}"
    r"(?:another|more|a different|changes|adjust|modif|tweak|revis)|feel free to (?:ask|request|let me know))", re.IGNORECASE)


def parse_skills(text: str, max_skills: int = 10) -> list[dict]:
    """[{name, definition}] from a reply listing skills: `Skill: name | definition` as asked,
    or the shapes chat models use instead (`- name: definition`, `1. **name** — definition`,
    a Markdown table, a name line with its definition below). Opening lines, headings and
    closing notes are not skills."""
    skills, seen = [], set()
    pending = None  # a name alone on its line, waiting for its definition
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line or _TABLE_RULE.match(line) or line.startswith(("```", "~~~")):
            continue
        if line.startswith("|"):  # a table row: | name | definition |
            line = " | ".join(cell.strip() for cell in line.strip("|").split("|")[:2])
        if pending is not None:
            d = _DEFINITION_LINE.match(line)
            if d or not (_SKILL_LINE.match(line) or _NAME_LINE.match(line) or is_opener(line) or is_closer(line, True)):
                pending, name = None, pending
                if _add_skill(skills, seen, name, d.group("definition") if d else line):
                    continue
            pending = None
        if is_interjection(line) or is_closer(line, True):
            continue
        m = _SKILL_LINE.match(line)
        if m and not _DEFINITION_LINE.match(line) and _add_skill(skills, seen, m.group("name"), m.group("definition")):
            continue
        n = _NAME_LINE.match(line)
        if n:
            pending = n.group("name")
    return skills[:max_skills]


def _add_skill(skills: list[dict], seen: set, name: str, definition: str) -> bool:
    """Add the skill if it is one (a short name, a definition of three words or more); a
    duplicate counts as read."""
    name = " ".join(unwrap(name.strip(" \"'`")).split()).rstrip(":")
    definition = " ".join(unwrap(_DEFINITION_LABEL.sub("", definition.strip())).split())
    words = name.split()
    real_words = re.findall(r"[^\W\d_]{2,}", definition)
    if not 1 <= len(words) <= 8 or not any(c.isalpha() for c in name) or len(real_words) < 3 or _NOT_A_SKILL.match(name):
        return False
    key = skill_key(name)
    if key not in seen:
        seen.add(key)
        skills.append({"name": name, "definition": definition})
    return True


def skill_key(name: str) -> str:
    return "_".join(re.findall(r"[^\W_]+", name.lower()))


def _header(words: str) -> re.Pattern:
    """A header line: `## Instruction`, `**Instruction:**`, `Instruction: <text>`, `### Request`."""
    return re.compile(rf"^\s*(?:#{{1,6}}\s*)?(?:\*\*|__)?\s*(?:{words})\s*(?:\*\*|__)?\s*"
                      rf"(?::\s*(?:\*\*|__)?\s*(?P<rest>.*)|(?:\*\*|__)?\s*#*\s*$)", re.IGNORECASE)


_PAIR_HEADERS = [(_header(i), _header(r)) for i, r in _PAIR_WORDS]
_SECTION = re.compile(r"^\s*(?:#{1,6}\s*|(?:\*\*|__))\s*(?:skills?|critique|explanation|notes?|why)\b", re.IGNORECASE)


def parse_pair(text: str) -> tuple[str, str] | None:
    """(instruction, response) from the last `## Instruction … ## Response …` block (a refined
    reply may quote the first draft before its rewrite). Chat around the pair is dropped: an
    opening line, a closing section about the skills or an offer of more (generators/replies.py)."""
    lines = text.replace("\r\n", "\n").split("\n")
    for instruction_header, response_header in _PAIR_HEADERS:
        if any(instruction_header.match(line) for line in lines):  # the first words the reply uses decide
            return _pair_in(lines, instruction_header, response_header)
    return None


def _pair_in(lines: list[str], instruction_header: re.Pattern, response_header: re.Pattern) -> tuple[str, str] | None:
    marks = [(i, "i" if instruction_header.match(line) else "r") for i, line in enumerate(lines)
             if instruction_header.match(line) or response_header.match(line)]
    pairs = [(a, b) for (a, ka), (b, kb) in zip(marks, marks[1:]) if ka == "i" and kb == "r"]
    if not pairs:
        return None
    i, r = pairs[-1]
    nxt = next((j for j, k in marks if j > r and k == "i"), len(lines))  # a later instruction without a response: a cut-off rewrite
    if nxt < len(lines):
        return None
    first = instruction_header.match(lines[i]).group("rest") or ""
    instruction = unwrap(" ".join(" ".join([first, *lines[i + 1:r]]).split()))
    body = [response_header.match(lines[r]).group("rest") or "", *lines[r + 1:]]
    end = next((j for j, line in enumerate(body) if j and _SECTION.match(line)), len(body))
    body = body[:end]
    response = "\n".join(body[:trailing_remarks(body, _PAIR_REMARK)]).strip()
    while response.endswith(("---", "***")):
        response = response[:-3].rstrip()
    return (instruction, response) if instruction and response else None


def skills_block(skills: list[dict]) -> str:
    return "\n".join(f"- {s['name']}: {s['definition']}" for s in skills)


class SkillMix(LLMTask):
    """Instruct-SkillMix over one pool, a shard (Kaur et al. 2025, arXiv:2408.14774). Extraction
    writes each row's skills into its `meta.skills_extracted` (the rows stay kept); generation
    makes new (instruction, response) rows (origin `skillmix`, `parent_ids` the rows whose
    skills they mix). Drops: `unparseable` (no skill, no pair in the reply) and `truncated`,
    with the raw reply in `meta.raw` (and `meta.raw_draft` with `refine`). `meta`: the LLM task
    meta (generators/base.py; `completion_tokens` of the final reply) with `step` (`extract`,
    `generate`) and, for pairs, `skills`, `query_type`, `k`, `refined`. Its flow (a pool) is its
    own `__call__`. Raises ValueError for bad `k`, `per_seed` or `query_types`, or a backend
    without a model."""

    name = "skillmix"
    generator = "skillmix"
    origin = "skillmix"
    template_version = TEMPLATE_VERSION
    # One actor gathers each shard; two shards at a time keep the engine fed (as Self-Instruct).
    resources = Resources(num_cpus=0.1, actor=True, concurrency=1, calls_per_actor=2)
    batch_size = None  # whole blocks, unsliced: the pool is the shard whatever the batch
    pool = "shard"

    def __init__(self, backend: dict, per_seed: float = 1.0, k: int = 2, max_skills: int = 5,
                 query_types: Sequence[str] = QUERY_TYPES, refine: bool = False, temperature: float = 0.7,
                 top_p: float = 1.0, max_tokens: int = 1024, extract_max_tokens: int = 256, seed: int = 0,
                 cache: str | None = None):
        if k < 1 or per_seed <= 0 or not query_types:
            raise ValueError("k must be at least 1, per_seed > 0, and query_types not empty")
        self.per_seed, self.k, self.max_skills, self.refine, self.seed = per_seed, k, max_skills, refine, seed
        self.query_types = list(query_types)
        self.extract_sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=extract_max_tokens, seed=seed)
        self.sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        super().__init__(backend, cache)

    def __call__(self, batch: pa.Table) -> StageResult:
        ids = batch["id"].to_pylist()
        convs = batch["messages"].to_pylist()
        instructions = [instruction(c) for c in convs]
        replies = self.backend.generate([
            ChatRequest([{"role": "user", "content": fill("skillmix_extract.txt", instruction=ins, max_skills=str(self.max_skills))}],
                        self.extract_sampling) for ins in instructions])
        rows, pool, metas = [], [], []
        for i, (c, *_) in enumerate(replies):
            skills = parse_skills(c.text, self.max_skills)
            meta = row_meta(batch["meta"][i].as_py())
            meta["skills_extracted"] = skills
            metas.append(json.dumps(meta, sort_keys=True))
            if not skills:
                rows.append(self.failed(c.text, "unparseable", self.meta(self.extract_sampling, c, tokens=(), step="extract"),
                                        parent=i, parent_ids=[ids[i]]))
            pool.extend((s, i) for s in skills)
        kept = batch.set_column(batch.column_names.index("meta"), "meta", pa.array(metas, pa.string()))
        rows.extend(self._generate(pool, ids))
        return StageResult(kept=kept, generated=generated_table(rows), parents_stay=True)

    def _generate(self, pool: list[tuple[dict, int]], ids: list[str]) -> list[dict]:
        if len(pool) < self.k:
            return []
        rng = random.Random(f"{self.seed}:{pool_digest(ids)}")  # fixed by the pool, not by call order
        n = math.ceil(self.per_seed * len(ids))
        types = (self.query_types * math.ceil(n / len(self.query_types)))[:n]
        rng.shuffle(types)
        plans = []
        for qtype in types:
            order = list(range(len(pool)))
            rng.shuffle(order)
            plans.append(([pool[j] for j in order[: self.k]], qtype))
        prompts = [[{"role": "user", "content": fill("skillmix_generate.txt", query_type=qtype, skills=skills_block([s for s, _ in chosen]))}]
                   for chosen, qtype in plans]
        first = self.backend.generate([ChatRequest(p, self.sampling) for p in prompts])
        finals = [c for c, *_ in first]
        if self.refine:
            dialogues = [[*p, {"role": "assistant", "content": c.text}, {"role": "user", "content": template("skillmix_refine.txt")}]
                         for p, c in zip(prompts, finals)]
            finals = [c for c, *_ in self.backend.generate([ChatRequest(d, self.sampling) for d in dialogues])]
        rows = []
        for (chosen, qtype), c, (draft, *_) in zip(plans, finals, first):
            skills = [s for s, _ in chosen]
            parent_ids = list(dict.fromkeys(ids[i] for _, i in chosen))
            meta = self.meta(self.sampling, c, tokens=("completion_tokens",), step="generate", skills=skills, query_type=qtype,
                             k=self.k, refined=self.refine)
            pair = parse_pair(c.text)
            reason = "unparseable" if pair is None else ("truncated" if c.finish_reason == "length" else None)
            messages = None if pair is None else [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
            if reason:
                drafts = {"raw_draft": draft.text} if self.refine else {}  # the draft the critique turn rewrote
                rows.append(self.failed(c.text, reason, meta, messages=messages, parent=chosen[0][1], parent_ids=parent_ids, **drafts))
            else:
                rows.append(self.child(messages, meta, parent=chosen[0][1], parent_ids=parent_ids))
        return rows
