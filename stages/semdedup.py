"""Semantic deduplication (SemDeDup): near-identical meaning, not near-identical words.

A GlobalStage after an embed stage. In the stream it passes each row's vector (the embed
stage's `_vec:<vectors>` column) on as the row's key; after the stream `decide` clusters the
vectors with faiss k-means and, within each cluster, walks rows in input order, dropping a row
whose cosine similarity to a row kept before it exceeds `threshold` and naming that row
(`semantic_duplicate_of:<id>`). Clustering makes the pairwise work near-linear; as in the paper,
a pair split across two clusters is missed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.selectors.clustering import Assigner, fit_centroids, fit_sample_rows
from curate.selectors.greedy import ADMITTED, GreedyCosine, normalised
from curate.selectors.vectors import as_matrix, binary_rows, rows_of_binary
from curate.stages.base import GlobalStage, Resources, StageResult
from curate.storage import schema as S


class SemDeDup(GlobalStage):
    name = "semdedup"
    resources = Resources(num_cpus=1)
    batch_size = 4096
    order = "position"

    def __init__(self, threshold: float = 0.95, vectors: str = "embed", k: int | None = None,
                 rows_per_cluster: int = 1000, niter: int = 20, seed: int = 0):
        if not -1 <= threshold <= 1:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.threshold, self.vectors, self.k = threshold, vectors, k
        self.rows_per_cluster, self.niter, self.seed = rows_per_cluster, niter, seed

    def __call__(self, batch: pa.Table) -> StageResult:
        column = S.VEC_PREFIX + self.vectors
        if column not in batch.column_names:
            raise ValueError(f"semdedup needs the vectors '{self.vectors}' of an earlier embed stage "
                             f"(`embed: {{vectors: {self.vectors}}}` before it)")
        return StageResult(kept=batch, keys=binary_rows(as_matrix(batch[column])))

    def decide(self, batches) -> list[tuple[str, str]]:
        ids, parts = [], []
        for batch in batches:
            ids.append(pa.concat_arrays([batch.column("id")]))  # a copy: the keys' buffers can go
            parts.append(rows_of_binary(batch.column("key")).copy())
        if not ids:
            return []
        vecs = normalised(np.concatenate(parts))
        del parts
        id_list = pa.chunked_array(ids, pa.string()).to_pylist()
        return [(id_list[row], f"semantic_duplicate_of:{id_list[of]}") for row, of in self.duplicates(vecs)]

    def duplicates(self, vecs: np.ndarray) -> list[tuple[int, int]]:
        """(row, the earlier kept row it duplicates) pairs for normalised rows in input order."""
        k = self.k or max(1, len(vecs) // self.rows_per_cluster)
        sample = vecs if len(vecs) <= fit_sample_rows(k, None) else \
            vecs[np.sort(np.random.default_rng(self.seed).choice(len(vecs), fit_sample_rows(k, None), replace=False))]
        cluster, _ = Assigner(fit_centroids(sample, k, self.niter, seed=self.seed))(vecs)
        order = np.argsort(cluster, kind="stable")  # by cluster, input order inside each
        bounds = np.flatnonzero(np.r_[True, np.diff(cluster[order]) != 0, True])
        found = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            members = order[start:end]
            greedy = GreedyCosine(vecs.shape[1], self.threshold)
            kept = []
            for chunk in np.array_split(members, -(-len(members) // 4096)):
                verdict, _ = greedy.offer(vecs[chunk])
                kept.extend(chunk[verdict == ADMITTED].tolist())
                for row, blocker in zip(chunk[verdict >= 0].tolist(), verdict[verdict >= 0].tolist()):
                    found.append((row, kept[blocker]))
        return sorted(found)
