"""The embed stage through the runner against a bare `SentenceTransformer.encode` of the same
texts, with the same model, threads and mini-batch size, in the same run.

    python bench/embed.py --quick      # 400 rows, under a minute
    python bench/embed.py              # 4,000 rows (about the survivors of bench/end_to_end.py)

Pipeline side: ingest + embed (`cache: false`) through `curate.pipeline.runner.run`; its rows/s
is rows over the stage's busy seconds (the time inside the actor's calls, as every stage's
figure in `stage_totals`), and the run's wall time is printed beside it. Bare side: one process,
the model loaded once (not timed), `encode(texts, batch_size=32, normalize_embeddings=True)`
over the texts sorted longest first, as the stage orders them, `--repeat` times before the
pipeline and as many after it; the median of those is the bare figure. Both sides run with the
thread count the stage's actor runs with (printed). The stage shares mini-batches out among
one single-threaded encoder per thread (stages/embed.py `MiniBatchEncoders`); the same method
outside Ray is timed too, once before the pipeline and once after (`bare_batches_rows_s`,
`embed_ratio_same_method`): the bare `encode` is the reference a user would write, this one
shows what running inside Ray costs. The last line is one JSON object (../shared/BENCHMARKS.md):
`embed_rows_s`, `bare_rows_s`, `embed_ratio` (pipeline over bare), `bare_batches_rows_s`,
`embed_ratio_same_method`, `threads`, `run_s`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from bench._common import alpaca_pool  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.runner import run  # noqa: E402
from curate.stages.embed import cpu_threads  # noqa: E402


def pipeline_side(pool: Path, db: Path) -> tuple[float, float, int]:
    """(rows/s over the embed stage's busy seconds, the run's wall seconds, rows embedded)."""
    start = time.perf_counter()
    report = run(load_config(None, input=[str(pool)], db=str(db), stages=[{"embed": {"cache": False}}]),
                 progress="off")
    wall = time.perf_counter() - start
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows, seconds = con.execute("SELECT sum(rows_in)::BIGINT, sum(seconds) FROM stage_totals "
                                    "WHERE run_id = ? AND stage = 'embed'", [report.run_id]).fetchone()
        stored = con.execute("SELECT count(*) FROM vectors WHERE run_id = ?", [report.run_id]).fetchone()[0]
    finally:
        con.close()
    assert stored == rows, (stored, rows)
    return rows / seconds, wall, rows


class BareEncode:
    """A bare `encode` of the instructions the stage embeds, sorted longest first, in this
    process with `threads` torch threads; the model is loaded (and warmed) once, untimed."""

    def __init__(self, pool: Path, threads: int):
        import pyarrow as pa

        from curate.stages.embed import Embed, texts_to_embed
        from curate.stages.ingest import Ingest
        from curate.storage.schema import sample_arrays

        parse = Ingest().parse
        samples = [parse(line, "pool") for line in pool.read_text().splitlines()]
        self.texts = texts_to_embed(pa.table(sample_arrays(samples)), "instruction", None)
        self.texts.sort(key=len, reverse=True)
        # Loading sets torch's thread count to `threads` (stages/embed.py load_model); the stage
        # itself times the stage's own way, `MiniBatchEncoders`.
        self.stage = Embed(cache=False, threads=threads)
        self.model = self.stage.model
        self.model.encode(self.texts[:64], batch_size=32)  # warm up
        self.stage.encode(self.texts[:64])

    def rows_per_s(self, repeat: int) -> list[float]:
        out = []
        for _ in range(repeat):
            start = time.perf_counter()
            self.model.encode(self.texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
            out.append(len(self.texts) / (time.perf_counter() - start))
        return out

    def stage_rows_per_s(self) -> float:
        """rows/s of the stage's own `encode` (one single-threaded encoder per thread) in this
        process, outside Ray: how far the pipeline is from its own method's bare speed."""
        start = time.perf_counter()
        self.stage.encode(self.texts)
        return len(self.texts) / (time.perf_counter() - start)


def actor_threads() -> int:
    """The torch thread count inside the embed stage's actor: what the stage's call runs with."""
    import ray

    from curate.pipeline.runner import LOCAL_RAY_SYSTEM_CONFIG
    from curate.stages.embed import Embed

    ray.init(address="local", include_dashboard=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    res = Embed.resources_for({}, ray.cluster_resources())

    @ray.remote(num_cpus=res.num_cpus)
    def probe():
        import torch

        Embed(cache=False).setup(None)
        return torch.get_num_threads()

    try:
        return ray.get(probe.remote())
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--repeat", type=int, help="bare encodes before the pipeline, and as many after; the median is the "
                    "figure (default 2, 1 with --quick)")
    args = ap.parse_args()
    rows = args.rows or (400 if args.quick else 4000)
    repeat = args.repeat or (1 if args.quick else 2)
    with tempfile.TemporaryDirectory() as tmp:
        pool = alpaca_pool(rows, Path(tmp) / "pool.jsonl")
        # --quick takes the stage's own rule (stages/embed.py cpu_threads) rather than starting Ray to ask
        # an actor: that probe alone is a third of a minute on a 2-core machine.
        threads = cpu_threads(None) if args.quick else actor_threads()
        bare = BareEncode(pool, threads)
        # Bare encodes before and after the pipeline, so a machine whose speed drifts during the
        # run (a shared VM: a bare encode alone varies by 10-20% from one minute to the next)
        # does not decide the ratio.
        before = bare.rows_per_s(repeat)
        same_method = [bare.stage_rows_per_s()]
        embed_rows_s, run_s, n = pipeline_side(pool, Path(tmp) / "embed.duckdb")
        after = bare.rows_per_s(repeat)
        same_method.append(bare.stage_rows_per_s())
    bare_rows_s = statistics.median(before + after)
    bare_batches_rows_s = statistics.mean(same_method)
    print(f"pipeline: {n} rows, embed stage {embed_rows_s:.0f} rows/s (busy time), run {run_s:.1f} s wall")
    print(f"bare encode, {threads} thread(s): before {', '.join(f'{b:.0f}' for b in before)}, "
          f"after {', '.join(f'{b:.0f}' for b in after)} rows/s")
    print(f"the stage's encode outside Ray (one 1-thread encoder per thread): {', '.join(f'{b:.0f}' for b in same_method)} rows/s")
    print(json.dumps({"bench": "embed", "rows": n, "embed_rows_s": round(embed_rows_s, 1),
                      "bare_rows_s": round(bare_rows_s, 1), "embed_ratio": round(embed_rows_s / bare_rows_s, 3),
                      "bare_batches_rows_s": round(bare_batches_rows_s, 1),
                      "embed_ratio_same_method": round(embed_rows_s / bare_batches_rows_s, 3),
                      "threads": threads, "run_s": round(run_s, 1)}))


if __name__ == "__main__":
    main()
