"""CPU stages through the runner on a pool built from the Alpaca data with planted duplicates;
near dedup against two single-process references on the same rows, shingles, permutations and
threshold: datasketch's MinHashLSH, and rensa (Rust MinHash; RMinHash + RMinHashLSH).

    python bench/cpu_stages.py --quick      # 20,000 rows, under a minute
    python bench/cpu_stages.py              # 200,000 rows

Each stage runs as ingest + that stage; its rows/s is rows in / the stage's busy seconds (the
stream half plus, for dedup, the global step), i.e. per CPU core, comparable with the
single-process references (rensa may use its own Rayon threads: `rensa_threads`).

Recall: on the first `--sample` rows, brute-force Jaccard of the 5-word shingle sets of every
pair sharing a shingle; a row should go if an earlier kept row (greedy, input order) reaches the
threshold. Each side's recall is the share of those rows it dropped; `false_drops` counts the
rows it dropped that should stay. The last line is one JSON object (../shared/BENCHMARKS.md).
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
VERIFY_AT = THRESHOLD - 0.05  # curate's default verify_margin
RENSA_BANDS = 16


def stage_figures(db: str, run_id: str, stage: str) -> tuple[float, int, float]:
    """Busy seconds of a stage (both halves of a global stage), the rows it dropped, and the
    seconds of its global step (0 for a plain stage)."""
    con = duckdb.connect(db, read_only=True)
    try:
        busy, dropped = con.execute("SELECT sum(seconds), sum(dropped)::BIGINT FROM stage_totals WHERE run_id = ? AND stage = ?",
                                    [run_id, stage]).fetchone()
        step = con.execute("SELECT sum(seconds) FROM global_steps WHERE run_id = ? AND stage = ?", [run_id, stage]).fetchone()[0]
        return busy, dropped, step or 0.0
    finally:
        con.close()


def reference_texts(pool: Path, limit: int) -> list[str]:
    """The conversations as one text each (`user: ...\nassistant: ...`), as the references read them."""
    texts = []
    with open(pool, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
            texts.append(f"user: {user.strip()}\nassistant: {r['output'].strip()}")
            if len(texts) == limit:
                break
    return texts


def shingles_of(words: list[str]) -> list[str]:
    return [" ".join(words[k: k + SHINGLE]) for k in range(max(1, len(words) - SHINGLE + 1))]


def datasketch_dedup(texts: list[str]) -> tuple[float, set[int]]:
    """The first reference: per row, MinHash of the same shingles, query the LSH, insert if new.
    Returns seconds and the rows dropped."""
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    words = [t.split() for t in normalise(pa.array(texts)).to_pylist()]
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    dropped = set()
    for i, w in enumerate(words):
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([s.encode() for s in shingles_of(w)])
        if lsh.query(m):
            dropped.add(i)
        else:
            lsh.insert(str(i), m)
    return time.perf_counter() - start, dropped


def rensa_dedup(texts: list[str]) -> tuple[float, set[int]]:
    """The second reference, rensa's bulk API in one process: normalise (curate's vectorised
    `normalise`, so both sides read the same words), shingle in Python, `RMinHash.from_token_sets`,
    `RMinHashLSH.insert_many` + `query_all`, then each candidate verified by its estimated Jaccard
    at curate's acceptance (threshold − verify_margin) and rows dropped greedily in input order,
    as curate's near_dedup does. Bands: RENSA_BANDS × NUM_PERM/RENSA_BANDS rows (rensa needs a
    divisor of NUM_PERM; curate's recall-weighted choice is 14 × 9). Returns seconds and drops."""
    from rensa import RMinHash, RMinHashLSH

    start = time.perf_counter()
    shingles = [shingles_of(t.split()) for t in normalise(pa.array(texts)).to_pylist()]
    minhashes = RMinHash.from_token_sets(shingles, NUM_PERM, 0)
    lsh = RMinHashLSH(THRESHOLD, NUM_PERM, RENSA_BANDS)
    lsh.insert_many(minhashes)
    dropped: set[int] = set()
    for j, candidates in enumerate(lsh.query_all(minhashes)):
        mine = minhashes[j]
        for i in sorted(candidates):
            if i >= j:
                break
            if i not in dropped and mine.jaccard(minhashes[i]) >= VERIFY_AT:
                dropped.add(j)
                break
    return time.perf_counter() - start, dropped


def brute_force_drops(texts: list[str]) -> set[int]:
    """Rows that should go: exact Jaccard of the shingle sets of every pair sharing a shingle,
    then greedily in input order, a row with an earlier kept row at THRESHOLD or more."""
    sets = [set(shingles_of(t.split())) for t in normalise(pa.array(texts)).to_pylist()]
    index: dict[str, list[int]] = {}
    dropped = set()
    for j, mine in enumerate(sets):
        shared: dict[int, int] = {}
        for s in mine:
            for i in index.setdefault(s, []):
                shared[i] = shared.get(i, 0) + 1
            index[s].append(j)
        if any(i not in dropped and n / (len(mine) + len(sets[i]) - n) >= THRESHOLD for i, n in shared.items()):
            dropped.add(j)
    return dropped


