"""The stage contract. A stage knows nothing of Ray or DuckDB: Arrow table in, StageResult out.

A stage returns rows of its input (it may add sample columns): the ones it keeps, the ones it
drops (with a reason per row) and the ones it cannot read (with an error per row), and its
per-row results as typed fields of `StageResult`: `scores` (name → float64 per row), `vectors`
(name → list<float32> per kept row, with the model that made them), `verdicts` (verifier
verdicts per row) and `keys` (a GlobalStage's per-row key). `StageResult.split` builds one from
a reason per input row (None: kept); `StageResult.quarantine` from an error per row;
`StageResult.keep` keeps every row.

A stage declares what it writes and reads, from its validated parameters: `writes(params)` and
`reads(params)` return items `scores:<name>`, `vectors:<name>`, `verdicts:<verifier>` and, for a
GlobalStage's keys, `keys`. A result the stage does not declare is an error naming the stage
(stages/results.py, which alone turns results into the columns that travel with the rows);
pipeline/dependencies.py checks a config's stages and selectors against the declarations.

The runner turns each stage into a Ray Data `map_batches` step with the stage's resources, and
records every drop and quarantine.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.lib.params import param  # noqa: F401 - re-exported: stages read their parameters with it
from curate.storage.schema import VERDICT


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Ray Data concurrency: tasks in flight for a task stage, pool size for an actor stage.
    concurrency: int | None = None
    # An actor stage keeps its state (a model, a sandbox pool) across batches.
    actor: bool = False
    # An actor stage whose batches mostly wait (on an LLM engine) can take several at once in
    # one process: each process beside a CPU engine costs it (see generators/respond.py).
    calls_per_actor: int = 1


@dataclass(frozen=True)
class StageContext:
    """What a stage learns of its run inside the worker, in `Stage.setup(context)`: run-scoped
    paths and the cluster the run joined. The runner builds it (pipeline/dag.py `stage_plans`)
    and fills `cluster` once Ray is initialised; a stage built by hand gets none (None)."""

    run_id: str | None = None
    db: str | None = None  # the run's database (absolute path)
    model_cache: str | None = None  # the model-output cache beside it (storage/model_cache.py), for `cache: true`
    llm_cache: str | None = None  # the LLM-call cache beside it (generators/cache.py), for LLM stages' `cache: null`
    work_dir: str | None = None  # where the run keeps its working files (the phases' hand-off), from `work_dir:` or beside the database
    cluster: dict = field(default_factory=dict)  # the resources Ray reports (`ray.cluster_resources()`): {"CPU": 2.0, "GPU": 0, ...}


@dataclass
class RowValues:
    """One result's per-row values: over a StageResult's kept rows and, where the stage gives
    them, over its dropped rows (None: none for the dropped rows)."""

    kept: pa.Array
    dropped: pa.Array | None = None


@dataclass
class StageResult:
    kept: pa.Table
    # Input rows the stage drops; their reasons in `reasons`, one per row (or, the older form
    # generators still use, in a string column "reason" of this table).
    dropped: pa.Table | None = None
    # Input rows the stage cannot read; their errors in `errors` (or a string column "error").
    quarantined: pa.Table | None = None
    keys: pa.Array | None = None  # GlobalStage only: one binary key per kept row, stored for the global step
    # Generators: new rows (sample columns plus an int column "_parent", the index of the input
    # row they came from). Each parent is then stored as `expanded`; kept, dropped and
    # quarantined cover the other input rows.
    generated: pa.Table | None = None
    # Generators that add rows beside their inputs (Self-Instruct, SkillMix): the parents stay
    # as the stage returned them (kept, with their weight) and the new rows carry no weight.
    parents_stay: bool = False
    reasons: list[str] | None = None  # one per dropped row
    errors: list[str] | None = None  # one per quarantined row
    # name → float64 per row (null: no score), stored in `scores` for kept and dropped rows. A
    # plain array (list, NumPy, Arrow) covers the kept rows only.
    scores: dict[str, RowValues] = field(default_factory=dict)
    # name → (list<float32> per kept row, the model that made them), stored in `vectors`.
    vectors: dict[str, tuple[pa.Array, str]] = field(default_factory=dict)
    # list<VERDICT> per row ({verifier, passed, strength, detail}), stored in `verdicts` for kept
    # and dropped rows. A plain list (of verdict lists) covers the kept rows only.
    verdicts: RowValues | None = None
    # Generators that also judge their new rows (a judge that refines a response): per row of
    # `generated`, name → float64 (null: none) and list<VERDICT>, stored as for any row.
    generated_scores: dict[str, pa.Array] = field(default_factory=dict)
    generated_verdicts: pa.Array | None = None

    def __post_init__(self):
        if self.reasons is not None:
            self.reasons = _strings(self.reasons)
        if self.errors is not None:
            self.errors = _strings(self.errors)
        self.scores = {name: _row_values(v, score_array) for name, v in (self.scores or {}).items()}
        self.vectors = {name: (vector_array(v), model) for name, (v, model) in (self.vectors or {}).items()}
        if self.verdicts is not None:
            self.verdicts = _row_values(self.verdicts, verdict_array)
        self.generated_scores = {name: score_array(v) for name, v in (self.generated_scores or {}).items()}
        if self.generated_verdicts is not None:
            self.generated_verdicts = verdict_array(self.generated_verdicts)

    # -------------------------------------------------------------- helpers

    @classmethod
    def split(cls, batch: pa.Table, reasons=None, *, errors=None, scores: dict | None = None,
              vectors: dict | None = None, verdicts=None, keys=None) -> StageResult:
        """The usual result: per input row of `batch`, `reasons` (None: kept, a string: dropped
        with that reason) and `errors` (a string: quarantined with that error, whatever its
        reason). Per-row results, each given over the input rows: `scores` (name → values, None
        or NaN for none), kept for kept and dropped rows; `vectors` (name → (values, model); an
        (n, d) array or list<float32>) and `keys` for kept rows; `verdicts` (a list of verdict
        dicts per row, or list<VERDICT>) for kept and dropped rows. Rows keep their input order."""
        n = batch.num_rows
        reasons = _per_row(reasons, n, "reasons")
        errors = _per_row(errors, n, "errors")
        quarantined = np.array([e is not None for e in errors], bool)
        dropped = np.array([r is not None for r in reasons], bool) & ~quarantined
        kept = ~(quarantined | dropped)
        k, d, q = pa.array(kept), pa.array(dropped), pa.array(quarantined)
        everything = bool(kept.all())

        def take(values, mask):  # the rows of `mask`; all of them untouched (no copy) when every row is kept
            if everything:
                return values if mask is k else values.slice(0, 0)
            return values.filter(mask)

        def rows(values) -> RowValues:
            return RowValues(take(values, k), take(values, d))

        return cls(
            kept=take(batch, k),
            dropped=take(batch, d),
            quarantined=batch.filter(q) if quarantined.any() else None,
            reasons=[r for r, x in zip(reasons, dropped) if x],
            errors=[e for e, x in zip(errors, quarantined) if x] if quarantined.any() else None,
            scores={name: rows(_checked(score_array(v), n, f"score {name}")) for name, v in (scores or {}).items()},
            vectors={name: (take(_checked(vector_array(v), n, f"vectors {name}"), k), model)
                     for name, (v, model) in (vectors or {}).items()},
            verdicts=None if verdicts is None else rows(_checked(verdict_array(verdicts), n, "verdicts")),
            keys=None if keys is None else take(_checked(_array(keys, pa.binary()), n, "keys"), k),
        )

    @classmethod
    def quarantine(cls, batch: pa.Table, errors, **results) -> StageResult:
        """Per input row an error (quarantined) or None (kept); results as in `split`."""
        return cls.split(batch, None, errors=errors, **results)

    @classmethod
    def keep(cls, batch: pa.Table, **results) -> StageResult:
        """Every row kept (the batch itself, `dropped` None), with results (as in `split`) over them."""
        out = cls.split(batch, None, **results)
        out.dropped, out.reasons = None, None
        out.scores = {name: RowValues(v.kept) for name, v in out.scores.items()}
        if out.verdicts is not None:
            out.verdicts = RowValues(out.verdicts.kept)
        return out

    def score(self, name: str) -> list:
        """A score's values, kept rows then dropped rows, as Python values (for tests and tools)."""
        v = self.scores[name]
        return v.kept.to_pylist() + (v.dropped.to_pylist() if v.dropped is not None else [])


