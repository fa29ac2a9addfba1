"""What the model-scoring stages (ifd, deita_scores, rds_embed) share: one actor that loads a
causal LM, batches of 512 rows, and the model check before any Ray work."""

from __future__ import annotations

from curate.stages.base import Resources, Stage


class ModelStage(Stage):
    """A stage that runs a causal LM in one actor (set `resources: {num_gpus: 1}` to run it on a
    GPU). Its `model` parameter is checked by `preflight`."""

    resources = Resources(num_cpus=1, actor=True, concurrency=1)
    batch_size = 512

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Before any Ray work (pipeline/preflight.py `check_model`): `model` is `default`, a folder
        with a readable config.json and weights, or a Hugging Face id the cache or hub can give."""
        from curate.lib.params import param
        from curate.pipeline.preflight import check_model

        try:
            model = param(cls, params, "model")
        except KeyError:  # required and missing: the config check says so
            model = None
        check_model(model, f"{cls.name}.model")
