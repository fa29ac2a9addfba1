"""Reading a run's stored vectors and scores out of DuckDB, as Arrow batches and NumPy arrays.

Vectors live in `vectors(run_id, name, id, model, vec FLOAT[])` (written from an embed stage's
`_vec:<name>` column); selectors read the ones of the pool's rows in a streaming pass, so a pool
never needs to fit in memory as Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError

BATCH_ROWS = 16_384  # 24 MiB of 384-d vectors per batch


def as_matrix(vecs: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A list<float32> column of equal-length vectors → an (n, d) float32 array (no Python loop)."""
    if isinstance(vecs, pa.ChunkedArray):
        vecs = vecs.combine_chunks()
    n = len(vecs)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    flat = pc.list_flatten(vecs).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if len(flat) % n:
        raise CurateError("stored vectors have different lengths: were they made by different models?")
    return flat.reshape(n, len(flat) // n)


def binary_rows(matrix: np.ndarray) -> pa.BinaryArray:
    """Each row of a matrix as one binary value (its raw bytes), built from one buffer."""
    matrix = np.ascontiguousarray(matrix)
    width = matrix.shape[1] * matrix.itemsize
    offsets = np.arange(len(matrix) + 1, dtype=np.int32) * width
    return pa.BinaryArray.from_buffers(pa.binary(), len(matrix), [None, pa.py_buffer(offsets), pa.py_buffer(matrix.tobytes())])


def rows_of_binary(keys: pa.Array | pa.ChunkedArray, dtype=np.float32) -> np.ndarray:
    """The inverse of binary_rows: equal-length binary values → an (n, d) array."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    n = len(keys)
    if n == 0:
        return np.zeros((0, 0), dtype)
    offsets = np.frombuffer(keys.buffers()[1], np.int32, n + 1, keys.offset * 4)
    data = np.frombuffer(keys.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    width = (offsets[-1] - offsets[0]) // n
    if not np.all(np.diff(offsets) == width):
        raise ValueError("keys have different lengths")
    return data.view(dtype).reshape(n, width // np.dtype(dtype).itemsize)


def id_order(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Indices (int64, len(ids)) that put string ids in byte order, equal ids by position. DuckDB's
    parallel sort: 1M 32-character ids in 0.4 s against 1.2-1.4 s for pyarrow's sort_indices (2 quiet cores)."""
    with duckdb.connect() as con:
        con.register("_ids", pa.table({"id": ids, "i": pa.array(np.arange(len(ids), dtype=np.int64))}))
        return con.sql("SELECT i FROM _ids ORDER BY id, i").fetchnumpy()["i"].astype(np.int64, copy=False)


class VectorSource:
    """The vectors named `name` of the rows in `pool` (a relation of the run's curated rows),
    optionally with stored scores beside them (`score_names`: column name → score name)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str, pool: str, name: str,
                 score_names: dict[str, str] | None = None):
        self.con, self.run_id, self.pool, self.name = con, run_id, pool, name
        self.score_names = {k: v for k, v in (score_names or {}).items() if v}
        found = con.execute("SELECT count(*), any_value(model) FROM vectors v JOIN " + pool +
                            " p ON p.id = v.id WHERE v.run_id = ? AND v.name = ?", [run_id, name]).fetchall()[0]
        self.rows, self.model = found
        if not self.rows:
            raise CurateError(f"no vectors named '{name}' for the rows of this run: add an embed stage "
                              f"(`embed: {{vectors: {name}}}`) before the step that reads them")
        for column, score in self.score_names.items():
            n = con.execute(f"SELECT count(*) FROM scores s JOIN {pool} p ON p.id = s.id "
                            "WHERE s.run_id = ? AND s.name = ?", [run_id, score]).fetchall()[0][0]
            if not n:
                raise CurateError(f"no scores named '{score}' for the rows of this run ({column})")

    def _select(self, order: str = "", with_rowid: bool = False) -> str:
        joins, columns = "", ""
        for i, (column, name) in enumerate(self.score_names.items()):
            joins += (f" LEFT JOIN (SELECT id, any_value(value) AS value FROM scores WHERE run_id = $run "
                      f"AND name = '{_quote(name)}' GROUP BY id) s{i} ON s{i}.id = v.id")
            columns += f', s{i}.value AS "{column}"'
        if with_rowid:
            columns += ", v.rowid AS _rowid"
        # A semi join: DuckDB builds its hash table on the pool's ids and streams the vectors past
        # it (a plain join may build on the vectors, holding them all).
        return (f"SELECT v.id, v.vec{columns} FROM vectors v{joins} "
                f"WHERE v.run_id = $run AND v.name = $name AND v.id IN (SELECT id FROM {self.pool}) {order}")

    def batches(self, batch_rows: int = BATCH_ROWS, with_rowid: bool = False) -> Iterator[pa.RecordBatch]:
        """Every row once, in no particular order: (id, vec, scores..., and _rowid with_rowid: the
        row's rowid in `vectors`, for fetch_rowids later)."""
        yield from self._stream(self._select(with_rowid=with_rowid), batch_rows)

    def sample(self, rows: int, seed: int, batch_rows: int = BATCH_ROWS) -> np.ndarray:
        """A deterministic sample of `rows` vectors (all of them if the pool is smaller), in id
        order, drawn by a hash of (seed, id) inside DuckDB: the pool's order of arrival does not
        matter. The ids are drawn first (a scan of the id column only, no sort ever carries a
        vector), then their vectors fetched by rowid: DuckDB reads only the row groups that hold
        them instead of every vector (0.5 s against 2.5 s for 16,384 of 1M 384-d vectors)."""
        params = {"run": self.run_id, "name": self.name, "seed": str(seed)}
        drawn = self.con.sql(
            f"SELECT * FROM (SELECT v.rowid AS r, v.id FROM vectors v WHERE v.run_id = $run AND v.name = $name "
            f"AND v.id IN (SELECT id FROM {self.pool}) ORDER BY md5($seed || v.id), v.id "
            f"LIMIT {int(min(rows, self.rows))}) ORDER BY id", params=params).to_arrow_table()
        return self.fetch_rowids(drawn.column("r").to_numpy(), batch_rows)

    def rowids(self, ids: pa.Array) -> np.ndarray:
        """The `vectors` table's rowid of each of `ids` (distinct ids that have vectors), in the
        order given: a scan of the id column, never of the vectors. Rowids stay valid while
        nothing is deleted from the table (within one selection)."""
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        self.con.register("_rowid_ids", pa.table({"id": ids}))
        try:
            found = self.con.sql("SELECT v.id, v.rowid AS r FROM vectors v WHERE v.run_id = $run AND v.name = $name "
                                 "AND v.id IN (SELECT id FROM _rowid_ids)",
                                 params={"run": self.run_id, "name": self.name}).to_arrow_table()
        finally:
            self.con.unregister("_rowid_ids")
        out = np.full(len(ids), -1, np.int64)
        out[pc.index_in(found.column("id"), value_set=ids).to_numpy()] = found.column("r").to_numpy()
        if (out < 0).any():
            raise CurateError(f"{int((out < 0).sum())} of the requested rows have no vectors named '{self.name}'")
        return out

    def fetch(self, ids: pa.Array, batch_rows: int = BATCH_ROWS) -> np.ndarray:
        """The vectors of `ids` (distinct ids of the pool's rows), as one (len(ids), d) array in the
        order given. Raises CurateError when one of them has no vector."""
        return self.fetch_rowids(self.rowids(ids), batch_rows)

    def fetch_rowids(self, rowids: np.ndarray, batch_rows: int = BATCH_ROWS) -> np.ndarray:
        """The vectors at `rowids` of the `vectors` table (distinct; from rowids() or a batch read
        with_rowid), as one (len(rowids), d) float32 array in the order given. DuckDB pushes the
        rowid list into its scan, so only the row groups holding them are read."""
        rowids = np.asarray(rowids, np.int64)
        out = None
        if len(rowids):
            query = "SELECT rowid AS r, vec FROM vectors WHERE rowid = ANY($rows)"
            for batch in self._stream(query, batch_rows, {"rows": rowids}):
                vecs = as_matrix(batch.column("vec"))
                if out is None:
                    out = np.zeros((len(rowids), vecs.shape[1]), np.float32)
                out[pc.index_in(batch.column("r"), value_set=pa.array(rowids)).to_numpy()] = vecs
        return out if out is not None else np.zeros((len(rowids), 0), np.float32)

    def ordered(self, order_sql: str, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Rows in an order (SQL over v.id and the score columns), streamed: stop reading early."""
        yield from self._stream(self._select(order=f"ORDER BY {order_sql}"), batch_rows)

    def _stream(self, query: str, batch_rows: int, params: dict | None = None) -> Iterator[pa.RecordBatch]:
        # The store's connection (temp views such as the pool are per connection); closing the
        # reader, also when the caller stops early, frees the connection for the next query.
        params = params or {"run": self.run_id, "name": self.name}
        reader = self.con.sql(query, params=params).to_arrow_reader(batch_rows)
        try:
            yield from reader
        finally:
            reader.close()


def _quote(text: str) -> str:
    return text.replace("'", "''")
