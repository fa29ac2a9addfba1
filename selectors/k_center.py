"""KCenter: k-center selection that bounds the worst-covered rows without giving up the mean.

Two phases, the second a farthest-point traversal (Gonzalez, "Clustering to minimize the maximum
intercluster distance", Theoretical Computer Science 38, 1985):

1. Dense part (`cover_fraction` of the budget, default half): the greedy for k-center with
   outliers (Charikar, Khuller, Mount & Narasimhan, "Algorithms for facility location problems
   with outliers", SODA 2001; Malkomes, Kusner, Chen, Weinberger & Moseley, "Fast distributed
   k-center clustering with outliers on massive data", NeurIPS 2015): each pick the row whose
   ball of radius r holds the most rows no pick covers yet, i.e. the greedy for maximum coverage
   by balls (Hochbaum & Pathria, "Analysis of the greedy approach in problems of maximum
   k-coverage", 1998), without Charikar's expansion of a taken ball to 3r (measured: the expansion
   spreads the picks like plain Gonzalez and gives back the mean). Balls are read off a faiss k-NN
   graph of `neighbors` rows (the one facility_location builds): the cover stops at a ball's
   `neighbors` nearest rows. r, unless `radius` sets it: the median distance from a row to its
   ⌈n / budget⌉-th nearest row (at most the `neighbors`-th): the radius at which `budget` balls
   would tile the pool. Rows no ball reaches are the outliers this phase leaves.
2. Outliers: Gonzalez's traversal continued from those picks for the rest of the budget, each pick
   the row farthest (cosine distance) from every pick so far. Whatever the first phase took, the
   k₂ picks of this phase and the row then farthest from all picks are k₂ + 1 rows pairwise at
   least the final covering radius apart, so that radius is at most twice the optimum of k₂
   centres: the worst-covered row stays bounded as in plain Gonzalez.

Plain Gonzalez (`cover_fraction: 0`) takes the most isolated rows first, each covering little but
itself: on the pools of bench/selection.py (10% budgets) its mean distance to the nearest pick
was above a random draw's (0.504 against 0.446 on 3,111 Alpaca rows; 0.326 against 0.315 on 9,352
rows with planted paraphrases). The two phases: mean 0.413 / 0.266, and p90 (0.618 / 0.451) and
maximum (0.697 / 0.564) below plain Gonzalez's (0.665 / 0.533, 0.715 / 0.589) and far below
random's (0.676 / 0.591, 0.829 / 0.791). Measured and not taken, on the Alpaca pool: Gonzalez
over candidates without the rows of largest k-NN distance (density-based outlier removal) got
below random's mean only with half the rows dropped, its maximum then above random's (0.443, max
0.862); Charikar's greedy with taken balls expanded to 2r or 3r, then the traversal, was behind
on mean, p90 and maximum alike (at best 0.431 / 0.641 / 0.726). Half the budget to each phase:
0.3 of it to the first kept the maximum lower and the mean higher, 0.7 the reverse (r = 0.4,
both pools).

The ranking is the first phase's picks in greedy order, then the traversal's; `score` is each
pick's cosine distance to the nearest earlier pick (NULL for a cell's first pick); in the
traversal it is the covering radius just before the pick, non-increasing.

Scale: a pool of at most `exact_rows` rows is selected exactly, in memory. A larger pool streams
from DuckDB into k-means cells of about `cell_rows` rows (selectors/cells.py; at most budget / 4
cells, so each gets several picks). The k-NN graph is searched within a row's cell and the
`probe − 1` nearest (n × (neighbors + 1) × 8 bytes, as in facility_location); each cell is
traversed on its own, from its first-phase picks, reading only that cell: the global traversal on
a pool where rows of different cells are never each other's nearest pick. Taking the traversal
picks of all cells in descending order of their radius is exactly what one traversal over all
cells would take next; a cell is traversed further (re-read) while its last computed pick still
made the cut. The radius reported this way is an upper bound of the true one (a row may lie
nearer a pick in the next cell). Memory: the graph, one cell's vectors and a few numbers per row.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from curate.selectors.base import Selector, param
from curate.selectors.cells import CELL_ROWS, EXACT_ROWS, Cells
from curate.selectors.facility_location import knn_graph, lazy_greedy, reverse_graph
from curate.lib.vectors import VectorSource
from curate.lib.params import Budget

GRAM_ROWS = 4096  # cells up to this size get their similarity matrix at once (64 MiB)


class KCenter(Selector):
    """Select `budget` rows (a count, or a fraction of the pool) of the vectors named `vectors` by
    the two phases above. cover_fraction: the share of the budget the dense phase takes (0: plain
    Gonzalez); radius: its ball radius, a cosine distance (None: from the k-NN graph, as above);
    neighbors: k of that graph; exact_rows / cell_rows / probe / scratch_dir: the streaming path
    (selectors/cells.py); seed: the cells' k-means. Returns (id, distance to the nearest earlier
    pick) pairs in rank order, a cosine distance in [0, 2] (None for a cell's first pick). Raises
    CurateError when the pool's rows have no such vectors, ValueError for parameters out of range."""

    name = "k_center"

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        return {f"vectors:{param(cls, params, 'vectors')}"}

    def __init__(self, budget: Budget = 0.1, vectors: str = "embed", cover_fraction: float = 0.5,
                 radius: float | None = None, neighbors: int = 32, exact_rows: int = EXACT_ROWS,
                 cell_rows: int = CELL_ROWS, probe: int = 2, seed: int = 0, scratch_dir: str | None = None):
        if not 0.0 <= cover_fraction <= 1.0:
            raise ValueError(f"k_center: cover_fraction must be in [0, 1], got {cover_fraction}")
        if radius is not None and not 0.0 < radius <= 2.0:
            raise ValueError(f"k_center: radius must be in (0, 2], got {radius}")
        if neighbors < 1 or probe < 1:
            raise ValueError("k_center: neighbors and probe must be at least 1")
        self.budget, self.vectors, self.cover_fraction, self.radius = budget, vectors, cover_fraction, radius
        self.neighbors, self.probe = neighbors, probe
        self.exact_rows, self.cell_rows, self.seed, self.scratch_dir = exact_rows, cell_rows, seed, scratch_dir

    def select(self, con, run_id, pool, budget_rows):
        source = VectorSource(con, run_id, pool, self.vectors)
        with Cells(source, self.exact_rows, self.cell_rows, max_cells=max(1, budget_rows // 4), seed=self.seed,
                   scratch_dir=self.scratch_dir) as cells:
            rows, score = robust_k_center(cells, budget_rows, self.cover_fraction, self.radius, self.neighbors, self.probe)
            ids = cells.ids
        return [(i, None if math.isinf(r) else r) for i, r in zip(ids.take(pa.array(rows)).to_pylist(), score.tolist())]


def robust_k_center(cells: Cells, budget: int, cover_fraction: float = 0.5, radius: float | None = None,
                    neighbors: int = 32, probe: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both phases over a pool read through `cells`: (rows in rank order, each pick's cosine
    distance to the nearest earlier pick of its cell; inf for a cell's first pick)."""
    budget = min(budget, cells.n)
    dense = np.zeros(0, np.int64)
    if budget and cover_fraction > 0:
        dense = ball_cover(cells, int(round(cover_fraction * budget)), budget, radius, neighbors, probe)
    rows, radius_ = traverse_cells(cells, budget - len(dense), dense)
    return np.concatenate([dense, rows]), np.concatenate([dense_scores(cells, dense), radius_])


def ball_cover(cells: Cells, picks: int, budget: int, radius: float | None = None, neighbors: int = 32,
               probe: int = 2) -> np.ndarray:
    """The dense phase: at most `picks` rows, each the centre of the radius-r ball (within the k-NN
    graph) holding the most rows not yet covered; stops early when no ball covers a new row."""
    if picks <= 0:
        return np.zeros(0, np.int64)
    nbr, sim = knn_graph(cells, neighbors, probe)
    r = ball_radius(sim, cells.n, budget) if radius is None else radius
    inside = (sim >= 1.0 - r).astype(np.float32)  # padding (−1 neighbours) is dropped by reverse_graph
    del sim
    graph = reverse_graph(nbr, inside)
    del nbr, inside
    picked, gains = lazy_greedy(*graph, picks)
    return picked[gains > 0]


def ball_radius(sim: np.ndarray, n: int, budget: int) -> float:
    """The median cosine distance from a row to its ⌈n / budget⌉-th nearest row (column 0 is the
    row itself; at most the graph's last column)."""
    column = min(sim.shape[1] - 1, max(1, math.ceil(n / max(1, budget))))
    return float(np.median(1.0 - sim[:, column]))


def dense_scores(cells: Cells, dense: np.ndarray) -> np.ndarray:
    """Each dense-phase pick's cosine distance to the nearest earlier one in its cell (inf: none)."""
    out = np.full(len(dense), np.inf)
    cell = cells.cell[dense]
    for c in np.unique(cell):
        at = np.flatnonzero(cell == c)  # in pick order
        vecs = cells.vectors(dense[at])
        sims = vecs @ vecs.T
        for i in range(1, len(at)):
            out[at[i]] = max(0.0, 1.0 - float(sims[i, :i].max()))
    return out


def farthest_first(vecs: np.ndarray, steps: int, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gonzalez's traversal of normalised rows (m, d), `steps` picks (at most the rows not in
    `start`), continued from the rows `start` (indices) when given: (indices in pick order, each
    pick's cosine distance to the nearest earlier pick or start row; inf for a first pick without
    start rows, which is the row most similar to the mean)."""
    m = len(vecs)
    start = np.zeros(0, np.int64) if start is None else np.asarray(start, np.int64)
    steps = min(steps, m - len(start))
    if steps <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    # A cell's similarities in one matrix product when they fit (then a step is a few vector
    # operations, no BLAS call each: many small ones are slow on a busy machine); else a row each.
    gram = vecs @ vecs.T if m <= GRAM_ROWS else None
    row = (lambda j: gram[j]) if gram is not None else (lambda j: vecs @ vecs[j])
    order, radius = [], []
    if len(start):
        distance = 1.0 - (gram[start] if gram is not None else vecs[start] @ vecs.T).max(axis=0)
        distance[start] = -np.inf  # taken
    else:
        first = int(np.argmax(vecs @ vecs.mean(axis=0)))
        order.append(first)
        radius.append(np.inf)
        distance = 1.0 - row(first)
        distance[first] = -np.inf
    while len(order) < steps:
        j = int(np.argmax(distance))
        order.append(j)
        radius.append(float(max(distance[j], 0.0)))
        np.minimum(distance, 1.0 - row(j), out=distance)
        distance[j] = -np.inf
    return np.array(order, np.int64), np.array(radius)


def traverse_cells(cells: Cells, budget: int, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `budget` picks of the farthest-point traversal over all cells, continued from the
    rows `start` (already picked), each cell's distances counted within the cell (exact for one
    cell). Returns (rows in pick order, radius at each pick). Picks are ordered by radius,
    descending; first picks of cells without start rows (infinite radius) by cell size, largest
    first."""
    sizes = cells.sizes()
    start = np.zeros(0, np.int64) if start is None else np.asarray(start, np.int64)
    taken = np.bincount(cells.cell[start], minlength=cells.k) if len(start) else np.zeros(cells.k, np.int64)
    free = sizes - taken
    budget = min(budget, int(free.sum()))
    if budget <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    share = np.minimum(free, np.ceil(1.5 * budget * sizes / max(1, cells.n)).astype(np.int64) + 2)
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    want = {c: int(share[c]) for c in range(cells.k) if free[c]}
    while want:
        for c, steps in want.items():
            rows = cells.members(c)
            local = np.searchsorted(rows, start[cells.cell[start] == c]) if len(start) else None
            order, radius = farthest_first(cells.vectors(rows), steps, local)
            done[c] = (rows[order], radius)
        computed = np.concatenate([rad for _, rad in done.values()])
        # The budget-th largest radius; with fewer picks computed than the budget, every cell goes on.
        cut = -np.inf if len(computed) <= budget else np.partition(computed, len(computed) - budget)[len(computed) - budget]
        # A cell whose last computed pick made the cut may have more picks that would: go further.
        want = {c: int(min(free[c], 2 * len(r))) for c, (r, rad) in done.items() if len(r) < free[c] and rad[-1] >= cut}
    cells_order = sorted(done)
    rows = np.concatenate([done[c][0] for c in cells_order])
    radius = np.concatenate([done[c][1] for c in cells_order])
    cell = np.concatenate([np.full(len(done[c][0]), c) for c in cells_order])
    step = np.concatenate([np.arange(len(done[c][0])) for c in cells_order])
    # Descending radius; among first picks, larger cells first; then by cell and step.
    ranking = np.lexsort((step, cell, -sizes[cell], -radius))[:budget]
    return rows[ranking], radius[ranking]
