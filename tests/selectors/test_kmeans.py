"""KMeansDiversity (kMQ) and DEITA-style selection: allocation, sampling, coverage on real
embeddings (the Alpaca pool, and one with planted near-duplicate groups), picks kept apart, and
an end-to-end run through the pipeline with export."""

import json
import os
import sys

import duckdb
import numpy as np
import pytest

from conftest import ROOT, write_jsonl

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

pytestmark = [pytest.mark.model]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))

from curate.selectors.allocation import cluster_quotas, pick, refined_quotas, sampling_keys, split_budget, within_cluster_order  # noqa: E402
from curate.lib.clustering import Assigner, fit_centroids  # noqa: E402
from curate.lib.greedy import ADMITTED, GreedyCosine  # noqa: E402
from curate.selectors.kmeans import KMeansDiversity  # noqa: E402

POOL_ROWS = 800


@pytest.fixture(scope="module")
def alpaca_vectors(alpaca_rows):
    from curate.stages.embed import Embed

    texts = [r["instruction"] + ("\n\n" + r["input"] if r["input"] else "") for r in alpaca_rows[:POOL_ROWS]]
    return Embed().encode(texts)


# ---------------------------------------------------------------------------- allocation


def test_budget_split_over_clusters_by_each_rule():
    rng = np.random.default_rng(0)
    sizes = np.array([400, 100, 25, 0, 1])
    assert split_budget(10, np.ones(3), rng).sum() == 10
    uniform = cluster_quotas(sizes, 40, "uniform", rng)
    assert uniform.tolist() == [10, 10, 10, 0, 1]  # the tiny cluster gives its one row; kMQ leaves the rest unfilled
    assert cluster_quotas(sizes, 40, "uniform", rng, redistribute=True).sum() == 40
    assert cluster_quotas(sizes, 52, "proportional", rng).tolist() == [40, 10, 2, 0, 0]
    assert cluster_quotas(sizes, 36, "sqrt", rng).tolist() == [20, 10, 5, 0, 1]
    assert cluster_quotas(np.array([3, 2]), 10, "uniform", rng, redistribute=True).tolist() == [3, 2]


def test_within_cluster_sampling_follows_the_score_and_the_seed():
    rng = np.random.default_rng(0)
    cluster = np.repeat(np.arange(50), 20)
    scores = np.tile(np.r_[np.full(10, 3.0), np.zeros(10)], 50)  # half of each cluster scores e^3 ≈ 20× higher
    order, position = within_cluster_order(cluster, sampling_keys(scores, 1.0, rng, len(cluster)))
    chosen = pick(order, position, cluster, np.full(50, 5))
    assert len(chosen) == 250 and np.all(np.bincount(cluster[chosen], minlength=50) == 5)
    assert (scores[chosen] > 0).mean() > 0.85
    first_round = set(cluster[chosen[:50]].tolist())
    assert len(first_round) == 50  # ranked round-robin: the first 50 come from 50 clusters
    uniform_order, uniform_pos = within_cluster_order(cluster, sampling_keys(None, 1.0, np.random.default_rng(0), len(cluster)))
    uniform = pick(uniform_order, uniform_pos, cluster, np.full(50, 5))
    assert 0.3 < (scores[uniform] > 0).mean() < 0.7
    again = within_cluster_order(cluster, sampling_keys(None, 1.0, np.random.default_rng(0), len(cluster)))
    assert np.array_equal(again[0], uniform_order)


def test_refinement_moves_budget_to_clusters_with_a_high_signal():
    rng = np.random.default_rng(0)
    cluster = np.repeat(np.arange(10), 100)
    signal = np.where(cluster < 2, 5.0, 0.0)  # clusters 0 and 1 are where the model still has most to learn
    order, position = within_cluster_order(cluster, sampling_keys(None, 1.0, rng, len(cluster)))
    history = refined_quotas(np.full(10, 100), 300, 3, "uniform", signal, cluster, position, order, rng, redistribute=True)
    assert [h.sum() for h in history] == [100, 200, 300]
    capped = refined_quotas(np.full(10, 100), 300, 3, "uniform", signal, cluster, position, order, rng)
    assert capped[-1].sum() <= 300 and np.all(capped[-1] <= 100)  # kMQ: draws past a full cluster are lost
    assert history[0].tolist() == [10] * 10
    later = history[-1] - history[0]
    assert later[:2].tolist() == [90, 90]  # filled up before any other cluster gets much


# ---------------------------------------------------------------------------- on real embeddings


def coverage(vectors: np.ndarray, chosen: np.ndarray) -> float:
    """Mean cosine distance from each pool row to its nearest chosen row."""
    return float((1 - (vectors @ vectors[chosen].T).max(axis=1)).mean())


