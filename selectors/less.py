"""LESS selection (ALGORITHMS.md §2), a global step over the run's kept rows:

1. warm up LoRA on a random `warmup_fraction` of the pool (rows ranked by a hash of seed and id),
   keeping a checkpoint per epoch (files under `workdir`, listed in `less_checkpoints`);
2. compute the pool's Adam-aware projected gradient features per checkpoint, in Arrow batches,
   and store them in `less_features` (run_id, key, epoch, id, vec);
3. compute the target set's plain-gradient features, match, and take the top `budget`.

Steps 1 and 2 are keyed by a fingerprint of everything that shapes the features (model, LoRA,
warmup, projection, length), so a rerun with another target set or budget costs only step 3,
and an interrupted feature pass resumes with the rows it had not stored.

The model work happens in a LessWorker (less_worker.py): here, or in a Ray actor holding the
selector's `resources` (a GPU); this module reads rows and writes tables, the driver's part.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.selectors.base import Selector
from curate.lib.params import Budget

TABLES = """
CREATE TABLE IF NOT EXISTS less_checkpoints (
    run_id VARCHAR, key VARCHAR, epoch INTEGER, mean_lr DOUBLE, path VARCHAR, warmup_rows INTEGER, params JSON
);
CREATE TABLE IF NOT EXISTS less_features (
    run_id VARCHAR, key VARCHAR, epoch INTEGER, id VARCHAR, vec FLOAT[]
);
"""


class LessSelector(Selector):
    name = "less"

    def __init__(self, model: str, targets: str, budget: Budget = 0.05, warmup_fraction: float = 0.05,
                 epochs: int = 4, lr: float = 2e-5, batch_size: int = 128, warmup_ratio: float = 0.03,
                 lora_r: int = 128, lora_alpha: float = 512, lora_dropout: float = 0.1,
                 lora_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"), max_length: int = 2048,
                 dim: int = 8192, seed: int = 0, workdir: str | None = None, feature_batch_rows: int = 1024,
                 max_batch_tokens: int | None = None, max_batch_rows: int = 64, device: str | None = None, dtype: str | None = None,
                 resources: dict | None = None):
        if not 0 < warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction must lie in (0, 1], got {warmup_fraction}")
        self.budget = budget
        self.targets = targets
        self.shape = {"model": model, "warmup_fraction": warmup_fraction, "epochs": epochs, "lr": lr,
                      "batch_size": batch_size, "warmup_ratio": warmup_ratio, "lora_r": lora_r, "lora_alpha": lora_alpha,
                      "lora_dropout": lora_dropout, "lora_modules": list(lora_modules), "max_length": max_length,
                      "dim": dim, "seed": seed, "dtype": dtype or "auto"}
        self.key = hashlib.sha256(json.dumps(self.shape, sort_keys=True).encode()).hexdigest()[:16]
        self.workdir, self.feature_batch_rows = workdir, feature_batch_rows
        self.max_batch_tokens, self.max_batch_rows, self.device, self.dtype = max_batch_tokens, max_batch_rows, device, dtype
        unknown = set(resources or {}) - {"num_cpus", "num_gpus"}
        if unknown:
            raise ValueError(f"resources takes num_cpus and num_gpus, got {sorted(unknown)}")
        # With resources, the model runs in a Ray actor that holds them (a GPU node); without, here.
        self.resources = resources
        self.timings: dict[str, float] = {}

    @classmethod
    def uses_ray(cls, params: dict) -> bool:
        return bool(params.get("resources"))

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Before any Ray work (pipeline/preflight.py): `model` as `check_model` checks it, and
        `targets` a readable file."""
        from curate.pipeline.preflight import check_file, check_model

        check_model(params.get("model"), f"{cls.name}.model")
        check_file(params.get("targets"), f"{cls.name}.targets", what="targets file")

    # ------------------------------------------------------------------ steps

    def select(self, con, run_id, pool, budget_rows):
        from curate.selectors.less_worker import LessWorker, RemoteLessWorker
        from curate.pipeline.targets import load_targets

        targets = load_targets(self.targets)
        con.execute(TABLES).fetchall()  # also closes a result the caller left half-read, which con.sql would refuse
        args = (self.shape, self.device, self.dtype, self.max_batch_tokens, self.max_batch_rows)
        worker = RemoteLessWorker(self.resources, *args) if self.resources else LessWorker(*args)
        try:
            checkpoints = self._checkpoints(con, run_id) or self._warm_up(con, run_id, pool, worker)
            worker.use_checkpoints(checkpoints)
            self._store_pool_features(con, run_id, pool, worker, checkpoints)
            started = time.perf_counter()
            target_feats = worker.target_features(targets.convs)
        finally:
            if self.resources:
                worker.close()
        ids, scores = self._match(con, run_id, pool, checkpoints, target_feats, targets.task_index())
        self.timings["match_s"] = time.perf_counter() - started
        order = np.argsort(-scores, kind="stable")[:budget_rows]
        return [(ids[i], float(scores[i])) for i in order]

    def _checkpoints(self, con, run_id):
        from curate.lib.less import Checkpoint

        rows = con.execute("SELECT epoch, mean_lr, path FROM less_checkpoints WHERE run_id = ? AND key = ? ORDER BY epoch",
                           [run_id, self.key]).fetchall()
        if len(rows) != self.shape["epochs"] or not all(os.path.exists(r[2]) for r in rows):
            return []
        return [Checkpoint(*r) for r in rows]

    def _warm_up(self, con, run_id, pool, worker):
        s = self.shape
        n_pool = con.execute(f"SELECT count(*) FROM {pool}").fetchall()[0][0]
        n_warm = max(1, round(s["warmup_fraction"] * n_pool))
        convs = con.sql(f"SELECT messages FROM {pool} ORDER BY md5(? || ':' || id) LIMIT ?",
                        params=[str(s["seed"]), n_warm]).to_arrow_table()["messages"].to_pylist()
        started = time.perf_counter()
        checkpoints = worker.warm_up(convs, str(self._workdir(con, run_id)))
        self.timings["warmup_s"] = time.perf_counter() - started
        con.execute("DELETE FROM less_checkpoints WHERE run_id = ? AND key = ?", [run_id, self.key])
        con.execute("DELETE FROM less_features WHERE run_id = ? AND key = ?", [run_id, self.key])
        con.executemany("INSERT INTO less_checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [[run_id, self.key, c.epoch, c.mean_lr, c.path, len(convs), json.dumps(s)] for c in checkpoints])
        return checkpoints

    def _workdir(self, con, run_id) -> Path:
        if self.workdir:
            return Path(self.workdir) / f"{run_id}-{self.key}"
        db = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()[0][0]
        base = Path(f"{db}.less") if db else Path(tempfile.mkdtemp(prefix="curate-less-"))
        return base / f"{run_id}-{self.key}"

    def _store_pool_features(self, con, run_id, pool, worker, checkpoints):
        """Features for every pool row that has none yet, a batch of rows at a time, each batch
        stored for all checkpoints in one transaction."""
        last = checkpoints[-1].epoch
        missing = con.sql(f"""
            SELECT id FROM {pool} p WHERE NOT EXISTS (
                SELECT 1 FROM less_features f WHERE f.run_id = ? AND f.key = ? AND f.epoch = ? AND f.id = p.id)
            ORDER BY id""", params=[run_id, self.key, last]).to_arrow_table()["id"].to_pylist()
        started = time.perf_counter()
        for start in range(0, len(missing), self.feature_batch_rows):
            con.register("_less_chunk", pa.table({"id": missing[start : start + self.feature_batch_rows]}))
            rows = con.sql(f"SELECT p.id, p.messages FROM {pool} p JOIN _less_chunk c USING (id) ORDER BY p.id").to_arrow_table()
            con.unregister("_less_chunk")
            per_checkpoint = worker.pool_features(rows["messages"].to_pylist())
            parts = []
            for ckpt, feats in zip(checkpoints, per_checkpoint):
                parts.append(pa.table({
                    "epoch": pa.array([ckpt.epoch] * rows.num_rows, pa.int32()),
                    "id": rows["id"],
                    "vec": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), feats.shape[1]).cast(pa.list_(pa.float32())),
                }))
            con.register("_less_new", pa.concat_tables(parts))
            con.execute("BEGIN")
            con.execute("DELETE FROM less_features f WHERE run_id = ? AND key = ? AND id IN (SELECT id FROM _less_new)",
                        [run_id, self.key])
            con.execute("INSERT INTO less_features SELECT ?, ?, epoch, id, vec FROM _less_new", [run_id, self.key])
            con.execute("COMMIT")
            con.unregister("_less_new")
        self.timings["features_s"] = time.perf_counter() - started
        self.timings["feature_rows"] = len(missing)

    def _match(self, con, run_id, pool, checkpoints, target_feats, task_index):
        """(pool ids, LESS scores), streaming each checkpoint's stored features."""
        from curate.lib.less import aggregate, checkpoint_weights

        weights = checkpoint_weights([c.mean_lr for c in checkpoints])
        ids, sims = None, []
        for ckpt, targets in zip(checkpoints, target_feats):
            reader = con.sql(f"""
                SELECT f.id, f.vec FROM less_features f JOIN {pool} p USING (id)
                WHERE f.run_id = ? AND f.key = ? AND f.epoch = ? ORDER BY f.id""",
                             params=[run_id, self.key, ckpt.epoch]).to_arrow_reader(65_536)
            batch_ids, parts = [], []
            for batch in reader:
                batch_ids.extend(batch.column(0).to_pylist())
                vecs = batch.column(1).flatten().to_numpy().reshape(batch.num_rows, -1)
                parts.append(vecs @ targets.T)
            ids = ids or batch_ids
            sims.append(np.concatenate(parts) if parts else np.zeros((0, len(targets)), np.float32))
        return ids, aggregate(sims, weights, task_index)
