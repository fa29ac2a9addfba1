"""Configured stages → a Ray Data plan of `map_batches` steps over Arrow batches.

Each stage becomes one step with the stage's declared resources: a task step (the stage object
is built once per worker process and cached) or, for `actor` stages and GPU stages, a fixed-size
actor pool. Rows a stage drops or quarantines travel on with a status, untouched by later
stages, so the driver can record every row of every shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.pipeline.config import RunConfig, StageConfig
from curate.pipeline.handoff import wait_for_gate
from curate.pipeline.registry import stage_class
from curate.stages.base import GlobalStage, Resources, Stage, StageContext, StageResult, setup_stage
from curate.stages.ingest import Ingest
from curate.stages.readers import ShardSpec, read_shard
from curate.stages.results import to_stream
from curate.storage import schema as S
from curate.storage.completion import ShardGatherer


@dataclass(frozen=True)
class StagePlan:
    """Everything a worker needs to build a stage: picklable, no live objects."""

    name: str
    key: str  # registry key, or "ingest"
    params: dict
    resources: Resources
    batch_size: int | None
    overrides: dict = field(default_factory=dict)  # the config's `resources:`, over what the stage decides
    context: StageContext | None = None  # the run's paths (and, once Ray is up, its cluster), for Stage.setup

    @property
    def is_global(self) -> bool:
        return self.key != "ingest" and issubclass(stage_class(self.key), GlobalStage)

    def cache_key(self) -> str:
        # With the context: a worker that outlives a run (an embedded Ray reused) must not hand the
        # next run a stage set up with this run's paths.
        context = None if self.context is None else vars(self.context)
        return json.dumps([self.name, self.key, self.params, context], sort_keys=True, default=str)

    @property
    def stage_class(self) -> type[Stage]:
        return Ingest if self.key == "ingest" else stage_class(self.key)

    @property
    def writes(self) -> frozenset[str]:
        """What the stage declares it stores (`Stage.writes`): `apply_stage` rejects anything else."""
        return frozenset(self.stage_class.writes(self.params))

    def build(self) -> Stage:
        return self.stage_class(**self.params)

    def build_and_setup(self) -> Stage:
        """The stage, set up with the run's context (Stage.setup): what a worker runs."""
        stage = self.build()
        setup_stage(stage, self.context)
        return stage

    def for_cluster(self, cluster: dict) -> StagePlan:
        """This plan on the cluster the run joined (`ray.cluster_resources()`, after Ray is
        initialised): the stage's `resources_for(params, cluster)`, the config's overrides on
        top, and the cluster in the context its setup receives."""
        res = _resolved(self.stage_class, self.stage_class.resources_for(self.params, cluster), self.overrides)
        context = replace(self.context or StageContext(), cluster=dict(cluster))
        return replace(self, resources=res, context=context)


def for_cluster(plans: list[StagePlan], cluster: dict | None = None) -> list[StagePlan]:
    """`plans` on the cluster (default: the running Ray's `cluster_resources()`)."""
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    return [p.for_cluster(cluster) for p in plans]


def run_context(config: RunConfig, run_id: str | None = None) -> StageContext:
    """The run-scoped paths every stage's setup receives (no cluster yet: `for_cluster` adds it)."""
    from curate.generators.cache import cache_path_for
    from curate.storage.model_cache import model_cache_path_for

    db = os.path.abspath(config.db)
    return StageContext(run_id=run_id, db=db, model_cache=os.path.abspath(model_cache_path_for(config.db)),
                        llm_cache=os.path.abspath(cache_path_for(config.db)),
                        work_dir=os.path.abspath(config.work_dir) if config.work_dir else db + ".phases")


