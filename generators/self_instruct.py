"""Self-Instruct (Wang et al. 2023): bootstrap new instructions from seed tasks.

The pool is a shard: the stage sees each shard's live rows at once, sorted by (`_row`, `id`)
(`pool = "shard"`, see pipeline/dag.py), so its prompts, and with the LLM cache its rows, are
fixed by the shard's rows and the seed: not by how Ray Data batched them, the order shards
arrived in, or which shards a resumed run streamed. Each prompt shows `seed_examples` seed
tasks and `generated_examples` tasks generated earlier for the shard as a numbered list and
lets the model continue it. The continuation is split into tasks, each alone; a chat model's
opening line, its own numbering and its closing remark are read as such, never as tasks
(`parse_task_reply`, generators/replies.py). A task is rejected (a
recorded drop, with its text) when it is cut off (`truncated`), too short or too long, needs a
modality text cannot carry (`unsuitable_for_text`), starts badly (`bad_start`), or is too
similar to an instruction already known: ROUGE-L F1 above 0.7 as in the paper, or embedding
cosine above a threshold (`similarity: embedding`). A completion with no task in it is dropped
as `unparseable`, its raw text kept.

Rounds of prompts repeat until the shard has `per_seed` new tasks per seed row (the target
count) or `max_rounds` pass. The seeds stay in the pool; every new task's `parent_ids` are the
tasks its prompt showed. Similarity is checked against the shard's seeds and the tasks
accepted for it so far: an index shared across shards would depend on the order shards reach
the actor (and a resumed run would not have seen the committed ones). Near copies across
shards are for the dedup stages.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
from dataclasses import dataclass

import pyarrow as pa

from curate.generators.backends.base import ChatRequest, Sampling
from curate.generators.base import LLMTask, generated_table, instruction
from curate.generators.prompts_io import fill
from curate.generators.replies import numbered_items, unwrap
from curate.generators.similarity import EmbeddingIndex, RougeIndex
from curate.stages.base import Resources, StageResult

TEMPLATE_VERSION = "self_instruct/1"
# The paper's filter: tasks a text-only model cannot do.
UNSUITABLE = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
              "draw", "plot", "go to", "video", "audio", "flowchart", "diagram")
_UNSUITABLE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in UNSUITABLE) + r")\b", re.IGNORECASE)
DEFAULT_THRESHOLD = {"rouge": 0.7, "embedding": 0.9}


def examples_block(instructions: list[str]) -> str:
    return "\n".join(f"Task {i}: {' '.join(text.split())}" for i, text in enumerate(instructions, 1))


def parse_tasks(completion: str, first_number: int, finish_reason: str | None) -> tuple[list[str], bool]:
    """The tasks in a continuation of "Task {first_number}:". Returns (tasks, last_cut_off):
    when the model ran out of tokens, the last task is probably cut off."""
    reply = parse_task_reply(completion)
    return reply.tasks, bool(reply.tasks) and finish_reason == "length" and not reply.closed


@dataclass
class TaskReply:
    tasks: list[str]
    discarded: list[str]  # chat around the tasks: an opening line, a closing remark
    closed: bool  # a closing remark came after the last task, so it was not cut off


def parse_task_reply(completion: str) -> TaskReply:
    """A base model continues the numbered list: the text up to the next `Task N:` is the
    prompted task, the rest numbered as the prompt shows. A chat model adds an opening line,
    may number its own way (`11.`, `Task 11:`, `### Task 11`, `**Task 11**`, `11)`) and closes
    with a remark: only the tasks are kept, each alone (generators/replies.py)."""
    found = numbered_items(completion)
    pieces = ([found.preamble] if found.preamble else []) + found.items
    tasks = [unwrap(" ".join(" ".join(piece).split())) for piece in pieces]
    return TaskReply([t for t in tasks if t], found.discarded, found.closed)


def pool_digest(ids: list[str]) -> str:
    """A short hash of a pool's row ids, in order: what a generator seeds its choices with."""
    return hashlib.blake2b("\n".join(ids).encode(), digest_size=8).hexdigest()


def rejection_reason(task: str) -> str | None:
    words = task.split()
    if len(words) <= 3:
        return "too_short"
    if len(words) > 150:
        return "too_long"
    if _UNSUITABLE.search(task):
        return "unsuitable_for_text"
    if not task[0].isalnum() and task[0] not in "\"'(":
        return "bad_start"
    return None


