"""FacilityLocation: submodular coverage selection over stored embeddings.

Maximises the facility-location function (Lin & Bilmes, "A Class of Submodular Functions for
Document Summarization", ACL 2011; Mirchandani & Francis, Discrete Location Theory)

    f(S) = Σ_{i ∈ pool} max_{j ∈ S} w_j · sim(i, j)

with sim(i, j) = max(0, cos(x_i, x_j)) kept only where j is among the `neighbors` nearest rows of
i (a k-NN graph from faiss in place of the n × n similarity matrix; i is always its own
neighbour, at similarity 1): every pool row is represented by its most similar pick, and the
selection is the set whose picks represent the pool best. f is monotone submodular, so the greedy
algorithm is within 1 − 1/e of the optimum (Nemhauser, Wolsey & Fisher 1978); it runs lazily
(Minoux, "Accelerated greedy algorithms for maximizing submodular set functions", 1978): a
candidate's gain only shrinks as picks are added, so a stale gain is an upper bound and only
candidates whose bound tops the queue are re-evaluated. Rows are ranked in the order they were
picked; `score` is each pick's gain (non-increasing), so any prefix is the greedy selection of
that size.

`weight_by` names a stored score that makes quality and coverage combine: w_j ∈
[1 − quality_weight, 1] is the pick's percentile rank of that score in the pool (missing scores
rank lowest), so a high-scoring row represents its neighbours better than a low-scoring one next
to it. f stays a facility-location function (on the similarities w_j · sim(i, j)), so the
guarantee holds. Without it, w_j = 1.

Scale: pools of at most `exact_rows` rows get the exact k-NN graph (all pairs, in memory).
Larger pools stream from DuckDB into k-means cells of about `cell_rows` rows spilled to a scratch
file (selectors/cells.py); each row's neighbours are searched in its own cell and the `probe − 1`
cells nearest it, so memory holds one group of cells plus the graph, n × (neighbors + 1) × 8 bytes
(264 MB at 1M rows and 32 neighbours; about twice that while it is turned around by candidate),
never the vectors of the pool. 32 neighbours: on the
Alpaca pools of bench/selection.py, 16 left the mean coverage distance 2.9% above the exact
greedy's (planted pool, 9,352 rows), 24 1.6%, 32 1.4% (the objective within 0.5%).

Not apricot-select: its facility location keeps the whole pool in memory (dense, or a sparse
matrix it is handed), it has no streaming input, and it has had no release since 2021.
"""

from __future__ import annotations

import heapq

import numpy as np
import pyarrow as pa

from curate.selectors.base import Selector, param
from curate.selectors.cells import CELL_ROWS, EXACT_ROWS, Cells
from curate.lib.vectors import VectorSource
from curate.lib.params import Budget


