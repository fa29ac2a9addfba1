"""IFD selection (Cherry LLM): drop rows whose IFD exceeds 1 (the instruction does not help the
model produce the answer), then take the highest-scoring rows. With `clusters`, k-means over the
rows' vectors (from an embedding stage: `vectors` table, the name `vectors` gives) splits the budget over
the clusters in proportion to their sizes and takes each cluster's best rows (Cherry's
pre-experience sampling keeps a diverse spread the same way); a cluster with too few eligible
rows gives what it has, and the shortfall is not redistributed.

Scores come from the `ifd` stage (`scores` table); rank by `ifd` or `ic_ifd` (`score`), with the
IFD > `max_ifd` drop always on IFD itself.
"""

from __future__ import annotations

import numpy as np

from curate.selectors.base import Selector, param
from curate.lib.clustering import Assigner, fit_centroids
from curate.lib.params import Budget


def proportional_quotas(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Largest-remainder split of `budget` in proportion to `sizes`."""
    exact = sizes * budget / sizes.sum()
    quotas = np.floor(exact).astype(np.int64)
    quotas[np.argsort(-(exact - quotas), kind="stable")[: budget - quotas.sum()]] += 1
    return quotas


class IFDSelector(Selector):
    name = "ifd"
    ALIASES = {"vector": "vectors"}  # old parameter name → new (pipeline/config.py)

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        scores = {f"scores:{param(cls, params, 'prefix')}{param(cls, params, 'score')}"}
        return scores | ({f"vectors:{param(cls, params, 'vectors')}"} if param(cls, params, "clusters") else set())

    def __init__(self, budget: Budget = 0.1, score: str = "ifd", max_ifd: float | None = 1.0, prefix: str = "",
                 clusters: int | None = None, vectors: str = "rds", seed: int = 0):
        self.budget = budget
        self.score, self.max_ifd, self.prefix = prefix + score, max_ifd, prefix
        self.clusters, self.vectors, self.seed = clusters, vectors, seed

    def select(self, con, run_id, pool, budget_rows):
        drop = "" if self.max_ifd is None else "AND i.value <= $max_ifd"
        params = {"run": run_id, "score": self.score, "ifd": self.prefix + "ifd"}
        if self.max_ifd is not None:
            params["max_ifd"] = self.max_ifd
        rows = con.execute(f"""
            SELECT p.id, s.value FROM {pool} p
            JOIN scores s ON s.run_id = $run AND s.name = $score AND s.id = p.id
            JOIN scores i ON i.run_id = $run AND i.name = $ifd AND i.id = p.id
            WHERE s.value IS NOT NULL AND NOT isnan(s.value) {drop}
            ORDER BY s.value DESC, p.id""", params).fetchall()
        if not self.clusters:
            return rows[:budget_rows]
        return self._within_clusters(con, run_id, rows, budget_rows)

    def _within_clusters(self, con, run_id, rows, budget_rows):
        table = con.sql("SELECT id, vec FROM vectors WHERE run_id = ? AND name = ?", params=[run_id, self.vectors]).to_arrow_table()
        if table.num_rows == 0:
            from curate.errors import CurateError

            raise CurateError(f"selector ifd: clusters need vectors named '{self.vectors}' (an rds_embed or embed stage)")
        position = {id_: i for i, id_ in enumerate(table["id"].to_pylist())}
        vecs = table["vec"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        eligible = [(id_, s) for id_, s in rows if id_ in position]
        x = vecs[[position[id_] for id_, _ in eligible]]
        labels, _ = Assigner(fit_centroids(x, self.clusters, seed=self.seed))(x)  # faiss, as the other selectors
        quotas = proportional_quotas(np.bincount(labels, minlength=labels.max() + 1), min(budget_rows, len(eligible)))
        taken = np.zeros_like(quotas)
        picked = []
        for (id_, score), label in zip(eligible, labels):  # best first, so each cluster takes its best
            if taken[label] < quotas[label]:
                taken[label] += 1
                picked.append((id_, score, int(label)))
        return picked