# ------------------------------------------------------------------ per-row values


def _strings(values) -> list:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    return list(values)


def _per_row(values, n: int, what: str) -> list:
    if values is None:
        return [None] * n
    values = _strings(values)
    if len(values) != n:
        raise ValueError(f"{what}: {len(values)} values for {n} rows")
    return values


def _checked(values: pa.Array, n: int, what: str) -> pa.Array:
    if len(values) != n:
        raise ValueError(f"{what}: {len(values)} values for {n} rows")
    return values


def _array(values, type_: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(list(values) if isinstance(values, np.ndarray) and values.dtype == object else values, type_)


def score_array(values) -> pa.Array:
    """float64 per row; None and NaN become null (no score)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        arr = values.cast(pa.float64())
        nan = pc.is_nan(arr)
        return pc.if_else(nan, pa.scalar(None, pa.float64()), arr) if pc.any(nan).as_py() else arr
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return pa.array(values.astype(np.float64), pa.float64(), from_pandas=True)
    return pa.array(list(values), pa.float64(), from_pandas=True)


def vector_array(values) -> pa.Array:
    """list<float32> per row, from an (n, d) array, a list of lists or an Arrow list array."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        n, dim = values.shape
        flat = pa.array(np.ascontiguousarray(values, np.float32).ravel())
        return pa.ListArray.from_arrays(pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)), flat)
    return _array(values, pa.list_(pa.float32()))


