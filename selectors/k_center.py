"""KCenter: greedy farthest-point selection (Gonzalez, "Clustering to minimize the maximum
intercluster distance", Theoretical Computer Science 38, 1985).

Start from the pool's most central row (the one most similar to the mean vector), then take, again
and again, the row farthest (cosine distance) from every row taken so far. The largest distance
from a pool row to its nearest pick is then at most twice the smallest any selection of that size
can reach: the selection bounds the worst-covered row, which is what k-center optimises. It does
not optimise the mean: the rows farthest from everything are the isolated ones, and it takes them
first, each covering little but itself (facility_location optimises the mean). The ranking is the
order of the traversal; `score` is each pick's distance to the picks before it (the covering radius
just before it was taken; NULL for the first pick of a cell).

Scale: a pool of at most `exact_rows` rows is traversed exactly, in memory. A larger pool streams
from DuckDB into k-means cells of about `cell_rows` rows (selectors/cells.py; at most budget / 4
cells, so each gets several picks) and each cell is traversed on its own, reading only that cell:
the global traversal on a pool where rows of different cells are never each other's nearest pick.
Taking the picks of all cells in descending order of their radius is exactly what one traversal
over all cells would take next; a cell is traversed further (re-read) while its last computed pick
still made the cut. The covering radius reported this way is an upper bound of the true one (a row
may lie nearer a pick in the next cell). Memory: one cell's vectors plus a few numbers per row.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from curate.selectors.base import Selector
from curate.selectors.cells import CELL_ROWS, EXACT_ROWS, Cells
from curate.selectors.vectors import VectorSource

GRAM_ROWS = 4096  # cells up to this size get their similarity matrix at once (64 MiB)


class KCenter(Selector):
    """Select `budget` rows (a count, or a fraction of the pool) of the vectors named `vectors` by
    the farthest-point traversal above. exact_rows / cell_rows / scratch_dir: the streaming path
    (selectors/cells.py); seed: the cells' k-means. Returns (id, radius) pairs in traversal order,
    radius a cosine distance in [0, 2] (None for a cell's first pick). Raises CurateError when
    the pool's rows have no such vectors."""

    name = "k_center"

    def __init__(self, budget: float | int = 0.1, vectors: str = "embed", exact_rows: int = EXACT_ROWS,
                 cell_rows: int = CELL_ROWS, seed: int = 0, scratch_dir: str | None = None):
        self.budget, self.vectors = budget, vectors
        self.exact_rows, self.cell_rows, self.seed, self.scratch_dir = exact_rows, cell_rows, seed, scratch_dir

    def select(self, con, run_id, pool, budget_rows):
        source = VectorSource(con, run_id, pool, self.vectors)
        with Cells(source, self.exact_rows, self.cell_rows, max_cells=max(1, budget_rows // 4), seed=self.seed,
                   scratch_dir=self.scratch_dir) as cells:
            rows, radius = traverse_cells(cells, budget_rows)
            ids = cells.ids
        return [(i, None if math.isinf(r) else r) for i, r in zip(ids.take(pa.array(rows)).to_pylist(), radius.tolist())]


def farthest_first(vecs: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Gonzalez's traversal of normalised rows (m, d), `steps` picks (at most m): (indices in pick
    order, each pick's cosine distance to the nearest earlier pick; inf for the first, which is the
    row most similar to the mean)."""
    m = len(vecs)
    steps = min(steps, m)
    if steps == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    first = int(np.argmax(vecs @ vecs.mean(axis=0)))
    # A cell's similarities in one matrix product when they fit (then a step is a few vector
    # operations, no BLAS call each: many small ones are slow on a busy machine); else a row each.
    gram = vecs @ vecs.T if m <= GRAM_ROWS else None
    row = (lambda j: gram[j]) if gram is not None else (lambda j: vecs @ vecs[j])
    order, radius = [first], [np.inf]
    distance = 1.0 - row(first)
    distance[first] = -np.inf  # taken
    for _ in range(steps - 1):
        j = int(np.argmax(distance))
        order.append(j)
        radius.append(float(max(distance[j], 0.0)))
        np.minimum(distance, 1.0 - row(j), out=distance)
        distance[j] = -np.inf
    return np.array(order, np.int64), np.array(radius)


def traverse_cells(cells: Cells, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `budget` picks of the farthest-point traversal over all cells, each cell's
    distances counted within the cell (exact for one cell). Returns (rows in pick order, radius at
    each pick). Picks are ordered by radius, descending; first picks of cells (infinite radius) by
    cell size, largest first."""
    sizes = cells.sizes()
    budget = min(budget, cells.n)
    share = np.minimum(sizes, np.ceil(1.5 * budget * sizes / max(1, cells.n)).astype(np.int64) + 2)
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    want = {c: int(share[c]) for c in range(cells.k) if sizes[c]}
    while want:
        for c, steps in want.items():
            rows = cells.members(c)
            order, radius = farthest_first(cells.vectors(rows), steps)
            done[c] = (rows[order], radius)
        computed = np.concatenate([rad for _, rad in done.values()])
        # The budget-th largest radius; with fewer picks computed than the budget, every cell goes on.
        cut = -np.inf if len(computed) <= budget else np.partition(computed, len(computed) - budget)[len(computed) - budget]
        # A cell whose last computed pick made the cut may have more picks that would: go further.
        want = {c: int(min(sizes[c], 2 * len(r))) for c, (r, rad) in done.items() if len(r) < sizes[c] and rad[-1] >= cut}
    cells_order = sorted(done)
    rows = np.concatenate([done[c][0] for c in cells_order])
    radius = np.concatenate([done[c][1] for c in cells_order])
    cell = np.concatenate([np.full(len(done[c][0]), c) for c in cells_order])
    step = np.concatenate([np.arange(len(done[c][0])) for c in cells_order])
    # Descending radius; among first picks, larger cells first; then by cell and step.
    ranking = np.lexsort((step, cell, -sizes[cell], -radius))[:budget]
    return rows[ranking], radius[ranking]
