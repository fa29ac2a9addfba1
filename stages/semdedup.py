"""Semantic deduplication (SemDeDup, Abbas et al. 2023): near-identical meaning, not near-identical words.

A GlobalStage after an embed stage. The stream half passes rows through untouched and stores no
keys: the vectors are in the `vectors` table already. After the stream, `decide_in` reads the
vectors of the run's kept rows from DuckDB and, as in the paper, clusters them with k-means
(centroids fitted on a deterministic sample, every row then assigned in a streaming pass);
within each cluster it walks rows in input order and drops a row whose cosine similarity to a
row kept before it exceeds `threshold` (the paper's 1 − ε), naming that row
(`semantic_duplicate_of:<id>`). The paper keeps the row farthest from its centroid; keeping the
earliest instead makes every drop name a row that stays, as exact and near dedup do.
Clustering makes the pairwise work near-linear; as in the paper, a pair split across two
clusters is missed.

Memory: the pool's vectors are never all held. The fit sample is k × 64 rows; the (id, cluster)
assignments go to a DuckDB temp table; the walk then reads the vectors back a few whole clusters
at a time (at most `CHUNK_BYTES`, or one bigger cluster), at the price of one scan of `vectors`
per chunk.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.lib.clustering import Assigner, fit_centroids, fit_sample_rows
from curate.lib.greedy import ADMITTED, GreedyCosine, normalised
from curate.lib.params import Cosine, Positive
from curate.lib.vectors import VectorSource, as_matrix
from curate.stages.base import GlobalStage, Resources, StageResult, param

CHUNK_BYTES = 64 << 20  # vectors held at once in the walk: 43,690 rows of 384-d float32
# Rows per Arrow batch read from DuckDB. A scan of 384-d vectors peaks at ~60 MiB over DuckDB's
# cache with 2,048-row batches, ~160 MiB with 16,384 (measured, 2 threads).
READ_ROWS = 2048
OFFER_ROWS = 1024  # rows per GreedyCosine.offer call: one faiss search against the kept rows, a 4 MiB gram matrix


class SemDeDup(GlobalStage):
    name = "semdedup"
    resources = Resources(num_cpus=1)
    batch_size = 4096

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return set()  # no keys: the decision reads the stored vectors

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        return {f"vectors:{param(cls, params, 'vectors')}"}

    def __init__(self, threshold: Cosine = 0.95, vectors: str = "embed", k: Positive | None = None,
                 rows_per_cluster: int = 1000, niter: int = 20, seed: int = 0):
        if not -1 <= threshold <= 1:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.threshold, self.vectors, self.k = threshold, vectors, k
        self.rows_per_cluster, self.niter, self.seed = rows_per_cluster, niter, seed

    def __call__(self, batch: pa.Table) -> StageResult:
        """Nothing to do in the stream: the decision reads the stored vectors (the config check
        makes sure an embed stage of `vectors` comes earlier)."""
        return StageResult.keep(batch)

    def decide_in(self, store, run_id: str, stage_name: str) -> list[tuple[str, str]]:
        """(id, "semantic_duplicate_of:<id>") for each kept row of the run that duplicates an
        earlier kept row of its cluster. k = `k`, or the pool's rows / `rows_per_cluster`."""
        quoted = run_id.replace("'", "''")
        pool = f"(SELECT id FROM samples WHERE run_id = '{quoted}' AND kept)"
        # Cursors: own connections, so the assignment pass can write its temp table while the
        # vectors stream, and the temp tables go when the cursors close.
        with store.con.cursor() as con, store.con.cursor() as reader:
            if not con.execute(f"SELECT count(*) FROM {pool}").fetchone()[0]:
                return []
            source = VectorSource(reader, run_id, pool, self.vectors)
            k = self.k or max(1, source.rows // self.rows_per_cluster)
            sample = source.sample(fit_sample_rows(k, None), self.seed, READ_ROWS)  # (rows, d) float32
            norms = np.sqrt(np.einsum("ij,ij->i", sample, sample))  # no full-size temporary, as linalg.norm makes
            sample /= np.maximum(norms, 1e-12)[:, None]  # in place: cosine k-means on unit rows
            dim = sample.shape[1]
            assign = Assigner(fit_centroids(sample, k, self.niter, seed=self.seed))
            del sample
            con.execute("CREATE TEMP TABLE _assigned (id VARCHAR, cluster INTEGER)")
            for batch in source.batches(READ_ROWS):
                cluster, _ = assign(normalised(as_matrix(batch.column("vec"))))
                con.register("_batch", pa.table({"id": batch.column("id"), "cluster": cluster}))
                con.execute("INSERT INTO _assigned SELECT * FROM _batch")
                con.unregister("_batch")
            # The walk: by cluster, then input order (shard, the record's position in its source file, id).
            con.execute("""
                CREATE TEMP TABLE _walk AS
                SELECT a.id, a.cluster, row_number() OVER (ORDER BY a.cluster, s.shard, s."row", s.id) - 1 AS seq
                FROM _assigned a JOIN samples s ON s.run_id = ? AND s.id = a.id
            """, [run_id])
            sizes = np.array([n for n, in con.execute("SELECT count(*) FROM _walk GROUP BY cluster ORDER BY cluster").fetchall()])
            drops = []
            for lo, hi in chunks(sizes, max(1, CHUNK_BYTES // (4 * dim))):
                drops += self._walk_chunk(con, run_id, lo, hi, dim)
            return drops

    def _walk_chunk(self, con, run_id: str, lo: int, hi: int, dim: int) -> list[tuple[str, str]]:
        """Drops among the rows at walk positions [lo, hi): whole clusters, in input order."""
        walk = con.sql("SELECT id, cluster FROM _walk WHERE seq >= ? AND seq < ? ORDER BY seq", params=[lo, hi]).to_arrow_table()
        ids = walk.column("id").combine_chunks()
        vecs = np.empty((len(ids), dim), np.float32)
        reader = con.sql("""
            SELECT v.id, v.vec FROM vectors v WHERE v.run_id = $run AND v.name = $name
              AND v.id IN (SELECT id FROM _walk WHERE seq >= $lo AND seq < $hi)
        """, params={"run": run_id, "name": self.vectors, "lo": lo, "hi": hi}).to_arrow_reader(READ_ROWS)
        with reader:
            for batch in reader:
                vecs[pc.index_in(batch.column("id"), value_set=ids).to_numpy()] = normalised(as_matrix(batch.column("vec")))
        cluster = walk.column("cluster").to_numpy()
        bounds = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1], True])
        id_list = ids.to_pylist()
        return [(id_list[start + row], f"semantic_duplicate_of:{id_list[start + of]}")
                for start, end in zip(bounds[:-1], bounds[1:]) for row, of in self.duplicates(vecs[start:end])]

    def duplicates(self, vecs: np.ndarray) -> list[tuple[int, int]]:
        """(row, the earlier kept row it duplicates) pairs among the (n, d) normalised rows of
        one cluster in input order: a row is kept unless its cosine similarity to a kept row
        exceeds the threshold, so a dropped row never blocks another (no chains)."""
        greedy = GreedyCosine(vecs.shape[1], self.threshold)
        kept, found = [], []
        for start in range(0, len(vecs), OFFER_ROWS):
            verdict, _ = greedy.offer(vecs[start:start + OFFER_ROWS])
            kept.extend((start + np.flatnonzero(verdict == ADMITTED)).tolist())
            found.extend((start + row, kept[blocker]) for row, blocker in
                         zip(np.flatnonzero(verdict >= 0).tolist(), verdict[verdict >= 0].tolist()))
        return found


def chunks(sizes: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges over clusters laid end to end (sizes: rows per cluster), each holding
    whole clusters and at most `rows` rows, unless a single cluster is bigger."""
    out, lo, hi = [], 0, 0
    for size in sizes.tolist():
        if hi > lo and hi - lo + size > rows:
            out.append((lo, hi))
            lo = hi
        hi += size
    return out + [(lo, hi)] if hi > lo else out
