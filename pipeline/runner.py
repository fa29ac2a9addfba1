"""The runner: plan shards and phases, skip what is committed, stream the rest through Ray phase by
phase (each ending at a barrier of global stages), commit to DuckDB, then run the selectors."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

from curate.errors import CurateError, root_cause
from curate.pipeline.config import RunConfig, config_to_dict
from curate.pipeline.dag import HANDOFF, StagePlan, build_dataset, declared_results, for_cluster, stage_plans
from curate.pipeline.handoff import abort_gate, handoff_file, open_gate, reset_gate
from curate.pipeline.phases import Phase, handoff_dir, split_phases
from curate.pipeline.registry import selector_class
from curate.pipeline.progress import Progress
from curate.pipeline.select import run_selectors
from curate.stages.readers import ShardSpec, input_fingerprint, plan_shards, resolve_inputs
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
    quarantine_reasons: list[tuple[str, str, int]] = ()  # the most frequent (stage, error, rows)
    drop_reasons: list[tuple[str, str, int]] = ()  # the most frequent (stage, kind, rows)
    # per phase: (shards this attempt streamed, shards an earlier attempt had committed);
    # `shards_skipped` is phase 0's second number
    phase_shards: list[tuple[int, int]] = ()
    warnings: list[str] = ()  # about the input (a file of no rows), also printed on stderr

    @property
    def shards_processed(self) -> int:
        """Shards this attempt streamed, over all phases (a shard counts once per phase)."""
        return sum(p for p, _ in self.phase_shards)

    def shards_text(self) -> str:
        """`60 of 60 shards processed`, with the shards earlier attempts had committed and, in a
        run of several phases, per phase (`phase 0: 0 of 60 shards processed (60 committed
        earlier); phase 1: 60 of 60`)."""
        def one(processed: int, earlier: int, noun: str) -> str:
            return f"{processed} of {self.shards}{noun} processed" + (f" ({earlier} committed earlier)" if earlier else "")

        phases = list(self.phase_shards) or [(self.shards - self.shards_skipped, self.shards_skipped)]
        if len(phases) == 1:
            return one(*phases[0], " shards")
        return "; ".join(f"phase {i}: " + one(p, e, " shards" if i == 0 else "") for i, (p, e) in enumerate(phases))

    def summary(self) -> str:
        gen = f" + {self.generated} generated" if self.generated else ""
        exp = f" + {self.expanded} expanded" if self.expanded else ""
        text = (f"run {self.run_id} (attempt {self.attempt}): {self.rows_in} rows in{gen} = {self.kept} kept + "
                f"{self.dropped} dropped + {self.quarantined} quarantined{exp}; "
                f"{self.shards_text()} → {self.db}")
        if self.drop_reasons:
            shown = sum(n for *_, n in self.drop_reasons)
            text += "\ndropped: " + ", ".join(f"{n} × {kind} ({stage})" for stage, kind, n in self.drop_reasons)
            if self.dropped > shown:
                text += f", {self.dropped - shown} more (curate show --db {self.db} --stage STAGE)"
        for stage, error, n in self.quarantine_reasons:
            text += f"\nquarantined by {stage}: {n} × {error}"
        if self.quarantine_reasons and self.quarantined > sum(n for *_, n in self.quarantine_reasons):
            text += f"\n(all of them: curate export --drops --db {self.db} --out rejected.jsonl -f jsonl)"
        for s in self.selections:
            text += f"\nselection {s['name']}: {s['rows']} of {s['pool']} rows"
            if "budget" in s:
                text += f" (its budget, {s['budget']:,} rows, is above the pool: it took every row it could)"
        for w in self.warnings:
            text += f"\nwarning: {w}"
        return text


def run(config: RunConfig, progress: str = "auto") -> RunReport:
    """Run `config` phase by phase (pipeline/phases.py), then its selectors; a rerun of the same
    config resumes: finished phases, committed shards and finished global steps are skipped."""
    inputs = resolve_inputs(config.input)
    fingerprint = input_fingerprint(inputs)
    run_id = config.fingerprint(fingerprint)
    plans = stage_plans(config, run_id=run_id)  # engines are named per run
    if not (config.ray.address or os.environ.get("RAY_ADDRESS")):  # on a cluster the workers' machines may differ
        from curate.pipeline.preflight import run_preflight

        run_preflight(config, plans)  # files, model folders, servers: one line naming the key and the fix
    phases = split_phases(plans)
    shards = plan_shards(inputs, config.shard_size)
    with Store(config.db) as store:
        attempt = store.begin_run(run_id, config.name, config_to_dict(config), fingerprint)
        skipped = len(store.committed_shards(run_id, 0))
        phase_shards: list[tuple[int, int]] = []
        stopped = False
        try:
            with _interrupt_handlers(store, run_id), RayEnvironment(config, plans, store, run_id, attempt) as env:
                try:
                    ahead = None
                    try:
                        for i, phase in enumerate(phases):
                            following = phases[i + 1] if i + 1 < len(phases) else None
                            ahead = _run_phase(config, phase, following, ahead, shards, store, run_id, env, progress,
                                               multi=len(phases) > 1, counts=phase_shards)
                    finally:
                        if ahead is not None:
                            ahead.abort()  # nothing if its phase consumed it
                    if _selectors_use_ray(config):
                        env.start(engines=False)
                    selections = run_selectors(store, run_id, config.selectors)
                except BaseException as e:  # recorded before Ray is torn down: a dying Ray may end the process
                    stopped = True
                    _record_stop(store, run_id, e)
                    signalled = _signal_exception(run_id, e)
                    if signalled is not None:  # what the signal became on its way out (Ray Data's wrappers)
                        raise signalled from e
                    raise
        except BaseException as e:
            if not stopped:
                _record_stop(store, run_id, e)
            raise
        store.end_run(run_id, "finished")
        totals = store.totals(run_id)
        reasons = store.quarantine_reasons(run_id) if totals["quarantined"] else []
        drop_reasons = store.drop_reasons(run_id) if totals["dropped"] else []
        warnings = _empty_inputs(store, run_id, inputs)
    _remove_handoff(config, run_id)
    report = RunReport(run_id, config.db, attempt, len(shards), skipped, **totals, selections=selections,
                       quarantine_reasons=reasons, drop_reasons=drop_reasons, phase_shards=phase_shards, warnings=warnings)
    return _check_counts(report)


SIGNAL_WHY = {signal.SIGINT: "by the user (Ctrl-C / SIGINT)",
              signal.SIGTERM: "by SIGTERM (kill, timeout or a scheduler)"}


class Terminated(SystemExit):
    """Raised in the main thread by curate's SIGTERM handler (exit status 143, as a shell reports it)."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