class SelfInstruct(LLMTask):
    """Self-Instruct over one pool, a shard (Wang et al. 2023, arXiv:2212.10560): new tasks
    (origin `selfinstruct`, one user turn, `parent_ids` the tasks the prompt showed) beside the
    pool's rows, which stay kept. A rejected task is a dropped row with its reason; a completion
    with no task in it an `unparseable` row with the raw text (`meta.raw`). `meta`: the LLM task
    meta (generators/base.py; no token counts: one completion makes several rows) with `round`,
    `examples` and the similarity found (`max_similarity`, `similarity`, `similar_to`). Its flow
    (rounds over a pool) is its own `__call__`. Raises ValueError for a bad `similarity` or
    counts, or a backend without a model."""

    name = "self_instruct"
    generator = "self_instruct"
    origin = "selfinstruct"
    template_version = TEMPLATE_VERSION
    # One actor gathers each shard; two shards at a time, so one shard's requests wait in the
    # engine while another's round is parsed and the next round's prompts are built.
    resources = Resources(num_cpus=0.1, actor=True, concurrency=1, calls_per_actor=2)
    batch_size = None  # whole blocks, unsliced: the pool is the shard whatever the batch
    pool = "shard"

    def __init__(self, backend: dict, per_seed: float = 1.0, seed_examples: int = 6, generated_examples: int = 2,
                 max_rounds: int = 10, prompts_per_round: int = 64, similarity: str = "rouge",
                 similarity_threshold: float | None = None, embedding_model: str | None = None,
                 temperature: float = 0.7, top_p: float = 0.5, max_tokens: int = 1024, seed: int = 0, cache: str | None = None):
        if similarity not in DEFAULT_THRESHOLD:
            raise ValueError(f"similarity must be one of {sorted(DEFAULT_THRESHOLD)}, got {similarity!r}")
        if per_seed <= 0 or seed_examples < 1 or max_rounds < 1:
            raise ValueError("per_seed must be > 0, seed_examples and max_rounds at least 1")
        self.per_seed, self.seed_examples, self.generated_examples = per_seed, seed_examples, generated_examples
        self.max_rounds, self.prompts_per_round, self.seed = max_rounds, prompts_per_round, seed
        self.similarity = similarity
        self.threshold = similarity_threshold if similarity_threshold is not None else DEFAULT_THRESHOLD[similarity]
        self.embedding_model = embedding_model
        self.sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        super().__init__(backend, cache)
        self._index = None
        self._loading = threading.Lock()

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Before any Ray work: the backend (pipeline/preflight.py `check_llm_backend`) and the
        embedding model when `similarity` is `embedding`."""
        from curate.pipeline.preflight import check_embedding_model

        super().preflight(params)
        if params.get("similarity") == "embedding":
            check_embedding_model(params.get("embedding_model"), f"{cls.name}.embedding_model", local_only=False)

    def new_index(self):
        """An empty similarity index (the embedding model is loaded once per stage)."""
        with self._loading:
            if self._index is None:
                self._index = RougeIndex() if self.similarity == "rouge" else EmbeddingIndex(self.embedding_model)
        return self._index.empty()

    def __call__(self, batch: pa.Table) -> StageResult:
        """One pool (a shard, in the pipeline): the prompts depend on its rows, in order, and
        the seed only. Thread-safe: nothing is shared between calls but the backend."""
        ids = batch["id"].to_pylist()
        seeds = [instruction(conv) for conv in batch["messages"].to_pylist()]
        index = self.new_index()
        for text in seeds:
            index.add(text)
        quota = math.ceil(self.per_seed * len(ids))
        rng = random.Random(f"{self.seed}:{pool_digest(ids)}")  # fixed by the pool: reruns send the same prompts
        accepted: list[tuple[str, str]] = []  # (task, row id)
        rows: list[dict] = []
        for round_no in range(self.max_rounds):
            if len(accepted) >= quota:
                break
            prompts = []
            for _ in range(min(self.prompts_per_round, max(1, math.ceil((quota - len(accepted)) / 4)))):
                shown = rng.sample(range(len(ids)), min(self.seed_examples, len(ids)))
                generated = rng.sample(accepted, min(self.generated_examples, len(accepted)))
                examples = [seeds[i] for i in shown] + [t for t, _ in generated]
                prompts.append((shown, [ids[i] for i in shown] + [g for _, g in generated], examples))
            completions = self.backend.generate([
                ChatRequest([{"role": "user", "content": fill("self_instruct.txt", examples=examples_block(ex), next=str(len(ex) + 1))}],
                            self.sampling) for _, _, ex in prompts])
            for (shown, parent_ids, examples), (c, *_) in zip(prompts, completions):
                # One completion makes several rows: its token counts are not recorded per row.
                meta = self.meta(self.sampling, c, tokens=(), round=round_no, examples=len(examples))
                tasks, last_cut = parse_tasks(c.text, len(examples) + 1, c.finish_reason)
                if not tasks:
                    rows.append(self.failed(c.text, "unparseable", meta, parent=shown[0], parent_ids=parent_ids))
                    continue
                for k, task in enumerate(tasks):
                    reason, extra = self._judge(index, task, last_cut and k == len(tasks) - 1, len(accepted) >= quota)
                    row = self.child([{"role": "user", "content": task}], {**meta, **extra}, parent=shown[0], parent_ids=parent_ids,
                                     reason=reason)
                    rows.append(row)
                    if reason is None:
                        accepted.append((task, row["id"]))
                        index.add(task)
        return StageResult(kept=batch, generated=generated_table(rows), parents_stay=True)

    def _judge(self, index, task: str, cut_off: bool, over_target: bool) -> tuple[str | None, dict]:
        if cut_off:
            return "truncated", {}
        reason = rejection_reason(task)
        if reason:
            return reason, {}
        score, similar = index.closest(task, self.threshold)
        extra = {"max_similarity": round(score, 4), "similarity": self.similarity}
        if similar is not None:
            return "too_similar", {**extra, "similar_to": similar}
        if over_target:
            return "over_target", extra
        return None, extra
