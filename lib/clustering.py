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
    """Nearest centroid (squared L2) of each row, batch by batch: an exact search over the centroids.

    One GEMM per block of rows with the centroids' half norms folded in as an extra column,
    argmax(x·c − ‖c‖²/2) = argmin ‖x − c‖², then one argmax. NumPy's BLAS rather than faiss's
    IndexFlatL2.search: faiss-cpu wheels bundle an older OpenBLAS (0.3.15 in faiss-cpu 1.15),
    whose sgemm ran ~1.4× slower than NumPy's (0.3.30) on a 2-core AVX2 EPYC (bench/README.md)."""

    BLOCK = 4096  # rows per GEMM: a (4096, k) score block stays in cache-sized pieces for BLAS

    def __init__(self, centroids: np.ndarray):
        centroids = np.asarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or not len(centroids):
            raise ValueError(f"centroids must be a non-empty (k, d) array, got shape {centroids.shape}")
        self.k, self.d = centroids.shape
        # (d + 1, k): the centroids and, as a last row, −‖c‖²/2 (met by a column of ones in x).
        self._weights = np.ascontiguousarray(np.vstack([centroids.T, -0.5 * np.einsum("kd,kd->k", centroids, centroids)]))

    def __call__(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float rows → (cluster ids int32 (n,), squared L2 distances float32 (n,)).
        Raises ValueError when d differs from the centroids'."""
        vecs = np.asarray(vecs, dtype=np.float32)
        n = len(vecs)
        if vecs.ndim != 2 or (n and vecs.shape[1] != self.d):
            raise ValueError(f"rows of {vecs.shape[1:] or 'no'} dims, centroids of {self.d}")
        labels, distances = np.empty(n, np.int32), np.empty(n, np.float32)
        augmented = np.empty((min(n, self.BLOCK), self.d + 1), np.float32)
        augmented[:, self.d] = 1.0
        for start in range(0, n, self.BLOCK):
            block = vecs[start:start + self.BLOCK]
            rows = augmented[:len(block)]
            rows[:, :self.d] = block
            scores = rows @ self._weights
            best = scores.argmax(axis=1)
            labels[start:start + len(block)] = best
            # ‖x − c‖² = ‖x‖² − 2(x·c − ‖c‖²/2); clipped at 0 against rounding for a row on its centroid.
            top = np.take_along_axis(scores, best[:, None], axis=1)[:, 0]
            distances[start:start + len(block)] = np.maximum(np.einsum("nd,nd->n", block, block) - 2 * top, 0)
        return labels, distances
