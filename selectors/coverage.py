"""Coverage of a selection: how far a pool row is from its nearest picked row.

The figure every diversity selector is judged by (lower is better): for each pool row, the
cosine distance 1 − cos(x, s) to the nearest selected row s; its mean and 90th percentile over the
pool, or over a deterministic sample of it when pool × picks is large. The same figures for
random draws of the same size (ranked as the `random` selector ranks rows: by md5(seed:id)), on
the same sample rows, say what the selection bought over chance. A picked row is at distance 0
from itself, so a larger selection always covers at least as well.

Picked vectors are read from DuckDB in chunks and compared with the sample chunk by chunk, so
memory stays at the sample plus one chunk of picks, whatever the selection's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.lib.greedy import normalised
from curate.lib.vectors import VectorSource, as_matrix

# The sample of pool rows measured: all of them while pool × picks stays under PAIRS (then
# the figures are exact), else PAIRS / picks rows, at least MIN_SAMPLE. At 1M rows and 100k
# picks that is 2,000 rows: the standard error of the mean distance is then about 0.002, and
# the selection and the random draws are measured on the same rows (a paired comparison).
PAIRS = 50_000_000
MIN_SAMPLE = 2_000
# Random draws averaged while draws × picks × sample stays under this many pairs (at least one).
RANDOM_PAIRS = 300_000_000
MAX_RANDOM_DRAWS = 3
PICK_CHUNK = 16_384


def nearest_similarity(queries: np.ndarray, picks: Iterable[np.ndarray]) -> np.ndarray:
    """Largest cosine similarity of each query row (n, d) to any row of `picks` (an iterable of
    (m_i, d) chunks); rows are normalised here. Returns (n,) float32; −1 where there are no picks."""
    import faiss

    queries = np.ascontiguousarray(normalised(queries))
    best = np.full(len(queries), -1.0, np.float32)
    for chunk in picks:
        if len(chunk) == 0 or len(queries) == 0:
            continue
        index = faiss.IndexFlatIP(queries.shape[1])
        index.add(np.ascontiguousarray(normalised(chunk)))
        sim, _ = index.search(queries, 1)
        np.maximum(best, sim[:, 0], out=best)
    return best


def distance_figures(distance: np.ndarray) -> tuple[float, float]:
    """(mean, 90th percentile) of cosine distances."""
    return float(np.mean(distance)), float(np.quantile(distance, 0.9))


def coverage_distance(vectors: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Cosine distance of every row of `vectors` (n, d) to its nearest row among `vectors[picked]`:
    the in-memory form, for tests and benches."""
    picked = np.asarray(picked, dtype=np.int64)
    return 1.0 - nearest_similarity(vectors, (vectors[picked[i:i + PICK_CHUNK]] for i in range(0, len(picked), PICK_CHUNK)))


def sample_size(pool: int, picks: int) -> int:
    if pool * max(picks, 1) <= PAIRS:
        return pool
    return min(pool, max(MIN_SAMPLE, PAIRS // max(picks, 1)))


def random_draws(picks: int, sample: int) -> int:
    return int(max(1, min(MAX_RANDOM_DRAWS, RANDOM_PAIRS // max(1, picks * sample))))


def vectors_for(con: duckdb.DuckDBPyConnection, run_id: str, selector) -> str | None:
    """The vectors a selection's coverage is measured in: the ones the selector read (its
    `vectors`), else `embed`, else the first name the run stored; None if the run has none."""
    names = {r[0] for r in con.execute("SELECT DISTINCT name FROM vectors WHERE run_id = ?", [run_id]).fetchall()}
    for want in (getattr(selector, "vectors", None), "embed"):
        if isinstance(want, str) and want in names:
            return want
    return min(names) if names else None


def measure(con: duckdb.DuckDBPyConnection, run_id: str, pool: str, vectors: str, picked_ids: list[str],
            sample_rows: int | None = None, draws: int | None = None, seed: int = 0) -> dict | None:
    """Coverage of a selection and of random draws of its size, in the vectors named `vectors`.

    pool: a relation of the run's rows (the one the selector drew from); picked_ids: the
    selection. Only rows with vectors count. Returns None when no pool row has vectors, else
    {coverage_vectors, coverage_rows (pool rows measured), coverage_mean, coverage_p90 (cosine
    distance, in [0, 2]), random_coverage_mean, random_coverage_p90 (averaged over
    `random_draws` draws, seeds 0, 1, ...), random_draws}."""
    try:
        source = VectorSource(con, run_id, pool, vectors)
    except CurateError:
        return None
    picks = len(picked_ids)
    rows = sample_rows or sample_size(source.rows, picks)
    sample = source.sample(rows, seed)
    draws = draws or random_draws(picks, len(sample))
    chosen = pa.array(picked_ids, pa.string())
    mean, p90 = distance_figures(1.0 - nearest_similarity(sample, _vectors_of(source, chosen)))
    random = []
    for draw in range(draws):
        ids = con.sql(
            f"SELECT id FROM {pool} WHERE id IN (SELECT id FROM vectors WHERE run_id = $run AND name = $name) "
            "ORDER BY md5($seed || ':' || id) LIMIT $n", params={"run": run_id, "name": vectors, "seed": str(draw), "n": picks}
        ).to_arrow_table().column("id").combine_chunks()
        random.append(distance_figures(1.0 - nearest_similarity(sample, _vectors_of(source, ids))))
    return {"coverage_vectors": vectors, "coverage_rows": len(sample), "coverage_mean": mean, "coverage_p90": p90,
            "random_coverage_mean": float(np.mean([r[0] for r in random])),
            "random_coverage_p90": float(np.mean([r[1] for r in random])), "random_draws": draws}


def _vectors_of(source: VectorSource, ids: pa.Array) -> Iterator[np.ndarray]:
    """The vectors of `ids` (those that have one), in chunks, in no particular order."""
    con = source.con
    con.register("_coverage_ids", pa.table({"id": ids}))
    try:
        reader = con.sql("SELECT v.vec FROM vectors v WHERE v.run_id = $run AND v.name = $name "
                         "AND v.id IN (SELECT id FROM _coverage_ids)",
                         params={"run": source.run_id, "name": source.name}).to_arrow_reader(PICK_CHUNK)
        try:
            for batch in reader:
                yield as_matrix(batch.column("vec"))
        finally:
            reader.close()
    finally:
        con.unregister("_coverage_ids")
