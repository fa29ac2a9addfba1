"""The stage contract. A stage knows nothing of Ray or DuckDB: Arrow table in, StageResult out.

A stage returns rows of its input (it may add columns): the ones it keeps, the ones it drops
(with a `reason` per row) and the ones it cannot read (with an `error` per row). The runner
turns each stage into a Ray Data `map_batches` step with the stage's resources, and records
every drop and quarantine.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar

import pyarrow as pa


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


@dataclass
class StageResult:
    kept: pa.Table
    dropped: pa.Table | None = None  # input rows plus a string column "reason"
    quarantined: pa.Table | None = None  # input rows plus a string column "error"
    keys: pa.Array | None = None  # GlobalStage only: one binary key per kept row, stored for the global step
    # Generators: new rows (sample columns plus an int column "_parent", the index of the input
    # row they came from). Each parent is then stored as `expanded`; kept, dropped and
    # quarantined cover the other input rows.
    generated: pa.Table | None = None
    # Generators that add rows beside their inputs (Self-Instruct, SkillMix): the parents stay
    # as the stage returned them (kept, with their weight) and the new rows carry no weight.
    parents_stay: bool = False


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

    def setup(self) -> None:
        """Load what the stage needs (a model) once per worker, before its first batch; an
        actor stage's actor calls it as it starts. Default: nothing to load."""

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
        for key in ("name", "batch_size"):
            if key in overrides:
                attrs[key] = overrides.pop(key)
        if overrides:
            raise TypeError(f"with_() got unknown attributes: {sorted(overrides)}")
        return type(cls.__name__, (cls,), copy.copy(attrs))



class GlobalStage(Stage):
    """A stage that needs the whole pool (dedup): two halves.

    In the stream, `__call__` computes a binary key per row (a normalised hash, a MinHash
    signature) and returns it as `StageResult.keys`; the writer stores the keys with each shard.
    After the stream, `decide` reads the keys of the rows still kept, as Arrow batches of
    (id, position, key) in `order` ("key": equal keys adjacent; "position": input order), and
    returns the rows to drop as (id, reason) pairs. Neither half knows of Ray or DuckDB.
    """

    order: ClassVar[str] = "position"

    def decide(self, batches) -> list[tuple[str, str]]:  # pragma: no cover - interface
        raise NotImplementedError

    def decide_in(self, store, run_id: str, stage_name: str) -> list[tuple[str, str]]:
        """The barrier: the runner calls this once the stream of this stage's phase has been
        committed. Default: `decide` over the keys the stream stored. A stage whose decision
        reads other tables (SemDeDup reads `vectors`) overrides this."""
        return self.decide(store.keys_reader(run_id, stage_name, self.order))
