"""Random selection: the baseline every data-selection paper compares against.

Deterministic for a seed and independent of row order or pool size: rows are ranked by a hash
of (seed, id), so a larger budget extends a smaller one, and DuckDB does the work without the
pool leaving the database.
"""

from __future__ import annotations

from curate.selectors.base import Selector
from curate.lib.params import Budget


class RandomSelection(Selector):
    name = "random"

    def __init__(self, budget: Budget = 0.1, seed: int = 0):
        self.budget = budget
        self.seed = seed

    def select(self, con, run_id, pool, budget_rows):
        return con.execute(
            f"SELECT id, NULL::DOUBLE FROM {pool} ORDER BY md5(? || ':' || id) LIMIT ?",
            [str(self.seed), budget_rows],
        ).fetchall()
