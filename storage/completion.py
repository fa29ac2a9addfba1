"""Shard completion, counted by weight: shared by the driver's writer and the actors of pool stages."""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from curate.storage import schema as S


class ShardGatherer:
    """Gathers the rows of each shard as they arrive, in any batching, and hands a shard back
    once it is complete: when the summed `_weight` of its rows equals `_shard_rows`. Rows a stage
    drops travel on, and a generator splits a row's weight among its children, so a shard's
    rows always weigh exactly its input rows. Not thread-safe: callers that need it lock.

    Raises RuntimeError if a shard's rows weigh more than it was read with (a row counted twice).
    """

    def __init__(self):
        self.parts: dict[str, list[pa.Table]] = defaultdict(list)
        self.arrived: dict[str, float] = defaultdict(float)

    def add(self, batch: pa.Table) -> list[tuple[str, int, list[pa.Table]]]:
        """Take a batch; return (shard, input rows, its parts) for each shard it completes."""
        done = []
        if batch.num_rows == 0:
            return done
        shard_col = batch[S.SHARD]
        for shard in pc.unique(shard_col).to_pylist():
            part = batch.filter(pc.equal(shard_col, shard))
            self.parts[shard].append(part)
            self.arrived[shard] += pc.sum(part[S.WEIGHT]).as_py()
            expected = part[S.SHARD_ROWS][0].as_py()
            if abs(self.arrived[shard] - expected) < 1e-6:
                del self.arrived[shard]
                done.append((shard, expected, self.parts.pop(shard)))
            elif self.arrived[shard] > expected + 1e-6:
                raise RuntimeError(f"shard {shard}: rows of weight {self.arrived[shard]} arrived, {expected} were read")
        return done

    def unfinished(self) -> list[str]:
        return sorted(self.parts)
