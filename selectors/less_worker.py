"""The model side of LESS (selectors/less.py): the LoRA model, its warm-up and its gradient
features, in one object. It runs in the selector's process, or as a Ray actor where the
selector asks for resources (`resources: {num_gpus: 1}`: the GPU node of a cluster, while the
driver keeps DuckDB). The selector moves the data: it reads rows, sends their conversations
here and stores the features that come back, so only conversations and vectors travel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class LessWorker:
    def __init__(self, shape: dict, device: str | None = None, dtype: str | None = None,
                 max_batch_tokens: int | None = None, max_batch_rows: int = 64):
        from curate.lib import less as LS

        s = self.shape = shape
        self.model, self.tok, self.device = LS.lora_model(s["model"], s["lora_r"], s["lora_alpha"], s["lora_dropout"],
                                                          s["lora_modules"], device, dtype, seed=s["seed"])
        self.max_batch_tokens = max_batch_tokens
        shapes = {n: tuple(p.shape) for n, p in LS.lora_params(self.model).items()}
        projector = LS.RademacherProjector(shapes, s["dim"], s["seed"], self.device)
        self.features = LS.GradientFeatures(self.model, self.tok, self.device, projector, max_batch_tokens, max_batch_rows)
        self.states: list[dict] = []

    def warm_up(self, convs: list[list[dict]], workdir: str) -> list:
        """Train the LoRA on the warm-up rows; one saved Checkpoint per epoch."""
        from curate.lib import less as LS
        from curate.lib.lm import pad_id

        s = self.shape
        return LS.warmup(self.model, LS.training_examples(self.tok, convs, s["max_length"]), pad_id(self.tok),
                         self.device, Path(workdir), s["epochs"], s["lr"], s["batch_size"], s["warmup_ratio"],
                         self.max_batch_tokens or 4096, s["seed"])

    def use_checkpoints(self, checkpoints: list) -> None:
        self.states = [c.load() for c in checkpoints]

    def pool_features(self, convs: list[list[dict]]) -> list[np.ndarray]:
        """Adam-aware projected gradient features: one (rows, dim) array per checkpoint."""
        return self._per_checkpoint(convs, adam=True)

    def target_features(self, convs: list[list[dict]]) -> list[np.ndarray]:
        """Plain projected gradient features of the target set, one array per checkpoint."""
        return self._per_checkpoint(convs, adam=False)

    def _per_checkpoint(self, convs: list[list[dict]], adam: bool) -> list[np.ndarray]:
        from curate.lib import less as LS

        if not self.states:
            raise RuntimeError("use_checkpoints first")
        examples = LS.training_examples(self.tok, convs, self.shape["max_length"])
        out = []
        for state in self.states:
            LS.load_lora(self.model, state)
            out.append(self.features(examples, state if adam else None))
        return out


class RemoteLessWorker:
    """A LessWorker in a Ray actor, called as if it were local."""

    def __init__(self, resources: dict, *args, **kwargs):
        import ray

        options = {"num_cpus": resources.get("num_cpus", 1), "num_gpus": resources.get("num_gpus", 0)}
        self.actor = ray.remote(LessWorker).options(**options).remote(*args, **kwargs)

    def __getattr__(self, name: str):
        import ray

        method = getattr(self.actor, name)
        return lambda *args: ray.get(method.remote(*args))

    def close(self) -> None:
        import ray

        ray.kill(self.actor)
