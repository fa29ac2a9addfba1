"""Diversity selection at scale: KMeansDiversity (faiss, fit on a sample, streaming assignment
from DuckDB) against scikit-learn's MiniBatchKMeans on the same vectors and k; how vectors are
stored; embedding throughput on the Alpaca data.

    python bench/selection.py --quick      # 50,000 vectors, k=128, under a minute
    python bench/selection.py              # 1,000,000 vectors, k=1,024

The vectors are synthetic, 384-d (MiniLM's width), L2-normalised, drawn around 2,000 centres so
that they have cluster structure. Ours: the vectors sit in DuckDB's `vectors` table (as the
embed stage leaves them); the timed step is the whole selector (sample, fit, one streaming
assignment pass, allocation, sampling). The reference holds all vectors in memory and runs
MiniBatchKMeans, then labels every row. Both report inertia (mean squared distance to the
assigned centroid) on all rows, so speed is not bought with a worse clustering. Each side runs
in a fresh process, so its peak RSS is its own; ours runs with DuckDB's memory_limit at 1GB
(`--duckdb-memory`), the reference needs every vector in memory.
The last line is one JSON object (../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from bench._common import PeakRSS, shared_data  # noqa: E402
from curate.selectors.clustering import POINTS_PER_CENTROID  # noqa: E402

DIM, CENTRES, CHUNK = 384, 2000, 100_000


def in_fresh_process(fn, *args):
    """Run fn(*args) in a new Python process and return (its result, its peak RSS in MiB): each
    side's memory is its own, not what the other side or the embedding model left behind."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured, fn, *args).result()


def _measured(fn, *args):
    # Sampled, not ru_maxrss: that survives fork and exec, so it would count the parent's peak.
    with PeakRSS(interval=0.05) as peak:
        result = fn(*args)
    return result, peak.mib


def clustered_chunks(rows: int, seed: int = 0):
    """Normalised float32 vectors around CENTRES random centres, CHUNK rows at a time, the same
    for the same seed."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)
    spread = rng.uniform(0.3, 1.2, CENTRES).astype(np.float32)
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        which = rng.integers(0, CENTRES, n)
        x = centres[which] + rng.normal(size=(n, DIM)).astype(np.float32) * spread[which, None]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x


def vector_column(x: np.ndarray) -> pa.ListArray:
    n = len(x)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * DIM + 1, DIM, dtype=np.int32)), pa.array(x.ravel()))


def fill_store(db: str, rows: int):
    """The `vectors` table as an embed stage leaves it, and a pool view of the rows' ids."""
    from curate.storage.store import Store

    store = Store(db)
    for start, x in clustered_chunks(rows):
        chunk = pa.table({"id": pa.array([f"{i:012d}" for i in range(start, start + len(x))]), "vec": vector_column(x)})
        store.con.register("_chunk", chunk)
        store.con.execute("INSERT INTO vectors SELECT 'bench', 'embed', id, 'synthetic', vec FROM _chunk")
        store.con.unregister("_chunk")
    store.con.execute("CREATE OR REPLACE TEMP VIEW _pool AS SELECT DISTINCT id FROM vectors WHERE run_id = 'bench'")
    return store


def inertia(rows: int, centroids: np.ndarray) -> float:
    """Mean squared distance of every row to its nearest centroid, chunk by chunk."""
    import faiss

    index = faiss.IndexFlatL2(DIM)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return float(sum(index.search(x, 1)[0].sum() for _, x in clustered_chunks(rows)) / rows)


def run_ours(db: str, k: int, budget: int, memory_limit: str) -> dict:
    from curate.selectors.kmeans import KMeansDiversity
    from curate.storage.store import Store

    store = Store(db)
    store.con.execute("CREATE OR REPLACE TEMP VIEW _pool AS SELECT DISTINCT id FROM vectors WHERE run_id = 'bench'")
    # DuckDB caches table blocks up to its memory limit (default 80% of RAM); with a limit the
    # selector's memory does not grow with the pool.
    store.con.execute(f"SET memory_limit = '{memory_limit}'")
    selector = KMeansDiversity(budget=budget, k=k, seed=0)
    start = time.perf_counter()
    picked = selector.select(store.con, "bench", "_pool", budget)
    kmeans_s = time.perf_counter() - start
    store.close()
    return {"kmeans_s": kmeans_s, "selected": len(picked), "clusters_used": len({p[2] for p in picked}),
            "centroids": selector.centroids}


