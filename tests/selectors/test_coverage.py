"""Coverage figures: the computation, what selection_info stores for every selection (through the
pipeline), the report's side-by-side table, and databases made before coverage was measured."""

import os

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from conftest import write_jsonl

pytest.importorskip("faiss")

pytestmark = [pytest.mark.model]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curate.selectors.coverage import coverage_distance, distance_figures, measure, nearest_similarity  # noqa: E402


def test_nearest_similarity_matches_brute_force():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(300, 24)).astype(np.float32)
    picks = rng.normal(size=(70, 24)).astype(np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    want = (unit(queries) @ unit(picks).T).max(axis=1)
    got = nearest_similarity(queries, [picks[:10], picks[10:11], picks[11:]])  # chunked as DuckDB hands them over
    assert np.allclose(got, want, atol=1e-5)
    assert np.all(nearest_similarity(queries, []) == -1)
    both = np.concatenate([queries, picks])
    distance = coverage_distance(both, np.arange(300, 370))
    assert np.allclose(distance[300:], 0, atol=1e-5) and np.allclose(distance[:300], 1 - want, atol=1e-5)
    mean, p90 = distance_figures(np.arange(11.0))
    assert (mean, p90) == (5.0, 9.0)


def _store(path, vecs):
    from curate.storage.store import Store

    store = Store(str(path))
    ids = [f"{i:05d}" for i in range(len(vecs))]
    store.con.register("_v", pa.table({"id": ids, "vec": pa.array(vecs.tolist(), pa.list_(pa.float32()))}))
    store.con.execute("INSERT INTO vectors SELECT 'r', 'embed', id, 'm', vec FROM _v")
    store.con.execute("CREATE OR REPLACE TEMP VIEW _pool AS SELECT id FROM _v")
    return store, ids


def test_measure_reads_the_store_and_compares_with_the_random_selector(tmp_path):
    from curate.selectors.random import RandomSelection

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vecs = (centres[rng.integers(0, 20, 1500)] + 0.5 * rng.normal(size=(1500, 32))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store, ids = _store(tmp_path / "m.duckdb", vecs)
    everything = measure(store.con, "r", "_pool", "embed", ids)
    assert everything["coverage_mean"] == pytest.approx(0, abs=1e-5) and everything["coverage_rows"] == 1500
    picked = [ids[i] for i in range(0, 1500, 10)]
    figures = measure(store.con, "r", "_pool", "embed", picked, draws=1)
    want = distance_figures(coverage_distance(vecs, np.arange(0, 1500, 10)))
    assert (figures["coverage_mean"], figures["coverage_p90"]) == pytest.approx(want, abs=1e-5)
    # The random figure is the random selector's draw (seed 0) of the same size.
    drawn = [int(i) for i, _ in RandomSelection(budget=150, seed=0).select(store.con, "r", "_pool", 150)]
    assert figures["random_coverage_mean"] == pytest.approx(distance_figures(coverage_distance(vecs, np.array(drawn)))[0], abs=1e-5)
    assert figures["random_draws"] == 1 and measure(store.con, "r", "_pool", "embed", picked)["random_draws"] == 3
    # On a sample of the pool: deterministic, and close to the whole pool's figure.
    sampled = measure(store.con, "r", "_pool", "embed", picked, sample_rows=400)
    assert sampled["coverage_rows"] == 400 and sampled == measure(store.con, "r", "_pool", "embed", picked, sample_rows=400)
    assert sampled["coverage_mean"] == pytest.approx(want[0], abs=0.02)
    assert measure(store.con, "r", "_pool", "nope", picked) is None  # no such vectors: nothing measured
    store.close()


def test_every_selection_stores_its_coverage_and_the_report_shows_it(ray_local, tmp_path, alpaca_rows):
    pytest.importorskip("sentence_transformers")
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run
    from curate.report import write_report

    src = write_jsonl(tmp_path / "s.jsonl", alpaca_rows[:400])
    db = str(tmp_path / "cov.duckdb")
    selectors = [{"random": {"budget": 40}},
                 {"kmeans_diversity": {"budget": 40, "k": 8, "name": "kmq"}},
                 {"facility_location": {"budget": 40, "name": "fl"}},
                 {"k_center": {"budget": 40, "name": "kc"}}]
    config = load_config(None, input=[str(src)], db=db, selectors=selectors, stages=[{"embed": {"text": "instruction"}}])
    report = run(config, progress="off")
    assert {s["name"] for s in report.selections} == {"random", "kmq", "fl", "kc"}
    con = duckdb.connect(db, read_only=True)
    info = {r[0]: r[1:] for r in con.execute("""
        SELECT name, rows, coverage_vectors, coverage_rows, coverage_mean, coverage_p90, random_coverage_mean,
               random_coverage_p90, random_draws FROM selection_info""").fetchall()}
    con.close()
    for name, (rows, vectors, measured, mean, p90, rand_mean, rand_p90, draws) in info.items():
        assert rows == 40 and vectors == "embed" and measured == report.kept and draws == 3
        assert 0 < mean <= p90 < 2 and 0 < rand_mean <= rand_p90 < 2
    # Coverage selectors beat random on the mean; k-center, which bounds the worst rows, on the 90th percentile too.
    for name in ("kmq", "fl"):
        assert info[name][3] < info[name][5] - 0.01, (name, info[name])
    assert info["kc"][3] < info["kc"][5] and info["kc"][4] < info["kc"][6], info["kc"]
    assert info["fl"][3] < info["kmq"][3] <= info["random"][3] + 0.02

    out = write_report(db, str(tmp_path / "report.html"))
    page = open(out, encoding="utf-8").read()
    section = page[page.index('id="selections"'):page.index('id="verifiers"')]
    assert "<h3>Coverage</h3>" in section and "random: mean" in section
    assert f"{info['fl'][3]:,.4g}" in section and f"{info['fl'][5]:,.4g}" in section  # the figures, side by side

    # A database written before coverage was measured: the figures are added on the next run, not recomputed picks.
    con = duckdb.connect(db)
    con.execute("UPDATE selection_info SET coverage_mean = NULL, random_coverage_mean = NULL WHERE name = 'fl'")
    con.close()
    again = run(config, progress="off")
    assert again.selections == []
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT coverage_mean, random_coverage_mean FROM selection_info WHERE name = 'fl'").fetchone() == \
        pytest.approx((info["fl"][3], info["fl"][5]))
    con.close()


def test_selections_without_vectors_and_old_databases(ray_local, tmp_path, alpaca_rows):
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run
    from curate.report import write_report
    from curate.storage.store import Store

    # An old selection_info (before the coverage columns), with a selection in it.
    db = str(tmp_path / "old.duckdb")
    con = duckdb.connect(db)
    con.execute("""CREATE TABLE selection_info (run_id VARCHAR, name VARCHAR, selector VARCHAR, params JSON,
                   pool BIGINT, rows BIGINT, seconds DOUBLE, created_at TIMESTAMP, PRIMARY KEY (run_id, name))""")
    con.execute("INSERT INTO selection_info VALUES ('old', 'x', 'random', '{}', 10, 1, 0.1, now())")
    con.close()
    with Store(db) as store:
        cols = [r[0] for r in store.con.execute("SELECT column_name FROM information_schema.columns "
                                                "WHERE table_name = 'selection_info' ORDER BY ordinal_position").fetchall()]
        assert cols[:8] == ["run_id", "name", "selector", "params", "pool", "rows", "seconds", "created_at"]
        assert {"coverage_mean", "coverage_p90", "random_coverage_mean", "random_coverage_p90"} <= set(cols)
        assert store.con.execute("SELECT rows, coverage_mean FROM selection_info WHERE run_id = 'old'").fetchone() == (1, None)

    # No embed stage: the selection is written, its coverage NULL, and the report says why.
    src = write_jsonl(tmp_path / "s.jsonl", alpaca_rows[:60])
    run(load_config(None, input=[str(src)], db=db, selectors=[{"random": {"budget": 6}}]), progress="off")
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT rows, coverage_mean FROM selection_info WHERE name = 'random'").fetchone() == (6, None)
    con.close()
    page = open(write_report(db, str(tmp_path / "r.html")), encoding="utf-8").read()
    assert "no vectors in this run" in page
