"""The `rds_embed` stage: RDS+ representations of every row (the encoder: lib/rds.py).

The stage caches each row's vector by (model, conversation, max_length, dtype, device) in
`<db>.model_cache.duckdb` (storage/model_cache.py; `cache: false` turns it off).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.lib import lm as L
from curate.lib.cpu_workers import CpuParallel
from curate.lib.rds import RDSEncoder, conversation_ids, weighted_mean_pool  # noqa: F401 - re-exported
from curate.stages.base import StageContext, StageResult, param
from curate.stages.score.base import ModelStage
from curate.storage.model_cache import CachedRows
from curate.storage.schema import canonical_messages


class RDSEmbed(ModelStage):
    """Vectors `<vectors>` (RDS+ representations, with the model's name) for every row."""

    name = "rds_embed"
    ALIASES = {"vector": "vectors"}  # old parameter name → new (pipeline/config.py)

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"vectors:{param(cls, params, 'vectors')}"}

    def __init__(self, model: str, max_length: int = 2048, vectors: str = "rds", max_batch_tokens: int | None = None,
                 max_batch_rows: int = 64, device: str | None = None, dtype: str | None = None,
                 threads: int | None = None, cpu_parallel: CpuParallel = "batches", cache: bool | str = True):
        """`threads` / `cpu_parallel`: how a CPU runs the model (lib/rds.py RDSEncoder). `cache`: true, the model-output cache beside the database (its path comes with the run's
        context in `setup`; a stage built by hand without one has none); false, off; a path, that file."""
        self.encoder = RDSEncoder(model, max_length, max_batch_tokens, max_batch_rows, device, dtype, threads, cpu_parallel)
        self.vectors = vectors
        self.cached = CachedRows(cache, "rds", model)

    def setup(self, context: StageContext | None = None) -> None:
        self.cached.at_default(context.model_cache if context else None)  # `cache: true`: the run's model cache

    def __call__(self, batch: pa.Table) -> StageResult:
        convs = L.conversations(batch)

        def compute(rows: list[int]) -> list[tuple[bytes, None]]:
            return [(v.tobytes(), None) for v in self.encoder.encode([convs[i] for i in rows])]

        found = self.cached.rows([canonical_messages(c) for c in convs], self.encoder.cache_identity, compute)
        dim = self.encoder.lm.config.hidden_size
        vecs = np.frombuffer(b"".join(v for v, _ in found), np.float32).reshape(len(convs), dim)
        return StageResult.keep(batch, vectors={self.vectors: (vecs, self.encoder.model_name)})
