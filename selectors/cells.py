"""A pool's vectors split into k-means cells that can be read back one cell at a time.

Selectors that need the vectors themselves, not one pass over them (facility location's k-NN
graph, k-center's farthest-point traversal), read the pool through this. A pool of at most
`exact_rows` rows is one cell held in memory (then the selectors are exact). A larger pool is
split into cells of about `cell_rows` rows: centroids fitted on a sample (lib/clustering.py),
every row assigned in one streaming pass over DuckDB's Arrow batches, and its normalised vector
appended to a scratch file (float32, rows × d × 4 bytes on disk: 1.5 GB at 1M 384-d rows) in
arrival order. Reading a cell gathers its rows from the file (pread), so the process holds one
cell (or a few neighbouring ones) at a time: memory grows with the pool only
by a few numbers per row (ids, cell, scores), as in KMeansDiversity.

Rows are numbered in id order (0 … n − 1), so results never depend on the order rows arrived in.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.lib.clustering import Assigner, fit_centroids
from curate.lib.greedy import normalised
from curate.lib.vectors import BATCH_ROWS, VectorSource, as_matrix, id_order

EXACT_ROWS = 10_000
CELL_ROWS = 1_000
FIT_POINTS = 16
MAX_CELL_ROWS = 50_000  # 73 MiB of 384-d float32 vectors: the most a cell may hold


class Cells:
    """The pool's rows (in id order) grouped into cells.

    ids: pa.StringArray of n ids; cell: (n,) int32 cell of each row; members(c): the rows of cell
    c (ascending); vectors(rows): their normalised float32 vectors (len(rows), d); scores: the
    source's score columns as float64 arrays in row order (NaN where a row has none);
    nearest_cells(c, m): c and the m − 1 cells whose centroids are most similar to c's; also: the
    (labels, distances) an extra Assigner gave every row in the same pass (None without one).
    Use as a context manager (or call close()) to delete the scratch file."""

    def __init__(self, source: VectorSource, exact_rows: int = EXACT_ROWS, cell_rows: int = CELL_ROWS,
                 max_cells: int | None = None, seed: int = 0, niter: int = 10, scratch_dir: str | None = None,
                 batch_rows: int = BATCH_ROWS, also: Assigner | None = None):
        if exact_rows < 1 or cell_rows < 1:
            raise ValueError("exact_rows and cell_rows must be at least 1")
        n = source.rows
        k = 1 if n <= exact_rows else max(1, -(-n // cell_rows))
        if max_cells is not None:  # fewer, larger cells, but none past MAX_CELL_ROWS (memory)
            k = max(1, min(k, max_cells), -(-n // MAX_CELL_ROWS) if n > exact_rows else 1)
        self.centroids = None
        assign = None
        if k > 1:
            # Cells need not be good clusters, only compact ones: fitted on 16 rows per centroid.
            self.centroids = normalised(fit_centroids(normalised(source.sample(k * FIT_POINTS, seed)), k, niter, seed=seed))
            assign = Assigner(self.centroids)
        self._tmp = tempfile.TemporaryDirectory(prefix="curate-cells-", dir=scratch_dir) if k > 1 else None
        self._path = os.path.join(self._tmp.name, "vectors.f32") if self._tmp else None
        ids, cells, parts, scores, extra = [], [], [], {c: [] for c in source.score_names}, []
        self.dim = 0
        with (open(self._path, "wb") if self._path else _NoFile()) as f:
            for batch in source.batches(batch_rows):
                raw = as_matrix(batch.column("vec"))
                vecs = normalised(raw)
                self.dim = vecs.shape[1]
                ids.append(pa.concat_arrays([batch.column("id")]))  # a copy: not the batch's buffers
                cells.append(assign(vecs)[0] if assign else np.zeros(len(vecs), np.int32))
                if also is not None:
                    extra.append(also(raw))  # as the caller's centroids were fitted: on the stored vectors
                for c in scores:
                    scores[c].append(batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64))
                if self._path:
                    f.write(np.ascontiguousarray(vecs).tobytes())
                else:
                    parts.append(vecs)
        if not ids:
            raise CurateError("the pool has no vectors")
        arrival_ids = pa.chunked_array(ids, pa.string()).combine_chunks()
        by_id = id_order(arrival_ids)
        self.ids = arrival_ids.take(pa.array(by_id))
        self.n = len(by_id)
        self._arrival = by_id  # row r (id order) was the by_id[r]-th row written
        self.cell = np.concatenate(cells)[by_id].astype(np.int32)
        self.scores = {c: np.concatenate(v)[by_id] for c, v in scores.items()}
        # `also`'s (label, distance) of every row, in row order (kMQ's clusters, in the same pass).
        self.also = (np.concatenate([e[0] for e in extra])[by_id], np.concatenate([e[1] for e in extra])[by_id]) if extra else None
        self._memory = np.concatenate(parts)[by_id] if parts else None
        self.k = len(self.centroids) if self.centroids is not None else 1  # a cell may be empty
        order = np.argsort(self.cell, kind="stable")  # by cell, id order inside a cell
        self._members = order.astype(np.int64)
        self._start = np.r_[0, np.cumsum(np.bincount(self.cell, minlength=self.k))]

    def sizes(self) -> np.ndarray:
        return np.diff(self._start)

    def members(self, c: int) -> np.ndarray:
        return self._members[self._start[c]:self._start[c + 1]]

    def nearest_cells(self, c: int, m: int) -> np.ndarray:
        if self.centroids is None or m <= 1:
            return np.array([c])
        sims = self.centroids @ self.centroids[c]
        sims[c] = np.inf
        return np.argsort(-sims, kind="stable")[:m]

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self._memory is not None:
            return self._memory[rows]
        out = np.empty((len(rows), self.dim), np.float32)
        if len(rows) == 0:
            return out
        # pread, run by run of consecutive rows: a memory map would count every page the kernel
        # maps around a read in the process's memory (about 1 GB at a time at 1M rows).
        positions = self._arrival[rows]
        order = np.argsort(positions, kind="stable")
        sorted_positions = positions[order]
        breaks = np.flatnonzero(np.diff(sorted_positions) != 1) + 1
        width = self.dim * 4
        buffer = bytearray(len(rows) * width)
        fd = os.open(self._path, os.O_RDONLY)
        try:
            for start, end in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(rows)].tolist()):
                buffer[start * width:end * width] = os.pread(fd, (end - start) * width, int(sorted_positions[start]) * width)
        finally:
            os.close(fd)
        out[order] = np.frombuffer(buffer, np.float32).reshape(len(rows), self.dim)
        return out

    def reader(self) -> "RowReader":
        """Reads single rows quickly: for a loop that needs rows one by one. Use as a context manager."""
        return RowReader(self)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RowReader:
    """Single rows by pread from the scratch file (nothing stays mapped), or from memory."""

    def __init__(self, cells: Cells):
        self.cells = cells
        self._fd = os.open(cells._path, os.O_RDONLY) if cells._memory is None else None
        self._width = cells.dim * 4

    def row(self, r: int) -> np.ndarray:
        """(1, d) float32: the vector of row r."""
        if self._fd is None:
            return self.cells._memory[r:r + 1]
        data = os.pread(self._fd, self._width, int(self.cells._arrival[r]) * self._width)
        return np.frombuffer(data, np.float32).reshape(1, -1)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _NoFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
