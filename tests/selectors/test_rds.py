"""RDS+: padding-aware pooling equals one-at-a-time; round-robin over queries and over tasks."""

import numpy as np
import pytest
import torch

from curate.selectors.ifd import IFDSelector, proportional_quotas
from curate.selectors.rds import list_scores, merge_top, round_robin
from curate.stages.score.rds import RDSEncoder, conversation_ids
from tiny_llm import build_tiny_llama


pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_torch_thread")]


def test_batched_rds_vectors_equal_one_at_a_time(tmp_path):
    model = str(build_tiny_llama(tmp_path / "tiny"))
    convs = [[{"role": "user", "content": "word " * n}, {"role": "assistant", "content": f"answer {n}"}] for n in (1, 5, 17, 40, 3)]
    enc = RDSEncoder(model, max_length=64, max_batch_tokens=1024)
    batched = enc.encode(convs)
    one = np.concatenate([enc.encode([c]) for c in convs])
    np.testing.assert_allclose(batched, one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)
    # the reference pooling at batch size 1: weights t / sum(t) over the last layer, then normalised
    ids = torch.tensor(conversation_ids(enc.tok, convs[2:3], 64))  # cut to 64 tokens, as the encoder does
    hidden = enc.lm(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    w = torch.arange(1, hidden.shape[0] + 1, dtype=torch.float32)
    ref = torch.nn.functional.normalize((w[:, None] * hidden).sum(0) / w.sum(), dim=0)
    np.testing.assert_allclose(batched[2], ref.detach().numpy(), atol=1e-5)


def test_cpu_batches_on_single_threaded_workers_equal_one_batch_at_a_time(tmp_path):
    """cpu_parallel: batches (3 one-thread workers) gives intra_op's vectors row for row."""
    from curate.lib.cpu_workers import BatchWorkers

    model = str(build_tiny_llama(tmp_path / "tiny"))
    convs = [[{"role": "user", "content": "word " * n}, {"role": "assistant", "content": f"answer {n}"}] for n in range(1, 30, 3)]
    common = dict(max_length=64, max_batch_tokens=128, max_batch_rows=2)  # several small batches
    batches = RDSEncoder(model, threads=3, **common)
    one_at_a_time = RDSEncoder(model, threads=1, cpu_parallel="intra_op", **common)
    assert isinstance(batches.runner.workers, BatchWorkers) and one_at_a_time.runner.workers is None
    got = batches.encode(convs)
    np.testing.assert_allclose(got, one_at_a_time.encode(convs), rtol=0, atol=1e-6)
    assert (np.abs(got - got[0]).max(axis=1)[1:] > 1e-3).all()  # rows differ: a mix-up between batches would show


def test_round_robin_over_queries_is_not_a_global_max():
    # Query 0 likes rows 0, 1, 2 most; query 1 likes row 3 a little. Round-robin gives query 1 a
    # turn; a global max over (query, row) pairs would take rows 0, 1 first.
    sims = np.array([[0.9, 0.8, 0.7, 0.1], [0.2, 0.1, 0.0, 0.3]], np.float32)
    scores, idx = merge_top(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.int64), sims, 0, k=3)
    assert [p[0] for p in round_robin(scores, idx, 3)] == [0, 3, 1]


def test_round_robin_over_tasks_uses_each_tasks_max():
    sims = np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.8], [0.3, 0.7, 0.1]], np.float32)  # 3 queries × 3 rows
    tasks = np.array([0, 0, 1])
    per_task = list_scores(sims, tasks, 2)
    np.testing.assert_allclose(per_task, [[0.9, 0.2, 0.8], [0.3, 0.7, 0.1]])
    scores, idx = merge_top(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.int64), per_task, 0, k=3)
    assert [(p[0], p[2]) for p in round_robin(scores, idx, 3)] == [(0, 0), (1, 1), (2, 0)]


def test_merge_top_streams_chunks():
    rng = np.random.default_rng(0)
    sims = rng.random((3, 100)).astype(np.float32)
    scores, idx = np.zeros((3, 0), np.float32), np.zeros((3, 0), np.int64)
    for start in range(0, 100, 17):
        scores, idx = merge_top(scores, idx, sims[:, start : start + 17], start, k=5)
    for q in range(3):
        assert set(idx[q]) == set(np.argsort(-sims[q])[:5])


def test_ifd_within_clusters_splits_the_budget_by_cluster_size_and_takes_each_clusters_best():
    import duckdb

    assert proportional_quotas(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert proportional_quotas(np.array([1, 1, 1]), 2).sum() == 2
    rng = np.random.default_rng(0)
    vecs = np.concatenate([rng.normal(c, 0.1, (n, 4)) for c, n in ((0, 30), (5, 10))]).astype(np.float32)
    ids = [f"r{i}" for i in range(40)]
    con = duckdb.connect()
    con.execute("CREATE TABLE vectors (run_id VARCHAR, name VARCHAR, id VARCHAR, vec FLOAT[])")
    con.executemany("INSERT INTO vectors VALUES ('run', 'rds', ?, ?)", [(i, v.tolist()) for i, v in zip(ids, vecs)])
    scores = rng.permutation(40).astype(float)
    rows = sorted(zip(ids, scores), key=lambda r: -r[1])  # best first, as `select` passes them
    picked = IFDSelector(clusters=2, vectors="rds")._within_clusters(con, "run", rows, 8)
    by_cluster = {}
    for id_, _, label in picked:
        by_cluster.setdefault(label, []).append(int(id_[1:]))
    assert sorted(len(v) for v in by_cluster.values()) == [2, 6]  # 30:10 rows -> 6:2 of 8
    for members in by_cluster.values():
        planted = 0 if members[0] < 30 else 1  # the clusters found are the planted ones
        assert all((m < 30) == (planted == 0) for m in members)
        in_cluster = [i for i in range(40) if (i < 30) == (planted == 0)]
        best = sorted(in_cluster, key=lambda i: -scores[i])[:len(members)]
        assert sorted(members) == sorted(best)
