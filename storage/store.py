"""The DuckDB store: tables, views, and atomic per-shard commits.

DuckDB allows one writer process. The runner's driver is that writer; Ray workers only produce
Arrow. Every shard lands in one transaction together with its completion marker, so a run killed
at any point resumes at the first uncommitted shard and never writes a row twice.
"""

from __future__ import annotations

import json
import os
import re
import socket
from contextlib import contextmanager, suppress
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from curate.errors import CurateError
from curate.storage import schema as S

DDL = f"""
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    config JSON,
    inputs JSON,
    status VARCHAR,            -- running | finished | failed | interrupted
    attempts INTEGER,
    started_at TIMESTAMP,
    last_attempt_at TIMESTAMP,
    finished_at TIMESTAMP
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS error VARCHAR;  -- why the last attempt failed
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;    -- the process of the last attempt
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;   -- and its machine (socket.gethostname())
CREATE TABLE IF NOT EXISTS samples (
    run_id VARCHAR NOT NULL,
    {S.sample_columns_ddl()},
    kept BOOLEAN NOT NULL,      -- false: every occurrence of this sample was dropped
    shard VARCHAR,
    PRIMARY KEY (run_id, id)
);
ALTER TABLE samples ADD COLUMN IF NOT EXISTS "row" BIGINT;  -- position in its source file (a generated row: its first parent's)
-- Per turn, the OpenAI tool fields (tool_calls, tool_call_id, name, function_call) as a JSON list
-- (null items for turns without); NULL when no turn has any. Added to databases made before.
ALTER TABLE samples ADD COLUMN IF NOT EXISTS tool_fields VARCHAR;
CREATE TABLE IF NOT EXISTS drops (
    run_id VARCHAR, stage VARCHAR, id VARCHAR, reason VARCHAR,
    shard VARCHAR, source VARCHAR, "row" BIGINT
);
-- The reason's kind and the value it names (`repeated_ngram_ratio>0.3 (0.305)`: kind
-- repeated_ngram_ratio, value 0.305), derived from the reason as drops are inserted (DROP_KIND).
ALTER TABLE drops ADD COLUMN IF NOT EXISTS kind VARCHAR;
ALTER TABLE drops ADD COLUMN IF NOT EXISTS value DOUBLE;
CREATE TABLE IF NOT EXISTS quarantine (
    run_id VARCHAR, stage VARCHAR, source VARCHAR, "row" BIGINT,
    raw VARCHAR, error VARCHAR, shard VARCHAR
);
CREATE TABLE IF NOT EXISTS shards (         -- commit markers: one per (run, phase, shard)
    run_id VARCHAR, shard VARCHAR, path VARCHAR, rows_in BIGINT, committed_at TIMESTAMP,
    phase INTEGER DEFAULT 0,    -- 0: read from the input; k > 0: the survivors of phase k - 1
    PRIMARY KEY (run_id, phase, shard)
);
CREATE TABLE IF NOT EXISTS stage_stats (
    run_id VARCHAR, shard VARCHAR, position INTEGER, stage VARCHAR,
    rows_in BIGINT, kept BIGINT, dropped BIGINT, quarantined BIGINT,
    expanded BIGINT,            -- input rows a generator replaced by new rows (stored, not kept)
    generated BIGINT,           -- new rows a generator made
    seconds DOUBLE
);
CREATE TABLE IF NOT EXISTS row_keys (       -- per-row keys of global stages (dedup hashes, MinHash signatures)
    run_id VARCHAR, stage VARCHAR, id VARCHAR, shard VARCHAR, "row" BIGINT, key BLOB
);
CREATE TABLE IF NOT EXISTS global_steps (
    run_id VARCHAR, stage VARCHAR, dropped BIGINT, seconds DOUBLE, done_at TIMESTAMP,
    PRIMARY KEY (run_id, stage)
);
CREATE TABLE IF NOT EXISTS selections (
    run_id VARCHAR, name VARCHAR, id VARCHAR, rank INTEGER, score DOUBLE,
    cluster INTEGER             -- the cluster a diversity selector drew the row from
);
ALTER TABLE selections ADD COLUMN IF NOT EXISTS cluster INTEGER;
-- Per-row results of stages (StageResult's scores, vectors and verdicts; stages/results.py).
CREATE TABLE IF NOT EXISTS scores (
    run_id VARCHAR, id VARCHAR, name VARCHAR, value DOUBLE
);
CREATE TABLE IF NOT EXISTS vectors (
    run_id VARCHAR, name VARCHAR, id VARCHAR, model VARCHAR, vec FLOAT[]
);
CREATE TABLE IF NOT EXISTS verdicts (
    run_id VARCHAR, id VARCHAR, verifier VARCHAR, passed BOOLEAN,
    strength VARCHAR,           -- how far the verdict can be trusted, e.g. io (unforgeable) or assert
    detail VARCHAR
);
CREATE TABLE IF NOT EXISTS selection_info (
    run_id VARCHAR, name VARCHAR, selector VARCHAR, params JSON,
    pool BIGINT, rows BIGINT, seconds DOUBLE, created_at TIMESTAMP,
    PRIMARY KEY (run_id, name)
);
-- Coverage (selectors/coverage.py): cosine distance from a pool row to its nearest selected row,
-- mean and 90th percentile over `coverage_rows` pool rows (all, or a sample), in the vectors named
-- `coverage_vectors`; the same for random draws of the same size (mean of `random_draws` draws).
-- NULL where the run has no vectors. Added to databases made before coverage was measured.
ALTER TABLE selection_info ADD COLUMN IF NOT EXISTS coverage_vectors VARCHAR;
ALTER TABLE selection_info ADD COLUMN IF NOT EXISTS coverage_rows BIGINT;
ALTER TABLE selection_info ADD COLUMN IF NOT EXISTS coverage_mean DOUBLE;
ALTER TABLE selection_info ADD COLUMN IF NOT EXISTS coverage_p90 DOUBLE;
ALTER TABLE selection_info ADD COLUMN IF NOT EXISTS random_coverage_mean DOUBLE;
ALTER TABLE selection_info ADD COLUMN IF NOT EXISTS random_coverage_p90 DOUBLE;
ALTER TABLE selection_info ADD COLUMN IF NOT EXISTS random_draws INTEGER;
-- Each vLLM engine a run attempt started: how long it took to load and how busy it was.
CREATE TABLE IF NOT EXISTS llm_engines (
    run_id VARCHAR, attempt INTEGER, model VARCHAR,
    load_seconds DOUBLE,        -- engine start, imports included
    ready_at TIMESTAMP, first_request_at TIMESTAMP, last_output_at TIMESTAMP, stream_end_at TIMESTAMP,
    calls BIGINT, requests BIGINT, prompt_tokens BIGINT, completion_tokens BIGINT,
    steps BIGINT, busy_seconds DOUBLE,  -- time inside engine steps
    peak_in_flight BIGINT       -- most requests generating at once, over all stages
);
-- The kept samples of the latest finished run (of the latest run while none has finished): an
-- interrupted run's rows have not all been through every stage.
CREATE OR REPLACE VIEW curated AS
    SELECT * EXCLUDE (kept) FROM samples
    WHERE kept AND run_id = (SELECT run_id FROM runs ORDER BY status = 'finished' DESC, last_attempt_at DESC LIMIT 1);
CREATE OR REPLACE VIEW curated_all AS
    SELECT * EXCLUDE (kept) FROM samples WHERE kept;
-- Skills that Instruct-SkillMix extracted from seeds, with their definitions.
CREATE OR REPLACE VIEW skills AS
    SELECT run_id, skill->>'name' AS name, skill->>'definition' AS definition, id AS extracted_from
    FROM (SELECT run_id, id, unnest(CAST(json_extract(meta, '$.skills_extracted') AS JSON[])) AS skill
          FROM samples WHERE meta LIKE '%"skills_extracted"%');
-- Checklists of the checklist judges (stages/judge/checklist.py: TICK questions, DeCRIM
-- constraints): one row per item of each prompt's list, and how the responses judged against it
-- answered (yes, no, unparseable: counts over responses and refinements).
CREATE OR REPLACE VIEW checklists AS
    WITH items AS (
        SELECT run_id, verifier, detail->>'prompt_id' AS prompt_id, CAST(detail->>'item' AS INTEGER) AS item,
               detail->>'question' AS question, passed, strength
        FROM verdicts WHERE verifier IN ('tick', 'decrim') AND detail->>'kind' = 'item')
    SELECT run_id, verifier, prompt_id, item, any_value(question) AS question,
           count(*) FILTER (passed) AS yes, count(*) FILTER (NOT passed) AS no,
           count(*) FILTER (passed IS NULL) AS unparseable
    FROM items GROUP BY run_id, verifier, prompt_id, item ORDER BY run_id, verifier, prompt_id, item;
CREATE OR REPLACE VIEW stage_totals AS
    SELECT run_id, position, stage, sum(rows_in)::BIGINT AS rows_in, sum(kept)::BIGINT AS kept,
           sum(dropped)::BIGINT AS dropped, sum(quarantined)::BIGINT AS quarantined,
           sum(expanded)::BIGINT AS expanded, sum(generated)::BIGINT AS generated, sum(seconds) AS seconds
    FROM stage_stats GROUP BY ALL ORDER BY run_id, position;
CREATE OR REPLACE VIEW run_totals AS
    SELECT r.run_id, r.name, r.status, r.attempts, r.started_at, r.finished_at, r.error,
        coalesce((SELECT sum(rows_in) FROM shards s WHERE s.run_id = r.run_id AND s.phase = 0), 0)::BIGINT AS rows_in,
        coalesce((SELECT count(*) FROM samples s WHERE s.run_id = r.run_id AND s.kept), 0) AS kept,
        coalesce((SELECT count(*) FROM drops d WHERE d.run_id = r.run_id), 0) AS dropped,
        coalesce((SELECT count(*) FROM quarantine q WHERE q.run_id = r.run_id), 0) AS quarantined,
        coalesce((SELECT sum(expanded) FROM stage_stats t WHERE t.run_id = r.run_id), 0)::BIGINT AS expanded,
        coalesce((SELECT sum(generated) FROM stage_stats t WHERE t.run_id = r.run_id), 0)::BIGINT AS generated
    FROM runs r ORDER BY r.started_at;
"""


