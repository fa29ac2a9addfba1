"""k-means with faiss: fit centroids on a sample, assign every row in a streaming pass."""

from __future__ import annotations

import numpy as np

# Centroids are fitted on k × this many sampled rows, the rest only assigned. Measured on 300,000
# clustered 384-d vectors (k=256): 64 rows per centroid costs 1.3% more inertia than faiss's cap
# of 256 at a quarter of the fitting time; `fit_sample` sets another size.
POINTS_PER_CENTROID = 64
SMALL_FIT = 100_000_000  # rows × k × d below which k-means runs in one thread


def fit_sample_rows(k: int, fit_sample: int | None) -> int:
    return fit_sample if fit_sample is not None else k * POINTS_PER_CENTROID


def fit_centroids(sample: np.ndarray, k: int, niter: int = 20, nredo: int = 1, seed: int = 0) -> np.ndarray:
    """(k', d) centroids, k' = min(k, rows): L2 k-means on float32 rows (cosine on normalised ones)."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    k = max(1, min(k, len(sample)))
    if k == 1:
        return sample.mean(axis=0, keepdims=True)
    km = faiss.Kmeans(sample.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=-(-len(sample) // k))  # faiss must not subsample again
    # A small fit in one thread: OpenMP's start-up per iteration costs more than the work (0.27 s
    # against 0.01 s for 64 centroids on 600 rows on a busy 2-core machine).
    threads = faiss.omp_get_max_threads()
    if len(sample) * k * sample.shape[1] < SMALL_FIT:
        faiss.omp_set_num_threads(1)
    try:
        km.train(sample)
    finally:
        faiss.omp_set_num_threads(threads)
    return km.centroids.copy()


class Assigner:
    """Nearest centroid (squared L2) of each row, batch by batch: faiss's exact search over the
    centroids. (NumPy's newer OpenBLAS, one GEMM with the half norms folded in and an argmax, ran
    level with it at 1M rows × 1,024 centroids: bench/README.md.)"""

    def __init__(self, centroids: np.ndarray):
        import faiss

        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or not len(centroids):
            raise ValueError(f"centroids must be a non-empty (k, d) array, got shape {centroids.shape}")
        self.d = centroids.shape[1]
        self.index = faiss.IndexFlatL2(self.d)
        self.index.add(centroids)

    def __call__(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float rows → (cluster ids int32 (n,), squared L2 distances float32 (n,)).
        Raises ValueError when d differs from the centroids'."""
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if vecs.ndim != 2 or (len(vecs) and vecs.shape[1] != self.d):
            raise ValueError(f"rows of {vecs.shape[1:] or 'no'} dims, centroids of {self.d}")
        if not len(vecs):
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        dist, label = self.index.search(vecs, 1)
        return label[:, 0].astype(np.int32), dist[:, 0]
