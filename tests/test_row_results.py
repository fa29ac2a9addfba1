"""Scores, vectors and verdicts that stages attach to rows land in their tables, once per sample."""

import pyarrow as pa

from curate.storage import schema as S
from curate.pipeline.phases import Step
from curate.storage.store import Store


def _rows(ids, statuses, **extra):
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


def test_scores_vectors_and_verdicts_land_once_per_sample(tmp_path):
    ids = ["a", "b", "a", "c"]  # "a" twice: stored once, the repeat is a store duplicate
    statuses = [S.KEPT, S.DROPPED, S.KEPT, S.QUARANTINED]
    t = _rows(ids, statuses)
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