COVERAGE_COLUMNS = ("coverage_vectors", "coverage_rows", "coverage_mean", "coverage_p90",
                    "random_coverage_mean", "random_coverage_p90", "random_draws")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; an id out of range
        return False
    except PermissionError:
        return True  # someone else's
    return True


def connect(path: str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file, turning the single-writer lock conflict into a clear error."""
    if read_only and not os.path.exists(path):
        raise CurateError(f"database not found: {path}")
    try:
        return duckdb.connect(path, read_only=read_only)
    except duckdb.IOException as e:
        msg = str(e)
        if "lock" in msg.lower():
            pid = re.search(r"PID (\d+)", msg)
            holder = f" (process {pid.group(1)})" if pid else ""
            raise CurateError(
                f"{path} is open for writing by another process{holder}, probably a running "
                "`curate run`; DuckDB allows one writer. Wait for it to finish, or query a copy of the file."
            ) from None
        raise CurateError(f"cannot open {path}: {msg}") from None


class Store:
    def __init__(self, path: str, read_only: bool = False):
        self.path = path
        if not read_only:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.con = connect(path, read_only=read_only)
        if not read_only:
            _migrate_shards(self.con)
            _migrate_drops(self.con)
            self.con.execute(DDL)
            self.con.execute("SET checkpoint_threshold = '1GB'")

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def transaction(self):
        """BEGIN … COMMIT, or ROLLBACK on any error: all or nothing lands."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ runs

    def begin_run(self, run_id: str, name: str | None, config: dict, inputs: list[dict]) -> int:
        """Register a run, or an attempt at finishing one; returns the attempt number. Runs left
        `running` by a process that is gone are marked interrupted first (`mark_stale_runs`)."""
        self.mark_stale_runs()
        now, pid, host = _now(), os.getpid(), socket.gethostname()
        row = self.con.execute("SELECT attempts FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            self.con.execute(
                "INSERT INTO runs (run_id, name, config, inputs, status, attempts, started_at, last_attempt_at, pid, host) "
                "VALUES (?, ?, ?, ?, 'running', 1, ?, ?, ?, ?)",
                [run_id, name, json.dumps(config), json.dumps(inputs), now, now, pid, host],
            )
            return 1
        self.con.execute(
            "UPDATE runs SET attempts = attempts + 1, status = 'running', finished_at = NULL, error = NULL, "
            "last_attempt_at = ?, config = ?, pid = ?, host = ? WHERE run_id = ?",
            [now, json.dumps(config), pid, host, run_id],
        )
        return row[0] + 1

    def end_run(self, run_id: str, status: str, error: str | None = None) -> None:
        self.con.execute("UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE run_id = ?",
                         [status, _now(), error, run_id])

    def mark_interrupted(self, run_id: str, why: str) -> None:
        """`interrupted` with `why`, if the run is still `running`, on a connection of its own: a
        signal handler calls this, maybe inside a shard's transaction, which may then roll back
        without taking the status with it."""
        con = self.con.cursor()
        try:
            con.execute("UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? "
                        "WHERE run_id = ? AND status = 'running'", [_now(), why, run_id])
        finally:
            con.close()

    def stale_runs(self) -> list[tuple[str, int | None, str | None]]:
        """(run_id, pid, host) of the runs marked `running` whose process is gone: its pid is not
        alive on this machine, or no pid was recorded (a database older than the column). A run
        recorded on another machine is left alone (its process cannot be checked from here)."""
        try:
            rows = self.con.execute("SELECT run_id, pid, host FROM runs WHERE status = 'running'").fetchall()
        except duckdb.Error:  # opened read-only, older than the pid column: nothing to tell
            return []
        here = socket.gethostname()
        return [(r, pid, host) for r, pid, host in rows
                if pid is None or (host == here and pid != os.getpid() and not pid_alive(pid))]

    def mark_stale_runs(self) -> list[str]:
        """Mark `interrupted` the runs whose process ended without saying so (SIGKILL, a crash, the
        machine stopped); returns their ids."""
        stale = self.stale_runs()
        for run_id, pid, host in stale:
            who = f"process {pid} on {host}" if pid is not None else "its process"
            self.con.execute("UPDATE runs SET status = 'interrupted', error = ? WHERE run_id = ? AND status = 'running'",
                             [f"interrupted: {who} ended without recording it (killed, crashed or its machine "
                              f"stopped); stale, found on a later start", run_id])
        return [r for r, _, _ in stale]

    def record_engines(self, run_id: str, attempt: int, stats: list[dict], stream_end_at: float) -> None:
        def ts(seconds):
            return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)

        for st in stats:
            self.con.execute(
                "INSERT INTO llm_engines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, attempt, st["model"], st["load_seconds"], ts(st["ready_at"]), ts(st["first_request_at"]),
                 ts(st["last_output_at"]), ts(stream_end_at), st["calls"], st["requests"], st["prompt_tokens"],
                 st["completion_tokens"], st["steps"], st["busy_seconds"], st["peak_in_flight"]])

    def committed_shards(self, run_id: str, phase: int = 0) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT shard FROM shards WHERE run_id = ? AND phase = ?",
                                               [run_id, phase]).fetchall()}

    def write_handoff(self, run_id: str, files: dict[str, str]) -> dict[str, int]:
        """The kept rows of each shard → its file in `files` ({shard: path}), the next phase's
        input; returns {shard: rows}; a shard with no kept row gets no file (an old one is
        removed). Each file is written under a temporary name and renamed, so a crash never
        leaves half a file."""
        counts = dict(self.con.execute(
            "SELECT shard, count(*) FROM samples WHERE run_id = ? AND kept GROUP BY shard", [run_id]).fetchall())
        cols = ", ".join(f'"{c}"' for c in [*S.SAMPLE_COLUMNS, "row"])
        for shard, path in files.items():
            if not counts.get(shard):
                with suppress(FileNotFoundError):
                    os.remove(path)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            self.con.execute(f"""COPY (SELECT {cols} FROM samples WHERE run_id = $run AND shard = $shard AND kept
                                       ORDER BY "row", id) TO '{_sql_str(tmp)}' (FORMAT parquet)""",
                             {"run": run_id, "shard": shard})
            os.replace(tmp, path)
        return {shard: counts[shard] for shard in files if counts.get(shard)}

    def totals(self, run_id: str) -> dict:
        cols = ["rows_in", "kept", "dropped", "quarantined", "expanded", "generated"]
        row = self.con.execute(f"SELECT {', '.join(cols)} FROM run_totals WHERE run_id = ?", [run_id]).fetchone()
        return dict(zip(cols, row)) if row else dict.fromkeys(cols, 0)

    def quarantine_reasons(self, run_id: str, limit: int = 3) -> list[tuple[str, str, int]]:
        """The most frequent (stage, error, rows) among the run's quarantined rows."""
        return [tuple(r) for r in self.con.execute(
            "SELECT stage, error, count(*) AS n FROM quarantine WHERE run_id = ? GROUP BY ALL ORDER BY n DESC, error LIMIT ?",
            [run_id, limit]).fetchall()]

    def drop_reasons(self, run_id: str, limit: int = 5) -> list[tuple[str, str, int]]:
        """The most frequent (stage, kind, rows) among the run's dropped rows; kind is the reason's
        kind (`duplicate`, `repeated_ngram_ratio`), or the reason itself where it has none."""
        return [tuple(r) for r in self.con.execute(
            "SELECT stage, coalesce(kind, reason) AS kind, count(*) AS n FROM drops WHERE run_id = ? "
            "GROUP BY ALL ORDER BY n DESC, stage, kind LIMIT ?", [run_id, limit]).fetchall()]

    def latest_run(self, finished: bool = False) -> str | None:
        """The run most recently started or resumed; with `finished`, the latest that finished."""
        where = "WHERE status = 'finished'" if finished else ""
        row = self.con.execute(f"SELECT run_id FROM runs {where} ORDER BY last_attempt_at DESC LIMIT 1").fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ selections

    def selection_params(self, run_id: str, name: str) -> tuple[str, str] | None:
        row = self.con.execute(
            "SELECT selector, params::VARCHAR FROM selection_info WHERE run_id = ? AND name = ?", [run_id, name]
        ).fetchone()
        return (row[0], row[1]) if row else None

    def write_selection(self, run_id: str, name: str, selector: str, params: str, pool: int,
                        picked: list[tuple], seconds: float, coverage: dict | None = None) -> None:
        """Replace a named selection of a run in one transaction. `picked` holds (id, score) or
        (id, score, cluster) tuples, best first; `coverage` the figures of selectors/coverage.py
        (keys named as the COVERAGE_COLUMNS of selection_info), or None."""
        table = pa.table({
            "id": pa.array([p[0] for p in picked], pa.string()),
            "rank": pa.array(range(1, len(picked) + 1), pa.int32()),
            "score": pa.array([p[1] for p in picked], pa.float64()),
            "cluster": pa.array([p[2] if len(p) > 2 else None for p in picked], pa.int32()),
        })
        with self.transaction() as con:
            con.execute("DELETE FROM selections WHERE run_id = ? AND name = ?", [run_id, name])
            con.execute("DELETE FROM selection_info WHERE run_id = ? AND name = ?", [run_id, name])
            con.register("_picked", table)
            con.execute("INSERT INTO selections SELECT ?, ?, id, rank, score, cluster FROM _picked", [run_id, name])
            con.unregister("_picked")
            coverage = coverage or {}
            con.execute(f"INSERT INTO selection_info (run_id, name, selector, params, pool, rows, seconds, created_at, "
                        f"{', '.join(COVERAGE_COLUMNS)}) VALUES ({', '.join(['?'] * (8 + len(COVERAGE_COLUMNS)))})",
                        [run_id, name, selector, params, pool, len(picked), seconds, _now(),
                         *(coverage.get(c) for c in COVERAGE_COLUMNS)])

    def selection_coverage_missing(self, run_id: str, name: str) -> bool:
        row = self.con.execute("SELECT coverage_mean IS NULL FROM selection_info WHERE run_id = ? AND name = ?",
                               [run_id, name]).fetchone()
        return bool(row and row[0])

    def set_selection_coverage(self, run_id: str, name: str, coverage: dict) -> None:
        """Add coverage figures to a selection written without them (by an earlier version)."""
        assignments = ", ".join(f"{c} = ?" for c in COVERAGE_COLUMNS)
        self.con.execute(f"UPDATE selection_info SET {assignments} WHERE run_id = ? AND name = ?",
                         [*(coverage.get(c) for c in COVERAGE_COLUMNS), run_id, name])

    # ------------------------------------------------------------------ shard commits

    def commit_shard(self, run_id: str, shard: str, path: str, rows_in: int, table: pa.Table, steps: list,
                     phase: int = 0, declared=None) -> list[tuple]:
        """Land one finished shard of a phase (all its rows, whatever their status) in one
        transaction, with its (run, phase, shard) marker.

        `steps` is the phase's part of the funnel (pipeline/phases.py `Step`s). Returns the
        stage_stats rows it recorded (none if the shard was already committed). Identical
        samples (same id) kept twice in a run are stored once; the repeat becomes a drop at the
        `store` step, so counts still add up. In a later phase, rows with a null `_born` are
        survivors of the phase before, already in `samples`: a drop there marks them not kept.

        Stage results ride on the rows as columns (stages/results.py); they land in `scores`,
        `vectors`, `verdicts` and `row_keys`. `declared`: what the phase's stages declare they
        store (pipeline/dag.py `declared_results`); a result column outside it is an error. None:
        every result column the batch holds (each was checked against its stage's declaration
        as the stage returned it, in pipeline/dag.py `apply_stage`).
        """
        import pyarrow.compute as pc

        if "tool_fields" not in table.column_names:  # a batch built without it (by hand, or by an older stage)
            table = table.append_column("tool_fields", pa.nulls(table.num_rows, pa.string()))
        with self.transaction() as con:
            if con.execute("SELECT 1 FROM shards WHERE run_id = ? AND phase = ? AND shard = ?",
                           [run_id, phase, shard]).fetchone():
                return []
            con.register("_batch", table)  # an Arrow scan: no copy
            carried = self._carried_mask(run_id, table) if phase > 0 and table.num_rows else None
            con.register("_new", table if carried is None else table.filter(pc.invert(carried)))
            con.register("_carried", table.slice(0, 0) if carried is None else table.filter(carried))
            try:
                return self._insert_rows(run_id, shard, path, rows_in, steps, phase, declared)
            finally:
                for name in ("_batch", "_new", "_carried"):
                    with suppress(duckdb.Error):  # after a failed statement: keep its error, not this one
                        con.unregister(name)

    def _carried_mask(self, run_id: str, table: pa.Table) -> pa.Array:
        """Rows of a later phase that are survivors of the phase before: read from the hand-off
        (null `_born`) and already in `samples`. A stage that rewrote such a row into another
        id made a new sample, stored as one."""
        import pyarrow.compute as pc

        stored = [r[0] for r in self.con.execute(f"""
            SELECT s.id FROM samples s WHERE s.run_id = ? AND s.id IN (SELECT id FROM _batch WHERE "{S.BORN}" IS NULL)
        """, [run_id]).fetchall()]
        return pc.and_(pc.is_null(table[S.BORN]), pc.is_in(table["id"], value_set=pa.array(stored, pa.string())))

    def _insert_rows(self, run_id: str, shard: str, path: str, rows_in: int, steps: list, phase: int, declared) -> list[tuple]:
        con = self.con
        p = {"run": run_id, "shard": shard}
        cols = ", ".join(f'"{c}"' for c in S.SAMPLE_COLUMNS)
        status, row, stage, reason = (f'"{c}"' for c in (S.STATUS, S.ROW, S.STAGE, S.REASON))
        kept, dropped, quarantined, expanded = (f"'{v}'" for v in (S.KEPT, S.DROPPED, S.QUARANTINED, S.EXPANDED))
        # Survivors of the phase before that this phase dropped, expanded or quarantined.
        con.execute(f"""
            UPDATE samples SET kept = false
            WHERE run_id = $run AND kept AND id IN (SELECT id FROM _carried WHERE {status} != {kept})
        """, {"run": run_id})
        con.execute(f"""
            UPDATE samples SET meta = c.meta FROM _carried c
            WHERE samples.run_id = $run AND samples.id = c.id AND c.{status} = {kept} AND samples.meta IS DISTINCT FROM c.meta
        """, {"run": run_id})
        # New kept rows whose id was already kept in this run (earlier shard, or earlier in this
        # one), and generated rows whose id is already stored, kept or not.
        store_drops = "SELECT count(*) FROM drops WHERE run_id = $run AND stage = 'store'"
        before = con.execute(store_drops, {"run": run_id}).fetchone()[0]
        moved = self._earlier_copies_take_over(run_id, shard) if phase == 0 else 0
        _insert_drops(con, f"""
            SELECT $run, 'store', k.id, 'duplicate_of:' || k.id, $shard, k.source, k.{row}
            FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY {row}, meta) AS nth
                  FROM _new WHERE {status} = {kept}) k
            WHERE k.nth > 1 OR EXISTS (SELECT 1 FROM samples s WHERE s.run_id = $run AND s.id = k.id
                                       AND (s.kept OR k."{S.BORN}" IS NOT NULL)
                                       {'AND NOT (s.shard = $shard AND s."row" = k.' + row + ')' if moved else ''})
        """, p)
        store_dups = con.execute(store_drops, {"run": run_id}).fetchone()[0] - before
        assert moved <= store_dups
        # An input row first seen dropped (in another shard), now kept, becomes kept. A generated
        # row equal to a stored sample was a `store` drop above: reviving the sample would give it
        # the wrong lineage.
        con.execute(f"""
            UPDATE samples SET kept = true
            WHERE run_id = $run AND NOT kept AND id IN (SELECT id FROM _new WHERE {status} = {kept} AND "{S.BORN}" IS NULL)
        """, {"run": run_id})
        con.execute(f"""
            INSERT INTO samples (run_id, {cols}, kept, shard, "row")
            SELECT $run, {cols}, kept, $shard, {row}
            FROM (
                SELECT *, row_number() OVER (PARTITION BY id ORDER BY {status} = {kept} DESC, {row}, meta, to_json(parent_ids)) AS nth,
                       bool_or({status} = {kept}) OVER (PARTITION BY id) AS kept
                FROM _new WHERE {status} IN ({kept}, {dropped}, {expanded})
            ) b
            WHERE nth = 1 AND NOT EXISTS (SELECT 1 FROM samples s WHERE s.run_id = $run AND s.id = b.id)
        """, p)
        _insert_drops(con, f"""
            SELECT $run, {stage}, id, {reason}, $shard, source, {row}
            FROM _batch WHERE {status} = {dropped}
        """, p)
        con.execute(f"""
            INSERT INTO quarantine SELECT $run, {stage}, source, {row}, "{S.RAW}", {reason}, $shard
            FROM _batch WHERE {status} = {quarantined}
        """, p)
        batch_cols = {r[0] for r in con.execute("DESCRIBE _batch").fetchall()}
        results = self._results(batch_cols, declared)
        for key in (r for r in results if r.kind == "keys"):
            # One key per kept sample; identical rows have identical keys.
            con.execute(f"""
                INSERT INTO row_keys
                SELECT DISTINCT ON (id) $run, $stage, id, $shard, {row}, "{key.column}" FROM _batch b
                WHERE {status} = {kept} AND "{key.column}" IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM row_keys k WHERE k.run_id = $run AND k.stage = $stage AND k.id = b.id)
                ORDER BY id, {row}
            """, {**p, "stage": key.name})
        self._insert_row_results(results, p)
        stats = self._stage_stats(run_id, shard, rows_in, steps, store_dups, batch_cols)
        con.executemany("INSERT INTO stage_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", stats)
        con.execute("INSERT INTO shards (run_id, shard, path, rows_in, committed_at, phase) VALUES ($run, $shard, $path, $rows, $now, $phase)",
                    {**p, "path": path, "rows": rows_in, "now": _now(), "phase": phase})
        return stats

    def _earlier_copies_take_over(self, run_id: str, shard: str) -> int:
        """A sample kept from a later input position (shard, row) than a copy in this shard: the
        copy here becomes the sample (its position, source, meta) and the stored one becomes the
        `store` drop, so which copy survives follows input order, not the order shards commit.
        Keys stored for the sample move with it. Returns how many samples moved."""
        con, row, status = self.con, f'"{S.ROW}"', f'"{S.STATUS}"'
        p = {"run": run_id, "shard": shard}
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _moved AS
            SELECT s.id, s.shard AS old_shard, s."row" AS old_row, s.source AS old_source,
                   k.{row} AS new_row, k.source, k.meta, k.origin, k.parent_ids
            FROM samples s JOIN (SELECT DISTINCT ON (id) * FROM _new WHERE {status} = '{S.KEPT}' ORDER BY id, {row}, meta) k
              ON s.id = k.id
            WHERE s.run_id = $run AND s.kept AND (s.shard, s."row") > ($shard, k.{row})
        """, p)
        n = con.execute("SELECT count(*) FROM _moved").fetchone()[0]
        if n:
            _insert_drops(con, """SELECT $run, 'store', id, 'duplicate_of:' || id, old_shard, old_source, old_row
                                  FROM _moved""", {"run": run_id})
            con.execute("""UPDATE samples SET shard = $shard, "row" = m.new_row, source = m.source, meta = m.meta,
                                              origin = m.origin, parent_ids = m.parent_ids
                           FROM _moved m WHERE samples.run_id = $run AND samples.id = m.id""", p)
            con.execute("""UPDATE row_keys SET shard = $shard, "row" = m.new_row
                           FROM _moved m WHERE row_keys.run_id = $run AND row_keys.id = m.id""", p)
        con.execute("DROP TABLE _moved")
        return n

    def _stage_stats(self, run_id: str, shard: str, rows_in: int, steps: list, store_dups: int, batch_cols: set[str]) -> list[tuple]:
        """One stage_stats row per funnel step of the phase. A global stage's key half drops
        nothing: its row here holds only its stream time; its counts come with its decision."""
        con = self.con
        status, stage = f'"{S.STATUS}"', f'"{S.STAGE}"'
        gone = {r[0]: r[1:] for r in con.execute(f"""
            SELECT {stage}, count(*) FILTER ({status} = '{S.DROPPED}'), count(*) FILTER ({status} = '{S.QUARANTINED}'),
                   count(*) FILTER ({status} = '{S.EXPANDED}')
            FROM _batch WHERE {status} != '{S.KEPT}' GROUP BY 1
        """).fetchall()}
        born = dict(con.execute(f'SELECT "{S.BORN}", count(*) FROM _batch WHERE "{S.BORN}" IS NOT NULL GROUP BY 1').fetchall()) \
            if S.BORN in batch_cols else {}
        stats, alive = [], rows_in
        for step in steps:
            cost_col = f"{S.COST_PREFIX}{step.name}"
            seconds = 0.0
            if step.kind != "store" and cost_col in batch_cols:
                seconds = con.execute(f'SELECT coalesce(sum("{cost_col}"), 0) FROM _batch').fetchone()[0]
            if step.kind == "global":
                stats.append((run_id, shard, step.position, step.name, 0, 0, 0, 0, 0, 0, seconds))
                continue
            n_drop, n_quar, n_exp = (store_dups, 0, 0) if step.kind == "store" else gone.get(step.name, (0, 0, 0))
            n_gen = born.get(step.name, 0) if step.kind == "stream" else 0
            out = alive - n_drop - n_quar - n_exp + n_gen
            stats.append((run_id, shard, step.position, step.name, alive, out, n_drop, n_quar, n_exp, n_gen, seconds))
            alive = out
        return stats

    @staticmethod
    def _results(batch_cols: set[str], declared) -> list:
        """The result columns of the batch (stages/results.py names them), checked against
        `declared` when given: a result no stage of the phase declares is an error, not dropped."""
        from curate.stages.results import stored_columns

        found = stored_columns(batch_cols)
        if declared is not None:
            declared = set(declared)
            for r in found:
                if r.kind != "verdicts" and r.item not in declared:
                    raise CurateError(f"the shard holds {r.kind} {r.name!r} (column {r.column}), which no stage of "
                                      f"this phase declares (declared: {', '.join(sorted(declared)) or 'nothing'})")
        return found

    def _insert_row_results(self, results: list, p: dict) -> None:
        """Scores, vectors and verdicts that stages attached to rows, once per sample id."""
        con = self.con
        status, row = f'"{S.STATUS}"', f'"{S.ROW}"'
        # Expanded rows too: a row scored or judged by one stage and then replaced by a generator's
        # children (a revision) keeps what was said about it.
        scored = f"{status} IN ('{S.KEPT}', '{S.DROPPED}', '{S.EXPANDED}')"
        scores = [r for r in results if r.kind == "scores"]
        if scores:  # one statement for all of them: one anti-join against `scores`, however many names
            each = " UNION ALL ".join(f'SELECT id, {row} AS "row", $name{i} AS name, "{r.column}" AS value FROM _batch '
                                      f'WHERE {scored} AND "{r.column}" IS NOT NULL' for i, r in enumerate(scores))
            con.execute(f"""
                INSERT INTO scores
                SELECT DISTINCT ON (id, name) $run, id, name, value FROM ({each}) b
                WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.run_id = $run AND s.name = b.name AND s.id = b.id)
                ORDER BY id, name, "row"
            """, {"run": p["run"], **{f"name{i}": r.name for i, r in enumerate(scores)}})
        for r in (r for r in results if r.kind == "vectors"):
            model = f'"{r.model_column}"' if r.model_column else "NULL"
            con.execute(f"""
                INSERT INTO vectors
                SELECT DISTINCT ON (id) $run, $name, id, {model}, "{r.column}" FROM _batch b
                WHERE {status} = '{S.KEPT}' AND "{r.column}" IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM vectors v WHERE v.run_id = $run AND v.name = $name AND v.id = b.id)
                ORDER BY id, {row}
            """, {"run": p["run"], "name": r.name})
        for r in (r for r in results if r.kind == "verdicts"):
            con.execute(f"""
                INSERT INTO verdicts
                SELECT $run, id, v.verifier, v.passed, v.strength, v.detail
                FROM (SELECT id, unnest("{r.column}") AS v FROM (
                    SELECT DISTINCT ON (id) id, "{r.column}" FROM _batch b
                    WHERE {scored} AND "{r.column}" IS NOT NULL
                    ORDER BY id, {row})) n
                WHERE NOT EXISTS (SELECT 1 FROM verdicts d WHERE d.run_id = $run AND d.id = n.id AND d.verifier = n.v.verifier)
            """, {"run": p["run"]})

    # ------------------------------------------------------------------ global steps

    def global_step_done(self, run_id: str, stage: str) -> bool:
        return self.con.execute("SELECT 1 FROM global_steps WHERE run_id = ? AND stage = ?", [run_id, stage]).fetchone() is not None

    def keys_reader(self, run_id: str, stage: str, order: str, batch_rows: int = 65_536) -> pa.RecordBatchReader:
        """Keys of a global stage for the rows of the run still kept, in `order`."""
        order_by = {"key": 'k.key, k.shard, k."row", k.id', "position": 'k.shard, k."row", k.id'}[order]
        return self.con.cursor().sql(f"""
            SELECT k.id, k.shard, k."row", k.key FROM row_keys k
            JOIN samples s ON s.run_id = k.run_id AND s.id = k.id AND s.kept
            WHERE k.run_id = $run AND k.stage = $stage ORDER BY {order_by}
        """, params={"run": run_id, "stage": stage}).to_arrow_reader(batch_rows)

    def commit_global_step(self, run_id: str, stage: str, position: int, drops: list[tuple[str, str]], seconds: float) -> int:
        """Drop rows after the stream, with the step's completion marker, in one transaction."""
        table = pa.table({"id": pa.array([d[0] for d in drops], pa.string()),
                          "reason": pa.array([d[1] for d in drops], pa.string())})
        p = {"run": run_id, "stage": stage}
        with self.transaction() as con:
            if self.global_step_done(run_id, stage):
                return 0
            con.register("_gdrops", table)
            kept_before = con.execute("SELECT count(*) FROM samples WHERE run_id = $run AND kept", {"run": run_id}).fetchone()[0]
            _insert_drops(con, """
                SELECT $run, $stage, d.id, d.reason, s.shard, s.source, s."row"
                FROM (SELECT DISTINCT ON (id) * FROM _gdrops) d
                JOIN samples s ON s.run_id = $run AND s.id = d.id AND s.kept
            """, p)
            n = con.execute("SELECT count(*) FROM drops WHERE run_id = $run AND stage = $stage", p).fetchone()[0]
            con.execute("UPDATE samples SET kept = false WHERE run_id = $run AND kept AND id IN (SELECT id FROM _gdrops)", {"run": run_id})
            con.unregister("_gdrops")
            con.execute("INSERT INTO stage_stats VALUES ($run, '*', $pos, $stage, $rin, $kept, $n, 0, 0, 0, $secs)",
                        {**p, "pos": position, "rin": kept_before, "kept": kept_before - n, "n": n, "secs": seconds})
            con.execute("INSERT INTO global_steps VALUES ($run, $stage, $n, $secs, $now)", {**p, "n": n, "secs": seconds, "now": _now()})
            return n

    # ------------------------------------------------------------------ reading

    def sql(self, query: str, params: list | None = None) -> pa.Table:
        try:
            rel = self.con.sql(query, params=params or None)
            if rel is None:
                raise CurateError("the query returned no rows to show (curate sql reads; it does not write)")
            return rel.to_arrow_table()
        except duckdb.Error as e:
            raise CurateError(f"SQL error: {str(e).splitlines()[0]}") from None