def test_kmeans_ten_percent_covers_the_pool_better_than_random(alpaca_vectors):
    """The orders inside clusters alone (no vectors handed over: no similarity check)."""
    n = len(alpaca_vectors)
    budget = n // 10
    central, sampled, rand = [], [], []
    for seed in range(5):
        cluster, distance = Assigner(fit_centroids(alpaca_vectors, budget // 2, seed=seed))(alpaca_vectors)
        for within, out in (("central", central), ("sample", sampled)):
            selector = KMeansDiversity(budget=budget, k=budget // 2, within=within, seed=seed, redistribute=True,
                                       allocation="uniform")
            chosen = selector.choose(cluster, distance, None, None, selector.k, budget)
            assert len(chosen) == budget and len(set(chosen.tolist())) == budget
            assert np.bincount(cluster[chosen], minlength=selector.k).max() <= 3  # balanced: two per cluster, a few redistributed
            out.append(coverage(alpaca_vectors, chosen))
        rand.append(coverage(alpaca_vectors, np.random.default_rng(seed).choice(n, budget, replace=False)))
    # Mean cosine distance to the nearest selected row (random ≈ 0.50): the central rows of
    # balanced clusters cover clearly better; a uniform draw inside clusters barely differs.
    assert np.mean(central) < np.mean(rand) - 0.015, (central, rand)
    assert np.mean(sampled) < np.mean(rand) + 0.01, (sampled, rand)
    selector = KMeansDiversity(budget=budget, k=budget // 2, seed=0, redistribute=True, within="central", allocation="uniform")
    cluster, distance = Assigner(fit_centroids(alpaca_vectors, budget // 2, seed=0))(alpaca_vectors)
    assert coverage(alpaca_vectors, selector.choose(cluster, distance, None, None, budget // 2, budget)) == central[0]


def test_deita_greedy_respects_its_threshold(alpaca_vectors):
    rng = np.random.default_rng(0)
    score_order = rng.permutation(len(alpaca_vectors))
    greedy = GreedyCosine(alpaca_vectors.shape[1], max_similarity=0.6, limit=150)
    verdicts = np.concatenate([greedy.offer(alpaca_vectors[chunk])[0] for chunk in np.array_split(score_order, 7)])
    admitted = score_order[verdicts == ADMITTED]
    assert len(admitted) == 150
    sims = alpaca_vectors[admitted] @ alpaca_vectors[admitted].T
    assert sims[np.triu_indices(len(admitted), 1)].max() <= 0.6
    # Every rejected row that was considered is too close to a row admitted before it.
    considered = np.flatnonzero(verdicts >= 0)
    for i in considered[:50]:
        blocker = admitted[verdicts[i]]
        assert alpaca_vectors[score_order[i]] @ alpaca_vectors[blocker] > 0.6
        assert np.flatnonzero(score_order == blocker)[0] < i  # admitted earlier in score order
    assert greedy.offer(alpaca_vectors[:5])[0].tolist() == [-2] * 5  # full: nothing more is considered


# ---------------------------------------------------------------------------- near duplicates (issue 19)


@pytest.fixture(scope="module")
def pools(alpaca_rows):
    """Real embeddings of instruction + response: 600 Alpaca rows, and 200 Alpaca rows each followed
    by 1–3 paraphrase-like variants (answer re-ordered, sentences dropped, another answer)."""
    from bench.selection import embed, planted_pool, row_text

    planted, _ = planted_pool(alpaca_rows[:200])
    return {"alpaca": embed([row_text(r) for r in alpaca_rows[:600]]), "planted": embed([row_text(r) for r in planted])}


def _pairs_above(vecs, picked, threshold):
    sims = vecs[picked] @ vecs[picked].T
    return int((sims[np.triu_indices(len(picked), 1)] > threshold).sum())


@pytest.mark.parametrize("pool", ["alpaca", "planted"])
def test_default_kmq_covers_better_than_random_with_no_near_duplicate_picks(pools, pool, tmp_path):
    """Through `select` on a real store: the default (facility location inside clusters, picks at
    most 0.9 apart) against random and against the rows nearest each centroid (the old default)."""
    vecs = pools[pool]
    n, budget = len(vecs), len(vecs) // 10
    store = _vector_store(tmp_path / "p.duckdb", [f"{i:05d}" for i in range(n)], vecs)
    ours, central, rand = [], [], []
    for seed in range(5):
        for selector, out in ((KMeansDiversity(budget=budget, k=16, seed=seed), ours),
                              (KMeansDiversity(budget=budget, k=16, seed=seed, within="central", max_similarity=None,
                                               allocation="uniform"), central)):
            picked = np.array([int(i) for i, _, _ in selector.select(store.con, "r", "_pool", budget)])
            out.append((coverage(vecs, picked), _pairs_above(vecs, picked, 0.9), len(set(picked.tolist()))))
        rand.append(coverage(vecs, np.random.default_rng(seed).choice(n, budget, replace=False)))
    store.close()
    mean = lambda rows, i: float(np.mean([r[i] for r in rows]))  # noqa: E731
    assert mean(ours, 0) < np.mean(rand) - 0.03, (ours, rand)
    assert all(r[1] == 0 for r in ours) and all(r[2] == budget for r in ours)  # no pair above 0.9, budget filled
    assert mean(ours, 0) < mean(central, 0) - 0.02
    if pool == "planted":
        # Nearest the centroid takes a group's variants together: what issue 19 measured.
        assert mean(central, 1) > 10 and mean(central, 0) > np.mean(rand)


def test_filtered_orders_keep_picks_apart_and_fill_the_budget(pools):
    vecs = pools["planted"]
    n, budget = len(vecs), len(vecs) // 5
    centroids = fit_centroids(vecs, 8, seed=0)
    cluster, distance = Assigner(centroids)(vecs)
    for within in ("central", "sample"):
        plain = KMeansDiversity(budget=budget, k=8, within=within, max_similarity=None, redistribute=True).choose(
            cluster, distance, None, None, 8, budget, vectors=vecs, centroids=centroids)
        kept = KMeansDiversity(budget=budget, k=8, within=within, max_similarity=0.8, redistribute=True).choose(
            cluster, distance, None, None, 8, budget, vectors=vecs, centroids=centroids)
        assert _pairs_above(vecs, plain, 0.8) > 0
        assert _pairs_above(vecs, kept, 0.8) == 0 and len(set(kept.tolist())) == budget
        assert coverage(vecs, kept) < coverage(vecs, plain)
    # Without redistribution a cluster that runs out of admissible rows leaves its shortfall unfilled (kMQ).
    tight = KMeansDiversity(budget=n // 2, k=8, within="central", max_similarity=0.6, allocation="uniform").choose(
        cluster, distance, None, None, 8, n // 2, vectors=vecs, centroids=centroids)
    assert _pairs_above(vecs, tight, 0.6) == 0 and len(tight) < n // 2


# ---------------------------------------------------------------------------- through the pipeline


def test_embed_semdedup_select_and_export(ray_local, tmp_path, alpaca_rows):
    from curate.cli import main
    from curate.pipeline.config import SelectorConfig, load_config
    from curate.pipeline.runner import run
    from curate.pipeline.select import run_selectors
    from curate.storage.store import Store

    copies = [dict(r, instruction=r["instruction"].rstrip(".") + ", please.") for r in alpaca_rows[:10]]
    src = write_jsonl(tmp_path / "s.jsonl", alpaca_rows[:240] + copies)
    db = str(tmp_path / "sel.duckdb")
    selectors = [{"kmeans_diversity": {"budget": 0.1, "k": 8, "seed": 3, "name": "diverse"}},
                 {"random": {"budget": 0.1, "seed": 3}}]
    stages = [{"embed": {"text": "instruction", "batch_size": 64}}, {"semdedup": {"threshold": 0.93, "k": 2}}]
    report = run(load_config(None, input=[str(src)], db=db, shard_size=80, selectors=selectors, stages=stages), progress="off")
    con = duckdb.connect(db, read_only=True)
    drops = dict(con.execute("SELECT id, reason FROM drops WHERE stage = 'semdedup'").fetchall())
    copy_ids = {r[0] for r in con.execute("SELECT id FROM samples WHERE messages[1].content LIKE '%, please.%'").fetchall()}
    kept = {r[0] for r in con.execute("SELECT id FROM curated").fetchall()}
    assert len(copy_ids & set(drops)) >= 9 and len(drops) <= 12 and report.kept == 250 - len(drops)
    assert all(reason.startswith("semantic_duplicate_of:") and reason.split(":")[1] in kept for reason in drops.values())
    assert con.execute("SELECT count(*) FROM row_keys WHERE stage = 'semdedup'").fetchone()[0] == 0  # it reads `vectors`
    model, dims, count = con.execute("SELECT any_value(model), min(len(vec)), count(*) FROM vectors WHERE name = 'embed'").fetchone()
    assert (model, dims, count) == ("sentence-transformers/all-MiniLM-L6-v2", 384, 250)
    norms = con.execute("SELECT min(list_dot_product(vec, vec)), max(list_dot_product(vec, vec)) FROM vectors").fetchone()
    assert 0.99 < norms[0] <= norms[1] < 1.01
    picked = con.execute("SELECT id, cluster FROM selections WHERE name = 'diverse' ORDER BY rank").fetchall()
    con.close()
    assert len(picked) == round(0.1 * report.kept) and all(c is not None for _, c in picked)
    assert {i for i, _ in picked} <= kept  # semantic duplicates are out of the pool
    used = {c for _, c in picked}
    assert len({c for _, c in picked[:len(used)]}) == len(used) >= 6  # round-robin ranking: the first picks span the clusters

    out = tmp_path / "diverse.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["export", "--db", db, "--format", "jsonl", "--out", str(out), "--selection", "diverse"])
    assert e.value.code == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [i for i, _ in picked]

    # Stored scores drive DEITA and kMQ's within-cluster weights.
    with Store(db) as store:
        ids = [r[0] for r in store.con.execute("SELECT id FROM curated ORDER BY id").fetchall()]
        store.con.executemany("INSERT INTO scores VALUES (?, ?, 'quality', ?)",
                              [(report.run_id, i, float(n % 7)) for n, i in enumerate(ids)])
        store.con.executemany("INSERT INTO scores VALUES (?, ?, 'complexity', ?)",
                              [(report.run_id, i, 2.0) for i in ids[:200]])
        # Scores written by hand, not by a stage: selector configs built directly, past the
        # config check that a stage provides them.
        done = run_selectors(store, report.run_id, [
            SelectorConfig(key="deita", name="deita",
                           params={"budget": 30, "score": ["quality", "complexity"], "max_similarity": 0.5}),
            SelectorConfig(key="kmeans_diversity", name="weighted",
                           params={"budget": 40, "k": 4, "weight_by": "quality", "temperature": 0.5}),
        ])
        assert [d["rows"] for d in done] == [30, 40]
        assert store.con.execute("SELECT count(*) FROM selections WHERE name = 'deita' AND cluster IS NULL").fetchall() == [(30,)]
        deita = store.con.execute("""
            SELECT s.score, v.vec FROM selections s JOIN vectors v ON v.id = s.id AND v.run_id = s.run_id
            WHERE s.name = 'deita' ORDER BY s.rank""").fetchall()
        scores = [r[0] for r in deita]
        assert scores == sorted(scores, reverse=True) and scores[0] == 12.0
        vecs = np.array([r[1] for r in deita])
        assert (vecs @ vecs.T)[np.triu_indices(30, 1)].max() <= 0.5
        weighted = store.con.execute("SELECT avg(score) FROM selections WHERE name = 'weighted'").fetchone()[0]
        assert weighted > 4.0  # the pool's mean quality is 3
    with pytest.raises(Exception, match="no scores named 'nope'"):
        with Store(db) as store:
            run_selectors(store, report.run_id, [SelectorConfig(key="deita", name="nope", params={"score": "nope"})])


# ---------------------------------------------------------------------------- pools larger than the fit sample


def _vector_store(path, ids, vecs):
    import pyarrow as pa

    from curate.storage.store import Store

    store = Store(str(path))
    table = pa.table({"id": ids, "vec": pa.array(vecs.tolist(), pa.list_(pa.float32()))})
    store.con.register("_v", table)
    store.con.execute("INSERT INTO vectors SELECT 'r', 'embed', id, 'm', vec FROM _v")
    store.con.execute("CREATE OR REPLACE TEMP VIEW _pool AS SELECT id FROM _v")
    return store


def test_fit_on_a_sample_assign_in_batches_independent_of_arrival_order(tmp_path):
    from curate.selectors.kmeans import assign_pool
    from curate.lib.vectors import VectorSource

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 16)) * 5
    truth = rng.integers(0, 10, 2000)
    vecs = (centres[truth] + rng.normal(size=(2000, 16))).astype(np.float32)
    ids = [f"{i:05d}" for i in range(2000)]
    shuffled = rng.permutation(2000)
    results = []
    for name, order in (("a", np.arange(2000)), ("b", shuffled)):
        store = _vector_store(tmp_path / f"{name}.duckdb", [ids[i] for i in order], vecs[order])
        selector = KMeansDiversity(budget=100, k=10, fit_sample=300, seed=1, max_similarity=None)  # clusters tighter than 0.9
        results.append(selector.select(store.con, "r", "_pool", 100))
        source = VectorSource(store.con, "r", "_pool", "embed")
        assert source.sample(300, 1).shape == (300, 16)
        centroids = fit_centroids(source.sample(300, 1), 10, seed=1)
        one = assign_pool(source, Assigner(centroids))
        many = assign_pool(source, Assigner(centroids), batch_rows=97)
        assert one[0].equals(many[0]) and np.array_equal(one[1], many[1])
        store.close()
    assert results[0] == results[1]  # the same rows, ranks and clusters whatever order rows arrived in
    picked = [int(i) for i, _, _ in results[0]]
    found = [c for _, _, c in results[0]]
    assert len(picked) == 100 and len(set(found)) == 10
    # Found clusters are planted clusters (300 sampled rows were enough to find most of them).
    assert sum(len({truth[i] for i, c in zip(picked, found) if c == f}) == 1 for f in set(found)) >= 8