def stage_plans(config: RunConfig, run_id: str | None = None) -> list[StagePlan]:
    """The configured stages as plans. With `run_id`, each vLLM backend spec names the run
    (`engine_scope`: the run id, this host and the database's path, since one config run into
    two databases has one run id), so the engine actors the runner starts for this run, and
    that its stages find by name, are this run's alone (generators/engines.py)."""
    scope = None
    if run_id is not None:
        import socket

        scope = f"{run_id} {socket.gethostname()}:{os.path.abspath(config.db)}"
    context = run_context(config, run_id)
    plans = [_plan("ingest", "ingest", config.ingest.model_dump(), Ingest, None, None, context)]
    seen = {"ingest", "store"}  # `store` names the funnel step that drops repeated ids
    for sc in config.stages:
        name = sc.name
        n = 2
        while name in seen:
            name, n = f"{sc.name}_{n}", n + 1
        seen.add(name)
        params = dict(sc.params)  # run-scoped paths (the caches beside the database) come in the setup context
        if scope is not None:
            from curate.generators.engines import backend_keys, scoped

            for key in backend_keys(params):  # `backend`, and a second one (`target_backend`)
                params[key] = scoped(params[key], scope)
        plans.append(_plan(name, sc.key, params, stage_class(sc.key), sc, sc.batch_size, context))
    return plans


def _plan(name, key, params, cls, sc: StageConfig | None, batch_size, context: StageContext) -> StagePlan:
    """Resources here are the class's (no cluster yet); the runner replaces them with the
    stage's `resources_for` the cluster once Ray is initialised (`for_cluster`)."""
    overrides = {} if sc is None else {k: v for k, v in sc.resources.model_dump().items() if v is not None}
    return StagePlan(name, key, params, _resolved(cls, cls.resources, overrides),
                     batch_size if batch_size is not None else cls.batch_size, overrides, context)


def _resolved(cls, res: Resources, overrides: dict) -> Resources:
    res = replace(res, **overrides)
    if getattr(cls, "pool", None):  # one actor gathers each shard (config validation rejects other settings)
        res = replace(res, actor=True, concurrency=1)
    return res


# ---------------------------------------------------------------------------- worker side

_STAGE_CACHE: dict[str, Stage] = {}


def read_shard_blocks(spec: ShardSpec) -> list[pa.Table]:
    """Ray read task body: one shard → one block, or none for a later phase's shard that no row
    of the phase before survived."""
    if spec.format == HANDOFF:
        wait_for_gate(os.path.dirname(spec.path))
        if not os.path.exists(spec.path):
            return []
    return [read_shard_table(spec)]


def read_shard_table(spec: ShardSpec) -> pa.Table:
    """One shard → raw records (or, in a later phase, the survivors of the phase before), with
    the bookkeeping columns."""
    if spec.format == HANDOFF:
        return read_handoff_table(spec)
    records = read_shard(spec)
    n = len(records)
    return pa.table({
        S.SHARD: pa.array([spec.shard] * n, pa.string()),
        S.SHARD_ROWS: pa.array([n] * n, pa.int64()),
        S.ROW: pa.array([r.row for r in records], pa.int64()),
        "source": pa.array([spec.source] * n, pa.string()),
        S.RAW: pa.array([r.raw for r in records], pa.string()),
        "read_error": pa.array([r.error for r in records], pa.string()),
        S.STATUS: pa.array([S.KEPT] * n, pa.string()),
        S.STAGE: pa.nulls(n, pa.string()),
        S.REASON: pa.nulls(n, pa.string()),
        S.WEIGHT: pa.array([1.0] * n, pa.float64()),
        S.BORN: pa.nulls(n, pa.string()),
    })


HANDOFF = "handoff"  # ShardSpec.format of a later phase's input: one shard's survivors as Parquet


