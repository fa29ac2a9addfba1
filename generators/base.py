"""The LLM task base: what every LLM generator (respond, evol_instruct, self_instruct, skillmix)
shares, written once.

- Backend wiring: `stage_backend` gives a stage its backend, the run's shared vLLM engine actor
  (`RemoteEngine`, see generators/engines.py) or a backend built here, found on the first cache
  miss (`LazyBackend`), behind the LLM cache (generators/cache.py) when the stage has one.
- Pass-through: rows a task does not touch (`LLMTask.selects`) leave the stage kept and
  unchanged (`on_subset`).
- `meta`: every generated row records the generator, model, template version, all sampling
  parameters (`sampling_record`), the finish reason and token counts, in one function
  (`LLMTask.meta`).
- Rows: one builder for a new row (`child_row`) and one for a failed row that carries the raw
  output it failed on (`failed_row`); a task whose failure is its parent's drop returns a
  `Failure`, whose drop reason carries the raw output (`Failure.drop_reason`).

A task subclass writes `requests(batch)`, the chat requests to send per row, and
`parse(row, completions)`, what to make of them: new rows (children, and failed rows built with
`failed`), a `Failure` (the parent is dropped), a `Judged` (a judge's answer: the row itself,
kept or dropped, with its scores and verdicts), or a `FollowUp` (more requests for that row,
answered in the next round of the same call, as Evol-Instruct answers its evolved instruction).
This is distilabel's task contract (`format_input` / `format_output`; Argilla's distilabel,
2024, https://github.com/argilla-io/distilabel). The base's `__call__` batches each round's
requests of all rows into one backend call, in row order (a reproducible request repeated in a
round sent once), so the requests (and with them the LLM cache's keys) are what a hand-written
loop would send. A task whose flow does not fit (a
pool of a whole shard: Self-Instruct's rounds, SkillMix's skill pool) overrides `__call__` and
uses the helpers.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import pyarrow as pa

from curate.generators.backends.base import Backend, ChatRequest, Completion, Sampling
from curate.stages.base import Resources, Stage, StageContext, StageResult, score_array, verdict_array
from curate.stages.text import instruction  # noqa: F401 - re-exported: the one meaning of "instruction" (stages/text.py)
from curate.storage import schema as S

TOKENS = ("prompt_tokens", "completion_tokens")
EMPTY_OUTPUT = "(empty output)"  # the user turn of a failed row whose raw output is blank


def on_subset(batch: pa.Table, chosen: list[bool], generate: Callable[[pa.Table], StageResult]) -> StageResult:
    """Run a generator step on the chosen rows only; the others pass through kept, unchanged
    (before the step's own kept rows). `generate(table) -> StageResult`; the parent indices of
    its `generated` rows are mapped back to positions in the whole batch."""
    picked = [i for i, c in enumerate(chosen) if c]
    result = generate(batch.take(pa.array(picked, pa.int64())))
    if result.generated is not None:  # parent indices into the whole batch
        parents = pa.array([picked[j] for j in result.generated[S.PARENT].to_pylist()], pa.int64())
        result.generated = result.generated.set_column(result.generated.column_names.index(S.PARENT), S.PARENT, parents)
    others = batch.take(pa.array([i for i, c in enumerate(chosen) if not c], pa.int64()))
    result.kept = pa.concat_tables([others, result.kept])
    # Per-row results cover the step's kept rows: the rows passed through come first, with none.
    for name, values in result.scores.items():
        values.kept = pa.concat_arrays([pa.nulls(others.num_rows, values.kept.type), values.kept])
    if result.verdicts is not None:
        result.verdicts.kept = pa.concat_arrays([pa.array([[]] * others.num_rows, result.verdicts.kept.type), result.verdicts.kept])
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
    """The run's engine actor (generators/engines.py) as a backend. Raises CurateError when the
    actor died: the run stops, and a rerun replays what was committed and cached."""

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


def sampling_record(sampling: Sampling) -> dict:
    """The sampling parameters as a row's `meta` records them: temperature, top_p, max_tokens,
    n and seed, and `stop` when the request sets stop strings."""
    out = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
           "n": sampling.n, "seed": sampling.seed}
    if sampling.stop:
        out["stop"] = list(sampling.stop)
    return out


def row_turns(row: dict) -> list[dict]:
    """A row's turns with their OpenAI tool fields (`tool_calls`, `tool_call_id`, ...) put back
    from its `tool_fields` column: what a child row copies from its parent, so a generated row
    keeps the calls its parent's turns made (the model's requests see the text turns only)."""
    return S.with_tool_fields(row["messages"], row.get("tool_fields"))


def row_meta(text: str | None) -> dict:
    """A row's `meta` JSON as a dict ({} when empty, not JSON or not an object)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def child_row(messages: list[dict], meta: dict, *, origin: str, source: str, parent_ids: list[str],
              parent: int | None = None, reason: str | None = None, ensure_ascii: bool = True) -> dict:
    """A new row as a generator returns it in `StageResult.generated`: the sample columns (id
    is the content hash of `messages`, and of the tool definitions `meta` holds, as ingest hashes
    them; `meta` JSON with sorted keys, schema.meta_json), its parent's index in the
    batch (`_parent`) and `reason`: None for a row to keep, else the drop reason of a rejected
    row (stored as a drop; its parent stays in play)."""
    return {"id": S.sample_id(messages, S.tool_definitions(meta)), "messages": messages, "origin": origin, "source": source,
            "parent_ids": list(parent_ids), "meta": S.meta_json(meta, ensure_ascii),
            S.PARENT: parent, "reason": reason}


