"""RDS+ selection: cosine similarity of RDS+ representations between target examples and the
pool, picked round-robin (ALGORITHMS.md §4).

One task: each target query keeps its own ranking; the queries take turns, each adding its best
not yet selected row. Several tasks: a row's task score is its max over the task's queries, and
the tasks take turns. Pool vectors come from the `rds_embed` stage (`vectors` table); rows
without one are embedded here. Each list keeps only the top `budget + ceil(budget / lists)`
rows, which is all round-robin can reach, so the full queries × pool matrix never exists.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from curate.selectors.base import Selector
from curate.lib.params import Budget

POOL_BATCH = 8192


def merge_top(best_scores, best_idx, scores, offset: int, k: int):
    """Running top-k per row of (lists, candidates) scores; indices are global pool positions."""
    idx = np.broadcast_to(np.arange(offset, offset + scores.shape[1]), scores.shape)
    all_scores = np.concatenate([best_scores, scores], axis=1)
    all_idx = np.concatenate([best_idx, idx], axis=1)
    if all_scores.shape[1] > k:
        part = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        all_scores, all_idx = np.take_along_axis(all_scores, part, 1), np.take_along_axis(all_idx, part, 1)
    return all_scores, all_idx


def list_scores(sims, task_index, n_tasks: int):
    """(queries, rows) similarities → per-list scores: the queries themselves for one task, the
    max over each task's queries for several."""
    if n_tasks == 1:
        return sims
    out = np.full((n_tasks, sims.shape[1]), -np.inf, np.float32)
    for t in range(n_tasks):
        out[t] = sims[task_index == t].max(axis=0)
    return out


def round_robin(scores, idx, budget: int) -> list[tuple[int, float, int]]:
    """(pool position, score, list) picks: lists take turns, each its best row not yet picked."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked_idx = np.take_along_axis(idx, order, 1)
    ranked_scores = np.take_along_axis(scores, order, 1)
    n_lists, width = ranked_idx.shape
    pointer = np.zeros(n_lists, np.int64)
    taken: set[int] = set()
    picks: list[tuple[int, float, int]] = []
    while len(picks) < budget and (pointer < width).any():
        for lst in range(n_lists):
            while pointer[lst] < width and (ranked_idx[lst, pointer[lst]] in taken or ranked_idx[lst, pointer[lst]] < 0):
                pointer[lst] += 1
            if pointer[lst] == width:
                continue
            row = int(ranked_idx[lst, pointer[lst]])
            taken.add(row)
            picks.append((row, float(ranked_scores[lst, pointer[lst]]), lst))
            if len(picks) == budget:
                break
    return picks


def pool_vectors(con, run_id: str, pool: str, vector: str, encoder_factory):
    """Yield (ids, (n, dim) vectors) over the pool in batches; rows without a stored vector are
    embedded with the encoder (built on first need)."""
    con.execute("SELECT 1").fetchall()  # closes a result the caller left half-read, which con.sql would refuse
    reader = con.sql(f"""
        SELECT p.id, p.messages, v.vec FROM {pool} p
        LEFT JOIN vectors v ON v.run_id = ? AND v.name = ? AND v.id = p.id
        ORDER BY p.id""", params=[run_id, vector]).to_arrow_reader(POOL_BATCH)
    encoder = None
    for batch in reader:
        ids = batch.column(0).to_pylist()
        vecs = batch.column(2)
        missing = np.flatnonzero(vecs.is_null().to_numpy(zero_copy_only=False))
        if len(missing) == len(ids):
            dense = None
        else:
            present = vecs.drop_null()
            dense_present = present.flatten().to_numpy().reshape(len(present), -1)
            dense = np.zeros((len(ids), dense_present.shape[1]), np.float32)
            dense[np.flatnonzero(vecs.is_valid().to_numpy(zero_copy_only=False))] = dense_present
        if len(missing):
            encoder = encoder or encoder_factory()
            embedded = encoder.encode(batch.column(1).take(pa.array(missing)).to_pylist())
            if dense is None:
                dense = np.zeros((len(ids), embedded.shape[1]), np.float32)
            dense[missing] = embedded
        yield ids, dense


class RDSSelector(Selector):
    name = "rds"
    ALIASES = {"vector": "vectors"}  # old parameter name → new (pipeline/config.py)

    def __init__(self, model: str, targets: str, budget: Budget = 0.1, vectors: str = "rds", max_length: int = 2048,
                 max_batch_tokens: int | None = None, max_batch_rows: int = 64, device: str | None = None, dtype: str | None = None):
        self.budget = budget
        self.model, self.targets, self.vectors, self.max_length = model, targets, vectors, max_length
        self.encoder_args = dict(max_length=max_length, max_batch_tokens=max_batch_tokens, max_batch_rows=max_batch_rows,
                                 device=device, dtype=dtype)
        self._encoder = None

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Before any Ray work (pipeline/preflight.py): `model` as `check_model` checks it, and
        `targets` a readable file."""
        from curate.pipeline.preflight import check_file, check_model

        check_model(params.get("model"), f"{cls.name}.model")
        check_file(params.get("targets"), f"{cls.name}.targets", what="targets file")

    def encoder(self):
        from curate.lib.rds import RDSEncoder

        if self._encoder is None:
            self._encoder = RDSEncoder(self.model, **self.encoder_args)
        return self._encoder

    def select(self, con, run_id, pool, budget_rows):
        from curate.pipeline.targets import load_targets

        targets = load_targets(self.targets)
        query_vecs = self.encoder().encode(targets.convs)
        task_index, n_tasks = targets.task_index(), len(targets.task_names)
        n_lists = n_tasks if n_tasks > 1 else len(targets.convs)
        k = budget_rows + math.ceil(budget_rows / n_lists)
        best_scores = np.full((n_lists, 0), -np.inf, np.float32)
        best_idx = np.full((n_lists, 0), -1, np.int64)
        all_ids: list[str] = []
        for ids, vecs in pool_vectors(con, run_id, pool, self.vectors, self.encoder):
            sims = list_scores(query_vecs @ vecs.T, task_index, n_tasks)
            best_scores, best_idx = merge_top(best_scores, best_idx, sims, len(all_ids), k)
            all_ids.extend(ids)
        return [(all_ids[row], score, lst) for row, score, lst in round_robin(best_scores, best_idx, budget_rows)]
