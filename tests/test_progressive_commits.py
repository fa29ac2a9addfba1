"""Shards commit as soon as their rows are through, not together at the end of the stream: an
interrupted run keeps its finished shards, and the same command again does not redo them.

An actor stage (embed, the offline MiniLM) with a batch size far above the shard size: Ray Data
used to bundle blocks until a call had `batch_size` rows, so every shard waited for the others
(16 shards committed in the last 1.2 s of a 21 s stream)."""

import os
import signal

import duckdb
import pytest

pytest.importorskip("sentence_transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import curate_cmd, run_killing_at_first_commit, write_jsonl  # noqa: E402
from curate.pipeline.config import load_config  # noqa: E402
from curate.pipeline.runner import run  # noqa: E402

SHARDS, SHARD_SIZE = 16, 32
# One embedding actor on one torch thread, its batch size (1,024) above the 32-row shards.
STAGES = [{"filters": {"min_response_words": 1}}, {"embed": {"field": "instruction_response", "threads": 1}}]


def _commits(db, run_id) -> dict[str, object]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("SELECT shard, committed_at FROM shards WHERE run_id = ?", [run_id]).fetchall())
    finally:
        con.close()


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
    assert status in ("interrupted", "failed") and 1 <= len(kept) < SHARDS // 2, (status, len(kept))

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
    con.close()
    mine = sorted((t - start).total_seconds() for s, t in commits.items() if s not in kept)
    duration = (finish - start).total_seconds()
    print(f"attempt 2: {len(mine)} shards in {duration:.1f} s; commits at {[round(t, 1) for t in mine]}")
    assert mine[0] < 0.5 * duration, (mine, duration)