def failed_row(raw: str, reason: str, meta: dict, *, origin: str, source: str, parent_ids: list[str],
               parent: int | None = None, messages: list[dict] | None = None, ensure_ascii: bool = True, **raw_more: str) -> dict:
    """A generated row that failed (`reason`: unparseable, truncated, an eliminated evolution),
    stored as a drop with the model's raw output in `meta.raw` (and other raw outputs it came
    from, `raw_more`: `raw_draft=...`). Its messages: what was read from the output when given,
    else one user turn holding the raw text, stripped ("(empty output)" when blank), so the
    failure stays readable in the row."""
    if messages is None:
        messages = [{"role": "user", "content": raw.strip() or EMPTY_OUTPUT}]
    return child_row(messages, {**meta, "raw": raw, **raw_more}, origin=origin, source=source, parent_ids=parent_ids,
                     parent=parent, reason=reason, ensure_ascii=ensure_ascii)


def generated_table(rows: list[dict]) -> pa.Table | None:
    """`StageResult.generated` from rows built by `child_row` / `failed_row` (None when there are none)."""
    if not rows:
        return None
    return pa.table({**S.sample_arrays(rows), S.PARENT: pa.array([r[S.PARENT] for r in rows], pa.int64()),
                     "reason": pa.array([r["reason"] for r in rows], pa.string())})


@dataclass
class Failure:
    """`parse`'s answer when the row itself fails: the parent is dropped with `reason`, the raw
    output (a text, or the texts of all completions) attached (`drop_reason`)."""
    reason: str
    raw: Any = None

    def drop_reason(self) -> str:
        """`<reason>: <raw output as JSON, cut at 500 characters>`, or the reason alone without raw output."""
        return self.reason if self.raw is None else f"{self.reason}: " + json.dumps(self.raw)[:500]


@dataclass
class Judged:
    """`parse`'s answer when the task judges the row it read (a judge, not a generator): the row
    stays as it is, kept, or dropped with `reason`, and carries `scores` (name → value, None for
    none) and `verdicts` (verdict dicts: verifier, passed, strength, detail), stored for it.
    `children`: new rows made beside it (a refined response), each with its own judgement (or
    None); the judged row stays in play beside them."""
    scores: dict[str, float | None] = field(default_factory=dict)
    verdicts: list[dict] = field(default_factory=list)
    reason: str | None = None
    children: list[tuple[dict, "Judged | None"]] = field(default_factory=list)


@dataclass
class FollowUp:
    """`parse`'s answer when the row needs more calls: `requests` are sent in the next round
    (one backend call with every row's follow-ups), then `parse` sees all completions so far."""
    requests: list[ChatRequest] = field(default_factory=list)


def distinct_calls(backend: Backend, requests: list[ChatRequest]) -> list[list[Completion]]:
    """backend.generate over the distinct requests only (a judge asks for one instruction's
    checklist once per response): a repeated request that is reproducible (a seed, or greedy)
    gets the same completions, so sending it once changes no output. Unseeded sampled requests
    are all sent."""
    if not requests:
        return []
    keys = [json.dumps([r.messages, asdict(r.sampling)], sort_keys=True)
            if r.sampling.seed is not None or r.sampling.temperature == 0 else i for i, r in enumerate(requests)]
    first = {}
    for k, r in zip(keys, requests):
        first.setdefault(k, r)
    if len(first) == len(requests):
        return backend.generate(requests)
    answers = dict(zip(first, backend.generate(list(first.values()))))
    return [answers[k] for k in keys]