def read_handoff_table(spec: ShardSpec) -> pa.Table:
    """The survivors of one shard, as the phase before left them, with fresh bookkeeping: each
    row weighs 1 of the shard's survivors. `_born` is null: the row is already in `samples`."""
    import pyarrow.parquet as pq

    rows = pq.read_table(spec.path).sort_by([("row", "ascending"), ("id", "ascending")])
    n = rows.num_rows
    columns = {name: rows[name] for name in S.SAMPLE_COLUMNS}
    columns.update({
        S.SHARD: pa.array([spec.shard] * n, pa.string()),
        S.SHARD_ROWS: pa.array([n] * n, pa.int64()),
        S.ROW: rows["row"].cast(pa.int64()),
        S.RAW: pa.nulls(n, pa.string()),
        S.STATUS: pa.array([S.KEPT] * n, pa.string()),
        S.STAGE: pa.nulls(n, pa.string()),
        S.REASON: pa.nulls(n, pa.string()),
        S.WEIGHT: pa.array([1.0] * n, pa.float64()),
        S.BORN: pa.nulls(n, pa.string()),
    })
    return pa.table(columns).cast(pa.schema([*S.SAMPLE_SCHEMA, *(pa.field(c, columns[c].type) for c in list(columns)[len(S.SAMPLE_COLUMNS):])]))


def run_stage_task(batch: pa.Table, plan: StagePlan) -> pa.Table:
    key = plan.cache_key()
    stage = _STAGE_CACHE.get(key)
    if stage is None:
        stage = _STAGE_CACHE[key] = plan.build_and_setup()
    if getattr(stage, "pool", None):
        raise RuntimeError(f"stage {plan.name} works on whole shards and must run in one actor, not as tasks")
    return apply_stage(stage, plan.name, batch, plan.writes)


class StageActor:
    def __init__(self, plan: StagePlan):
        self.plan = plan
        self.stage = plan.build_and_setup()  # models load as the actor starts, which may be before its input exists
        pool = getattr(self.stage, "pool", None)
        if pool not in (None, "shard"):
            raise ValueError(f"stage {plan.name}: unknown pool {pool!r} (known: 'shard')")
        self.shards = ShardBuffer() if pool == "shard" else None
        self.writes = plan.writes

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.shards is None:
            return apply_stage(self.stage, self.plan.name, batch, self.writes)
        done = self.shards.add(batch)
        if not done:  # no shard complete yet: an empty batch of the shape this step emits
            return apply_stage(self.stage, self.plan.name, batch.slice(0, 0), self.writes)
        out = [apply_stage(self.stage, self.plan.name, shard, self.writes) for shard in done]
        return out[0] if len(out) == 1 else pa.concat_tables(out, promote_options="permissive")


POOL_ORDER = (S.ROW, "id", "meta", S.WEIGHT)  # (_row, id) orders a shard; meta and weight break ties between copies


class ShardBuffer:
    """The rows of each shard that reached a `pool = "shard"` stage, held until the shard is
    complete, so the stage sees every live row of a shard at once, in a fixed order, however
    Ray Data batched them and whichever shards a run (or a resumed run) streams.

    A shard is complete when the summed `_weight` of its rows here, live and passed-through
    alike, equals `_shard_rows`: rows a stage drops travel on, and a generator splits a row's
    weight among its children, so every shard reaches every stage with its full weight (the
    writer counts it out the same way). Thread-safe: an actor may take several calls at once.
    """

    def __init__(self):
        self.gathered = ShardGatherer()
        self.lock = threading.Lock()

    def add(self, batch: pa.Table) -> list[pa.Table]:
        """Take a batch; return the shards it completes, each sorted by `POOL_ORDER`."""
        with self.lock:
            done = [parts for _, _, parts in self.gathered.add(batch)]
        return [pool_order(pa.concat_tables(parts, promote_options="permissive")) for parts in done]

    def pending(self) -> list[str]:
        with self.lock:
            return self.gathered.unfinished()


def pool_order(table: pa.Table) -> pa.Table:
    keys = [(c, "ascending") for c in POOL_ORDER if c in table.column_names]
    return table.take(pc.sort_indices(table, sort_keys=keys)) if keys else table  # nulls last


LIVE_INDEX = "_i"  # position of a row in the stage's input batch, so a generator's parents can be found in its output


