"""Driver-side writer: gathers the streamed rows of each shard and commits a shard once all
of its input rows have arrived (whatever stage they ended at)."""

from __future__ import annotations

import pyarrow as pa

from curate.storage import schema as S
from curate.storage.completion import ShardGatherer
from curate.storage.store import Store


class ShardWriter:
    def __init__(self, store: Store, run_id: str, steps: list, paths: dict[str, str], on_commit=None, phase: int = 0,
                 declared: frozenset[str] | None = None):
        self.store = store
        self.run_id = run_id
        self.steps = steps  # the phase's funnel steps (pipeline/phases.py)
        self.phase = phase
        self.paths = paths  # shard → source path
        self.on_commit = on_commit
        self.declared = declared  # result columns the phase's stages declare (pipeline/dag.py declared_results); None: unchecked
        self.gathered = ShardGatherer()
        self.committed = 0

    def add(self, batch: pa.Table) -> None:
        for shard, rows_in, parts in self.gathered.add(batch):
            self._commit(shard, rows_in, parts)

    def add_empty_shard(self, shard: str) -> None:
        """A shard that held no rows (a file of blank lines) is still marked done."""
        stats = self.store.commit_shard(self.run_id, shard, self.paths[shard], 0, _empty_rows(), self.steps, self.phase,
                                         declared=self.declared)
        if self.on_commit:
            self.on_commit(shard, stats)

    def _commit(self, shard: str, rows_in: int, parts: list[pa.Table]) -> None:
        table = pa.concat_tables(parts, promote_options="permissive")
        stats = self.store.commit_shard(self.run_id, shard, self.paths[shard], rows_in, table, self.steps, self.phase,
                                         declared=self.declared)
        self.committed += 1
        if self.on_commit:
            self.on_commit(shard, stats)

    def unfinished(self) -> list[str]:
        return self.gathered.unfinished()


def _empty_rows() -> pa.Table:
    fields = list(S.SAMPLE_SCHEMA) + [
        pa.field(S.SHARD, pa.string()), pa.field(S.ROW, pa.int64()), pa.field(S.STATUS, pa.string()),
        pa.field(S.STAGE, pa.string()), pa.field(S.REASON, pa.string()), pa.field(S.RAW, pa.string()),
        pa.field(S.WEIGHT, pa.float64()), pa.field(S.BORN, pa.string()),
    ]
    return pa.schema(fields).empty_table()