def judged_result(batch: pa.Table, outcome: list[list[dict] | Failure | Judged]) -> StageResult:
    """The StageResult of a judge's outcomes: each row kept or dropped as its `Judged` says (a
    `Failure` drops it, a row list with no row keeps it unjudged), with its scores and verdicts;
    the `Judged` children are added beside their parents (`parents_stay`), with theirs. New rows
    outside a `Judged` are a task's bug (ValueError): a judge's rows stay in play."""
    if any(isinstance(out, list) and out for out in outcome):
        raise ValueError("a task's parse returned both judged rows and new rows in one batch: a judge makes no rows")
    judged = [out if isinstance(out, Judged) else Judged() for out in outcome]
    reasons = [out.drop_reason() if isinstance(out, Failure) else j.reason for out, j in zip(outcome, judged)]
    children = [(i, row, c or Judged()) for i, j in enumerate(judged) for row, c in j.children]
    for i, row, _ in children:
        row[S.PARENT] = i
    result = StageResult.split(batch, reasons, scores=_scores_of(judged), verdicts=[list(j.verdicts) for j in judged])
    if children:
        result.generated = generated_table([row for _, row, _ in children])
        result.generated_scores = {n: score_array(v) for n, v in _scores_of([c for _, _, c in children]).items()}
        result.generated_verdicts = verdict_array([list(c.verdicts) for _, _, c in children])
        result.parents_stay = True
    return result


def _scores_of(judged: list[Judged]) -> dict[str, list]:
    names = sorted({name for j in judged for name in j.scores})
    return {name: [j.scores.get(name) for j in judged] for name in names}


