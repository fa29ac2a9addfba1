"""Commits are atomic and idempotent: a rerun adds nothing, a run killed with SIGKILL resumes and
ends with exactly the rows of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from conftest import ROOT, curate_cmd, run_killing_at_first_commit, write_jsonl


STAGES = [{"filters": {"min_response_words": 5}}, {"exact_dedup": {"text": "instruction"}}, {"near_dedup": {"threshold": 0.8}}]
TABLES = {
    "curated": "SELECT id, to_json(messages)::VARCHAR, origin, source, meta FROM curated",
    "drops": "SELECT stage, id, reason FROM drops",
    "quarantine": 'SELECT stage, source, "row", raw, error FROM quarantine',
    "stage_totals": "SELECT position, stage, rows_in, kept, dropped, quarantined FROM stage_totals",
    "shards": "SELECT shard, rows_in FROM shards",
    "row_keys": "SELECT stage, id, shard, \"row\", md5(key::VARCHAR) FROM row_keys",
}


def snapshot(db) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {name: sorted(con.execute(sql).fetchall(), key=repr) for name, sql in TABLES.items()}
    finally:
        con.close()


def seeds(tmp_path, alpaca_rows, copies=1):
    rows = alpaca_rows * copies
    bad = [b"{oops", b'{"instruction": "no answer"}']
    return write_jsonl(tmp_path / "seeds.jsonl", rows, bad)


def test_same_config_twice_leaves_the_same_rows(ray_local, tmp_path, alpaca_rows):
    src = seeds(tmp_path, alpaca_rows[:400])
    cfg = load_config(None, input=[str(src)], db=str(tmp_path / "r.duckdb"), shard_size=50, stages=STAGES)
    first = run(cfg, progress="off")
    before = snapshot(tmp_path / "r.duckdb")
    second = run(cfg, progress="off")
    assert second.run_id == first.run_id and second.attempt == 2
    assert second.shards_skipped == second.shards == first.shards
    assert snapshot(tmp_path / "r.duckdb") == before
    assert (second.rows_in, second.kept, second.dropped, second.quarantined) == (first.rows_in, first.kept, first.dropped, first.quarantined)


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_rows_of_an_uninterrupted_run(ray_local, tmp_path, alpaca_rows):
    src = seeds(tmp_path, alpaca_rows, copies=2)  # 6,224 rows with repeats across shards
    shard_size = 40
    settings = ["--input", str(src), "--set", f"shard_size={shard_size}",
                "--set", "stages=[{filters: {min_response_words: 5}}, {exact_dedup: {on: instruction}}, {near_dedup: {threshold: 0.8}}]"]
    killed_db = tmp_path / "killed.duckdb"

    proc = subprocess.Popen(
        [*curate_cmd(), "run", "--db", str(killed_db), "--progress", "lines", *settings],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    commits = 0
    try:
        deadline = time.monotonic() + 240
        for line in proc.stderr:
            if line.startswith("committed shard"):
                commits += 1
                if commits == 3:
                    break
            assert time.monotonic() < deadline, "the run never committed 3 shards"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait()
    assert commits == 3
    total_shards = -(-(len(alpaca_rows) * 2 + 2) // shard_size)
    partial = snapshot(killed_db)
    assert 3 <= len(partial["shards"]) < total_shards, "the kill must land mid-run"

    overrides = settings[3::2]  # the --set values, as the command line gave them
    resumed = run(load_config(None, overrides, input=[str(src)], db=str(killed_db)), progress="off")
    assert resumed.attempt == 2 and resumed.shards_skipped == len(partial["shards"])

    clean_db = tmp_path / "clean.duckdb"
    clean = run(load_config(None, input=[str(src)], db=str(clean_db), shard_size=shard_size, stages=STAGES), progress="off")
    assert clean.run_id == resumed.run_id
    assert snapshot(killed_db) == snapshot(clean_db)
    assert resumed.rows_in == len(alpaca_rows) * 2 + 2 == resumed.kept + resumed.dropped + resumed.quarantined


def test_zero_config_quick_start_from_the_command_line(tmp_path, alpaca_rows):
    src = seeds(tmp_path, alpaca_rows[:100])
    db = tmp_path / "quick.duckdb"
    out = subprocess.run([*curate_cmd(), "run", "--input", str(src), "--db", str(db), "--progress", "off"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "102 rows in = " in out.stdout and "+ 2 quarantined" in out.stdout
    listed = subprocess.run([*curate_cmd(), "runs", "--db", str(db), "--format", "csv"], capture_output=True, text=True)
    assert listed.returncode == 0 and ",finished,1,102," in listed.stdout


def test_sql_on_a_database_held_by_a_writer_says_so(tmp_path):
    db = tmp_path / "busy.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from curate.storage.store import Store; import time; s = Store({str(db)!r}); print('open', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        out = subprocess.run([*curate_cmd(), "sql", "SELECT count(*) FROM samples", "--db", str(db)], capture_output=True, text=True)
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert f"open for writing by another process (process {holder.pid})" in out.stderr
    finally:
        holder.kill()
        holder.wait()
    out = subprocess.run([*curate_cmd(), "sql", "SELECT count(*) AS n FROM samples", "--db", str(db), "-f", "csv"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.splitlines() == ["n", "0"]


def test_cli_errors_are_one_line(tmp_path):
    cases = [
        (["run", "--input", str(tmp_path / "nope.jsonl"), "--db", str(tmp_path / "x.duckdb")], "input not found"),
        (["run", "--set", "colour=blue", "--db", str(tmp_path / "x.duckdb")], "colour: unknown key"),
        (["sql", "SELECT 1", "--db", str(tmp_path / "missing.duckdb")], "database not found"),
        (["export", "--db", str(tmp_path / "missing.duckdb"), "--out", str(tmp_path / "o")], "database not found"),
    ]
    for argv, message in cases:
        out = subprocess.run([*curate_cmd(), *argv], capture_output=True, text=True)
        assert out.returncode == 2, out
        assert out.stderr.startswith("error: ") and message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def _ray_workers_of(driver: int) -> tuple[list[int], list[int]]:
    """Ray task workers of a driver (children of its raylet): those running one of our stages
    now, and those idle between two of them. Ray's agents and bookkeeping actors are left alone."""
    import psutil

    busy, idle = [], []
    for child in psutil.Process(driver).children(recursive=True):
        try:
            name = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "ReadShard" in name or "MapBatches" in name or "MapWorker" in name:
            busy.append(child.pid)
        elif "IDLE" in name or "default_worker" in name:
            idle.append(child.pid)
    return busy, idle


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing(ray_local, tmp_path, alpaca_rows):
    """SIGKILL one Ray worker mid-stream: Ray retries its task, or the run fails and the same
    command resumes it; either way the tables equal an uninterrupted run's."""
    src = seeds(tmp_path, alpaca_rows, copies=2)
    shard_size = 40
    settings = ["--input", str(src), "--set", f"shard_size={shard_size}",
                "--set", "stages=[{filters: {min_response_words: 5}}, {exact_dedup: {on: instruction}}, {near_dedup: {threshold: 0.8}}]"]
    db = tmp_path / "worker.duckdb"

    def kill_a_worker(driver: int) -> list[int]:
        for _ in range(50):  # catch one while it runs a task, if we can
            busy, idle = _ray_workers_of(driver)
            if busy:
                break
            time.sleep(0.1)
        workers = busy or idle
        if workers:
            os.kill(workers[0], signal.SIGKILL)
        return workers[:1]

    returncode, killed = run_killing_at_first_commit(
        [*curate_cmd(), "run", "--db", str(db), "--progress", "lines", *settings], kill_a_worker)
    assert killed, "no Ray worker was found to kill"
    if returncode != 0:  # the same command again
        again = subprocess.run([*curate_cmd(), "run", "--db", str(db), "--progress", "off", *settings],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
    clean_db = tmp_path / "clean.duckdb"
    run(load_config(None, input=[str(src)], db=str(clean_db), shard_size=shard_size, stages=STAGES), progress="off")
    assert snapshot(db) == snapshot(clean_db)


def test_a_run_whose_process_died_unrecorded_shows_stale_and_the_next_start_marks_it_interrupted(tmp_path):
    """A process that registered a run and was killed with SIGKILL (nothing can record that):
    `curate runs` shows the run as `interrupted (stale)`, and the next start writes it so."""
    db = tmp_path / "stale.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "from curate.storage.store import Store; import time; s = Store(%r); "
                               "s.begin_run('r1', 'dead', {}, []); s.close(); print('running', flush=True); "
                               "time.sleep(60)" % str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "running"
    finally:
        holder.kill()
        holder.wait()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT status, pid FROM runs").fetchall() == [("running", holder.pid)]
    con.close()
    listed = subprocess.run([*curate_cmd(), "runs", "--db", str(db), "--format", "csv"], capture_output=True, text=True)
    assert listed.returncode == 0 and ",interrupted (stale),1," in listed.stdout, listed.stdout + listed.stderr

    from curate.storage.store import Store

    with Store(str(db)) as store:
        assert store.begin_run("r2", "next", {}, []) == 1
        runs = dict(store.con.execute("SELECT run_id, status || ': ' || error FROM runs WHERE run_id = 'r1'").fetchall())
        assert store.stale_runs() == []  # r2 is this process's own run
    assert runs["r1"].startswith(f"interrupted: interrupted: process {holder.pid} on ") and "stale" in runs["r1"]


def test_sigterm_mid_phase_marks_the_run_interrupted_and_the_resume_counts_the_shards_it_streamed(ray_local, tmp_path):
    """A two-phase run (exact dedup is a barrier) on 40 rows in 8 shards, sent SIGTERM during
    phase 1: `interrupted` by SIGTERM in the database; the resume streams the phase-1 shards left
    and says so per phase, not `0 of 8` from phase 0's count alone."""
    from conftest import run_killing_at

    rows = [{"instruction": f"Task {i}: describe item {i} in a few words.",
             "output": " ".join(f"word{j}" for j in range(6 + i % 6))} for i in range(40)]
    src = write_jsonl(tmp_path / "seeds.jsonl", rows)
    db = tmp_path / "term.duckdb"
    stages = [{"filters": {"min_response_words": 3}}, {"exact_dedup": {"text": "instruction"}},
              {"filters": {"min_response_words": 9}}]
    cmd = [*curate_cmd(), "run", "--db", str(db), "--progress", "lines", "--input", str(src),
           "--set", "shard_size=5", "--set", f"stages={json.dumps(stages)}"]

    def term(pid):
        os.kill(pid, signal.SIGTERM)  # the driver alone, as `kill PID` sends it
        return [pid]

    code, _, err = run_killing_at(cmd, lambda line: line.startswith("committed shard") and "(phase 1)" in line, term)
    con = duckdb.connect(str(db), read_only=True)
    (status, error), = con.execute("SELECT status, error FROM runs").fetchall()
    shards = dict(con.execute("SELECT phase, count(*) FROM shards GROUP BY phase").fetchall())
    con.close()
    assert (status, error) == ("interrupted", "interrupted by SIGTERM (kill, timeout or a scheduler)"), (code, err[-3000:])
    assert "interrupted: rerun the same command to resume" in err
    done_before = shards.get(1, 0)
    assert shards[0] == 8 and 1 <= done_before < 8, f"the SIGTERM must land inside phase 1: {shards}"

    resumed = run(load_config(None, input=[str(src)], db=str(db), shard_size=5, stages=stages), progress="off")
    assert resumed.attempt == 2 and resumed.shards_skipped == 8
    assert resumed.phase_shards == [(0, 8), (8 - done_before, done_before)]
    assert resumed.shards_processed == 8 - done_before
    assert (f"phase 0: 0 of 8 shards processed (8 committed earlier); "
            f"phase 1: {8 - done_before} of 8 processed ({done_before} committed earlier)") in resumed.summary()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT status, error FROM runs").fetchall() == [("finished", None)]
    con.close()
