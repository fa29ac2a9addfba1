"""Respond: generate `n` responses for each instruction, so later stages can verify and pick.

Each input row is a prompt (its turns up to the last user turn; an existing answer is set
aside). Every completion becomes a new row with the parent's id in `parent_ids`, origin
`response`, and the generator, model, template version, sampling parameters, finish reason and
token counts in `meta`; the parent is stored as `expanded`. A row whose completions are all
empty is dropped (`empty_response`) with the raw outputs in its reason.
"""

from __future__ import annotations

import json
import threading

import pyarrow as pa

from curate.generators.backends.base import Backend, ChatRequest, Sampling
from curate.stages.base import Resources, Stage, StageResult
from curate.storage import schema as S

TEMPLATE_VERSION = "respond/1"
INHERIT_NOT = ("raw", "finish_reason", "evolve_finish_reason", "completion_tokens", "prompt_tokens", "sampling")


def on_subset(batch: pa.Table, chosen: list[bool], generate) -> StageResult:
    """Run a generator step on the chosen rows only; the others pass through kept, unchanged."""
    picked = [i for i, c in enumerate(chosen) if c]
    result = generate(batch.take(pa.array(picked, pa.int64())))
    if result.generated is not None:  # parent indices into the whole batch
        parents = pa.array([picked[j] for j in result.generated[S.PARENT].to_pylist()], pa.int64())
        result.generated = result.generated.set_column(result.generated.column_names.index(S.PARENT), S.PARENT, parents)
    others = batch.take(pa.array([i for i, c in enumerate(chosen) if not c], pa.int64()))
    result.kept = pa.concat_tables([others, result.kept])
    return result


class LazyBackend(Backend):
    """The real backend, found or built on the first cache miss: the run's shared engine actor
    for a vLLM spec when the runner started one (see generators/engines.py), else a backend
    built here (a vLLM engine takes ~30 s to start)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.model = spec["model"]
        self._backend = None
        self._building = threading.Lock()  # an actor may run two batches at once: build one backend

    def generate(self, requests):
        with self._building:
            if self._backend is None:
                from curate.generators.engines import find_engine

                engine = find_engine(self.spec) if self.spec.get("kind", "vllm") == "vllm" else None
                if engine is not None:
                    self._backend = RemoteEngine(engine, self.model)
                else:
                    from curate.generators.backends import make_backend

                    self._backend = make_backend(self.spec)
        return self._backend.generate(requests)


class RemoteEngine(Backend):
    def __init__(self, actor, model: str):
        self.actor = actor
        self.model = model

    def generate(self, requests):
        import ray

        try:
            return ray.get(self.actor.generate.remote(requests))
        except ray.exceptions.RayActorError as e:
            from curate.errors import CurateError

            raise CurateError(f"the vLLM engine actor for {self.model} died ({type(e).__name__}); the run stops here. "
                              "Run the same command again: committed shards and cached calls are not repeated") from None


def stage_backend(spec: dict, cache: str | None) -> Backend:
    """What an LLM stage calls: the backend, started lazily, behind the cache when there is one."""
    inner = LazyBackend(dict(spec))
    if not cache:
        return inner
    from curate.generators.cache import CachedBackend, LLMCache

    return CachedBackend(inner, LLMCache(cache))


class Respond(Stage):
    name = "respond"
    # Two shards at a time: while one shard's last sequences finish, the next shard's requests
    # are already queued in the engine (4,000 prompts, 128 tokens: generating ratio 0.70 -> 0.78).
    # Both in one actor, whose calls mostly wait on the engine: on a 2-core CPU every process
    # beside the engine slows its steps, and one actor instead of two took the end-to-end ratio
    # from 0.86/0.75 to 0.88/0.85 (bench/generation.py --repeat 2).
    resources = Resources(num_cpus=0.05, actor=True, concurrency=1, calls_per_actor=2)
    # Whole shards, one engine call each. A batch size above the shard size made Ray Data bundle
    # two shards into one actor's task, whose two calls then ran one after the other while the
    # second actor idled (2,000 prompts: 1,024 requests in flight at most, 515 engine steps
    # against 483 for the same prompts in one call).
    batch_size = None

    def __init__(self, backend: dict, n: int = 1, temperature: float = 0.7, top_p: float = 1.0,
                 max_tokens: int = 512, seed: int = 0, system_prompt: str | None = None, skip_answered: bool = False,
                 cache: str | None = None):
        if "model" not in backend:
            raise ValueError("backend needs a model: {kind: vllm, model: PATH} or {kind: openai, model: NAME, base_url: URL}")
        self.sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, n=n, seed=seed)
        self.system_prompt = system_prompt
        self.skip_answered = skip_answered  # rows that end in an answer (seeds, SkillMix pairs) pass through unchanged
        self.spec = dict(backend)
        self.backend = stage_backend(self.spec, cache)

    @classmethod
    def preflight(cls, params: dict) -> None:
        from curate.pipeline.preflight import check_llm_backend

        check_llm_backend(params.get("backend"), f"{cls.name}.backend")

    def prompt(self, messages: list[dict]) -> list[dict]:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        turns = messages[: last_user + 1]
        if self.system_prompt and turns[0]["role"] != "system":
            turns = [{"role": "system", "content": self.system_prompt}, *turns]
        return turns

    def __call__(self, batch: pa.Table) -> StageResult:
        if self.skip_answered:
            convs = batch["messages"].to_pylist()
            answered = [bool(c) and c[-1]["role"] == "assistant" for c in convs]
            if any(answered):
                return on_subset(batch, [not a for a in answered], self._respond)
        return self._respond(batch)

    def _respond(self, batch: pa.Table) -> StageResult:
        convs = batch["messages"].to_pylist()
        ids = batch["id"].to_pylist()
        # Task-level facts of the parent (unit tests, a reference answer, constraints, skills)
        # hold for its responses too, so the verifiers after this stage can check them.
        parent_metas = [json.loads(m) if m else {} for m in batch["meta"].to_pylist()]
        prompts = [self.prompt(c) for c in convs]
        results = self.backend.generate([ChatRequest(p, self.sampling) for p in prompts])
        children, parents, empty, reasons = [], [], [], []
        sampling = {"temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                    "max_tokens": self.sampling.max_tokens, "n": self.sampling.n, "seed": self.sampling.seed}
        for i, (prompt, completions) in enumerate(zip(prompts, results)):
            usable = [(k, c) for k, c in enumerate(completions) if c.text.strip()]
            if not usable:
                empty.append(i)
                reasons.append("empty_response: " + json.dumps([c.text for c in completions])[:500])
                continue
            for k, c in usable:
                messages = [*prompt, {"role": "assistant", "content": c.text.strip()}]
                inherited = {k: v for k, v in parent_metas[i].items() if k not in INHERIT_NOT}
                meta = {**inherited, "generator": "respond", "model": self.spec["model"], "template": TEMPLATE_VERSION,
                        "sampling": sampling, "sample_index": k, "finish_reason": c.finish_reason,
                        "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
                children.append({"id": S.sample_id(messages), "messages": messages, "origin": "response",
                                  "source": f"respond:{self.spec['model']}", "parent_ids": [ids[i]],
                                  "meta": json.dumps(meta, sort_keys=True), S.PARENT: i})
        generated = pa.table({**S.sample_arrays(children), S.PARENT: pa.array([c[S.PARENT] for c in children], pa.int64())})
        dropped = batch.take(pa.array(empty, pa.int64())).append_column("reason", pa.array(reasons, pa.string()))
        return StageResult(kept=batch.slice(0, 0), dropped=dropped, generated=generated)
