"""KMeansDiversity: kMQ ("Diversify and Conquer", Yu et al. 2024; code:
for-ai/iterative-data-selection) selection over stored embeddings.

faiss k-means clusters the pool (centroids fitted on a sample of at most k × 64 rows,
`fit_sample`; every row then assigned in one streaming pass over Arrow batches from DuckDB), the
budget is split over clusters (`allocation`), and each cluster gives its share:

- `within: facility` (the default when no score weights the draw): facility location inside the
  cluster (selectors/facility_location.py: each pick chosen to best represent the cluster's rows
  not yet represented, lazy greedy over a faiss k-NN graph), so a cluster's picks spread over it
  instead of crowding its centre;
- `within: sample` (the default with `weight_by`, kMQ's own rule): a draw without replacement,
  p ∝ exp(score / temperature), uniform without a score;
- `within: central`: the rows nearest the centroid (the default before issue 19).

Whatever the order, a row is admitted only if its cosine similarity to every row admitted before
it is at most `max_similarity` (0.9, DEITA's τ; None turns the check off): "nearest the centroid"
otherwise takes a group of near duplicates together (on 9,352 Alpaca rows with planted
paraphrases, the central rows held 874 pairs above 0.9 and covered the pool 27% worse than
random). The check is against every admitted row on a pool of at most `exact_rows` rows and for
selections of a few thousand rows (facility_location.EXACT_CHECK_PICKS; EXACT_CHECK_PICKS here
for central and sample); beyond, against the admitted rows of the nearest cells or clusters
(CHECK_PROBE), where two rows above 0.9 lie. A cluster that runs out of admissible rows leaves its
shortfall unfilled unless `redistribute` hands it to clusters with rows to spare.

Measured (bench/selection.py: 10% budgets, k = 64, 5 seeds; mean cosine distance from a pool row
to its nearest pick, lower is better), on all 3,111 Alpaca rows / on 9,352 rows with planted
near-duplicate groups: random 0.4455 / 0.3146; this default 0.3985 / 0.2530 (no pair of picks
above 0.9); nearest the centroid, uniform, no check (the default before) 0.4383 / 0.4009 (874
pairs above 0.9); kMQ's uniform draw 0.4490 / 0.3208; facility location over the whole pool 0.3835
/ 0.2367. Allocation, same figures: uniform 0.4010 / 0.2616 (it also leaves small clusters' quotas
unfilled), proportional 0.3985 / 0.2530, sqrt 0.3977 / 0.2530; on the --quick pools (600 rows)
uniform 0.5230 / 0.3970, proportional 0.5103 / 0.3732, sqrt 0.5153 / 0.3800. Proportional is the
default: level with sqrt on the full pools, ahead on the small ones, and it weighs every pool row
once, as the coverage figure does.

Ranking is round-robin over clusters (every cluster's first pick, then every cluster's second,
...), `cluster` stored. Optional iterative rounds re-weight clusters by a per-cluster signal
(`rounds`, `refine_by`).

Memory: `within: facility` holds the k-NN graph, n × (neighbors + 1) × 8 bytes, and reads the
vectors back through a scratch file cell by cell (selectors/cells.py); central and sample hold
per-row cluster ids and scores, and fetch only the vectors of the rows they consider.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.selectors.allocation import (Allocation, allocation_weights, cluster_quotas, pick, refined_quotas, sampling_keys,
                                         split_budget, within_cluster_order)
from curate.selectors.base import Selector, param
from curate.lib.clustering import Assigner, fit_centroids, fit_sample_rows
from curate.selectors.cells import CELL_ROWS, EXACT_ROWS, Cells
from curate.selectors.facility_location import greedy_cover, rank_weights
from curate.lib.greedy import ADMITTED, NOT_CONSIDERED, GreedyCosine, normalised
from curate.lib.vectors import BATCH_ROWS, VectorSource, as_matrix, id_order
from curate.lib.params import Budget, Cosine, Fraction, Positive, PositiveFloat

ALLOCATION: Allocation = "proportional"  # chosen by measurement: see the module docstring
MAX_SIMILARITY = 0.9
# within central / sample: selections up to this size check a row against every admitted row;
# larger ones against the admitted rows of the CHECK_PROBE clusters nearest it.
EXACT_CHECK_PICKS = 20_000
CHECK_PROBE = 8


class KMeansDiversity(Selector):
    """kMQ over the vectors named `vectors`: `budget` rows (a count, or a fraction of the pool)
    from `k` k-means clusters. allocation: how the budget splits over clusters; within: how a
    cluster gives its share (see the module docstring); max_similarity: the largest cosine
    similarity allowed between two picks (None: no check); weight_by / temperature: kMQ's
    p ∝ exp(score / T) (with facility: weights in [1 − quality_weight, 1] by percentile rank);
    redistribute: hand a cluster's shortfall to others; rounds / refine_by: iterative kMQ;
    fit_sample / niter: the k-means fit; neighbors / probe / exact_rows / cell_rows / scratch_dir:
    the facility-location graph (selectors/facility_location.py). Returns (id, score, cluster)
    tuples, ranked round-robin over clusters. Raises CurateError when the pool's rows have no such
    vectors or scores, ValueError for parameters out of range."""

    name = "kmeans_diversity"

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        return {f"vectors:{param(cls, params, 'vectors')}"} | {
            f"scores:{param(cls, params, k)}" for k in ("weight_by", "refine_by") if param(cls, params, k)}

    def __init__(self, budget: Budget = 0.1, k: Positive = 64, vectors: str = "embed",
                 allocation: Allocation = ALLOCATION, within: Literal["facility", "central", "sample"] | None = None,
                 max_similarity: Cosine | None = MAX_SIMILARITY, weight_by: str | None = None, temperature: PositiveFloat = 1.0,
                 quality_weight: Fraction = 0.5, redistribute: bool = False, rounds: Positive = 1, refine_by: str | None = None,
                 fit_sample: Positive | None = None, niter: Positive = 20, neighbors: Positive = 32, probe: Positive = 2,
                 exact_rows: int = EXACT_ROWS, cell_rows: int = CELL_ROWS, seed: int = 0, scratch_dir: str | None = None):
        if k < 1 or rounds < 1 or niter < 1 or probe < 1 or neighbors < 1:
            raise ValueError("k, rounds, niter, neighbors and probe must be at least 1")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if max_similarity is not None and not -1 <= max_similarity <= 1:
            raise ValueError(f"max_similarity is a cosine similarity in [-1, 1], got {max_similarity}")
        if not 0 <= quality_weight <= 1:
            raise ValueError(f"quality_weight lies in [0, 1], got {quality_weight}")
        within = within or ("sample" if weight_by else "facility")
        if within == "central" and weight_by:
            raise ValueError("weight_by weights a sample or facility location: it needs within: sample or facility")
        if rounds > 1 and not refine_by:
            raise ValueError("rounds > 1 needs refine_by: the stored score that re-weights clusters between rounds")
        self.budget, self.k, self.vectors = budget, k, vectors
        self.allocation, self.within, self.weight_by, self.temperature = allocation, within, weight_by, temperature
        self.max_similarity, self.quality_weight = max_similarity, quality_weight
        self.redistribute, self.rounds, self.refine_by = redistribute, rounds, refine_by
        self.fit_sample, self.niter, self.neighbors, self.probe, self.seed = fit_sample, niter, neighbors, probe, seed
        self.exact_rows, self.cell_rows, self.scratch_dir = exact_rows, cell_rows, scratch_dir

    def select(self, con, run_id, pool, budget_rows):
        source = VectorSource(con, run_id, pool, self.vectors, {"weight": self.weight_by, "signal": self.refine_by})
        self.centroids = centroids = fit_centroids(source.sample(fit_sample_rows(self.k, self.fit_sample), self.seed),
                                                   self.k, self.niter, seed=self.seed)  # kept for inspection
        if self.within == "facility":
            # One pass: the vectors go to cells for the k-NN graph as each row gets its cluster.
            with Cells(source, self.exact_rows, self.cell_rows, seed=self.seed, scratch_dir=self.scratch_dir,
                       also=Assigner(centroids)) as cells:
                ids, (cluster, distance) = cells.ids, cells.also
                columns = {c: fill_missing(v, source.score_names[c]) for c, v in cells.scores.items()}
                picked = self.choose(cluster, distance, columns.get("weight"), columns.get("signal"), len(centroids),
                                     budget_rows, cells=cells)
        else:
            ids, cluster, distance, columns, rowids = assign_pool(source, Assigner(centroids))
            picked = self.choose(cluster, distance, columns.get("weight"), columns.get("signal"), len(centroids), budget_rows,
                                 vectors=lambda rows: source.fetch_rowids(rowids[rows]), centroids=centroids)
        weight = columns.get("weight")
        scores = [None] * len(picked) if weight is None else weight[picked].tolist()
        return list(zip(ids.take(pa.array(picked)).to_pylist(), scores, cluster[picked].tolist()))

    def choose(self, cluster: np.ndarray, distance: np.ndarray, weight: np.ndarray | None, signal: np.ndarray | None,
               k: int, budget_rows: int, vectors=None, centroids: np.ndarray | None = None, cells: Cells | None = None) -> np.ndarray:
        """Indices of the chosen rows (ranked round-robin over clusters), given each row's cluster
        and distance to its centroid; rows in a fixed order (by id), so the seed alone decides.

        within facility: `cells` (the pool's vectors, rows in the same order) is required: facility
        location inside each cluster (greedy_cover with the clusters as groups and their quotas as
        caps), no two picks above max_similarity. central / sample: each cluster's rows in that
        order; with `vectors(rows)` (an (n, d) array indexes too) and max_similarity, a row is
        admitted only if its cosine similarity to every row admitted before it is at most
        max_similarity (`admit`); without, each cluster gives the first rows of its order."""
        rng = np.random.default_rng(self.seed)
        sizes = np.bincount(cluster, minlength=k)
        keys = -distance if self.within != "sample" else sampling_keys(weight, self.temperature, rng, len(cluster))
        order, position = within_cluster_order(cluster, keys)
        if self.rounds == 1:
            taken = cluster_quotas(sizes, budget_rows, self.allocation, rng, self.redistribute)
        else:
            taken = refined_quotas(sizes, budget_rows, self.rounds, self.allocation, signal, cluster, position,
                                   order, rng, self.temperature, self.redistribute)[-1]
        refill = (lambda short, room: np.minimum(split_budget(short, np.where(room > 0, allocation_weights(sizes, self.allocation), 0.0), rng), room)) \
            if self.redistribute else None
        if self.within == "facility":
            if cells is None:
                raise ValueError("within: facility needs the pool's vectors (cells)")
            quality = None if weight is None else rank_weights(weight, self.quality_weight)
            chosen, _ = greedy_cover(cells, int(taken.sum()), self.neighbors, self.probe, quality, self.max_similarity,
                                     group=cluster.astype(np.int64), caps=taken, refill=refill)
            return round_robin(chosen, cluster)
        if vectors is None or self.max_similarity is None or self.max_similarity >= 1:
            return pick(order, position, cluster, taken)
        if isinstance(vectors, np.ndarray):
            matrix = vectors
            vectors = lambda rows: matrix[rows]  # noqa: E731
        return admit(order, cluster, taken, vectors, self.max_similarity, centroids,
                     probe=k if budget_rows <= EXACT_CHECK_PICKS else CHECK_PROBE, refill=refill)


def round_robin(chosen: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Rows chosen in some order, re-ranked round-robin over their clusters (each cluster's
    first, then each cluster's second, ...), keeping their order inside a cluster."""
    if len(chosen) == 0:
        return chosen
    c = cluster[chosen]
    order = np.argsort(c, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(c[order])) + 1]
    pos = np.empty(len(chosen), np.int64)
    pos[order] = np.arange(len(chosen)) - np.repeat(starts, np.diff(np.r_[starts, len(chosen)]))
    return chosen[np.lexsort((c, pos))]


