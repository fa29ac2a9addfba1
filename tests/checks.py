"""Helpers shared by tests in several folders: SQL on a run's database, the accounting every run
must satisfy, and batches shaped as a stage receives them in the stream."""

import duckdb
import pyarrow as pa

from curate.storage import schema as S


def q(db, sql, *params):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def assert_counts_add_up(db, run_id):
    (rows_in, kept, dropped, quarantined, expanded, generated), = q(
        db, "SELECT rows_in, kept, dropped, quarantined, expanded, generated FROM run_totals WHERE run_id = ?", run_id)
    assert rows_in + generated == kept + dropped + quarantined + expanded
    stages = q(db, "SELECT stage, rows_in, kept, dropped, quarantined, expanded, generated FROM stage_totals "
                   "WHERE run_id = ? ORDER BY position", run_id)
    for (_, s_in, s_kept, s_drop, s_quar, s_exp, s_gen), nxt in zip(stages, stages[1:] + [None]):
        assert s_in + s_gen == s_kept + s_drop + s_quar + s_exp
        if nxt:
            assert nxt[1] == s_kept  # what a stage keeps is what the next one reads
    assert stages[0][1] == rows_in and stages[-1][2] == kept
    assert q(db, "SELECT count(*) FROM drops WHERE run_id = ?", run_id) == [(dropped,)]
    return rows_in, kept, dropped, quarantined


def seed_batch(instructions):
    return stream_batch([[{"role": "user", "content": i}] for i in instructions])


def stream_batch(conversations: list[list[dict]]) -> pa.Table:
    """Live rows of one shard, as a stage receives them in the stream."""
    samples = [{"id": S.sample_id(m), "messages": m, "origin": "seed", "source": "t", "parent_ids": [], "meta": "{}"}
               for m in conversations]
    table = pa.table(S.sample_arrays(samples))
    n = len(samples)
    for name, col in ((S.SHARD, ["s"] * n), (S.SHARD_ROWS, [n] * n), (S.ROW, list(range(n))), (S.STATUS, [S.KEPT] * n),
                      (S.STAGE, [None] * n), (S.REASON, [None] * n), (S.WEIGHT, [1.0] * n), (S.BORN, [None] * n)):
        table = table.append_column(name, pa.array(col))
    return table


def shard_rows(ids, statuses, **extra):
    """One shard's rows as the writer receives them: `statuses` per id (dropped ones at stage
    `verify`), `extra` columns appended as given."""
    n = len(ids)
    cols = {
        "id": ids,
        "messages": [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}] for i in ids],
        "origin": ["seed"] * n, "source": ["t.jsonl"] * n, "parent_ids": [[]] * n, "meta": ["{}"] * n,
    }
    t = pa.table({k: pa.array(v, S.SAMPLE_SCHEMA.field(k).type) for k, v in cols.items()})
    for name, values in {
        S.SHARD: ["s0"] * n, S.SHARD_ROWS: [n] * n, S.ROW: list(range(n)), S.STATUS: statuses,
        S.STAGE: [None if s == S.KEPT else "verify" for s in statuses],
        S.REASON: [None if s == S.KEPT else "failed" for s in statuses], S.RAW: [None] * n,
        S.WEIGHT: [1.0] * n, S.BORN: [None] * n,
    }.items():
        t = t.append_column(name, pa.array(values, {S.SHARD_ROWS: pa.int64(), S.ROW: pa.int64(), S.WEIGHT: pa.float64()}.get(name, pa.string())))
    for name, arr in extra.items():
        t = t.append_column(name, arr)
    return t