class FacilityLocation(Selector):
    """Select `budget` rows (a count, or a fraction of the pool) of the vectors named `vectors`
    maximising f(S) above. neighbors: k of the k-NN graph (memory n × (k + 1) × 8 bytes);
    weight_by / quality_weight: quality weights (a stored score name; weight range); max_similarity:
    if set, no two picks above this cosine similarity; exact_rows / cell_rows / probe / scratch_dir:
    the streaming path (selectors/cells.py); seed: the cells' k-means. Returns (id, gain) pairs in
    pick order. Raises CurateError when the pool's rows have no such vectors or score, ValueError
    for parameters out of range."""

    name = "facility_location"

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        weight_by = param(cls, params, "weight_by")
        return {f"vectors:{param(cls, params, 'vectors')}"} | ({f"scores:{weight_by}"} if weight_by else set())

    def __init__(self, budget: Budget = 0.1, vectors: str = "embed", neighbors: int = 32,
                 weight_by: str | None = None, quality_weight: float = 0.5, exact_rows: int = EXACT_ROWS,
                 cell_rows: int = CELL_ROWS, probe: int = 2, max_similarity: float | None = None, seed: int = 0,
                 scratch_dir: str | None = None):
        if neighbors < 1:
            raise ValueError(f"neighbors must be at least 1, got {neighbors}")
        if not 0 <= quality_weight <= 1:
            raise ValueError(f"quality_weight lies in [0, 1], got {quality_weight}")
        if probe < 1:
            raise ValueError(f"probe must be at least 1, got {probe}")
        self.budget, self.vectors, self.neighbors = budget, vectors, neighbors
        self.weight_by, self.quality_weight = weight_by, quality_weight
        self.exact_rows, self.cell_rows, self.probe, self.seed, self.scratch_dir = exact_rows, cell_rows, probe, seed, scratch_dir
        if max_similarity is not None and not -1 <= max_similarity <= 1:
            raise ValueError(f"max_similarity is a cosine similarity in [-1, 1], got {max_similarity}")
        self.max_similarity = max_similarity

    def select(self, con, run_id, pool, budget_rows):
        source = VectorSource(con, run_id, pool, self.vectors, {"weight": self.weight_by})
        with Cells(source, self.exact_rows, self.cell_rows, seed=self.seed, scratch_dir=self.scratch_dir) as cells:
            weight = cells.scores.get("weight")
            quality = None if weight is None else rank_weights(weight, self.quality_weight)
            picked, gains = greedy_cover(cells, budget_rows, self.neighbors, self.probe, quality, self.max_similarity)
            return list(zip(cells.ids.take(pa.array(picked)).to_pylist(), gains.tolist()))


def rank_weights(scores: np.ndarray, quality_weight: float) -> np.ndarray:
    """(n,) weights in [1 − quality_weight, 1]: each score's percentile rank in the pool (ties
    share their mean rank; NaN ranks lowest)."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    n = len(scores)
    if n == 1:
        return np.ones(1)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    mean_rank = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    ranks = np.empty(n)
    ranks[order] = mean_rank / (n - 1)
    return 1.0 - quality_weight + quality_weight * ranks


def knn_graph(cells: Cells, neighbors: int, probe: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `neighbors` most similar rows and itself: (nbr int32, sim float32), both
    (n, neighbors + 1), rows in id order; sim = max(0, cosine); −1 pads a row with fewer candidates.
    Exact for a one-cell pool; otherwise searched (faiss, exact inner product) among the rows of
    the row's cell and of the `probe − 1` cells whose centroids are nearest its cell's."""
    import faiss

    width = neighbors + 1
    nbr = np.full((cells.n, width), -1, np.int32)
    sim = np.zeros((cells.n, width), np.float32)
    for c in range(cells.k):
        rows = cells.members(c)
        if len(rows) == 0:
            continue
        others = [cells.members(o) for o in cells.nearest_cells(c, probe)[1:]]
        candidates = np.concatenate([rows, *others]) if others else rows
        vecs = cells.vectors(candidates)
        index = faiss.IndexFlatIP(vecs.shape[1])
        index.add(vecs)
        kk = min(width, len(candidates))
        found_sim, found = index.search(vecs[:len(rows)], kk)
        found_rows = candidates[found].astype(np.int32)
        # A row is its own neighbour at similarity 1, even among more than `neighbors` exact duplicates.
        has_self = (found_rows == rows[:, None]).any(axis=1)
        found_rows[~has_self, -1] = rows[~has_self]
        found_sim[~has_self, -1] = 1.0
        found_sim[found_rows == rows[:, None]] = 1.0
        nbr[rows, :kk] = found_rows
        sim[rows, :kk] = np.maximum(found_sim, 0.0)
    return nbr, sim


EDGE_CHUNK = 1 << 22  # edges turned around at a time (bounds the temporary arrays)


