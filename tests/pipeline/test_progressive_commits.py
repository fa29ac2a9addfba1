"""Shards commit as soon as their rows are through, not together at the end of the stream: an
interrupted run keeps its finished shards, and the same command again does not redo them.

An actor stage (embed, the offline MiniLM) whose batch size (1,024) is far above the shard size:
Ray Data used to bundle blocks until a call had `batch_size` rows, so every shard waited for the
others (16 shards of 64 rows committed in the last 1.2 s of a 21 s stream). About a minute on
an idle 2-core machine, several on a busy one."""

import os
import signal
import statistics

import duckdb
import pytest

pytest.importorskip("sentence_transformers")

pytestmark = [pytest.mark.model, pytest.mark.slow]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import curate_cmd, run_killing_at_first_commit, write_jsonl  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.runner import run  # noqa: E402

SHARDS, SHARD_SIZE = 10, 24
# One embedding actor on one torch thread: a few seconds a shard, so the shards finish apart.
STAGES = [{"filters": {"min_response_words": 1}}, {"embed": {"text": ["instruction", "response"], "threads": 1}}]


def test_each_block_the_writer_gets_holds_one_shard(ray_local, tmp_path, alpaca_rows):
    """Batch sizes far above the shard size, on a task step and an actor step: Ray Data bundled
    blocks up to the batch size, so the writer got 7 of the 8 shards in one block."""
    from curate.pipeline.dag import build_dataset, stage_plans
    from curate.stages.readers import plan_shards, resolve_inputs

    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows[:80])
    config = load_config(None, input=[str(src)], db=str(tmp_path / "x.duckdb"), shard_size=10,
                         stages=[{"filters": {"batch_size": 64}}, {"near_dedup": {"resources": {"actor": True}, "batch_size": 64}}])
    ds = build_dataset(plan_shards(resolve_inputs(config.input), config.shard_size), stage_plans(config))
    blocks = [sorted(set(b["_shard"].to_pylist())) for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
    assert sorted(b[0] for b in blocks) == [f"s000-{n:05d}" for n in range(8)] and all(len(b) == 1 for b in blocks), blocks


def test_a_shard_above_the_batch_size_reaches_the_stage_in_slices(tmp_path, alpaca_rows, monkeypatch):
    from curate.pipeline import dag
    from curate.stages.readers import plan_shards, resolve_inputs

    src = write_jsonl(tmp_path / "in.jsonl", alpaca_rows[:20])
    config = load_config(None, input=[str(src)], db=str(tmp_path / "x.duckdb"), shard_size=20,
                         stages=[{"filters": {"min_response_words": 1, "batch_size": 7}}])
    ingest, filters = dag.stage_plans(config)
    (spec,) = plan_shards(resolve_inputs(config.input), config.shard_size)
    shard = dag.run_stage_task_in_slices(dag.read_shard_table(spec), ingest)
    calls = []
    real = dag.run_stage_task
    monkeypatch.setattr(dag, "run_stage_task", lambda batch, plan: calls.append(batch.num_rows) or real(batch, plan))
    out = dag.run_stage_task_in_slices(shard, filters)
    assert calls == [7, 7, 6]
    assert out.num_rows == 20 and sorted(out["_row"].to_pylist()) == sorted(shard["_row"].to_pylist())


def _commits(db, run_id) -> dict[str, object]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("SELECT shard, committed_at FROM shards WHERE run_id = ?", [run_id]).fetchall())
    finally:
        con.close()


@pytest.mark.slow
def test_shards_commit_as_they_finish_and_an_interrupted_run_keeps_them(ray_local, tmp_path, alpaca_rows):
    src = write_jsonl(tmp_path / "seeds.jsonl", alpaca_rows[: SHARDS * SHARD_SIZE])
    db = tmp_path / "progressive.duckdb"
    stages = "[{filters: {min_response_words: 1}}, {embed: {field: instruction_response, threads: 1}}]"
    cmd = [*curate_cmd(), "run", "--input", str(src), "--db", str(db), "--progress", "lines", "--no-export",
           "--set", f"shard_size={SHARD_SIZE}", "--set", f"stages={stages}"]

    def ctrl_c(driver: int) -> list[int]:  # what a terminal's Ctrl-C does to the driver
        os.kill(driver, signal.SIGINT)
        return [driver]

    # 1. Interrupted at its first commit: the shards committed by then stay.
    _, interrupted = run_killing_at_first_commit(cmd, ctrl_c)
    for pid in interrupted:  # whatever of its Ray the driver left behind (its own process group)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert interrupted
    con = duckdb.connect(str(db), read_only=True)
    run_id, status = con.execute("SELECT run_id, status FROM runs").fetchone()
    con.close()
    kept = _commits(db, run_id)
    assert status != "finished" and 1 <= len(kept) < SHARDS // 2, (status, len(kept))

    # 2. The same run again: committed shards are skipped and untouched; the others commit one
    # by one while the stream runs, the first well before it ends.
    config = load_config(None, input=[str(src)], db=str(db), shard_size=SHARD_SIZE, stages=STAGES)
    report = run(config, progress="off")
    assert report.run_id == run_id and report.attempt == 2
    assert report.shards == SHARDS and report.shards_skipped == len(kept)
    commits = _commits(db, run_id)
    assert len(commits) == SHARDS and all(commits[s] == t for s, t in kept.items())
    con = duckdb.connect(str(db), read_only=True)
    start, finish = con.execute("SELECT last_attempt_at, finished_at FROM runs WHERE run_id = ?", [run_id]).fetchone()
    embed_seconds = [sec for shard, sec in con.execute("SELECT shard, seconds FROM stage_stats WHERE run_id = ? AND stage = 'embed'",
                                                       [run_id]).fetchall() if shard not in kept]
    con.close()
    mine = sorted((t - start).total_seconds() for s, t in commits.items() if s not in kept)
    duration = (finish - start).total_seconds()
    per_shard = statistics.median(embed_seconds)  # the first call of an actor also loads the model
    print(f"attempt 2: {len(mine)} shards in {duration:.1f} s, {per_shard:.1f} s of embedding a shard; "
          f"commits at {[round(t, 1) for t in mine]} s (the first at {mine[0] / duration:.0%})")
    # The actor's start and model load come before the first commit however shards are batched
    # (on a busy machine, most of the run); after it, the commits follow the shards, so they
    # span most of the embedding of the shards after the first. Together they land within a second.
    assert mine[-1] - mine[0] > 0.5 * per_shard * (len(mine) - 1), (mine, per_shard)
