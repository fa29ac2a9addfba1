"""Scores, vectors and verdicts that stages attach to rows land in their tables, once per sample."""

import pyarrow as pa

from curate.storage import schema as S
from curate.pipeline.phases import Step
from curate.storage.store import Store
from checks import shard_rows


def test_scores_vectors_and_verdicts_land_once_per_sample(tmp_path):
    ids = ["a", "b", "a", "c"]  # "a" twice: stored once, the repeat is a store duplicate
    statuses = [S.KEPT, S.DROPPED, S.KEPT, S.QUARANTINED]
    t = shard_rows(ids, statuses)
    t = t.append_column(S.SCORE_PREFIX + "ifd", pa.array([0.5, 0.9, 0.5, None], pa.float64()))
    t = t.append_column(S.VEC_PREFIX + "embed", pa.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], None], pa.list_(pa.float32())))
    t = t.append_column(S.VECMODEL_PREFIX + "embed", pa.array(["m"] * 4))
    t = S.add_verdicts(t, [[{"verifier": "code", "passed": True, "strength": "io", "detail": ""}],
                           [{"verifier": "code", "passed": False, "strength": "assert", "detail": "assertion"}], [], []])
    t = S.add_verdicts(t, [[{"verifier": "math", "passed": True, "strength": "exact", "detail": "1"}], [], [], []])
    with Store(str(tmp_path / "x.duckdb")) as store:
        store.commit_shard("r", "s0", "t.jsonl", 4, t, [Step(0, "verify", "stream"), Step(1, "store", "store")])
        scores = store.con.execute("SELECT id, name, value FROM scores ORDER BY id").fetchall()
        assert scores == [("a", "ifd", 0.5), ("b", "ifd", 0.9)]
        vecs = store.con.execute("SELECT name, id, model, vec FROM vectors").fetchall()
        assert vecs == [("embed", "a", "m", [1.0, 0.0])]  # kept rows only
        verdicts = store.con.execute("SELECT id, verifier, passed, strength FROM verdicts ORDER BY id, verifier").fetchall()
        assert verdicts == [("a", "code", True, "io"), ("a", "math", True, "exact"), ("b", "code", False, "assert")]


def test_selection_stores_clusters(tmp_path):
    with Store(str(tmp_path / "x.duckdb")) as store:
        store.write_selection("r", "div", "kmeans", "{}", 3, [("a", 0.1, 4), ("b", 0.2, 7)], 0.0)
        store.write_selection("r", "rnd", "random", "{}", 3, [("c", None)], 0.0)
        rows = store.con.execute("SELECT name, id, rank, cluster FROM selections ORDER BY name, rank").fetchall()
        assert rows == [("div", "a", 1, 4), ("div", "b", 2, 7), ("rnd", "c", 1, None)]


def _shard(shard: str, ids: list[str], rows: list[int], source: str) -> pa.Table:
    t = shard_rows(ids, [S.KEPT] * len(ids))
    t = t.set_column(t.column_names.index(S.SHARD), S.SHARD, pa.array([shard] * len(ids)))
    t = t.set_column(t.column_names.index(S.ROW), S.ROW, pa.array(rows, pa.int64()))
    t = t.set_column(t.column_names.index("source"), "source", pa.array([source] * len(ids)))
    return t.append_column("_key:exact_dedup", pa.array([i.encode() for i in ids], pa.binary()))


def test_which_copy_of_a_repeated_sample_survives_follows_input_order_not_commit_order(tmp_path):
    """The same sample in two shards: whichever shard commits first, the sample sits at its
    earliest position (shard, row) with that copy's source, the later copy is the `store` drop,
    and its dedup key sits at the earliest position too (global steps order by it)."""
    steps = [Step(0, "ingest", "stream"), Step(1, "store", "store"), Step(2, "exact_dedup", "global")]
    first = _shard("s000-00000", ["x", "y"], [7, 8], "a.jsonl")  # x at (s000-00000, 7): the earliest copy
    second = _shard("s000-00001", ["z", "x"], [0, 1], "b.jsonl")
    tables = {}
    for order in ((first, second), (second, first)):
        db = str(tmp_path / f"{len(tables)}.duckdb")
        with Store(db) as store:
            for t in order:
                store.commit_shard("r", t[S.SHARD][0].as_py(), "p", 2, t, steps)
            tables[len(tables)] = {
                "samples": store.con.execute('SELECT id, shard, "row", source, kept FROM samples ORDER BY id').fetchall(),
                "drops": store.con.execute('SELECT stage, id, shard, source, "row" FROM drops').fetchall(),
                "keys": store.con.execute('SELECT id, shard, "row" FROM row_keys ORDER BY id').fetchall(),
                "store": store.con.execute("SELECT sum(dropped) FROM stage_totals WHERE stage = 'store'").fetchall(),
            }
    assert tables[0] == tables[1]
    assert ("x", "s000-00000", 7, "a.jsonl", True) in tables[0]["samples"]
    assert tables[0]["drops"] == [("store", "x", "s000-00001", "b.jsonl", 1)] and tables[0]["store"] == [(1,)]
    assert ("x", "s000-00000", 7) in tables[0]["keys"]
