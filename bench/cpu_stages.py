"""CPU stages through the runner on a pool built from the Alpaca data with planted duplicates;
near dedup against datasketch's MinHashLSH on the same rows and settings.

    python bench/cpu_stages.py --quick      # 20,000 rows, under a minute
    python bench/cpu_stages.py              # 200,000 rows

Each stage runs as ingest + that stage; its rows/s is rows in / the stage's busy seconds (the
stream half plus, for dedup, the global step), i.e. per CPU core, comparable with the
single-process datasketch reference. The last line is one JSON object (../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402

from bench._common import PeakRSS, shared_data, synthetic_pool  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.runner import run  # noqa: E402
from curate.stages.text import normalise  # noqa: E402

THRESHOLD, NUM_PERM, SHINGLE = 0.8, 128, 5


def stage_figures(db: str, run_id: str, stage: str) -> tuple[float, int]:
    """Busy seconds of a stage (both halves of a global stage) and the rows it dropped."""
    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute("SELECT sum(seconds), sum(dropped)::BIGINT FROM stage_totals WHERE run_id = ? AND stage = ?",
                           [run_id, stage]).fetchone()
    finally:
        con.close()


def datasketch_dedup(pool: Path, limit: int) -> tuple[float, int]:
    """The reference: per row, MinHash of the same shingles, query the LSH, insert if new."""
    from datasketch import MinHash, MinHashLSH

    texts = []
    with open(pool, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
            texts.append(f"user: {user.strip()}\nassistant: {r['output'].strip()}")
            if len(texts) == limit:
                break
    start = time.perf_counter()
    words = [t.split() for t in normalise(pa.array(texts)).to_pylist()]
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    drops = 0
    for i, w in enumerate(words):
        shingles = [" ".join(w[k: k + SHINGLE]).encode() for k in range(max(1, len(w) - SHINGLE + 1))]
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch(shingles)
        if lsh.query(m):
            drops += 1
        else:
            lsh.insert(str(i), m)
    return time.perf_counter() - start, drops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    args = ap.parse_args()
    rows = args.rows or (20_000 if args.quick else 200_000)

    import ray

    from curate.pipeline.runner import LOCAL_RAY_SYSTEM_CONFIG
    ray.init(address="local", include_dashboard=False, log_to_driver=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    benchmarks = str(shared_data() / "benchmarks" / "*.jsonl")
    stages = {
        "filters": {"filters": {"min_response_words": 3, "max_repeated_ngram_ratio": 0.5, "max_non_alnum_ratio": 0.5}},
        "exact_dedup": {"exact_dedup": {"text": "conversation"}},
        "near_dedup": {"near_dedup": {"threshold": THRESHOLD, "num_perm": NUM_PERM, "shingle": SHINGLE}},
        "decontaminate": {"decontaminate": {"benchmarks": [benchmarks]}},
    }
    figures, drops = {}, {}
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp, PeakRSS() as mem:
        pool = Path(tmp) / "pool.jsonl"
        planted = synthetic_pool(rows, pool)
        for name, stage in stages.items():
            db = os.path.join(tmp, f"{name}.duckdb")
            start = time.perf_counter()
            report = run(load_config(None, input=[str(pool)], db=db, shard_size=5000, stages=[stage]), progress="off")
            wall = time.perf_counter() - start
            busy, dropped = stage_figures(db, report.run_id, name)
            figures[name] = {"rows_s": round(report.rows_in / busy, 1), "wall_s": round(wall, 2), "busy_s": round(busy, 2)}
            drops[name] = dropped
            print(f"{name:14s} {report.rows_in / busy:>10,.0f} rows/s per core ({busy:.1f} busy s; run {wall:.1f} s wall); dropped {dropped}")
        ds_s, ds_drops = datasketch_dedup(pool, rows)
        print(f"{'datasketch':14s} {rows / ds_s:>10,.0f} rows/s (one process, {ds_s:.1f} s); dropped {ds_drops}")
    ray.shutdown()
    print(f"planted: {planted}")
    near = figures["near_dedup"]["rows_s"]
    print(json.dumps({
        "bench": "cpu_stages", "rows": rows,
        "filters_rows_s": figures["filters"]["rows_s"],
        "exact_dedup_rows_s": figures["exact_dedup"]["rows_s"],
        "near_dedup_rows_s": near,
        "datasketch_rows_s": round(rows / ds_s, 1),
        "near_dedup_ratio": round(near / (rows / ds_s), 2),
        "decontam_rows_s": figures["decontaminate"]["rows_s"],
        "peak_rss_mib": mem.mib,
        "wall_s": {k: v["wall_s"] for k, v in figures.items()},
        "dropped": {**drops, "datasketch_near": ds_drops}, "planted": planted,
    }))


if __name__ == "__main__":
    main()