# The handler `_interrupt_handlers` installed, put back after `ray.init`, which sets its own for SIGTERM.
_HANDLER: list = []
_SIGNALLED: dict[str, int] = {}  # run id → the signal that stopped it, set by the handler


@contextmanager
def _interrupt_handlers(store: Store, run_id: str):
    """While the run goes on (in the main thread: signals go nowhere else), SIGTERM and SIGINT
    first mark the run `interrupted` in the database, then unwind the run (SIGTERM as
    `Terminated`, SIGINT as KeyboardInterrupt), so the status is written even when Ray, torn
    down by the same signal, ends the process before the unwinding reaches `_record_stop`. The
    previous handlers are back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _SIGNALLED[run_id] = signum
        _mark_interrupted(store, run_id, f"interrupted {SIGNAL_WHY[signum]}")
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated()

    _SIGNALLED.pop(run_id, None)
    before = {sig: signal.signal(sig, handler) for sig in SIGNAL_WHY}
    _HANDLER.append(handler)
    try:
        yield
    finally:
        _HANDLER.remove(handler)
        for sig, h in before.items():
            signal.signal(sig, h)


def _reinstall_interrupt_handlers() -> None:
    """After `ray.init`, which replaces the SIGTERM handler with its own `sys.exit(15)`."""
    if _HANDLER and threading.current_thread() is threading.main_thread():
        for sig in SIGNAL_WHY:
            signal.signal(sig, _HANDLER[-1])


def _mark_interrupted(store: Store, run_id: str, why: str) -> None:
    with suppress(Exception):  # in a signal handler: whatever fails here, the unwinding records it again
        store.mark_interrupted(run_id, why)


def _empty_inputs(store: Store, run_id: str, inputs) -> list[str]:
    """A warning for each input file of which no row was read (an empty file, blank lines only,
    a header alone, an empty list), printed on stderr as well."""
    read = dict(store.con.execute("SELECT path, sum(rows_in) FROM shards WHERE run_id = ? AND phase = 0 GROUP BY path",
                                  [run_id]).fetchall())
    out = []
    for inp in inputs:
        if not read.get(inp.path):
            out.append(f"input {inp.path} is empty: 0 rows read")
            print(f"warning: {out[-1]}", file=sys.stderr, flush=True)
    return out


def _record_stop(store: Store, run_id: str, e: BaseException) -> None:
    """Ctrl-C and SIGTERM (curate's handler, or Ray's, which exits with the signal number) mark
    the run interrupted and say how to go on; anything else marks it failed, with the error."""
    signum = _SIGNALLED.get(run_id)
    if signum is not None:  # whatever the exception became on its way out (a stream cut short, say)
        store.end_run(run_id, "interrupted", f"interrupted {SIGNAL_WHY[signum]}")
        print("interrupted: rerun the same command to resume", file=sys.stderr, flush=True)
    elif isinstance(e, (KeyboardInterrupt, SystemExit)):
        why = SIGNAL_WHY[signal.SIGINT] if isinstance(e, KeyboardInterrupt) else SIGNAL_WHY[signal.SIGTERM] \
            if isinstance(e, Terminated) else f"(exit {e.code}: SIGTERM from kill, timeout or a scheduler)"
        store.end_run(run_id, "interrupted", f"interrupted {why}")
        print("interrupted: rerun the same command to resume", file=sys.stderr, flush=True)
    else:
        store.end_run(run_id, "failed", _error_text(e)[:4000])


def _signal_exception(run_id: str, e: BaseException) -> BaseException | None:
    """The exception to leave the run with when a signal stopped it but `e` is another (a stream
    cut short): `Terminated` or KeyboardInterrupt, so the caller exits as for the signal."""
    signum = _SIGNALLED.get(run_id)
    if signum is None or isinstance(e, (KeyboardInterrupt, SystemExit)):
        return None
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _error_text(e: BaseException) -> str:
    """`Type: message` of the exception a stage raised, out of Ray's wrappers."""
    cause = root_cause(e)
    return f"{cause.type_name}: {cause.message}" if cause.message else cause.type_name


