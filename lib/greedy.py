"""Greedy cosine filtering: admit rows in a given order unless one already admitted is too
similar. DEITA's repr filter (score order, τ = 0.9) and SemDeDup (input order within a cluster)
both reduce to this.

Rows arrive in chunks: one faiss search per chunk against everything admitted (instead of one
host round trip per candidate, as the reference does), then a short sequential pass inside the
chunk over the rows that survived it.
"""

from __future__ import annotations

import numpy as np

ADMITTED = -1
NOT_CONSIDERED = -2  # the limit was reached before this row's turn


def normalised(vecs: np.ndarray) -> np.ndarray:
    vecs = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms > 0, norms, 1)


class GreedyCosine:
    """Admit a row unless its cosine similarity to an admitted row exceeds `max_similarity`."""

    def __init__(self, dim: int, max_similarity: float, limit: int | None = None, index=None):
        """index: an empty faiss inner-product index to hold the admitted rows (default: exact,
        IndexFlatIP); an IVF index checks a row only against admitted rows in its probed lists."""
        import faiss

        self.max_similarity = max_similarity
        self.limit = limit
        self.index = index if index is not None else faiss.IndexFlatIP(dim)

    @property
    def admitted(self) -> int:
        return self.index.ntotal

    def full(self) -> bool:
        return self.limit is not None and self.admitted >= self.limit

    def offer(self, vecs: np.ndarray, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Offer normalised rows in order, admitting at most `limit` of them (besides the overall
        limit). Returns, per row, ADMITTED, NOT_CONSIDERED, or the admission number (0-based, over
        all calls) of the most similar admitted row that blocked it; and that similarity (nan for
        admitted rows)."""
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        n = len(vecs)
        verdict = np.full(n, NOT_CONSIDERED, np.int64)
        similarity = np.full(n, np.nan, np.float32)
        if n == 0 or self.full() or (limit is not None and limit <= 0):
            return verdict, similarity
        verdict[:] = ADMITTED
        base = self.admitted
        if base:
            sim, nearest = self.index.search(vecs, 1)
            blocked = (sim[:, 0] > self.max_similarity) & (nearest[:, 0] >= 0)
            verdict[blocked], similarity[blocked] = nearest[blocked, 0], sim[blocked, 0]
        open_rows = np.flatnonzero(verdict == ADMITTED)
        gram = vecs[open_rows] @ vecs[open_rows].T
        room = None if self.limit is None else self.limit - base
        if limit is not None:
            room = limit if room is None else min(room, limit)
        newly: list[int] = []  # positions in open_rows, in admission order
        for j, row in enumerate(open_rows):
            if room is not None and len(newly) >= room:
                verdict[open_rows[j:]] = NOT_CONSIDERED
                break
            if newly:
                sims = gram[j, newly]
                best = int(np.argmax(sims))
                if sims[best] > self.max_similarity:
                    verdict[row], similarity[row] = base + best, sims[best]
                    continue
            newly.append(j)
        self.index.add(vecs[open_rows[newly]])
        return verdict, similarity