def verdict_array(values) -> pa.Array:
    """list<VERDICT> per row, from lists of verdict dicts (None: no verdict) or an Arrow array."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return _array(values, pa.list_(VERDICT))
    return pa.array([v or [] for v in values], pa.list_(VERDICT))


def _row_values(value, convert) -> RowValues:
    if isinstance(value, RowValues):
        return RowValues(convert(value.kept), None if value.dropped is None else convert(value.dropped))
    return RowValues(convert(value))


# ------------------------------------------------------------------ stages


class Stage:
    name: ClassVar[str] = "stage"
    resources: ClassVar[Resources] = Resources()
    batch_size: ClassVar[int | None] = 1024
    # "shard": the stage sees whole shards, one call per shard, its live rows sorted by (`_row`,
    # `id`), however Ray Data batched them (pipeline/dag.py ShardBuffer): for stages whose rows
    # depend on each other (an in-context pool), so results do not depend on batching, on the
    # order shards arrive, or on which shards a resumed run streams. Such a stage runs in one
    # actor (`concurrency` 1); with `calls_per_actor` > 1 its `__call__` must be thread-safe.
    pool: ClassVar[str | None] = None

    def __call__(self, batch: pa.Table) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        """What the stage, so configured, stores beside its rows: `scores:<name>`,
        `vectors:<name>`, `verdicts:<verifier>`, `keys`. Any result it returns that is not
        declared here fails its step, naming the stage. Default: nothing."""
        return set()

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        """What the stage, so configured, reads that an earlier stage must have stored (as
        `writes` names it): a config without such a stage before it is rejected. Default: nothing."""
        return set()

    def setup(self, context: StageContext | None = None) -> None:
        """Load what the stage needs (a model) once per worker, before its first batch: an actor
        stage's actor calls it as it starts, a task stage's worker as it builds the stage. The
        `context` holds the run's paths (model cache, LLM cache, database, work dir) and the
        cluster's resources; None for a stage built by hand. Default: nothing to load."""

    @classmethod
    def resources_for(cls, params: dict, cluster: dict) -> Resources:
        """The stage's resources on the cluster the run joined (`cluster`: what
        `ray.cluster_resources()` reports), decided by the runner after Ray is initialised; the
        config's `resources:` then override them. Default: the class's `resources`."""
        return cls.resources

    @classmethod
    def check_params(cls, params: dict) -> None:
        """Checks across parameters that their types cannot express (a lower bound above its
        upper bound), run as the config is read, after each parameter is validated on its own:
        raise ValueError naming them; the config error then names the stage. Default: none."""

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Cheap checks the driver runs before any Ray work on a local run (a missing sandbox,
        say); raise with a message that names the fix. Default: nothing to check."""

    @classmethod
    def with_(cls, **overrides) -> type[Stage]:
        """A copy of this stage class with other `name`, `resources` or `batch_size`."""
        attrs = {}
        if "resources" in overrides:
            res = overrides.pop("resources")
            attrs["resources"] = replace(cls.resources, **res) if isinstance(res, dict) else res
            attrs["resources_for"] = classmethod(lambda c, params, cluster: c.resources)  # fixed: not the cluster's
        for key in ("name", "batch_size"):
            if key in overrides:
                attrs[key] = overrides.pop(key)
        if overrides:
            raise TypeError(f"with_() got unknown attributes: {sorted(overrides)}")
        return type(cls.__name__, (cls,), copy.copy(attrs))


def setup_stage(stage: Stage, context: StageContext | None) -> None:
    """Call `stage.setup(context)`; a stage whose `setup` takes no context (written before it
    existed) is called without one."""
    try:
        takes = len(inspect.signature(stage.setup).parameters) > 0
    except (TypeError, ValueError):  # pragma: no cover - a builtin or C callable
        takes = True
    if takes:
        stage.setup(context)
    else:
        stage.setup()


class GlobalStage(Stage):
    """A stage that needs the whole pool (dedup): two halves.

    In the stream, `__call__` computes a binary key per row (a normalised hash, a MinHash
    signature) and returns it as `StageResult.keys`; the writer stores the keys with each shard.
    After the stream, `decide` reads the keys of the rows still kept, as Arrow batches of
    (id, position, key) in `order` ("key": equal keys adjacent; "position": input order), and
    returns the rows to drop as (id, reason) pairs. Neither half knows of Ray or DuckDB.
    """

    order: ClassVar[str] = "position"
    decides: ClassVar[str] = "drops duplicates of the rows still kept"  # what its barrier does, as `curate plan` says it

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        """Keys, for `decide`. A stage whose decision reads other tables (and stores no keys)
        overrides this."""
        return {"keys"}

    def decide(self, batches) -> list[tuple[str, str]]:  # pragma: no cover - interface
        raise NotImplementedError

    def decide_in(self, store, run_id: str, stage_name: str) -> list[tuple[str, str]]:
        """The barrier: the runner calls this once the stream of this stage's phase has been
        committed. Default: `decide` over the keys the stream stored. A stage whose decision
        reads other tables (SemDeDup reads `vectors`) overrides this."""
        return self.decide(store.keys_reader(run_id, stage_name, self.order))