def run_sklearn(rows: int, k: int, budget: int, full_lloyd: bool) -> dict:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = np.empty((rows, DIM), np.float32)
    for start, chunk in clustered_chunks(rows):
        x[start:start + len(chunk)] = chunk
    start = time.perf_counter()
    if full_lloyd:
        model = KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=0).fit(x)
    else:
        model = MiniBatchKMeans(n_clusters=k, n_init=1, batch_size=4096, random_state=0).fit(x)
    labels = model.labels_
    # The same selection rule on the reference's clusters: B/K random rows per cluster.
    rng = np.random.default_rng(0)
    order = np.lexsort((rng.random(rows), labels))
    first = np.r_[0, np.flatnonzero(np.diff(labels[order])) + 1]
    position = np.arange(rows) - np.repeat(first, np.diff(np.r_[first, rows]))
    chosen = order[position < max(1, budget // k)]
    return {"sklearn_s": time.perf_counter() - start, "sklearn_selected": len(chosen),
            "sklearn_model": type(model).__name__, "centroids": model.cluster_centers_}


def storage_formats(rows: int, tmp: str) -> dict:
    """Write and read back `rows` vectors: DuckDB FLOAT[] (what the store uses), DuckDB
    FLOAT[384], and a Parquet file, each read whole into an (n, d) float32 array."""
    import duckdb
    import pyarrow.parquet as pq

    from curate.selectors.vectors import as_matrix

    x = np.concatenate([c for _, c in clustered_chunks(rows, seed=1)])
    vec_table = pa.table({"id": pa.array([f"{i:012d}" for i in range(rows)]), "vec": vector_column(x)})
    out = {}
    for kind in ("duckdb_list", "duckdb_array", "parquet"):
        path = os.path.join(tmp, f"fmt_{kind}")
        start = time.perf_counter()
        if kind == "parquet":
            pq.write_table(vec_table, path)
        else:
            con = duckdb.connect(path)
            vec_type = "FLOAT[]" if kind == "duckdb_list" else f"FLOAT[{DIM}]"
            con.execute(f"CREATE TABLE v AS SELECT id, vec::{vec_type} AS vec FROM vec_table")
            con.close()
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        if kind == "parquet":
            back = as_matrix(pq.read_table(path, columns=["vec"])["vec"])
        else:
            con = duckdb.connect(path, read_only=True)
            parts = [as_matrix(b.column("vec").cast(pa.list_(pa.float32()))) for b in
                     con.sql("SELECT vec FROM v").to_arrow_reader(65_536)]
            back = np.concatenate(parts)
            con.close()
        read_s = time.perf_counter() - start
        assert back.shape == x.shape
        out[kind] = {"write_rows_s": round(rows / write_s), "read_rows_s": round(rows / read_s),
                     "mib": round(os.path.getsize(path) / 2**20, 1)}
    return out


def embed_throughput(rows: int) -> float:
    from curate.stages.embed import Embed
    from curate.storage.schema import messages_array

    data = json.loads((shared_data() / "alpaca_ifd_5pct.json").read_text())[:rows]
    conv = [[{"role": "user", "content": r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")},
             {"role": "assistant", "content": r["output"]}] for r in data]
    batch = pa.table({"messages": messages_array(conv)})
    stage = Embed()
    stage.encode(["warm up"])  # model load is not throughput
    start = time.perf_counter()
    for lo in range(0, len(conv), Embed.batch_size):
        stage(batch.slice(lo, Embed.batch_size))
    return len(conv) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--k", type=int)
    ap.add_argument("--embed-rows", type=int)
    ap.add_argument("--duckdb-memory", default="1GB", help="DuckDB memory_limit while our selector runs")
    ap.add_argument("--lloyd", action="store_true", help="reference: full KMeans (20 Lloyd iterations) instead of MiniBatchKMeans")
    args = ap.parse_args()
    rows = args.rows or (50_000 if args.quick else 1_000_000)
    k = args.k or (128 if args.quick else 1024)
    embed_rows = args.embed_rows or (400 if args.quick else 3111)
    budget = rows // 10
    embed_rows_s = embed_throughput(embed_rows)  # first: the machine is quietest before the big arrays exist
    print(f"embedding: {embed_rows_s:.0f} rows/s ({embed_rows} Alpaca rows, instruction, MiniLM on CPU, one process)")
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "sel.duckdb")
        start = time.perf_counter()
        fill_store(db, rows).close()
        store_s = time.perf_counter() - start
        ours, ours_peak = in_fresh_process(run_ours, db, k, budget, args.duckdb_memory)
        print(f"ours:    {ours['kmeans_s']:.1f} s (fit on {min(rows, k * POINTS_PER_CENTROID):,} sampled rows, "
              f"stream-assign {rows:,} from DuckDB, select {ours['selected']:,} from {ours['clusters_used']} clusters); "
              f"process peak RSS {ours_peak:,} MiB (DuckDB memory_limit {args.duckdb_memory}); store write {store_s:.1f} s")
        ref, ref_peak = in_fresh_process(run_sklearn, rows, k, budget, args.lloyd)
        print(f"sklearn: {ref['sklearn_s']:.1f} s ({ref['sklearn_model']}, all rows in memory); process peak RSS {ref_peak:,} MiB")
        ours_inertia, ref_inertia = inertia(rows, ours["centroids"]), inertia(rows, ref["centroids"])
        print(f"inertia on all rows: ours {ours_inertia:.4f}, sklearn {ref_inertia:.4f}")
        formats = storage_formats(min(rows, 200_000), tmp)
        for kind, f in formats.items():
            print(f"storage {kind:13s} write {f['write_rows_s']:>10,} rows/s  read {f['read_rows_s']:>10,} rows/s  {f['mib']} MiB")
    print(json.dumps({
        "bench": "selection", "rows": rows, "k": k, "budget": budget,
        "kmeans_s": round(ours["kmeans_s"], 2), "sklearn_s": round(ref["sklearn_s"], 2),
        "kmeans_ratio": round(ref["sklearn_s"] / ours["kmeans_s"], 2), "sklearn_model": ref["sklearn_model"],
        "kmeans_inertia": round(ours_inertia, 4), "sklearn_inertia": round(ref_inertia, 4),
        "kmeans_peak_mib": ours_peak, "sklearn_peak_mib": ref_peak, "duckdb_memory_limit": args.duckdb_memory,
        "store_write_s": round(store_s, 2), "storage": formats,
        "embed_rows_s": round(embed_rows_s, 1), "embed_rows": embed_rows,
        "peak_rss_mib": max(ours_peak, ref_peak),
    }))


if __name__ == "__main__":
    main()
