"""Pool rows per cluster of a k-means selection, for `curate report` (curate/report.py).

`selections` stores only the picked rows with their cluster; how many pool rows each cluster
held is not stored. The report recomputes it the way kmeans_diversity made the clusters: the
selector's parameters (from `selection_info.params`), its seeded sample of the pool's vectors,
faiss k-means on it, then every pool row assigned to its nearest centroid in one streaming pass.
The result is trusted only when it gives every picked row the cluster stored for it; otherwise
the report says so and shows picked rows only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass
class PoolClusters:
    sizes: dict[int, int] | None  # cluster → pool rows; None when not recomputed
    why: str  # how the sizes were found, or why they are missing


def pool_cluster_sizes(con, run_id: str, selector: str, params: str, picked: dict[str, int]) -> PoolClusters:
    """`picked`: id → stored cluster of the selection's rows."""
    if selector != "kmeans_diversity":
        return PoolClusters(None, f"pool sizes are recomputed for kmeans_diversity only, not {selector}")
    try:
        from curate.lib.clustering import Assigner, fit_centroids, fit_sample_rows
        from curate.selectors.kmeans import KMeansDiversity
        from curate.lib.vectors import VectorSource, as_matrix

        sel = KMeansDiversity(**json.loads(params or "{}"))
        # run_id is a hex fingerprint, safe to inline; a temp view is allowed on a read-only database.
        con.execute(f"CREATE OR REPLACE TEMP VIEW _report_pool AS SELECT * FROM samples WHERE run_id = '{run_id}' AND kept")
        try:
            source = VectorSource(con, run_id, "_report_pool", sel.vectors)
            centroids = fit_centroids(source.sample(fit_sample_rows(sel.k, sel.fit_sample), sel.seed), sel.k, sel.niter,
                                      seed=sel.seed)
            assign = Assigner(centroids)
            counts = np.zeros(len(centroids), np.int64)
            agree = checked = 0
            for batch in source.batches():
                label, _ = assign(as_matrix(batch.column("vec")))
                counts += np.bincount(label, minlength=len(centroids))
                for i, c in zip(batch.column("id").to_pylist(), label.tolist()):
                    if i in picked:
                        checked += 1
                        agree += picked[i] == c
        finally:
            con.execute("DROP VIEW IF EXISTS _report_pool")
    except ImportError as err:
        return PoolClusters(None, f"pool sizes need faiss to recompute the clusters ({err})")
    except Exception as err:  # noqa: BLE001 - any failure here only costs the report one column
        return PoolClusters(None, f"pool sizes could not be recomputed: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if checked < len(picked) or agree < checked:
        return PoolClusters(None, f"recomputing the k-means clusters gave {agree:,} of {len(picked):,} picked rows their stored "
                                  "cluster, so pool sizes are not shown (the pool or the vectors changed since the selection)")
    return PoolClusters({c: int(n) for c, n in enumerate(counts)},
                        f"pool rows per cluster recomputed from the selector's parameters (seeded k-means on its "
                        f"'{sel.vectors}' vectors); every picked row lands in its stored cluster")