def fill_missing(values: np.ndarray, name: str) -> np.ndarray:
    """A score column with missing values filled with the lowest present one."""
    values = np.asarray(values, np.float64).copy()
    missing = np.isnan(values)
    if missing.all():
        raise CurateError(f"none of the pool's rows has the score '{name}'")
    values[missing] = np.nanmin(values)
    return values


def admit(order: np.ndarray, cluster: np.ndarray, quota: np.ndarray, vectors, max_similarity: float,
          centroids: np.ndarray | None = None, probe: int | None = None, refill=None) -> np.ndarray:
    """Non-redundant picks inside clusters: each cluster offers its rows in `order` (its within
    order), cluster after cluster, and a row is admitted unless its cosine similarity to a row
    admitted before it (in any cluster) exceeds `max_similarity`, until the cluster has given its
    quota or has no rows left. Rows are read with vectors(rows) for the few rows each cluster
    needs (its quota and a margin, more when near duplicates are turned away), never the pool.
    With `centroids`, admitted rows sit in an IVF index on them and a row is checked against
    the admitted rows of its `probe` nearest clusters (all of them while the selection is at most
    EXACT_CHECK_PICKS rows: then no admitted pair exceeds max_similarity). refill(short, room),
    if given, hands a shortfall (clusters that ran out) to clusters with rows left; returns the
    extra quota. Returns the admitted rows ranked round-robin over clusters, as `pick` ranks."""
    import faiss

    k = len(quota)
    sorted_cluster = cluster[order]
    sizes = np.bincount(cluster, minlength=k)
    starts = np.r_[0, np.cumsum(sizes)]
    quota = quota.copy()
    offered = np.zeros(k, np.int64)  # rows of each cluster's order already offered
    admitted: list[list[int]] = [[] for _ in range(k)]
    greedy = None
    while True:
        short = np.array([quota[c] - len(admitted[c]) for c in range(k)])
        needy = np.flatnonzero((short > 0) & (offered < sizes))
        if len(needy) == 0:
            left = int(quota.sum() - sum(len(a) for a in admitted))
            room = sizes - offered
            if refill is None or left <= 0 or not room.any():
                break
            quota = np.minimum(quota, [len(a) for a in admitted]) + refill(left, room)
            continue
        # The next rows of each needy cluster, with a margin for near duplicates turned away.
        take = np.minimum(sizes[needy] - offered[needy], np.ceil(short[needy] * 1.25).astype(np.int64) + 4)
        rows = np.concatenate([order[starts[c] + offered[c]:starts[c] + offered[c] + t] for c, t in zip(needy, take)])
        vecs = normalised(vectors(rows))
        if greedy is None:
            index = None
            if centroids is not None and k > 1 and probe is not None and probe < k:  # else a flat index: exact
                quantizer = faiss.IndexFlatL2(vecs.shape[1])
                quantizer.add(np.ascontiguousarray(centroids, np.float32))
                index = faiss.IndexIVFFlat(quantizer, vecs.shape[1], k, faiss.METRIC_INNER_PRODUCT)
                index.nprobe = min(k, probe or k)
            greedy = GreedyCosine(vecs.shape[1], max_similarity, index=index)
            greedy.quantizer = quantizer if index is not None else None  # the index does not own its quantizer
        at = 0
        for c, t in zip(needy, take):
            chunk, chunk_rows = vecs[at:at + t], rows[at:at + t]
            at += t
            verdict, _ = greedy.offer(chunk, limit=int(short[c]))
            considered = np.flatnonzero(verdict != NOT_CONSIDERED)
            offered[c] += (considered[-1] + 1) if len(considered) else 0
            new = chunk_rows[verdict == ADMITTED].tolist()
            admitted[c].extend(new)
    chosen = np.array([r for a in admitted for r in a], np.int64)
    pos = np.concatenate([np.arange(len(a)) for a in admitted]) if len(chosen) else np.zeros(0, np.int64)
    return chosen[np.lexsort((cluster[chosen], pos))] if len(chosen) else chosen