def apply_stage(stage: Stage, name: str, batch: pa.Table, writes: set[str] | frozenset[str] | None = None) -> pa.Table:
    """Run a stage on the live rows of a batch; pass the others through; mark what it removed.
    Its results become columns on its rows (stages/results.py `to_stream`), checked against
    `writes`, what the stage declares (`StagePlan.writes`; None: unchecked)."""
    live_mask = pc.equal(batch[S.STATUS], S.KEPT)
    live = batch.filter(live_mask)
    live = live.append_column(LIVE_INDEX, pa.array(np.arange(live.num_rows), pa.int64()))
    passed = batch.filter(pc.invert(live_mask))
    start = time.perf_counter()
    result: StageResult = stage(live) if live.num_rows else StageResult(kept=live)
    seconds = time.perf_counter() - start
    out = to_stream(result, name, writes, live.column_names)
    parts = [out.kept]
    if out.dropped is not None and out.dropped.num_rows:
        parts.append(_mark(out.dropped, out.reasons, S.DROPPED, name))
    if out.quarantined is not None and out.quarantined.num_rows:
        parts.append(_mark(out.quarantined, out.errors, S.QUARANTINED, name))
    accounted = sum(p.num_rows for p in parts)
    if out.generated is not None and out.generated.num_rows:
        children, parents, share = _children(live, out.generated, name, result.parents_stay)
        parts = [_reweigh(p, share) for p in parts]
        parts.insert(1, children)
        if parents is not None:
            parts.append(parents)
            accounted += parents.num_rows
    if accounted != live.num_rows:
        raise RuntimeError(f"stage {name} accounted for {accounted} of {live.num_rows} rows: a stage must account for every row")
    per_row = seconds / max(1, live.num_rows)
    parts = [p.append_column(S.COST_PREFIX + name, pa.array([per_row] * p.num_rows, pa.float64())) for p in parts]
    parts = [p.drop_columns([LIVE_INDEX]) if LIVE_INDEX in p.column_names else p for p in parts]
    parts.append(passed)
    return pa.concat_tables(parts, promote_options="permissive")


def _children(live: pa.Table, generated: pa.Table, stage: str, parents_stay: bool) -> tuple[pa.Table, pa.Table | None, np.ndarray]:
    """Give generated rows their parent's shard bookkeeping; the parents of successful rows
    become `expanded`, stored for lineage (with `parents_stay`, they stay as the stage returned
    them instead).

    A generated row with a non-null `reason` failed (an eliminated evolution, an unparseable
    output): it is stored as a drop, and its parent, which the stage returned in `kept` or
    `dropped`, stays in play. A parent's weight is split evenly between it and all its
    children, so every row the writer waits for carries weight: a shard completes only once
    each of its rows has arrived, however later stages re-batch them. Returns the children,
    the expanded parents and each input row's share of weight (NaN where it has no children).
    """
    parent = generated[S.PARENT].to_numpy().astype(np.int64)
    failed = np.zeros(len(parent), bool)
    if "reason" in generated.column_names:
        failed = pc.is_valid(generated["reason"]).to_numpy(zero_copy_only=False)
    all_counts = np.bincount(parent, minlength=live.num_rows)
    share = np.where(all_counts > 0, live[S.WEIGHT].to_numpy() / (all_counts + 1), np.nan)
    generated = _distinct_ids(generated, live, stage)
    carried = live.select([S.SHARD, S.SHARD_ROWS, S.ROW]).take(pa.array(parent))
    reasons = generated["reason"] if "reason" in generated.column_names else pa.nulls(len(parent), pa.string())
    children = generated.drop_columns([c for c in (S.PARENT, "reason") if c in generated.column_names])
    for col in carried.column_names:
        children = children.append_column(col, carried[col])
    n = children.num_rows
    children = (children.append_column(S.STATUS, pa.array(np.where(failed, S.DROPPED, S.KEPT), pa.string()))
                .append_column(S.STAGE, pa.array([stage if f else None for f in failed], pa.string()))
                .append_column(S.REASON, reasons.cast(pa.string()))
                .append_column(S.WEIGHT, pa.array(share[parent], pa.float64())).append_column(S.BORN, pa.array([stage] * n, pa.string())))
    if parents_stay:
        return children, None, share
    expanded = np.flatnonzero(np.bincount(parent[~failed], minlength=live.num_rows))
    parents = live.take(pa.array(expanded, pa.int64()))
    m = parents.num_rows
    parents = parents.drop_columns([S.STATUS, S.STAGE, S.WEIGHT])
    parents = (parents.append_column(S.STATUS, pa.array([S.EXPANDED] * m, pa.string()))
               .append_column(S.STAGE, pa.array([stage] * m, pa.string()))
               .append_column(S.WEIGHT, pa.array(share[expanded], pa.float64())))
    return children, parents, share


