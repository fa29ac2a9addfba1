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
   cut-off pairs are drops. `meta.skills` holds the skills with their definitions; `parent_ids`
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

import pyarrow as pa

from curate.generators.backends.base import ChatRequest, Sampling
from curate.generators.prompts_io import fill, template
from curate.generators.respond import stage_backend
from curate.generators.self_instruct import pool_digest
from curate.stages.base import Resources, Stage, StageResult
from curate.storage import schema as S

TEMPLATE_VERSION = "skillmix/1"
QUERY_TYPES = ("question", "request for advice", "creative writing request", "request to explain a concept",
               "problem to solve", "request to edit or rewrite a text", "comparison request", "planning request")
_SKILL_LINE = re.compile(
    r"^\s*(?:[-*•]\s*|\d+\s*[.)]\s*)?(?:\*\*)?(?:skill\s*\d*\s*:\s*)?(?:\*\*)?"
    r"(?P<name>[^|:\n*]{2,80}?)\s*(?:\*\*)?\s*(?:\||:|\s[-–—]\s)\s*(?P<definition>\S.{4,})$",
    re.IGNORECASE | re.MULTILINE)
_INSTRUCTION_HEADER = re.compile(r"(?:^|\n)\s*(?:#+\s*|\*\*)?instruction\b", re.IGNORECASE)
_PAIR = re.compile(
    r"(?:^|\n)\s*(?:#+\s*|\*\*)?instruction\b(?:\*\*)?\s*:?\s*(?:\*\*)?\s*\n?(?P<instruction>.*?)"
    r"\n\s*(?:#+\s*|\*\*)?response\b(?:\*\*)?\s*:?\s*(?:\*\*)?\s*\n?(?P<response>.*)", re.IGNORECASE | re.DOTALL)


def parse_skills(text: str, max_skills: int = 10) -> list[dict]:
    """[{name, definition}] from a reply with one `name | definition` skill per line."""
    skills, seen = [], set()
    for m in _SKILL_LINE.finditer(text):
        name = " ".join(m.group("name").strip(" \"'`").split())
        definition = " ".join(m.group("definition").split())
        words = name.split()
        real_words = re.findall(r"[^\W\d_]{2,}", definition)
        if not 1 <= len(words) <= 8 or not any(c.isalpha() for c in name) or len(real_words) < 3 or name.lower() == "skill":
            continue
        key = skill_key(name)
        if key not in seen:
            seen.add(key)
            skills.append({"name": name, "definition": definition})
    return skills[:max_skills]


def skill_key(name: str) -> str:
    return "_".join(re.findall(r"[^\W_]+", name.lower()))


def parse_pair(text: str) -> tuple[str, str] | None:
    """(instruction, response) from the last `## Instruction … ## Response …` block (a refined
    reply may quote the first draft before its rewrite)."""
    starts = [m.start() for m in _INSTRUCTION_HEADER.finditer(text)]
    m = _PAIR.search(text[starts[-1]:]) if starts else None
    if m is None:
        return None
    instruction, response = " ".join(m.group("instruction").split()), m.group("response").strip()
    return (instruction, response) if instruction and response else None


def skills_block(skills: list[dict]) -> str:
    return "\n".join(f"- {s['name']}: {s['definition']}" for s in skills)


class SkillMix(Stage):
    name = "skillmix"
    # One actor gathers each shard; two shards at a time keep the engine fed (as Self-Instruct).
    resources = Resources(num_cpus=0.1, actor=True, concurrency=1, calls_per_actor=2)
    batch_size = None  # whole blocks, unsliced: the pool is the shard whatever the batch
    pool = "shard"

    def __init__(self, backend: dict, per_seed: float = 1.0, k: int = 2, max_skills: int = 5,
                 query_types: list[str] = list(QUERY_TYPES), refine: bool = False, temperature: float = 0.7,
                 top_p: float = 1.0, max_tokens: int = 1024, extract_max_tokens: int = 256, seed: int = 42,
                 cache: str | None = None):
        if k < 1 or per_seed <= 0 or not query_types:
            raise ValueError("k must be at least 1, per_seed > 0, and query_types not empty")
        self.per_seed, self.k, self.max_skills, self.refine, self.seed = per_seed, k, max_skills, refine, seed
        self.query_types = list(query_types)
        self.model = backend["model"]
        self.extract_sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=extract_max_tokens, seed=seed)
        self.sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        self.backend = stage_backend(backend, cache)

    def __call__(self, batch: pa.Table) -> StageResult:
        ids = batch["id"].to_pylist()
        convs = batch["messages"].to_pylist()
        instructions = [next((m["content"] for m in c if m["role"] == "user"), "") for c in convs]
        replies = self.backend.generate([
            ChatRequest([{"role": "user", "content": fill("skillmix_extract.txt", instruction=ins, max_skills=str(self.max_skills))}],
                        self.extract_sampling) for ins in instructions])
        rows, pool, metas = [], [], []
        for i, (c, *_) in enumerate(replies):
            skills = parse_skills(c.text, self.max_skills)
            meta = json.loads(batch["meta"][i].as_py() or "{}")
            meta["skills_extracted"] = skills
            metas.append(json.dumps(meta, sort_keys=True))
            if not skills:
                rows.append(self._row([{"role": "user", "content": c.text.strip() or "(empty output)"}], i, [ids[i]],
                                      {"step": "extract", "raw": c.text, "finish_reason": c.finish_reason}, "unparseable"))
            pool.extend((s, i) for s in skills)
        kept = batch.set_column(batch.column_names.index("meta"), "meta", pa.array(metas, pa.string()))
        rows.extend(self._generate(pool, ids))
        generated = pa.table({**S.sample_arrays(rows), S.PARENT: pa.array([r[S.PARENT] for r in rows], pa.int64()),
                              "reason": pa.array([r["reason"] for r in rows], pa.string())}) if rows else None
        return StageResult(kept=kept, generated=generated, parents_stay=True)

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
        sampling = {"temperature": self.sampling.temperature, "top_p": self.sampling.top_p, "max_tokens": self.sampling.max_tokens}
        for (chosen, qtype), c in zip(plans, finals):
            skills = [s for s, _ in chosen]
            parent_ids = list(dict.fromkeys(ids[i] for _, i in chosen))
            meta = {"step": "generate", "skills": skills, "query_type": qtype, "k": self.k, "refined": self.refine,
                    "sampling": sampling, "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens}
            pair = parse_pair(c.text)
            reason = "unparseable" if pair is None else ("truncated" if c.finish_reason == "length" else None)
            if pair is None:
                messages = [{"role": "user", "content": c.text.strip() or "(empty output)"}]
            else:
                messages = [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
            if reason:
                meta["raw"] = c.text
            rows.append(self._row(messages, chosen[0][1], parent_ids, meta, reason))
        return rows

    def _row(self, messages: list[dict], parent: int, parent_ids: list[str], meta: dict, reason: str | None) -> dict:
        meta = {"generator": "skillmix", "model": self.model, "template": TEMPLATE_VERSION, **meta}
        return {"id": S.sample_id(messages), "messages": messages, "origin": "skillmix", "source": f"skillmix:{self.model}",
                "parent_ids": parent_ids, "meta": json.dumps(meta, sort_keys=True), S.PARENT: parent, "reason": reason}