def resolve_run_id(con: duckdb.DuckDBPyConnection, db: str, run_id: str) -> str:
    """The run `--run` names: its id, or a prefix of one id (as `curate show --id` takes a row's).
    CurateError when no run, or several, match."""
    ids = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE starts_with(run_id, ?) ORDER BY run_id",
                                     [run_id]).fetchall()] if run_id else []
    if run_id in ids:
        return run_id
    if len(ids) == 1:
        return ids[0]
    if ids:
        raise CurateError(f"--run {run_id} matches {len(ids)} runs in {db} ({', '.join(ids)}): give more of the id")
    raise CurateError(f"no run {run_id!r} in {db} (see `curate runs --db {db}`)")


def _sql_str(text: str) -> str:
    return text.replace("'", "''")


# A drop's kind and value, derived from its reason in one place, as SQL over the reason: the kind
# is the reason up to its first `:`, `<`, `>`, `=`, `(` or space, less a trailing `_of`
# (`duplicate_of:<id>` → duplicate, `language:de (0.97)` → language, `response_words<3 (1)` →
# response_words, `code_exec:timeout` → code_exec); the value is the number in parentheses that
# ends the reason (0.97, 1), else NULL.
DROP_KIND = ("CASE WHEN {r} IS NULL THEN NULL ELSE coalesce(nullif(regexp_replace("
             "regexp_extract({r}, '^[^:<>=( ]*'), '_of$', ''), ''), {r}) END")