def reverse_graph(nbr: np.ndarray, sim: np.ndarray, group: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph by candidate: for candidate j, rows[indptr[j]:indptr[j+1]] (ascending) are the
    rows that count j among their neighbours and sims[...] their similarities to j (CSR; int64,
    int32, float32). With `group`, only edges between rows of the same group are kept. A counting
    sort in chunks of EDGE_CHUNK edges: besides the result, memory holds one chunk's indices."""
    n, width = nbr.shape
    flat, sim_flat = nbr.reshape(-1), sim.reshape(-1)
    chunks = [(a, min(len(flat), a + EDGE_CHUNK)) for a in range(0, len(flat), EDGE_CHUNK)]

    def kept(a: int, b: int) -> np.ndarray:
        keys = flat[a:b]
        keep = keys >= 0  # −1 pads
        if group is not None:
            keep &= group[np.where(keep, keys, 0)] == group[np.arange(a, b) // width]
        return np.flatnonzero(keep) + a

    counts = np.zeros(n, np.int64)
    for a, b in chunks:
        counts += np.bincount(flat[kept(a, b)], minlength=n)
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    rows = np.empty(int(indptr[-1]), np.int32)
    sims = np.empty(int(indptr[-1]), np.float32)
    cursor = indptr[:-1].copy()
    for a, b in chunks:
        edges = kept(a, b)
        keys = flat[edges]
        order = np.argsort(keys, kind="stable")
        edges, keys = edges[order], keys[order]
        starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
        lengths = np.diff(np.r_[starts, len(keys)])
        dest = cursor[keys] + (np.arange(len(keys)) - np.repeat(starts, lengths))
        rows[dest] = edges // width
        sims[dest] = sim_flat[edges]
        cursor[keys[starts]] += lengths
    return indptr, rows, sims


def greedy_cover(cells: Cells, budget: int, neighbors: int = 32, probe: int = 2, weight: np.ndarray | None = None,
                 max_similarity: float | None = None, group: np.ndarray | None = None, caps: np.ndarray | None = None,
                 refill=None) -> tuple[np.ndarray, np.ndarray]:
    """Facility-location greedy over a pool read through `cells`: (picked rows in pick order,
    gains). The k-NN graph as knn_graph builds it; weight: w_j of each row (None: 1).

    group and caps (per group): a row counts only the rows of its own group, and a group gives at
    most caps[g] picks (facility location inside each group, as kMQ uses it); refill(short, room)
    hands a shortfall to groups with rows left (room: per group), returning extra caps.
    max_similarity: no two picks above this cosine similarity: the greedy's choice is checked
    against the picks so far (Separation) and turned away if one is too similar."""
    nbr, sim = knn_graph(cells, neighbors, probe)
    graph = reverse_graph(nbr, sim, group)  # with groups, a row counts only the rows of its own
    del nbr, sim
    if max_similarity is None:
        return lazy_greedy(*graph, budget, weight, group, caps, refill)
    with Separation(cells, max_similarity, budget) as separation:
        return lazy_greedy(*graph, budget, weight, group, caps, refill, separation)


EXACT_CHECK_PICKS = 2_000
CHECK_PROBE = 8


class Separation:
    """Keeps picks at most `max_similarity` apart: blocked(j) says whether row j's cosine
    similarity to a pick so far exceeds it, add(j) records a pick. Exact (all picks, faiss
    IndexFlatIP) on a one-cell pool or for selections up to EXACT_CHECK_PICKS rows; beyond, an
    IVF index on the cells' centroids checks the picks of the CHECK_PROBE cells nearest the row
    (two rows above 0.9 cosine lie within 0.45 of each other, so their cells are neighbours)."""

    def __init__(self, cells: Cells, max_similarity: float, budget: int):
        import faiss

        self.max_similarity = max_similarity
        # One row at a time: faiss's threads only add their start-up (ruinous on a busy machine).
        self._threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        self.reader = cells.reader()
        self._quantizer = None
        if budget > EXACT_CHECK_PICKS and cells.centroids is not None:  # else every pick: exact
            self._quantizer = faiss.IndexFlatL2(cells.dim)
            self._quantizer.add(np.ascontiguousarray(cells.centroids, np.float32))
            self.index = faiss.IndexIVFFlat(self._quantizer, cells.dim, len(cells.centroids), faiss.METRIC_INNER_PRODUCT)
            self.index.nprobe = min(len(cells.centroids), CHECK_PROBE)
        else:
            self.index = faiss.IndexFlatIP(cells.dim)
        self._last = (-1, None)

    def blocked(self, j: int) -> bool:
        vec = self.reader.row(j)
        self._last = (j, vec)
        if self.index.ntotal == 0:
            return False
        sim, found = self.index.search(vec, 1)
        return bool(found[0, 0] >= 0 and sim[0, 0] > self.max_similarity)

    def add(self, j: int) -> None:
        vec = self._last[1] if self._last[0] == j else self.reader.row(j)
        self.index.add(vec)

    def close(self) -> None:
        import faiss

        self.reader.close()
        faiss.omp_set_num_threads(self._threads)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def lazy_greedy(indptr: np.ndarray, rows: np.ndarray, sims: np.ndarray, budget: int,
                weight: np.ndarray | None = None, group: np.ndarray | None = None, caps: np.ndarray | None = None,
                refill=None, separation: Separation | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximisation of f(S) = Σ_i max_{j∈S} w_j · s(i, j) over a sparse similarity given by
    candidate (reverse_graph's CSR; s ≥ 0), with Minoux's lazy evaluations. Returns (picked
    candidate indices in pick order, their marginal gains), at most `budget` of them; ties go to
    the lower index. group/caps/refill: as in greedy_cover (the graph already keeps only edges
    inside groups: reverse_graph); separation: turns away a choice too similar to a pick."""
    n = len(indptr) - 1
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    first = np.zeros(n)
    nonempty = indptr[1:] > indptr[:-1]
    if nonempty.any():
        first[nonempty] = np.add.reduceat(sims, indptr[:-1][nonempty], dtype=np.float64)
    best = np.zeros(n)  # each row's value: w · similarity of its best pick so far

    def gains(js: np.ndarray) -> np.ndarray:
        starts, ends = indptr[js], indptr[js + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(len(js))
        owner = np.repeat(np.arange(len(js)), lengths)
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        edges = starts[owner] + offsets
        values = np.maximum(w[js][owner] * sims[edges] - best[rows[edges]], 0.0)
        return np.bincount(owner, weights=values, minlength=len(js))

    def take(j: int) -> None:
        a, b = indptr[j], indptr[j + 1]
        r = rows[a:b]
        best[r] = np.maximum(best[r], w[j] * sims[a:b])
        if separation is not None:
            separation.add(j)

    return _lazy(first * w, gains, take, budget, group=group, caps=caps, refill=refill,
                 blocked=separation.blocked if separation is not None else None)


def dense_lazy_greedy(sim: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """lazy_greedy on a full symmetric (n, n) similarity matrix (negatives count as 0): the exact
    greedy, for pools small enough to hold the matrix. Returns (picks, gains)."""
    s = np.maximum(np.asarray(sim, np.float32), 0.0)
    best = np.zeros(len(s), np.float32)

    def gains(js: np.ndarray) -> np.ndarray:
        return np.maximum(s[js] - best, 0.0).sum(axis=1, dtype=np.float64)

    def take(j: int) -> None:
        np.maximum(best, s[j], out=best)

    return _lazy(s.sum(axis=1, dtype=np.float64), gains, take, budget)


LAZY_BATCH = 16  # stale candidates re-evaluated together (one vectorised gather)


def _lazy(first: np.ndarray, gains, take, budget: int, batch: int = LAZY_BATCH, group: np.ndarray | None = None,
          caps: np.ndarray | None = None, refill=None, blocked=None) -> tuple[np.ndarray, np.ndarray]:
    """Minoux's lazy greedy for a monotone submodular function, given each candidate's first
    (upper) bound, the current gains of a set of candidates (gains(js)) and the update when j is
    taken (take(j)). The candidates with the highest bounds are re-evaluated `batch` at a time;
    the best of them is taken when its fresh gain is at least every other bound (so the result is
    exactly the greedy's), the rest go back with their fresh gains as bounds. Candidates never
    re-evaluated stay in an array sorted by their first bound; only re-evaluated ones enter the
    heap. group/caps: a candidate of a full group is set aside (taken up again if refill(short,
    room) raises its cap once nothing else is left); blocked(j): the winner j is dropped instead."""
    n = len(first)
    budget = min(budget, n)
    stream = np.lexsort((np.arange(n), -first))  # by first bound, descending; ties by index
    bound = first[stream]
    heap: list[tuple[float, int, int]] = []  # (−gain, candidate, picks when evaluated)
    picked: list[int] = []
    out_gains: list[float] = []
    if group is not None:
        caps = np.asarray(caps, np.int64).copy()
        count = np.zeros(len(caps), np.int64)
        alive = np.bincount(group, minlength=len(caps))  # rows neither dropped nor picked
        parked: list[list[tuple[float, int]]] = [[] for _ in caps]
        group_list = group.tolist()
    p = 0
    while len(picked) < budget:
        now = len(picked)
        js, known = [], []  # popped candidates; their gain if exact now, else None
        while len(js) < batch:
            if p < n and (not heap or bound[p] > -heap[0][0] or (bound[p] == -heap[0][0] and stream[p] < heap[0][1])):
                j, g, exact = int(stream[p]), float(bound[p]), now == 0  # before any pick a first bound is exact
                p += 1
            elif heap:
                neg, j, stamp = heapq.heappop(heap)
                g, exact = -neg, stamp == now
            else:
                break
            if group is not None and count[group_list[j]] >= caps[group_list[j]]:
                parked[group_list[j]].append((g, j))
                continue
            js.append(j)
            known.append(g if exact else None)
            if exact and len(js) == 1:
                break  # the best bound is exact: it is the greedy's choice
        if not js:
            if refill is None or group is None:
                break
            room = np.where(np.array([len(q) for q in parked]) > 0, alive, 0)
            extra = np.asarray(refill(budget - len(picked), room), np.int64) if room.any() else np.zeros(len(caps), np.int64)
            if extra.sum() <= 0:
                break
            caps += extra
            for g in np.flatnonzero(extra):
                for item in parked[g]:
                    heapq.heappush(heap, (-item[0], item[1], -1))
                parked[g] = []
            continue
        stale = [i for i, g in enumerate(known) if g is None]
        if stale:
            fresh = gains(np.array([js[i] for i in stale], np.int64))
            for i, g in zip(stale, fresh.tolist()):
                known[i] = g
        top = max(range(len(js)), key=lambda i: (known[i], -js[i]))
        rest = max(-heap[0][0] if heap else -np.inf, float(bound[p]) if p < n else -np.inf)
        taken = known[top] >= rest
        for i, j in enumerate(js):
            if not (taken and i == top):
                heapq.heappush(heap, (-known[i], j, now))
        if taken:
            j = js[top]
            if blocked is not None and blocked(j):
                if group is not None:
                    alive[group_list[j]] -= 1
                continue
            take(j)
            picked.append(j)
            out_gains.append(known[top])
            if group is not None:
                count[group_list[j]] += 1
                alive[group_list[j]] -= 1
    return np.array(picked, np.int64), np.array(out_gains, np.float64)


def dense_greedy(sim: np.ndarray, budget: int) -> tuple[np.ndarray, float]:
    """The reference: plain greedy facility location on a full (n, n) similarity matrix (negative
    similarities clipped to 0), every gain recomputed at every step. Returns (picks, f(S)). O(budget
    × n²): for pools small enough to hold the matrix."""
    s = np.maximum(np.asarray(sim, np.float64), 0.0)
    best = np.zeros(len(s))
    picked: list[int] = []
    for _ in range(min(budget, len(s))):
        gain = np.maximum(s - best[:, None], 0.0).sum(axis=0)
        gain[picked] = -1.0
        j = int(np.argmax(gain))
        picked.append(j)
        best = np.maximum(best, s[:, j])
    return np.array(picked), float(best.sum())


def objective(sim: np.ndarray, picked: np.ndarray) -> float:
    """f(S) on a full similarity matrix: Σ_i max_{j∈S} max(0, sim(i, j))."""
    return float(np.maximum(np.asarray(sim)[:, picked], 0.0).max(axis=1).sum())