def _distinct_ids(generated: pa.Table, live: pa.Table, stage: str) -> pa.Table:
    """A generated row's id is its content hash (storage/schema.py `sample_id`) unless a row of
    the batch or an earlier generated row of this batch holds it already: a Self-Instruct task
    that copies a seed or an earlier task, two identical replies to one prompt. Such a row gets
    an id derived from the content id, the stage, its parents and its occurrence, so every stored
    row, kept or dropped, is its own: a drop reason never lands on the row it copies, and lineage
    has no cycles (a copy no longer lists itself among its parents). References in parent_ids
    keep meaning the row that held the id first (the batch's row, or the first generated one)."""
    ids = generated["id"].to_pylist()
    taken = set(live["id"].to_pylist())
    if not taken.intersection(ids) and len(set(ids)) == len(ids):
        return generated
    parents = generated["parent_ids"].to_pylist()
    out, seen = [], {}
    for cid, pids in zip(ids, parents):
        n = seen.get(cid, 0)
        seen[cid] = n + 1
        if cid in taken or n:
            body = f"{cid}|{stage}|{','.join(pids or [])}|{n}"
            cid = hashlib.blake2b(body.encode("utf-8"), digest_size=16).hexdigest()
        out.append(cid)
    i = generated.column_names.index("id")
    return generated.set_column(i, "id", pa.array(out, generated.schema.field("id").type))


def _reweigh(rows: pa.Table, share: np.ndarray) -> pa.Table:
    """Rows the stage returned that are parents of generated rows carry their share only."""
    if LIVE_INDEX not in rows.column_names or not rows.num_rows:
        return rows
    idx = rows[LIVE_INDEX].to_numpy(zero_copy_only=False)
    mine = share[idx]
    weights = np.where(np.isnan(mine), rows[S.WEIGHT].to_numpy(zero_copy_only=False), mine)
    return rows.set_column(rows.column_names.index(S.WEIGHT), S.WEIGHT, pa.array(weights, pa.float64()))


def _mark(table: pa.Table, why: pa.Array, status: str, stage: str) -> pa.Table:
    """Rows a stage dropped or quarantined, with their status, the stage and the reason (error)."""
    n = table.num_rows
    table = table.drop_columns([S.STATUS, S.STAGE, S.REASON])
    return (table.append_column(S.STATUS, pa.array([status] * n, pa.string()))
                 .append_column(S.STAGE, pa.array([stage] * n, pa.string()))
                 .append_column(S.REASON, why.cast(pa.string())))


# ---------------------------------------------------------------------------- driver side


def build_dataset(shards: list[ShardSpec], plans: list[StagePlan]):
    import ray.data

    # One read task per shard: CPU stages fuse into it, so a shard flows through them in one
    # task, and shards run in parallel and reach the writer as they finish.
    ds = ray.data.read_datasource(ShardDatasource(shards), override_num_blocks=max(1, len(shards)))
    for plan in plans:
        ds = _add_step(ds, plan)
    return ds