DROP_VALUE = r"TRY_CAST(nullif(regexp_extract({r}, '\(([^()\s]+)\)\s*$', 1), '') AS DOUBLE)"
DROP_COLUMNS = ("run_id", "stage", "id", "reason", "shard", "source", "row")


def _insert_drops(con: duckdb.DuckDBPyConnection, select: str, params=None) -> None:
    """Every insert into `drops`: `select` yields DROP_COLUMNS; kind and value are derived from
    the reason (DROP_KIND, DROP_VALUE)."""
    cols = ", ".join(f'"{c}"' for c in DROP_COLUMNS)
    con.execute(f"""INSERT INTO drops ({cols}, kind, value)
                    SELECT d.*, {DROP_KIND.format(r='d.reason')}, {DROP_VALUE.format(r='d.reason')}
                    FROM ({select}) d({cols})""", params)


def drops_relation(con: duckdb.DuckDBPyConnection) -> str:
    """`drops` to read from, with `kind` and `value`: the table, or, in a database made before
    they were stored and opened read-only (so not migrated), a subquery deriving them."""
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'drops'").fetchall()}
    if "kind" in cols:
        return "drops"
    return (f"(SELECT *, {DROP_KIND.format(r='reason')} AS kind, {DROP_VALUE.format(r='reason')} AS value "
            "FROM drops)")


