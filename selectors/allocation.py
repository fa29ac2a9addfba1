"""Budget allocation over clusters and sampling within them (kMQ, "Diversify and Conquer").

All of it works on flat NumPy arrays of a pool's rows (cluster id, score), so a million rows
take milliseconds: no Python loop over rows or clusters.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Allocation = Literal["uniform", "proportional", "sqrt"]


def split_budget(budget: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer shares of `budget` proportional to `weights`, summing to `budget` (largest
    remainders get the leftover rows; ties broken at random)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    if budget <= 0 or total <= 0:
        return np.zeros(len(weights), np.int64)
    share = budget * weights / total
    quota = np.floor(share).astype(np.int64)
    leftover = int(budget - quota.sum())
    by_remainder = np.lexsort((rng.random(len(share)), -(share - quota)))
    quota[by_remainder[:leftover]] += 1
    return quota


def allocation_weights(sizes: np.ndarray, allocation: Allocation) -> np.ndarray:
    """Each cluster's weight in the budget split: 1 (uniform), n_c (proportional) or √n_c (sqrt)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if allocation not in ("uniform", "proportional", "sqrt"):
        raise ValueError(f"allocation is uniform, proportional or sqrt, got {allocation!r}")
    return {"uniform": (sizes > 0).astype(np.float64), "proportional": sizes.astype(np.float64),
            "sqrt": np.sqrt(sizes)}[allocation]


def cluster_quotas(sizes: np.ndarray, budget: int, allocation: Allocation, rng: np.random.Generator,
                   redistribute: bool = False) -> np.ndarray:
    """Rows to take from each cluster.

    `uniform` gives every cluster B/K (kMQ), `proportional` B·n_c/N, `sqrt` B·√n_c/Σ√n.
    A cluster smaller than its quota gives all it has; kMQ leaves that shortfall unfilled (the
    selection may be smaller than B); `redistribute` hands it to clusters with rows to spare,
    by the same rule."""
    sizes = np.asarray(sizes, dtype=np.int64)
    weights = allocation_weights(sizes, allocation)
    taken = np.minimum(split_budget(budget, weights, rng), sizes)
    while redistribute:
        shortfall = budget - int(taken.sum())
        room = sizes - taken
        if shortfall <= 0 or not room.any():
            break
        taken += np.minimum(split_budget(shortfall, np.where(room > 0, weights, 0.0), rng), room)
    return taken


def sampling_keys(scores: np.ndarray | None, temperature: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """Gumbel top-k keys: the rows of a cluster in descending key order are a sample without
    replacement with p_i ∝ exp(s_i / temperature) (uniform without scores)."""
    keys = rng.gumbel(size=n)
    if scores is not None:
        keys = keys + np.asarray(scores, dtype=np.float64) / temperature
    return keys


def within_cluster_order(cluster: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by cluster, and by descending key inside a cluster, so that taking a
    cluster's first q rows takes its q best. Returns (row order, position within cluster)."""
    order = np.lexsort((-keys, cluster))
    sorted_cluster = cluster[order]
    starts = np.flatnonzero(np.r_[True, sorted_cluster[1:] != sorted_cluster[:-1]])
    first_of_run = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order, np.arange(len(order)) - first_of_run


def refined_quotas(sizes: np.ndarray, budget: int, rounds: int, allocation: Allocation, signal: np.ndarray | None,
                   cluster: np.ndarray, position: np.ndarray, order: np.ndarray, rng: np.random.Generator,
                   temperature: float = 1.0, redistribute: bool = False) -> list[np.ndarray]:
    """Per-round cluster quotas for iterative kMQ (rows taken in each cluster after each round).

    Round 0 spends B/R by `allocation`. Each later round weights clusters by the softmax of the
    mean `signal` (a stored per-row score, e.g. reward gap or loss) over the rows chosen so far
    in the cluster, draws B/R cluster ids with replacement by those weights, and takes that many
    further rows from each. Clusters with nothing chosen yet get the mean signal of the chosen
    rows (kMQ's code lets them fall out of the weights, misaligning them)."""
    per_round = split_budget(budget, np.ones(rounds), rng)
    taken = cluster_quotas(sizes, int(per_round[0]), allocation, rng, redistribute)
    history = [taken.copy()]
    k = len(sizes)
    sorted_cluster = cluster[order]
    sorted_signal = None if signal is None else np.asarray(signal, np.float64)[order]
    for spend in per_round[1:]:
        chosen = position < taken[sorted_cluster]
        sums = np.bincount(sorted_cluster[chosen], weights=sorted_signal[chosen], minlength=k)
        counts = np.bincount(sorted_cluster[chosen], minlength=k)
        overall = sums.sum() / max(1, counts.sum())
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
        want = int(spend)
        while want > 0:
            room = sizes - taken
            logits = np.where(room > 0, mean / temperature, -np.inf)
            if not np.isfinite(logits).any():
                break
            weights = np.exp(logits - logits.max())
            got = np.minimum(rng.multinomial(want, weights / weights.sum()), room)
            taken = taken + got
            want = want - int(got.sum()) if redistribute else 0
        history.append(taken.copy())
    return history


def pick(order: np.ndarray, position: np.ndarray, cluster: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Row indices chosen when each cluster gives its first `taken[c]` rows, ranked round-robin
    over clusters (every cluster's first, then every cluster's second, …): any prefix of the
    ranking is itself spread over the clusters."""
    sorted_cluster = cluster[order]
    chosen = position < taken[sorted_cluster]
    rows, pos, clu = order[chosen], position[chosen], sorted_cluster[chosen]
    return rows[np.lexsort((clu, pos))]
