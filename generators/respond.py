"""Respond: generate `n` responses for each instruction, so later stages can verify and pick.

Each input row is a prompt (its turns up to the last user turn; an existing answer is set
aside). Every completion becomes a new row with the parent's id in `parent_ids`, origin
`response`, and the generator, model, template version, sampling parameters, finish reason and
token counts in `meta`; the parent is stored as `expanded`. A row whose completions are all
empty is dropped (`empty_response`) with the raw outputs in its reason.
"""

from __future__ import annotations

import pyarrow as pa

from curate.generators.backends.base import ChatRequest, Completion, Sampling
# The backend wiring and the pass-through lived here; they are the LLM task base's now
# (generators/base.py), re-exported under their old names.
from curate.generators.base import Failure, LazyBackend, LLMTask, RemoteEngine, on_subset, row_meta, row_turns, stage_backend  # noqa: F401

TEMPLATE_VERSION = "respond/1"
# Keys of the parent's meta that describe its own generation, not the task: not inherited.
INHERIT_NOT = ("raw", "finish_reason", "evolve_finish_reason", "completion_tokens", "prompt_tokens", "sampling", "evolve_sampling")


class Respond(LLMTask):
    """Per row: `n` completions of its prompt (its turns up to the last user turn, after
    `system_prompt` when it has no system turn), each a new row (origin `response`,
    `parent_ids` [the row's id], the parent's task-level meta plus the LLM task meta:
    generators/base.py `LLMTask.meta`, with `sample_index`). A row whose completions are all
    blank is dropped, `empty_response: [raw texts]`. `skip_answered`: rows whose last turn is an
    assistant's pass through unchanged. Raises ValueError for a backend without a model."""

    name = "respond"
    generator = "respond"
    origin = "response"
    template_version = TEMPLATE_VERSION

    def __init__(self, backend: dict, n: int = 1, temperature: float = 0.7, top_p: float = 1.0,
                 max_tokens: int = 512, seed: int = 0, system_prompt: str | None = None, skip_answered: bool = False,
                 cache: str | None = None):
        super().__init__(backend, cache)
        self.sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, n=n, seed=seed)
        self.system_prompt = system_prompt
        self.skip_answered = skip_answered  # rows that end in an answer (seeds, SkillMix pairs) pass through unchanged

    def prompt(self, messages: list[dict]) -> list[dict]:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        turns = messages[: last_user + 1]
        if self.system_prompt and turns[0]["role"] != "system":
            turns = [{"role": "system", "content": self.system_prompt}, *turns]
        return turns

    def selects(self, batch: pa.Table) -> list[bool] | None:
        if not self.skip_answered:
            return None
        return [not (bool(c) and c[-1]["role"] == "assistant") for c in batch["messages"].to_pylist()]

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:
        return [[ChatRequest(self.prompt(c), self.sampling)] for c in batch["messages"].to_pylist()]

    def parse(self, row: dict, completions: list[list[Completion]]) -> list[dict] | Failure:
        (outputs,) = completions
        usable = [(k, c) for k, c in enumerate(outputs) if c.text.strip()]
        if not usable:
            if all(c.finish_reason == "prompt_too_long" for c in outputs):  # the engine refused it: say so
                return Failure("prompt_too_long", f"{outputs[0].prompt_tokens} prompt tokens")
            return Failure("empty_response", [c.text for c in outputs])
        prompt = self.prompt(row_turns(row))
        # Task-level facts of the parent (unit tests, a reference answer, constraints, skills)
        # hold for its responses too, so the verifiers after this stage can check them.
        inherited = {k: v for k, v in row_meta(row["meta"]).items() if k not in INHERIT_NOT}
        return [self.child([*prompt, {"role": "assistant", "content": c.text.strip()}],
                           {**inherited, **self.meta(self.sampling, c, sample_index=k)}, parent_ids=[row["id"]])
                for k, c in usable]