def _shard_datasource_class():
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ShardDatasource(Datasource):
        def __init__(self, shards: list[ShardSpec]):
            super().__init__()
            self.shards = shards

        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(lambda spec=spec: read_shard_blocks(spec),
                         BlockMetadata(num_rows=None, size_bytes=None, input_files=[spec.path], exec_stats=None))
                for spec in self.shards
            ]

    return ShardDatasource


def ShardDatasource(shards: list[ShardSpec]):  # noqa: N802 - a class, built lazily so importing this module needs no Ray
    return _shard_datasource_class()(shards)


def _add_step(ds, plan: StagePlan):
    res = plan.resources
    # batch_size=None: each task (or actor call) takes one block, which is one shard (one read
    # task per shard, and a step's output for a shard stays in its block). Given an int, Ray Data
    # bundles blocks until it holds that many rows before it starts a task, so a stage whose
    # batch size exceeded the shard size made every shard wait for the others: filters
    # (2,048) after respond on 8-row shards took all 12 shards in one task at the end of the
    # stream, and every shard committed in the last 0.5 s of 65 s. The stage's batch size still
    # bounds each call: the step slices a larger shard itself (SlicingStageActor, run_stage_task_in_slices).
    common = dict(batch_format="pyarrow", batch_size=None, num_cpus=res.num_cpus)
    map_batches = ds.map_batches
    if res.num_gpus:
        common["num_gpus"] = res.num_gpus
        # Ray Data's public map_batches refuses batch_size=None with GPUs (a hint about GPU
        # memory, which the slices bound here); its own map_groups uses the unchecked variant.
        map_batches = getattr(ds, "map_batches_internal", None) or ds._map_batches_without_batch_size_validation
    if res.actor or res.num_gpus:
        # A nominal 1-byte memory reservation makes this step's remote args differ from a task
        # step's, and Ray Data fuses only steps with equal args: fused, the task steps before an
        # actor would run one batch at a time inside its one process (on the 100k-row bench,
        # ingest, filters and dedup keys ran serially inside the embedding actor).
        from ray.data import ActorPoolStrategy

        return map_batches(SlicingStageActor, fn_constructor_kwargs={"plan": plan},
                           compute=ActorPoolStrategy(size=res.concurrency or 1, max_concurrent_calls_per_actor=res.calls_per_actor,
                                                       enable_true_multi_threading=res.calls_per_actor > 1), memory=1, **common)
    if res.concurrency:
        from ray.data import TaskPoolStrategy

        common["compute"] = TaskPoolStrategy(size=res.concurrency)
    return map_batches(run_stage_task_in_slices, fn_kwargs={"plan": plan}, **common)


def _slices(batch: pa.Table, size: int | None) -> list[pa.Table]:
    """One shard's block in consecutive slices of at most `size` rows (the stage's batch size)."""
    if not size or batch.num_rows <= size:
        return [batch]
    return [batch.slice(start, size) for start in range(0, batch.num_rows, size)]


def _joined(parts: list[pa.Table]) -> pa.Table:
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")


def run_stage_task_in_slices(batch: pa.Table, plan: StagePlan) -> pa.Table:
    """A task step's body: one shard, in calls of at most the stage's batch size."""
    return _joined([run_stage_task(part, plan) for part in _slices(batch, plan.batch_size)])


class SlicingStageActor(StageActor):
    """An actor step's body: one shard, in calls of at most the stage's batch size. It returns
    one table rather than yielding slices, so a single-threaded actor's stage runs only on the
    thread Ray Data keeps for it."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _joined([super(SlicingStageActor, self).__call__(part) for part in _slices(batch, self.plan.batch_size)])


def declared_results(plans: list[StagePlan]) -> frozenset[str]:
    """What the stages of `plans` (a phase's stream) declare they store, as the store checks a
    shard's result columns against it (Store.commit_shard `declared`): their `writes`, with a
    GlobalStage's `keys` as `keys:<its name>`."""
    return frozenset(f"keys:{p.name}" if item == "keys" else item for p in plans for item in p.writes)
