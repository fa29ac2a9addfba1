"""KMeansDiversity: kMQ ("Diversify and Conquer") selection over stored embeddings.

faiss k-means clusters the pool, the budget is split over clusters (uniform as in kMQ,
proportional, or square-root), and each cluster gives its share either as a sample drawn
without replacement, weighted by a stored score (p ∝ exp(s / temperature)) or uniform
(`within: sample`), or as the rows nearest its centroid (`within: central`, the default when no
score weights the draw: on Alpaca embeddings a uniform draw inside clusters covers the pool no
better than a plain random sample, the central rows do). Optional iterative rounds re-weight
clusters by a per-cluster signal. Centroids are fitted on a sample of at most
k × 64 rows (`fit_sample`); every row is then assigned in one streaming pass over Arrow batches from DuckDB,
so only the per-row cluster ids and scores, not the vectors, are ever held for the whole pool.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.selectors.allocation import Allocation, cluster_quotas, pick, refined_quotas, sampling_keys, within_cluster_order
from curate.selectors.base import Selector
from curate.selectors.clustering import Assigner, fit_centroids, fit_sample_rows
from curate.selectors.vectors import BATCH_ROWS, VectorSource, as_matrix


class KMeansDiversity(Selector):
    name = "kmeans_diversity"

    def __init__(self, budget: float | int = 0.1, k: int = 64, vectors: str = "embed",
                 allocation: Allocation = "uniform", within: Literal["sample", "central"] | None = None,
                 weight_by: str | None = None, temperature: float = 1.0,
                 redistribute: bool = False, rounds: int = 1, refine_by: str | None = None,
                 fit_sample: int | None = None, niter: int = 20, seed: int = 0):
        if k < 1 or rounds < 1 or niter < 1:
            raise ValueError("k, rounds and niter must be at least 1")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        within = within or ("sample" if weight_by else "central")
        if within == "central" and weight_by:
            raise ValueError("weight_by weights a sample: it needs within: sample")
        if rounds > 1 and not refine_by:
            raise ValueError("rounds > 1 needs refine_by: the stored score that re-weights clusters between rounds")
        self.budget, self.k, self.vectors = budget, k, vectors
        self.allocation, self.within, self.weight_by, self.temperature = allocation, within, weight_by, temperature
        self.redistribute, self.rounds, self.refine_by = redistribute, rounds, refine_by
        self.fit_sample, self.niter, self.seed = fit_sample, niter, seed

    def select(self, con, run_id, pool, budget_rows):
        source = VectorSource(con, run_id, pool, self.vectors, {"weight": self.weight_by, "signal": self.refine_by})
        self.centroids = centroids = fit_centroids(source.sample(fit_sample_rows(self.k, self.fit_sample), self.seed),
                                                   self.k, self.niter, seed=self.seed)  # kept for inspection
        ids, cluster, distance, columns = assign_pool(source, Assigner(centroids))
        picked = self.choose(cluster, distance, columns.get("weight"), columns.get("signal"), len(centroids), budget_rows)
        weight = columns.get("weight")
        scores = [None] * len(picked) if weight is None else weight[picked].tolist()
        return list(zip(ids.take(pa.array(picked)).to_pylist(), scores, cluster[picked].tolist()))

    def choose(self, cluster: np.ndarray, distance: np.ndarray, weight: np.ndarray | None, signal: np.ndarray | None,
               k: int, budget_rows: int) -> np.ndarray:
        """Indices of the chosen rows (ranked), given each row's cluster and distance to its
        centroid; rows in a fixed order (by id), so the seed alone decides."""
        rng = np.random.default_rng(self.seed)
        sizes = np.bincount(cluster, minlength=k)
        keys = -distance if self.within == "central" else sampling_keys(weight, self.temperature, rng, len(cluster))
        order, position = within_cluster_order(cluster, keys)
        if self.rounds == 1:
            taken = cluster_quotas(sizes, budget_rows, self.allocation, rng, self.redistribute)
        else:
            taken = refined_quotas(sizes, budget_rows, self.rounds, self.allocation, signal, cluster, position,
                                   order, rng, self.temperature, self.redistribute)[-1]
        return pick(order, position, cluster, taken)


def assign_pool(source: VectorSource, assign: Assigner, batch_rows: int = BATCH_ROWS):
    """Stream the pool once: ids, cluster of each row, its distance to the centroid, and its score columns (missing scores
    filled with the lowest present one), all sorted by id so results do not depend on the
    order rows arrived in."""
    ids, clusters, distances, columns = [], [], [], {c: [] for c in source.score_names}
    for batch in source.batches(batch_rows):
        label, distance = assign(as_matrix(batch.column("vec")))
        # Copies: a column imported from DuckDB keeps its whole batch, vectors included, alive.
        ids.append(pa.concat_arrays([batch.column("id")]))
        clusters.append(label)
        distances.append(distance)
        for c in columns:
            columns[c].append(batch.column(c).to_numpy(zero_copy_only=False).copy())
    if not ids:
        raise CurateError("the pool has no vectors")
    id_array = pa.chunked_array(ids, pa.string()).combine_chunks()
    by_id = pc.sort_indices(id_array).to_numpy()
    cluster = np.concatenate(clusters)[by_id]
    distance = np.concatenate(distances)[by_id]
    out = {}
    for c, parts in columns.items():
        values = np.concatenate(parts).astype(np.float64)[by_id]
        missing = np.isnan(values)
        if missing.all():
            raise CurateError(f"none of the pool's rows has the score '{source.score_names[c]}'")
        values[missing] = np.nanmin(values)
        out[c] = values
    return id_array.take(pa.array(by_id)), cluster, distance, out
