"""Semantic deduplication (SemDeDup, Abbas et al. 2023): near-identical meaning, not near-identical words.

A GlobalStage after an embed stage. The stream half passes rows through untouched (it stores no
keys: the vectors are already in the `vectors` table). After the stream, `decide_in` reads the
vectors of the run's kept rows from DuckDB and, as in the paper, clusters them with k-means
(centroids fitted on a deterministic sample, every row then assigned in a streaming pass);
within each cluster it walks rows in input order and drops a row whose cosine similarity to a
row kept before it exceeds `threshold` (the paper's 1 − ε), naming that row
(`semantic_duplicate_of:<id>`). The paper keeps the row farthest from its centroid; keeping the
earliest instead makes every drop name a row that stays and agrees with exact and near dedup.
Clustering makes the pairwise work near-linear; as in the paper, a pair split across two
clusters is missed.

Memory: the (id, cluster) assignments go to a DuckDB temp table, and the within-cluster pass
reads the vectors back a few whole clusters at a time (at most `CHUNK_BYTES`, or one cluster
if bigger), so the pool's vectors are never all in memory; the price is one scan of `vectors`
per chunk.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.selectors.clustering import Assigner, fit_centroids, fit_sample_rows
from curate.selectors.greedy import ADMITTED, GreedyCosine, normalised
from curate.selectors.vectors import BATCH_ROWS, VectorSource, as_matrix
from curate.stages.base import GlobalStage, Resources, StageResult

CHUNK_BYTES = 64 << 20  # vectors held at once in the within-cluster pass (43,690 rows at 384-d float32)
OFFER_ROWS = 4096  # rows per GreedyCosine.offer call: one faiss search per chunk against the kept rows


class SemDeDup(GlobalStage):
    name = "semdedup"
    resources = Resources(num_cpus=1)
    batch_size = 4096

    def __init__(self, threshold: float = 0.95, vectors: str = "embed", k: int | None = None,
                 rows_per_cluster: int = 1000, niter: int = 20, seed: int = 0):
        if not -1 <= threshold <= 1:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.threshold, self.vectors, self.k = threshold, vectors, k
        self.rows_per_cluster, self.niter, self.seed = rows_per_cluster, niter, seed

    def __call__(self, batch: pa.Table) -> StageResult:
        """Nothing to do in the stream: the decision reads the stored vectors (the config check
        makes sure an embed stage of `vectors` comes earlier)."""
        return StageResult(kept=batch)

    def decide_in(self, store, run_id: str, stage_name: str) -> list[tuple[str, str]]:
        """(id, "semantic_duplicate_of:<id>") for each kept row of the run that duplicates an
        earlier kept row of its cluster. k = `k`, or the pool's rows / `rows_per_cluster`."""
        pool = f"(SELECT id FROM samples WHERE run_id = '{run_id.replace(chr(39), chr(39) * 2)}' AND kept)"
        # Cursors: own connections, so the assignment pass can write its temp table while the
        # vectors stream, and the temp tables go when the cursors close.
        with store.con.cursor() as con, store.con.cursor() as reader:
            if not con.execute(f"SELECT count(*) FROM {pool}").fetchone()[0]:
                return []
            source = VectorSource(reader, run_id, pool, self.vectors)
            k = self.k or max(1, source.rows // self.rows_per_cluster)
            sample = normalised(source.sample(fit_sample_rows(k, None), self.seed))
            dim = sample.shape[1]
            assign = Assigner(fit_centroids(sample, k, self.niter, seed=self.seed))
            del sample
            con.execute("CREATE TEMP TABLE _assigned (id VARCHAR, cluster INTEGER)")
            for batch in source.batches():
                con.register("_batch", pa.table({"id": batch.column("id"),
                                                 "cluster": assign(normalised(as_matrix(batch.column("vec"))))[0]}))
                con.execute("INSERT INTO _assigned SELECT * FROM _batch")
                con.unregister("_batch")
            # Input order: the record's position in its source file where samples has it.
            has_row = "row" in [d[0] for d in con.execute("SELECT * FROM samples LIMIT 0").description]
            position = 's.shard, s."row", s.id' if has_row else "s.shard, s.id"
            con.execute(f"""
                CREATE TEMP TABLE _walk AS
                SELECT a.id, a.cluster, row_number() OVER (ORDER BY a.cluster, {position}) - 1 AS seq
                FROM _assigned a JOIN samples s ON s.run_id = ? AND s.id = a.id
            """, [run_id])
            sizes = np.array([r[0] for r in con.execute("SELECT count(*) FROM _walk GROUP BY cluster ORDER BY cluster").fetchall()])
            drops = []
            for lo, hi in chunks(sizes, max(1, CHUNK_BYTES // (4 * dim))):
                drops += self._walk_chunk(con, run_id, lo, hi, dim)
            return drops

    def _walk_chunk(self, con, run_id: str, lo: int, hi: int, dim: int) -> list[tuple[str, str]]:
        """Drops among the rows at walk positions [lo, hi): whole clusters, in input order."""
        walk = con.sql("SELECT id, cluster FROM _walk WHERE seq >= ? AND seq < ? ORDER BY seq", params=[lo, hi]).to_arrow_table()
        ids = walk.column("id").combine_chunks()
        vecs = np.empty((len(ids), dim), np.float32)
        reader = con.sql(f"""
            SELECT v.id, v.vec FROM vectors v WHERE v.run_id = $run AND v.name = $name
              AND v.id IN (SELECT id FROM _walk WHERE seq >= {int(lo)} AND seq < {int(hi)})
        """, params={"run": run_id, "name": self.vectors}).to_arrow_reader(BATCH_ROWS)
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
