"""The CPU part of the pipeline (ingest, filters, exact and near dedup, embeddings, k-means
selection) on a pool built from the Alpaca data, against the same stages run by hand in
sequence: the dedup (filters, exact and near dedup, through curate), then a bare
`SentenceTransformer.encode` of the survivors (same model, threads and batch size), then faiss
k-means over their vectors. With phases, the pipeline's embed stage sees only the survivors too,
so the two should take about as long. Each side starts an embedded Ray of its own (both pay
Ray's worker start-up, neither finds the other's workers warm) and is sampled for peak memory
the same way. The by-hand side fits k-means only; the pipeline's kMQ also picks rows (facility
location in each cluster, ~1 s here). Also the naive one-process parse-and-insert script for the
part it can do.

    python bench/end_to_end.py --quick      # 3,000 rows, under a minute
    python bench/end_to_end.py              # 100,000 rows
    python bench/end_to_end.py --no-embed --rows 200000    # the stages without a model

Prints figures, the last line one JSON object (keys per ../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402

from bench._common import PeakRSS, alpaca_pool  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.runner import run  # noqa: E402
from curate.stages.ingest import Ingest, RowError  # noqa: E402
from curate.storage.schema import SAMPLE_SCHEMA  # noqa: E402


def reference(path: Path, db: str) -> int:
    """What a one-off script does: loop over lines, parse, collect, insert once."""
    ingest = Ingest()
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(ingest.parse(line, "pool"))
            except RowError:
                pass
    con = duckdb.connect(db)
    con.register("t", pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    con.execute("CREATE TABLE samples AS SELECT DISTINCT ON (id) * FROM t")
    n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    con.close()
    return n


def by_hand_sequence(pool: Path, db: str, shard_size: int, dedup_stages: list[dict], embed_threads: int, k: int) -> dict:
    """The same stages run one after the other by hand: the dedup through curate, then a bare
    encode of the survivors' instructions, then faiss k-means on their vectors. Seconds each."""
    import numpy as np

    from curate.lib.clustering import fit_centroids
    from curate.stages.embed import default_model_path, load_model

    start = time.perf_counter()
    report = run(load_config(None, input=[str(pool)], db=db, shard_size=shard_size, stages=dedup_stages), progress="off")
    dedup_s = time.perf_counter() - start
    con = duckdb.connect(db, read_only=True)
    texts = [r[0] for r in con.execute("SELECT messages[1].content FROM curated WHERE run_id = ?", [report.run_id]).fetchall()]
    con.close()
    start = time.perf_counter()  # the model load counts, as it does in the pipeline's actor
    model = load_model(default_model_path(), None, True, None, embed_threads)  # the embed stage's settings
    vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    embed_s = time.perf_counter() - start
    start = time.perf_counter()
    fit_centroids(np.ascontiguousarray(vecs, np.float32), min(k, max(1, len(vecs) // 4)))
    kmeans_s = time.perf_counter() - start
    return {"dedup_s": round(dedup_s, 2), "survivors": len(texts), "embed_s": round(embed_s, 2),
            "kmeans_s": round(kmeans_s, 2), "total_s": round(dedup_s + embed_s + kmeans_s, 2)}


@contextmanager
def fresh_ray():
    """An embedded Ray of its own for one side of the comparison, so that neither finds the
    other's workers already started (both pay the same worker start-up)."""
    import ray

    from curate.pipeline.runner import LOCAL_RAY_SYSTEM_CONFIG
    ray.init(address="local", include_dashboard=False, log_to_driver=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    try:
        yield
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--no-embed", action="store_true", help="leave out the embedding stage and the k-means selection")
    args = ap.parse_args()
    rows = args.rows or (3_000 if args.quick else 100_000)
    stages = [{"filters": {"min_response_words": 3}}, {"exact_dedup": {"text": "instruction"}}, {"near_dedup": {"threshold": 0.8}}]
    selectors = []
    if not args.no_embed:
        # Ray gives an actor one torch thread per logical CPU it holds; the embedding is the
        # bottleneck here, so it gets the machine's cores.
        stages.append({"embed": {"text": "instruction", "threads": os.cpu_count() or 1}})
        selectors.append({"kmeans_diversity": {"budget": 0.1, "k": 64 if args.quick else 1024, "name": "diverse"}})

    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp:
        pool = alpaca_pool(rows, Path(tmp) / "pool.jsonl")
        config = load_config(None, input=[str(pool)], db=os.path.join(tmp, "bench.duckdb"), shard_size=min(args.shard_size, rows // 4 or 1),
                             stages=stages, selectors=selectors)
        with fresh_ray(), PeakRSS() as mem:
            start = time.perf_counter()
            report = run(config, progress="off")
            total_s = time.perf_counter() - start
        con = duckdb.connect(config.db, read_only=True)
        funnel = con.execute("SELECT stage, rows_in, seconds FROM stage_totals WHERE run_id = ? AND stage != 'store' "
                             "ORDER BY position", [report.run_id]).fetchall()
        stage_rows_s = {stage: round(rows_in / secs, 1) if secs else None for stage, rows_in, secs in funnel}
        stage_rows_in = {stage: rows_in for stage, rows_in, _ in funnel}
        embedded = con.execute("SELECT count(*) FROM vectors WHERE run_id = ?", [report.run_id]).fetchone()[0]
        for name, pool_rows, secs in con.execute("SELECT name, pool, seconds FROM selection_info WHERE run_id = ?", [report.run_id]).fetchall():
            stage_rows_s[f"select:{name}"] = round(pool_rows / secs, 1) if secs else None
        con.close()

        by_hand = hand_mem = None
        if not args.no_embed:
            with fresh_ray(), PeakRSS() as hand_mem:
                by_hand = by_hand_sequence(pool, os.path.join(tmp, "hand.duckdb"), config.shard_size, stages[:-1],
                                           embed_threads=stages[-1]["embed"]["threads"], k=selectors[0]["kmeans_diversity"]["k"])

        start = time.perf_counter()
        ref_rows = reference(pool, os.path.join(tmp, "ref.duckdb"))
        ref_s = time.perf_counter() - start

    print(report.summary())
    print(f"pipeline: {rows / total_s:,.0f} rows/s end to end ({total_s:.1f} s, Ray worker start-up included); "
          f"reference script: {rows / ref_s:,.0f} rows/s ({ref_s:.1f} s, {ref_rows} rows)")
    print("rows each stage saw: " + ", ".join(f"{k} {v:,}" for k, v in stage_rows_in.items()) + f"; vectors stored: {embedded:,}")
    print(f"peak memory of the run, all processes: {mem.mib:,.0f} MiB summed RSS, {mem.pss_mib or 0:,.0f} MiB summed PSS; "
          f"at the peak (RSS/PSS MiB): {mem.breakdown()}")
    print("rows/s per stage: " + ", ".join(f"{k} {v:,}" for k, v in stage_rows_s.items() if v))
    result = {
        "bench": "end_to_end", "rows": rows, "total_s": round(total_s, 2),
        "rows_s": round(rows / total_s, 1), "stage_rows_s": stage_rows_s, "stage_rows_in": stage_rows_in,
        "embedded": embedded, "reference_rows_s": round(rows / ref_s, 1), "reference": "parse and insert only",
        "peak_rss_mib": mem.mib, "peak_pss_mib": mem.pss_mib, "kept": report.kept, "shards": report.shards,
    }
    if by_hand:
        print(f"by hand in sequence: dedup {by_hand['dedup_s']:.1f} s, embed {by_hand['survivors']:,} survivors "
              f"{by_hand['embed_s']:.1f} s, k-means {by_hand['kmeans_s']:.1f} s = {by_hand['total_s']:.1f} s; "
              f"pipeline / by hand: {total_s / by_hand['total_s']:.2f}× the time")
        print(f"peak memory by hand: {hand_mem.mib:,.0f} MiB summed RSS, {hand_mem.pss_mib or 0:,.0f} MiB summed PSS")
        result.update(by_hand_s=round(by_hand["total_s"], 2), by_hand=by_hand, by_hand_peak_rss_mib=hand_mem.mib,
                      by_hand_peak_pss_mib=hand_mem.pss_mib,
                      time_vs_by_hand=round(total_s / by_hand["total_s"], 3))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
