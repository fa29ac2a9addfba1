"""The runner: plan shards, skip committed ones, stream the rest through Ray, commit to DuckDB."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from curate.errors import CurateError
from curate.pipeline.config import RunConfig, config_to_dict
from curate.pipeline.dag import StagePlan, build_dataset, stage_plans
from curate.pipeline.registry import selector_class, stage_class
from curate.pipeline.progress import Progress
from curate.pipeline.select import run_selectors
from curate.stages.readers import input_fingerprint, plan_shards, resolve_inputs
from curate.storage.store import Store
from curate.storage.writer import ShardWriter


@dataclass
class RunReport:
    run_id: str
    db: str
    attempt: int
    shards: int
    shards_skipped: int
    rows_in: int
    kept: int
    dropped: int
    quarantined: int
    expanded: int  # input rows that generators replaced by new rows
    generated: int  # rows generators made
    selections: list[dict]  # the selections written by this attempt

    def summary(self) -> str:
        gen = f" + {self.generated} generated" if self.generated else ""
        exp = f" + {self.expanded} expanded" if self.expanded else ""
        text = (f"run {self.run_id} (attempt {self.attempt}): {self.rows_in} rows in{gen} = {self.kept} kept + "
                f"{self.dropped} dropped + {self.quarantined} quarantined{exp}; "
                f"{self.shards - self.shards_skipped} of {self.shards} shards processed → {self.db}")
        for s in self.selections:
            text += f"\nselection {s['name']}: {s['rows']} of {s['pool']} rows"
        return text


def run(config: RunConfig, progress: str = "auto") -> RunReport:
    inputs = resolve_inputs(config.input)
    plans = stage_plans(config)
    if not (config.ray.address or os.environ.get("RAY_ADDRESS")):  # on a cluster the workers' machines may differ
        for plan in plans:
            if plan.key != "ingest":
                stage_class(plan.key).preflight(plan.params)
    stage_names = [p.name for p in plans]
    fingerprint = input_fingerprint(inputs)
    run_id = config.fingerprint(fingerprint)
    shards = plan_shards(inputs, config.shard_size)
    with Store(config.db) as store:
        attempt = store.begin_run(run_id, config.name, config_to_dict(config), fingerprint)
        done = store.committed_shards(run_id)
        todo = [s for s in shards if s.shard not in done]
        bar = Progress(stage_names, len(shards), len(shards) - len(todo), mode=progress)
        writer = ShardWriter(store, run_id, stage_names, {s.shard: s.path for s in shards}, bar.shard_committed)
        try:
            if todo:
                _stream(config, todo, plans, store, writer, run_id, attempt)
            bar.close()
            run_global_steps(store, run_id, plans, bar)
            with ray_session(config) if _selectors_use_ray(config) else nullcontext():
                selections = run_selectors(store, run_id, config.selectors)
        except BaseException:
            bar.close()
            store.end_run(run_id, "failed")
            raise
        store.end_run(run_id, "finished")
        totals = store.totals(run_id)
    report = RunReport(run_id, config.db, attempt, len(shards), len(shards) - len(todo), **totals, selections=selections)
    return _check_counts(report)


def _selectors_use_ray(config: RunConfig) -> bool:
    return any(selector_class(sc.key).uses_ray(sc.params) for sc in config.selectors)


def run_global_steps(store: Store, run_id: str, plans: list[StagePlan], bar: Progress) -> None:
    """The second half of each GlobalStage, in config order, after the stream."""
    position = len(plans) + 1  # after the stream stages and `store`
    for plan in plans:
        if not plan.is_global:
            continue
        if not store.global_step_done(run_id, plan.name):
            stage = plan.build()
            start = time.perf_counter()
            drops = stage.decide(store.keys_reader(run_id, plan.name, stage.order))
            seconds = time.perf_counter() - start
            dropped = store.commit_global_step(run_id, plan.name, position, drops, seconds)
            bar.global_step(plan.name, dropped, seconds)
        position += 1


def _stream(config, todo, plans, store, writer, run_id, attempt) -> None:
    import ray

    from curate.generators.engines import engine_stats, start_engines, vllm_specs

    with ray_session(config):
        # First, even before Ray Data is imported, so the engines load while it plans and starts the stages.
        engines = start_engines(vllm_specs([p.params for p in plans]), ray.cluster_resources().get("GPU", 0))
        try:
            _quiet_ray_data()
            _check_actor_resources(plans)
            for batch in build_dataset(todo, plans).iter_batches(batch_format="pyarrow", batch_size=None):
                writer.add(batch)
            store.record_engines(run_id, attempt, engine_stats(engines), time.time())
        finally:
            for engine in engines:
                ray.kill(engine)
    if writer.unfinished():
        raise RuntimeError(f"the stream ended with shards incomplete: {writer.unfinished()[:5]}")
    committed = store.committed_shards(run_id)
    for spec in todo:  # shards that produced no rows at all (blank files)
        if spec.shard not in committed:
            writer.add_empty_shard(spec.shard)


def _check_actor_resources(plans: list[StagePlan]) -> None:
    """Actor pools hold their resources for the whole stream; if they cannot all fit, Ray Data
    would wait forever. Say so instead, naming the stages."""
    import ray

    available = ray.cluster_resources()
    for resource, attr in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = {p.name: getattr(p.resources, attr) * (p.resources.concurrency or 1)
                for p in plans if (p.resources.actor or p.resources.num_gpus) and getattr(p.resources, attr)}
        task_floor = 1 if resource == "CPU" else 0  # the task stages need room to run beside the actors
        if need and sum(need.values()) + task_floor > available.get(resource, 0) + 1e-9:
            raise CurateError(
                f"the actor stages need {sum(need.values()):g} {resource} ({', '.join(f'{k}: {v:g}' for k, v in need.items())}) "
                f"plus room for the other stages, and the cluster has {available.get(resource, 0):g}; lower their "
                f"resources.{attr} or concurrency")


def _quiet_ray_data() -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Actor steps reserve a nominal byte of memory to stay unfused (pipeline/dag.py); Ray Data's
    # high-memory detector would then advise every run to reserve the memory its actors use.
    detectors = getattr(context, "issue_detectors_config", None)
    if detectors is not None and hasattr(detectors, "high_memory_detector_config"):
        detectors.high_memory_detector_config.detection_time_interval_s = -1  # -1: off
    logging.getLogger("ray.data").setLevel(logging.WARNING)


@contextmanager
def ray_session(config: RunConfig):
    """Use the Ray already initialised, or join `ray.address`/$RAY_ADDRESS (a cluster, `ray job
    submit`), or start an embedded local Ray (never joining a stale cluster from /tmp/ray)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=True, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=config.ray.num_cpus, include_dashboard=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def _check_counts(report: RunReport) -> RunReport:
    if report.rows_in + report.generated != report.kept + report.dropped + report.quarantined + report.expanded:
        raise CurateError(f"counts do not add up for run {report.run_id}: {report.summary()}")
    return report
