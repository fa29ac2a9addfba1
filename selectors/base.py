"""The selector contract: a global step after the stream. It reads a run's curated rows from
the store and writes a named selection (ids with a rank) back."""

from __future__ import annotations

from typing import ClassVar

import duckdb

from curate.lib.params import param  # noqa: F401 - for the selectors' `reads`


class Selector:
    name: ClassVar[str] = "selector"
    budget: float | int  # set by every selector's constructor; see budget_rows

    def select(self, con: duckdb.DuckDBPyConnection, run_id: str, pool: str, budget_rows: int) -> list[tuple[str, float | None]]:
        """Return (id, score) or (id, score, cluster) tuples, best first, at most `budget_rows`
        of them, drawn from the `pool` relation (a view of the run's curated rows). Stage
        results of the pool's rows are in the `scores`, `vectors` and `verdicts` tables."""
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        """What the selector, so configured, reads that the run's stages must store, as stages
        declare it (`Stage.writes`: `scores:<name>`, `vectors:<name>`); a config whose stages
        store none of it is rejected before anything runs (pipeline/dependencies.py). Default:
        nothing beyond the kept rows."""
        return set()

    @classmethod
    def uses_ray(cls, params: dict) -> bool:
        """Whether the selector, so configured, runs work in Ray actors (the runner then keeps a
        Ray session open for the selectors)."""
        return False


def budget_rows(budget: float | int, pool_size: int) -> int:
    """A budget is a row count (an int ≥ 1) or a fraction of the pool (a float in (0, 1])."""
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(f"a fractional budget must lie in (0, 1], got {budget}")
        return round(budget * pool_size)
    if budget < 1:
        raise ValueError(f"a row budget must be at least 1, got {budget}")
    return min(budget, pool_size)