def has_tool_fields(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether `samples` has the `tool_fields` column (a database made before it, opened read-only, has not)."""
    return bool(con.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'samples' "
                            "AND column_name = 'tool_fields'").fetchone())


def _migrate_drops(con: duckdb.DuckDBPyConnection) -> None:
    """Databases made before drops had `kind` and `value`: add them, derived from each reason."""
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'drops'").fetchall()}
    if cols and "kind" not in cols:
        con.execute("ALTER TABLE drops ADD COLUMN kind VARCHAR")
        con.execute("ALTER TABLE drops ADD COLUMN value DOUBLE")
        con.execute(f"UPDATE drops SET kind = {DROP_KIND.format(r='reason')}, value = {DROP_VALUE.format(r='reason')}")


def _migrate_shards(con: duckdb.DuckDBPyConnection) -> None:
    """Databases made before phases keyed `shards` by (run, shard): rebuild it with `phase`."""
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'shards'").fetchall()}
    if cols and "phase" not in cols:
        con.execute("ALTER TABLE shards RENAME TO shards_before_phases")
        con.execute("""CREATE TABLE shards (run_id VARCHAR, shard VARCHAR, path VARCHAR, rows_in BIGINT,
                       committed_at TIMESTAMP, phase INTEGER DEFAULT 0, PRIMARY KEY (run_id, phase, shard))""")
        con.execute("INSERT INTO shards SELECT run_id, shard, path, rows_in, committed_at, 0 FROM shards_before_phases")
        con.execute("DROP TABLE shards_before_phases")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
