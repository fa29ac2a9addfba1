"""DEITA-style selection: score first, diversity-aware.

Rows are taken in descending order of a stored score (or the product of several, DEITA's
complexity × quality) and a row is admitted only when its cosine similarity to every row
admitted so far is at most `max_similarity` (DEITA's τ = 0.9, i.e. a cosine distance of at
least 0.1), until the budget is met. DuckDB sorts; rows stream out of it in Arrow batches and
reading stops as soon as the budget is full.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.selectors.base import Selector, param
from curate.lib.greedy import ADMITTED, GreedyCosine, normalised
from curate.lib.vectors import VectorSource, as_matrix
from curate.lib.params import Budget

CHUNK_ROWS = 2048


class DeitaSelection(Selector):
    name = "deita"

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        score = param(cls, params, "score")
        return {f"vectors:{param(cls, params, 'vectors')}"} | {f"scores:{s}" for s in ([score] if isinstance(score, str) else score)}

    def __init__(self, budget: Budget = 0.1, score: str | list[str] = "deita", vectors: str = "embed",
                 max_similarity: float = 0.9):
        if not -1 <= max_similarity <= 1:
            raise ValueError(f"max_similarity is a cosine similarity in [-1, 1], got {max_similarity}")
        self.budget = budget
        self.scores = [score] if isinstance(score, str) else list(score)
        if not self.scores:
            raise ValueError("score names at least one stored score")
        self.vectors = vectors
        self.max_similarity = max_similarity

    def select(self, con, run_id, pool, budget_rows):
        columns = {f"score{i}": name for i, name in enumerate(self.scores)}
        source = VectorSource(con, run_id, pool, self.vectors, columns)
        combined = " * ".join(f'"{c}"' for c in columns)
        # Unscored rows come last; ties in score go by id, so the result never depends on arrival order.
        ordered = source.ordered(f"{combined} DESC NULLS LAST, v.id", batch_rows=CHUNK_ROWS)
        greedy = None
        picked: list[tuple[str, float | None]] = []
        for batch in ordered:  # a generator: leaving the loop early closes DuckDB's reader
            vecs = normalised(as_matrix(batch.column("vec")))
            if greedy is None:
                greedy = GreedyCosine(vecs.shape[1], self.max_similarity, limit=budget_rows)
            verdict, _ = greedy.offer(vecs)
            admitted = np.flatnonzero(verdict == ADMITTED)
            score = _product([batch.column(c) for c in columns])
            picked.extend(zip(batch.column("id").take(pa.array(admitted)).to_pylist(), score[admitted].tolist()))
            if greedy.full():
                break
        ordered.close()
        return [(id_, None if np.isnan(s) else s) for id_, s in picked]


def _product(columns: list[pa.Array]) -> np.ndarray:
    out = np.ones(len(columns[0]))
    for c in columns:
        out = out * c.to_numpy(zero_copy_only=False).astype(np.float64)
    return out