def _remove_handoff(config: RunConfig, run_id: str) -> None:
    """A finished run needs its hand-off files no more (they only serve a resume)."""
    run_dir = os.path.dirname(handoff_dir(config.db, run_id, 0, config.work_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    if config.work_dir is None:  # `<db>.phases`, once no other run's files are left; a user's work_dir stays
        with suppress(OSError):
            os.rmdir(os.path.dirname(run_dir))


def _selectors_use_ray(config: RunConfig) -> bool:
    return any(selector_class(sc.key).uses_ray(sc.params) for sc in config.selectors)


def _run_phase(config: RunConfig, phase: Phase, following: Phase | None, ahead: EarlyStream | None,
               shards: list[ShardSpec], store: Store, run_id: str, env: RayEnvironment, progress: str,
               multi: bool, counts: list[tuple[int, int]] | None = None) -> EarlyStream | None:
    """Stream the phase's uncommitted shards, then decide its global stages (the barrier).
    Phase 0 reads the input; phase k > 0 the survivors of phase k - 1, handed over as Parquet.
    `ahead` is this phase's stream if it started during the barrier before; returns the next
    phase's stream if that one starts during this phase's barrier. Appends (shards streamed now,
    shards committed earlier) to `counts`."""
    if phase.barrier and all(store.global_step_done(run_id, p.name) for p in phase.barrier):
        if counts is not None:
            counts.append((0, len(shards)))
        return None  # finished by an earlier attempt
    done = store.committed_shards(run_id, phase.index)
    todo = [s for s in shards if s.shard not in done]
    if counts is not None:
        counts.append((len(todo), len(done)))
    specs, paths = _phase_inputs(config, phase, shards, todo, run_id)
    if phase.index > 0 and todo:
        folder = handoff_dir(config.db, run_id, phase.index, config.work_dir)
        store.write_handoff(run_id, {s.shard: s.path for s in specs})
        open_gate(folder)
    bar = Progress(phase.steps, len(shards), len(done), mode=progress, phase=phase.index if multi else None,
                   engines=env.engine_progress)
    writer = ShardWriter(store, run_id, phase.steps, paths, bar.shard_committed, phase.index,
                         declared=declared_results(phase.stream))
    try:
        if specs:
            env.start()
            _stream(specs, phase.stream, writer, ahead, on_batch=bar.batch_arrived)
            env.stream_ended()
        committed = store.committed_shards(run_id, phase.index)
        for spec in todo:  # shards with no rows at all: blank files, or no survivor of the phase before
            if spec.shard not in committed:
                writer.add_empty_shard(spec.shard)
    finally:
        bar.close()
    ahead = _start_ahead(config, following, shards, store, run_id, env)
    try:
        _run_barrier(store, run_id, phase, bar)
    except BaseException:
        if ahead is not None:
            ahead.abort()
        raise
    return ahead


def _phase_inputs(config: RunConfig, phase: Phase, shards: list[ShardSpec], todo: list[ShardSpec],
                  run_id: str) -> tuple[list[ShardSpec], dict[str, str]]:
    """The phase's read specs (its uncommitted shards) and every shard's input path."""
    if phase.index == 0:
        return todo, {s.shard: s.path for s in shards}
    folder = handoff_dir(config.db, run_id, phase.index, config.work_dir)
    paths = {s.shard: handoff_file(folder, s.shard) for s in shards}
    return [ShardSpec(s.shard, paths[s.shard], HANDOFF, source="") for s in todo], paths


def _start_ahead(config: RunConfig, following: Phase | None, shards: list[ShardSpec], store: Store,
                 run_id: str, env: RayEnvironment) -> EarlyStream | None:
    """Start the next phase's stream now, behind its closed gate, when it has actors to start
    (models to load): they start during this phase's barrier instead of after it."""
    if following is None or not env.ray_started or not any(p.resources.actor or p.resources.num_gpus
                                                            for p in for_cluster(following.stream)):
        return None
    done = store.committed_shards(run_id, following.index)
    todo = [s for s in shards if s.shard not in done]
    if not todo:
        return None
    specs, _ = _phase_inputs(config, following, shards, todo, run_id)
    folder = handoff_dir(config.db, run_id, following.index, config.work_dir)
    reset_gate(folder)
    return EarlyStream(specs, following.stream, folder)


def _run_barrier(store: Store, run_id: str, phase: Phase, bar: Progress) -> None:
    """The decisions of the phase's global stages, in config order, each in one transaction."""
    positions = {step.name: step.position for step in phase.steps if step.kind == "global"}
    for plan in phase.barrier:
        if store.global_step_done(run_id, plan.name):
            continue
        stage = plan.build_and_setup()
        start = time.perf_counter()
        drops = stage.decide_in(store, run_id, plan.name)
        seconds = time.perf_counter() - start
        dropped = store.commit_global_step(run_id, plan.name, positions[plan.name], drops, seconds)
        bar.global_step(plan.name, dropped, seconds)


def _batches(specs: list[ShardSpec], plans: list[StagePlan]):
    _quiet_ray_data()
    # Ray is up: each stage decides its resources on the cluster the run joined (Stage.resources_for),
    # and its setup context carries that cluster.
    plans = for_cluster(plans)
    _check_actor_resources(plans)
    # prefetch_batches=0: with a prefetch, Ray hands over a shard's block only once the next one
    # exists, so a finished shard would wait a whole shard's time for its commit.
    return iter(build_dataset(specs, plans).iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0))


def _stream(specs: list[ShardSpec], plans: list[StagePlan], writer: ShardWriter, ahead: EarlyStream | None = None,
            on_batch=None) -> None:
    batches = ahead if ahead is not None else _batches(specs, plans)
    try:
        for batch in batches:
            if on_batch is not None:
                on_batch(batch)  # live counts, before the shard commits
            writer.add(batch)
    finally:  # on an interruption too: stop Ray Data's executor thread before Ray itself shuts down
        close = getattr(batches, "close", None)
        if close:
            close()
    if writer.unfinished():
        raise RuntimeError(f"the stream ended with shards incomplete: {writer.unfinished()[:5]}")


class EarlyStream:
    """A phase's stream started before its input exists: a thread drives Ray Data's iterator
    (its actors start and load their models meanwhile; the read tasks wait at the gate) and
    hands each batch to the main thread, which alone touches the store."""

    _END = object()

    def __init__(self, specs: list[ShardSpec], plans: list[StagePlan], folder: str):
        self.folder = folder
        self.closed = False
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.stopping = threading.Event()
        batches = _batches(specs, plans)
        self.thread = threading.Thread(target=self._pump, args=(batches,), name="curate-early-stream", daemon=True)
        self.thread.start()

    def _pump(self, batches) -> None:
        item = self._END
        try:
            for batch in batches:
                if not self._put(batch):
                    break
        except BaseException as e:  # handed to the main thread
            item = e
        finally:
            with suppress(Exception):
                batches.close()
        self._put(item)

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.closed = True
        self.stopping.set()
        self.thread.join(timeout=60)

    def abort(self) -> None:
        """The barrier failed, or the run stopped: the waiting read tasks stop, and so does the
        thread. Nothing once the phase has consumed the stream."""
        if not self.closed:
            abort_gate(self.folder)
            self.close()


class RayEnvironment:
    """Ray and the run's vLLM engines, started on first need (a rerun with nothing left to
    stream starts neither) and kept for every phase, so engines load once per run."""

    def __init__(self, config: RunConfig, plans: list[StagePlan], store: Store, run_id: str, attempt: int):
        self.config, self.plans, self.store, self.run_id, self.attempt = config, plans, store, run_id, attempt
        self.stack = ExitStack()
        self.ray_started = False
        self.engines: list | None = None
        self.engine_names: list[str] | None = None
        self.stream_end = None

    def __enter__(self) -> RayEnvironment:
        return self

    def start(self, engines: bool = True) -> None:
        import ray

        if not self.ray_started:
            self.stack.enter_context(ray_session(self.config))
            _reinstall_interrupt_handlers()
            self.ray_started = True
        if engines and self.engines is None:
            from curate.generators.engines import start_engines, vllm_specs

            # Before Ray Data plans the stages, so the engines load while the stream starts.
            self.engines = start_engines(vllm_specs([p.params for p in self.plans]), ray.cluster_resources().get("GPU", 0))

    def engine_progress(self) -> list[tuple[str, dict | None]]:
        """(the stages an engine serves, its live progress) per engine of the run: polled by
        the progress display every few seconds."""
        engines = self.engines
        if not engines:
            return []
        from curate.generators.engines import engine_labels, engine_live, vllm_specs

        if self.engine_names is None:
            specs = vllm_specs([p.params for p in self.plans])
            self.engine_names = engine_labels(specs, [(p.name, p.params) for p in self.plans])
        return list(zip(self.engine_names, engine_live(engines)))

    def stream_ended(self) -> None:
        self.stream_end = time.time()

    def __exit__(self, *exc) -> None:
        try:
            if self.engines:
                import ray

                from curate.generators.engines import engine_stats

                try:
                    self.store.record_engines(self.run_id, self.attempt, engine_stats(self.engines), self.stream_end or time.time())
                finally:
                    for engine in self.engines:
                        ray.kill(engine)
        finally:
            self.stack.close()


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
    # Shards reach the writer, and commit, as they finish: in input order, a finished shard
    # would wait for every shard before it (the writer needs no order; the global steps read
    # rows in input order from the store).
    context.execution_options.preserve_order = False
    # Actor steps reserve a nominal byte of memory to stay unfused (pipeline/dag.py); Ray Data's
    # high-memory detector would then advise every run to reserve the memory its actors use.
    detectors = getattr(context, "issue_detectors_config", None)
    if detectors is not None and hasattr(detectors, "high_memory_detector_config"):
        detectors.high_memory_detector_config.detection_time_interval_s = -1  # -1: off
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# For an embedded Ray (this run's alone; benches and tests use it too). Ray starts workers at
# niceness 15 (`worker_niceness`) so that its own daemons stay responsive; a niceness-15 worker
# gets ~1/28 of an ordinary process's CPU share, and on a machine that runs anything else every
# stage crawled (the 100k-row bench's embedding: 34 rows/s in its actor against 150 by hand in
# the driver). Here the workers run at the driver's priority.
LOCAL_RAY_SYSTEM_CONFIG = {"worker_niceness": 0}


def check_no_shadowing_package(cwd: str | None = None) -> None:
    """Ray puts the driver's working directory on its workers' import path, so a folder named
    `curate` there (an old copy of the repository) replaces the installed curate inside the
    workers only, and the run fails deep in a Ray actor. Raises CurateError naming the folder."""
    import curate

    found = os.path.join(cwd or os.getcwd(), "curate")
    if os.path.isdir(found) and os.path.realpath(found) != os.path.realpath(os.path.dirname(curate.__file__)):
        raise CurateError(f"the working directory holds a folder named curate ({found}), which Ray's workers would import "
                          f"instead of the installed curate ({os.path.dirname(curate.__file__)}): run from another folder"
                          + (", or install this checkout (pip install -e .)" if os.path.isfile(os.path.join(cwd or os.getcwd(), "pyproject.toml")) else ""))


@contextmanager
def ray_session(config: RunConfig):
    """Use the Ray already initialised, or join `ray.address`/$RAY_ADDRESS (a cluster, `ray job
    submit`), or start an embedded local Ray (never joining a stale cluster from /tmp/ray)."""
    import ray

    if ray.is_initialized():
        yield
        return
    check_no_shadowing_package()
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=True, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=config.ray.num_cpus, include_dashboard=False,
                 _system_config=LOCAL_RAY_SYSTEM_CONFIG, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def _check_counts(report: RunReport) -> RunReport:
    if report.rows_in + report.generated != report.kept + report.dropped + report.quarantined + report.expanded:
        raise CurateError(f"counts do not add up for run {report.run_id}: {report.summary()}")
    return report