def assign_pool(source: VectorSource, assign: Assigner, batch_rows: int = BATCH_ROWS):
    """Stream the pool once: ids, cluster of each row, its distance to the centroid, its score
    columns (missing scores filled with the lowest present one) and its rowid in `vectors` (for
    VectorSource.fetch_rowids), all sorted by id so results do not depend on the order rows
    arrived in."""
    ids, clusters, distances, rowids = [], [], [], []
    columns = {c: [] for c in source.score_names}
    for batch in source.batches(batch_rows, with_rowid=True):
        label, distance = assign(as_matrix(batch.column("vec")))
        # Copies: a column imported from DuckDB keeps its whole batch, vectors included, alive.
        ids.append(pa.concat_arrays([batch.column("id")]))
        clusters.append(label)
        distances.append(distance)
        rowids.append(batch.column("_rowid").to_numpy().copy())
        for c in columns:
            columns[c].append(batch.column(c).to_numpy(zero_copy_only=False).copy())
    if not ids:
        raise CurateError("the pool has no vectors")
    id_array = pa.chunked_array(ids, pa.string()).combine_chunks()
    by_id = id_order(id_array)
    cluster = np.concatenate(clusters)[by_id]
    distance = np.concatenate(distances)[by_id]
    out = {c: fill_missing(np.concatenate(parts).astype(np.float64)[by_id], source.score_names[c]) for c, parts in columns.items()}
    return id_array.take(pa.array(by_id)), cluster, distance, out, np.concatenate(rowids)[by_id]