class LLMTask(Stage):
    """An LLM generator stage. Class attributes: `generator` (meta's `generator`, the source's
    prefix), `origin` (the new rows' origin), `template_version` (meta's `template`).

    Subclasses write `requests(batch) -> list[list[ChatRequest]]` (per row of the batch, the
    requests to send: one, several, or none) and `parse(row, completions)`, where `row` is the
    row as a dict and `completions[j]` the `sampling.n` completions of its j-th request (in the
    order sent, over all rounds); it returns a list of rows (`child`, `failed`), a `Failure` or
    a `FollowUp`. Optionally `selects(batch)`: which rows to work on (the others pass through).

    The result (`__call__`): a row with a kept child is replaced by its children (stored as
    `expanded`); a `Failure` drops the row (reason and raw output); a row whose children all
    failed, or with none, stays kept, to be tried again by a later stage.

    Raises ValueError for a backend spec without a model, when `requests` does not give one
    list per row, or when a `FollowUp` holds no request.
    """

    generator: ClassVar[str] = "llm"
    origin: ClassVar[str] = "generated"
    template_version: ClassVar[str] = ""
    # A task mostly waits on the engine: one light actor taking two shards at a time, so while
    # one shard's last sequences finish the next shard's requests are already queued (respond,
    # 4,000 prompts: generating ratio 0.70 -> 0.78); on a 2-core CPU every process beside the
    # engine slows its steps (one actor instead of two: end-to-end 0.86/0.75 -> 0.88/0.85,
    # bench/generation.py --repeat 2).
    resources: ClassVar[Resources] = Resources(num_cpus=0.05, actor=True, concurrency=1, calls_per_actor=2)
    # Whole shards, one engine call each: a batch size above the shard size made Ray Data bundle
    # two shards into one actor's task, whose calls then ran one after the other.
    batch_size: ClassVar[int | None] = None

    def __init__(self, backend: dict, cache: str | None = None):
        if not isinstance(backend, dict) or "model" not in backend:
            raise ValueError("backend needs a model: {kind: vllm, model: PATH} or {kind: openai, model: NAME, base_url: URL}")
        self.spec = dict(backend)
        self.model = self.spec["model"]
        self.cache_arg = cache
        self.backend = stage_backend(self.spec, cache)

    def setup(self, context: StageContext | None = None) -> None:
        """`cache` None: the run's LLM-call cache (StageContext.llm_cache), beside its database."""
        if self.cache_arg is None and context is not None and context.llm_cache:
            self.backend = stage_backend(self.spec, context.llm_cache)

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Before any Ray work: the backend (pipeline/preflight.py `check_llm_backend`)."""
        from curate.pipeline.preflight import check_llm_backend

        check_llm_backend(params.get("backend"), f"{cls.name}.backend")

    # --- what a task writes ---------------------------------------------------------------

    def selects(self, batch: pa.Table) -> list[bool] | None:
        """Per row, whether the task works on it; the others pass through kept, unchanged. None: all rows."""
        return None

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:  # pragma: no cover - interface
        raise NotImplementedError

    def parse(self, row: dict, completions: list[list[Completion]]) -> list[dict] | Failure | Judged | FollowUp:  # pragma: no cover - interface
        raise NotImplementedError

    # --- the flow -------------------------------------------------------------------------

    def __call__(self, batch: pa.Table) -> StageResult:
        chosen = self.selects(batch)
        if chosen is not None and not all(chosen):
            return on_subset(batch, chosen, self.run)
        return self.run(batch)

    def run(self, batch: pa.Table) -> StageResult:
        """`requests`, then rounds of one backend call each until every row's `parse` has an answer."""
        rows = batch.to_pylist()
        asked = self.requests(batch)
        if len(asked) != len(rows):
            raise ValueError(f"{type(self).__name__}.requests returned {len(asked)} lists for {len(rows)} rows")
        pending = dict(enumerate(asked))
        got: list[list[list[Completion]]] = [[] for _ in rows]
        outcome: list[list[dict] | Failure] = [[] for _ in rows]
        while pending:
            order = sorted(pending)
            flat = [r for i in order for r in pending[i]]
            results = distinct_calls(self.backend, flat)
            at, follow = 0, {}
            for i in order:
                k = len(pending[i])
                got[i].extend(results[at: at + k])
                at += k
                out = self.parse(rows[i], got[i])
                if isinstance(out, FollowUp):
                    if not out.requests:
                        raise ValueError(f"{type(self).__name__}.parse asked to follow up with no requests")
                    follow[i] = out.requests
                else:
                    outcome[i] = out
            pending = follow
        return self.result(batch, outcome)

    @staticmethod
    def result(batch: pa.Table, outcome: list[list[dict] | Failure | Judged]) -> StageResult:
        """The StageResult of per-row outcomes (rows, a Failure or a Judged, in batch order)."""
        if any(isinstance(out, Judged) for out in outcome):
            return judged_result(batch, outcome)
        children, kept, dropped, reasons = [], [], [], []
        for i, out in enumerate(outcome):
            if isinstance(out, Failure):
                dropped.append(i)
                reasons.append(out.drop_reason())
                continue
            for row in out:
                row[S.PARENT] = i
            children.extend(out)
            if not any(row["reason"] is None for row in out):
                kept.append(i)
        dropped_table = batch.take(pa.array(dropped, pa.int64())).append_column("reason", pa.array(reasons, pa.string())) if dropped else None
        return StageResult(kept=batch.take(pa.array(kept, pa.int64())), dropped=dropped_table, generated=generated_table(children))

    # --- helpers for tasks (and for those that write their own __call__) -------------------

    def meta(self, sampling: Sampling, completion: Completion | None = None, *, before: Sequence[Completion] = (),
             tokens: Sequence[str] = TOKENS, **extra) -> dict:
        """A generated row's `meta`: generator, model, template version, the sampling parameters
        (`sampling_record`), the finish reason of `completion` (None without one) and its token
        counts, `tokens` of them (summed with those of the completions `before` it that made the
        row: an evolution before its answer), then the task's own keys (`extra`)."""
        out = {"generator": self.generator, "model": self.model, "template": self.template_version,
               "sampling": sampling_record(sampling), "finish_reason": completion.finish_reason if completion else None}
        spent = [c for c in (*before, completion) if c is not None]
        for name in tokens:
            out[name] = sum(getattr(c, name) for c in spent)
        out.update(extra)
        return out

    @property
    def source(self) -> str:
        return f"{self.generator}:{self.model}"

    def child(self, messages: list[dict], meta: dict, *, parent_ids: list[str], parent: int | None = None,
              reason: str | None = None) -> dict:
        """`child_row` with this task's origin and source (`<generator>:<model>`)."""
        return child_row(messages, meta, origin=self.origin, source=self.source, parent_ids=parent_ids, parent=parent, reason=reason)

    def failed(self, raw: str, reason: str, meta: dict, *, parent_ids: list[str], parent: int | None = None,
               messages: list[dict] | None = None, **raw_more: str) -> dict:
        """`failed_row` with this task's origin and source."""
        return failed_row(raw, reason, meta, origin=self.origin, source=self.source, parent_ids=parent_ids, parent=parent,
                          messages=messages, **raw_more)