def curate_drops(db: str, run_id: str, pool: Path, limit: int) -> set[int]:
    """Rows among the first `limit` that curate's near_dedup run dropped (by sample id; an exact
    repeat of an earlier row's id is stored once, the repeat dropped, so it counts as dropped)."""
    from curate.stages.ingest import Ingest
    from curate.storage.schema import sample_id

    con = duckdb.connect(db, read_only=True)
    try:
        ids = {r[0] for r in con.execute("SELECT id FROM drops WHERE stage = 'near_dedup' AND run_id = ?", [run_id]).fetchall()}
    finally:
        con.close()
    ingest, seen, dropped = Ingest(), set(), set()
    with open(pool, encoding="utf-8") as f:
        for j, line in enumerate(f):
            if j == limit:
                break
            sid = sample_id(ingest.parse(line, "pool")["messages"])
            if sid in ids or sid in seen:
                dropped.add(j)
            seen.add(sid)
    return dropped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--sample", type=int, help="rows whose pairs are checked by brute force (default 3,000; 6,000 in full mode)")
    args = ap.parse_args()
    rows = args.rows or (20_000 if args.quick else 200_000)
    sample = min(rows, args.sample or (3_000 if args.quick else 6_000))

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
            busy, dropped, step = stage_figures(db, report.run_id, name)
            figures[name] = {"rows_s": round(report.rows_in / busy, 1), "wall_s": round(wall, 2), "busy_s": round(busy, 2),
                             "global_step_s": round(step, 2)}
            drops[name] = dropped
            print(f"{name:14s} {report.rows_in / busy:>10,.0f} rows/s per core ({busy:.1f} busy s, {step:.1f} of them "
                  f"the global step; run {wall:.1f} s wall); dropped {dropped}")
            if name == "near_dedup":  # rensa right after, so that both see the same load on a shared machine
                ours = curate_drops(db, report.run_id, pool, sample)
                texts = reference_texts(pool, rows)
                rs_s, rs_drops = rensa_dedup(texts)
                print(f"{'rensa':14s} {rows / rs_s:>10,.0f} rows/s (one process, {rs_s:.1f} s); dropped {len(rs_drops)}")
        ds_s, ds_drops = datasketch_dedup(texts)
        print(f"{'datasketch':14s} {rows / ds_s:>10,.0f} rows/s (one process, {ds_s:.1f} s); dropped {len(ds_drops)}")
        truth = brute_force_drops(texts[:sample])
    ray.shutdown()

    def recall(got: set[int]) -> float:
        return round(len(got & truth) / max(1, len(truth)), 4)

    sides = {"near_dedup": ours, "rensa": {j for j in rs_drops if j < sample}, "datasketch": {j for j in ds_drops if j < sample}}
    print(f"planted: {planted}; first {sample:,} rows: {len(truth)} should go; recall "
          + ", ".join(f"{k} {recall(v):.3f} ({len(v - truth)} false)" for k, v in sides.items()))
    near = figures["near_dedup"]["rows_s"]
    print(json.dumps({
        "bench": "cpu_stages", "rows": rows,
        "filters_rows_s": figures["filters"]["rows_s"],
        "exact_dedup_rows_s": figures["exact_dedup"]["rows_s"],
        "near_dedup_rows_s": near,
        "datasketch_rows_s": round(rows / ds_s, 1),
        "near_dedup_ratio": round(near / (rows / ds_s), 2),
        "rensa_rows_s": round(rows / rs_s, 1),
        "near_dedup_vs_rensa": round(near / (rows / rs_s), 2),
        "rensa_threads": int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count()),
        "near_dedup_recall": recall(sides["near_dedup"]),
        "rensa_recall": recall(sides["rensa"]),
        "datasketch_recall": recall(sides["datasketch"]),
        "recall_sample": {"rows": sample, "should_go": len(truth), "false_drops": {k: len(v - truth) for k, v in sides.items()}},
        "decontam_rows_s": figures["decontaminate"]["rows_s"],
        "peak_rss_mib": mem.mib,
        "wall_s": {k: v["wall_s"] for k, v in figures.items()},
        "busy_s": {k: v["busy_s"] for k, v in figures.items()},
        "near_dedup_global_step_s": figures["near_dedup"]["global_step_s"],
        "dropped": {**drops, "rensa_near": len(rs_drops), "datasketch_near": len(ds_drops)}, "planted": planted,
    }))


if __name__ == "__main__":
    main()
