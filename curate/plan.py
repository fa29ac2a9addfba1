"""`curate plan CONFIG`: what a run of a config would do, and whether it can start, without
starting Ray: its inputs and shards, the database and the run's state there, the phases
(pipeline/phases.py `split_phases`), each stage with its resources and what it reads and writes
(rows, vectors, scores, verdicts, dedup keys), the selectors and the export; then every preflight
check (pipeline/preflight.py) the run makes before any Ray work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from curate.errors import CurateError

# What stages write or read beyond what pipeline/dependencies.py declares for its checks.
GENERATED_ORIGIN = {"respond": "response", "evol_instruct": "evol", "self_instruct": "selfinstruct",
                    "skillmix": "skillmix", "add_constraints": "constrained"}
EXTRA_WRITES = {
    "add_constraints": lambda p: ["meta.constraints"],
}
META_READS = {
    "verify_code": lambda p: ["meta.tests"],
    "verify_math": lambda p: [f"meta.{p.get('answer_key', 'answer')}"],
    "verify_constraints": lambda p: [f"meta.{p.get('constraints_key', 'constraints')}"],
}


@dataclass
class Plan:
    text: str  # what `curate plan` prints
    failures: list[str] = field(default_factory=list)  # failed preflight checks, one line each

    @property
    def ok(self) -> bool:
        return not self.failures


def plan(config_path: str | None, overrides: list[str] | None = None, **values) -> Plan:
    """The plan of a config (as `curate run` would load it, with `overrides` and `values` such as
    `input` and `db`), and the result of every preflight check. Nothing runs: no Ray, no model
    loads; the database is only read. A failed check is a line of `failures` (and of the text),
    not an exception. Raises CurateError for a config that does not load (the same one-line error
    `curate run` gives)."""
    from curate.pipeline.config import load_config
    from curate.pipeline.dag import stage_plans
    from curate.pipeline.phases import split_phases

    config = load_config(config_path, overrides, **values)
    plans = stage_plans(config)
    out: list[str] = []
    checks: list[tuple[str, str | None]] = []

    title = config.name or (os.path.basename(config_path) if config_path else "(no config)")
    out.append(f"plan: {title}" + (f" ({config_path})" if config_path else ""))
    inputs = _inputs(config, out, checks)
    _database(config, inputs, out)
    on_cluster = bool(config.ray.address or os.environ.get("RAY_ADDRESS"))
    ray = config.ray.address or os.environ.get("RAY_ADDRESS")
    out.append(f"ray: {'the cluster at ' + ray if ray else 'an embedded local Ray'}"
               + (f", {config.ray.num_cpus} CPUs" if config.ray.num_cpus else ""))

    phases = split_phases(plans)
    index = {p.name: i for i, p in enumerate(plans)}  # 0 is ingest: stages.<i - 1>
    for phase in phases:
        out.append("")
        barrier = f"; then the barrier: {', '.join(p.name for p in phase.barrier)} decide" if phase.barrier else ""
        source = "the input" if phase.index == 0 else f"the survivors of phase {phase.index - 1}"
        out.append(f"phase {phase.index}: streams {source} through {', '.join(phase.stream_names)}{barrier}")
        for p in phase.stream:
            out.append(_stage_line(p, index[p.name], config))
        for p in phase.barrier:
            out.append(f"    barrier  {p.name}: {_barrier_text(p)}")
    out.append("")
    if config.selectors:
        out.append("selectors (after the last phase, over the kept rows):")
        for i, sc in enumerate(config.selectors):
            out.append(_selector_line(i, sc))
    else:
        out.append("selectors: none")
    if config.export:
        e = config.export
        what = f"selection {e.selection}" if e.selection else "all kept rows"
        out.append(f"export: {what} as {e.format}"
                   + (f" ({e.shape})" if e.shape else "") + (f" (template {e.template})" if e.template else "")
                   + f" → {e.out}")
    else:
        out.append("export: none (curate export writes one)")

    out.append("")
    _preflight(config, plans, checks)
    failures = [err for _, err in checks if err]
    out.append("preflight" + (" (the run itself skips these on a cluster: the workers' machines may differ)"
                              if on_cluster else "") + ":")
    for what, err in checks:
        out.append(f"    {'ok  ' if err is None else 'FAIL'}  {err if err else what}")
    out.append(f"{len(checks) - len(failures)} of {len(checks)} checks passed"
               + ("" if not failures else f"; {len(failures)} failed"))
    return Plan("\n".join(out), failures)


# ---------------------------------------------------------------------------- inputs and database


def _inputs(config, out: list[str], checks: list) -> list | None:
    from curate.stages.readers import plan_shards, resolve_inputs

    try:
        inputs = resolve_inputs(config.input)
    except CurateError as e:
        out.append(f"input: {', '.join(str(getattr(i, 'path', i)) for i in config.input)}")
        checks.append(("input", f"input: {e}"))
        return None
    try:
        shards = len(plan_shards(inputs, config.shard_size))
        shard_text = f"{shards} shard{'s' if shards != 1 else ''} of at most {config.shard_size} rows"
    except Exception as e:  # noqa: BLE001 - the plan still prints; the run would say it too
        shard_text = f"cannot plan shards: {e}"
        checks.append(("input", f"input: {e}"))
    files = ", ".join(f"{_short(i.path)} ({i.format})" for i in inputs[:5])
    more = f" and {len(inputs) - 5} more" if len(inputs) > 5 else ""
    out.append(f"input: {files}{more}; {shard_text}")
    checks.append((f"input: {len(inputs)} file{'s' if len(inputs) != 1 else ''} found", None))
    return inputs


def _short(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _database(config, inputs, out: list[str]) -> None:
    run_id = None
    if inputs is not None:
        from curate.stages.readers import input_fingerprint

        run_id = config.fingerprint(input_fingerprint(inputs))
    line = f"db: {config.db}"
    if run_id:
        line += f"; run id {run_id}"
    if not os.path.exists(config.db):
        out.append(line + " (a new database)")
        return
    if run_id is None:
        out.append(line)
        return
    from curate.storage.store import Store

    try:
        with Store(config.db, read_only=True) as store:
            row = store.con.execute("SELECT status, attempts FROM runs WHERE run_id = ?", [run_id]).fetchone()
            done = len(store.committed_shards(run_id, 0)) if row else 0
            changed = _changed_selectors(store, run_id, config.selectors) if row else []
    except CurateError as e:
        out.append(f"{line} ({e})")
        return
    except Exception as e:  # noqa: BLE001 - an older or foreign file: say so, plan on
        out.append(f"{line} (cannot read it: {str(e).splitlines()[0]})")
        return
    if row is None:
        out.append(f"{line} (a new run in an existing database)")
    elif row[0] == "finished" and changed:
        out.append(f"{line} (finished already: a rerun processes no shard, and runs the selectors new or changed "
                   f"since: {', '.join(changed)})")
    elif row[0] == "finished":
        out.append(f"{line} (finished already: a rerun adds nothing)")
    else:
        out.append(f"{line} ({row[0]} after {row[1]} attempt{'s' if row[1] != 1 else ''}, {done} input shard"
                   f"{'s' if done != 1 else ''} committed: a rerun resumes)")


def _changed_selectors(store, run_id: str, selectors) -> list[str]:
    """The selections a rerun writes again: their selector or parameters differ from what the
    run stored (pipeline/select.py run_selectors skips the others)."""
    import json

    try:
        return [sc.name for sc in selectors
                if store.selection_params(run_id, sc.name) != (sc.key, json.dumps(sc.params, sort_keys=True))]
    except Exception:  # noqa: BLE001 - a database from before selection_info: every selector runs
        return [sc.name for sc in selectors]


# ---------------------------------------------------------------------------- stages


def _resources(p) -> str:
    r = p.resources
    parts = [("actor" if r.actor or r.num_gpus else "task") + (f" ×{r.concurrency}" if r.concurrency else "")]
    parts.append(f"{r.num_cpus:g} CPU")
    if r.num_gpus:
        parts.append(f"{r.num_gpus:g} GPU")
    if (r.actor or r.num_gpus) and r.calls_per_actor > 1:
        parts.append(f"{r.calls_per_actor} calls/actor")
    if p.batch_size:
        parts.append(f"batch {p.batch_size}")
    if p.key != "ingest":
        from curate.pipeline.registry import stage_class

        if getattr(stage_class(p.key), "pool", None) == "shard":
            parts.append("whole shards")
    return ", ".join(parts)


def reads_writes(key: str, params: dict) -> tuple[list[str], list[str]]:
    """What a stage reads (vectors, meta fields) and writes (rows, vectors, scores, verdicts,
    dedup keys), as `kind:name` items."""
    from curate.pipeline.dependencies import STAGE_PROVIDES, STAGE_REQUIRES
    from curate.pipeline.registry import stage_class
    from curate.stages.base import GlobalStage

    if key == "ingest":
        return ["input files"], ["samples", "quarantine (unreadable rows)"]
    cls = stage_class(key)
    reads = sorted(STAGE_REQUIRES.get(key, lambda p: set())(params)) + META_READS.get(key, lambda p: [])(params)
    writes = []
    if key in GENERATED_ORIGIN:
        writes.append(f"rows (origin {GENERATED_ORIGIN[key]})")
    writes += sorted(STAGE_PROVIDES.get(key, lambda p: set())(params))
    if getattr(cls, "verifier", None):
        writes.append(f"verdicts:{cls.verifier}")
    writes += EXTRA_WRITES.get(key, lambda p: [])(params)
    if issubclass(cls, GlobalStage):
        if cls.decide_in is GlobalStage.decide_in:
            writes.append(f"keys:{key} (row_keys)")
        writes.append("drops at the barrier")
    return reads, writes


def _stage_line(p, i: int, config) -> str:
    where = "ingest" if p.key == "ingest" else f"stages.{i - 1}"
    name = p.name if p.name == p.key else f"{p.name} ({p.key})"
    reads, writes = reads_writes(p.key, p.params)
    parts = [f"    {where:<10} {name}: {_resources(p)}"]
    backend = p.params.get("backend")
    if isinstance(backend, dict):
        kind = backend.get("kind", "vllm")
        at = f" at {backend.get('base_url', 'http://127.0.0.1:8000/v1')}" if kind == "openai" else ""
        cache = p.params.get("cache")
        if "cache" in p.params and cache is None and p.context is not None:  # the run's LLM cache (Stage.setup's context)
            cache = p.context.llm_cache
        parts.append(f"        backend: {kind} {backend.get('model')}{at}" + (f"; cache {cache}" if cache else ""))
    if reads:
        parts.append(f"        reads: {', '.join(reads)}")
    if writes:
        parts.append(f"        writes: {', '.join(writes)}")
    return "\n".join(parts)


def _barrier_text(p) -> str:
    from curate.pipeline.dependencies import STAGE_REQUIRES
    from curate.pipeline.registry import stage_class

    needs = sorted(STAGE_REQUIRES.get(p.key, lambda q: set())(p.params))
    return (f"reads {', '.join(needs)}" if needs else f"reads keys:{p.name}") + ", " + stage_class(p.key).decides


def _selector_line(i: int, sc) -> str:
    from curate.pipeline.dependencies import SELECTOR_REQUIRES

    reads = sorted(SELECTOR_REQUIRES.get(sc.key, lambda p: set())(sc.params))
    if sc.params.get("targets"):
        reads.append(f"targets {sc.params['targets']}")
    name = sc.name if sc.name == sc.key else f"{sc.name} ({sc.key})"
    budget = f" budget {sc.params['budget']}" if "budget" in sc.params else ""
    return (f"    selectors.{i:<3} {name}:{budget}; reads {', '.join(reads) if reads else 'the kept rows'}; "
            f"writes selections:{sc.name}")


# ---------------------------------------------------------------------------- preflight


def _preflight(config, plans, checks: list) -> None:
    """Every check of `run_preflight`; when it fails, each stage's, selector's and the export
    template's check on its own, so that every failure is listed (run_preflight stops at the first)."""
    from curate.pipeline.preflight import PreflightError, check_file, run_preflight
    from curate.pipeline.registry import selector_class, stage_class

    items = [(f"stages.{i - 1}.{p.name}", lambda p=p: stage_class(p.key).preflight(p.params), f"stages.{i - 1}")
             for i, p in enumerate(plans) if p.key != "ingest"]
    for i, sc in enumerate(config.selectors):
        check = getattr(selector_class(sc.key), "preflight", None)
        if check is not None:
            items.append((f"selectors.{i}.{sc.name}", lambda check=check, sc=sc: check(sc.params), f"selectors.{i}"))
    template = config.export.template if config.export else None
    if template:
        items.append(("export.template", lambda: check_file(template, "export.template", what="export template"), ""))
    try:
        run_preflight(config, plans)
        error = None
    except CurateError as e:
        error = e
    passed = error is None
    before = len(checks)
    for what, check, prefix in items:
        if passed:
            checks.append((what, None))
            continue
        try:
            check()
            checks.append((what, None))
        except PreflightError as e:
            checks.append((what, str(e.at(prefix) if prefix else e)))
        except CurateError as e:
            checks.append((what, f"{what}: {e}"))
    if error is not None and all(err is None for _, err in checks[before:]):
        checks.append(("preflight", str(error)))  # a check of run_preflight's that none of these repeats
