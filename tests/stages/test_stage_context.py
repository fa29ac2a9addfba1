"""Stage lifecycle: `setup(context)` gets the run's paths inside the worker (no parameter
injected by name), and resources that depend on the cluster are decided once Ray is up."""

import os

import pyarrow as pa
import pytest

from curate.pipeline import dag
from curate.pipeline.config import load_config
from curate.pipeline.dag import StageActor, for_cluster, run_stage_task, stage_plans
from curate.stages.base import Stage, StageContext, StageResult, setup_stage
from curate.storage import schema as S


class Recording(Stage):
    name = "recording"
    seen: list = []

    def __init__(self, threshold: float = 0.5):
        self.context = "not set up"

    def setup(self, context=None):
        self.context = context
        Recording.seen.append(context)

    def __call__(self, batch: pa.Table) -> StageResult:
        return StageResult.keep(batch)


class Legacy(Stage):
    """A stage written before the context: its setup takes nothing."""

    def __init__(self):
        self.ready = False

    def setup(self):
        self.ready = True


def _live(n: int) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(n)], S.STATUS: [S.KEPT] * n, S.STAGE: pa.nulls(n, pa.string()),
                     S.REASON: pa.nulls(n, pa.string()), S.WEIGHT: [1.0] * n})


@pytest.fixture
def plan(tmp_path, monkeypatch):
    """The filters stage's plan with the Recording class behind its key."""
    cfg = load_config(None, db=str(tmp_path / "r.duckdb"), stages=[{"filters": {}}], work_dir=str(tmp_path / "work"))
    (ingest, filters) = stage_plans(cfg, run_id="run-1")
    monkeypatch.setattr(dag, "stage_class", lambda key: Recording)
    monkeypatch.setattr(dag.StagePlan, "build", lambda self: Recording())
    Recording.seen = []
    return filters


def test_the_plan_carries_the_runs_paths(tmp_path):
    cfg = load_config(None, db=str(tmp_path / "r.duckdb"), stages=[{"embed": {}}, {"respond": {"backend": {"kind": "openai", "model": "m"}}}])
    plans = stage_plans(cfg, run_id="run-1")
    db = os.path.abspath(cfg.db)
    for p in plans:
        assert p.context == StageContext(run_id="run-1", db=db, model_cache=str(tmp_path / "r.model_cache.duckdb"),
                                         llm_cache=str(tmp_path / "r.llm_cache.duckdb"), work_dir=db + ".phases")
    # no path injected into the parameters by their names
    assert plans[1].params["cache"] is True and plans[2].params["cache"] is None


def test_setup_receives_the_context_in_an_actor_and_in_a_task(plan, tmp_path):
    actor = StageActor(plan)
    assert actor.stage.context is plan.context and plan.context.run_id == "run-1"
    assert plan.context.work_dir == str(tmp_path / "work") and plan.context.db == str(tmp_path / "r.duckdb")
    out = run_stage_task(_live(3), plan)
    assert out.num_rows == 3 and Recording.seen == [plan.context, plan.context]  # the task's worker set it up once
    run_stage_task(_live(2), plan)
    assert len(Recording.seen) == 2


def test_a_setup_without_a_context_still_runs():
    stage = Legacy()
    setup_stage(stage, StageContext(run_id="x"))
    assert stage.ready
    Stage().setup(StageContext())  # the default takes one and does nothing
    Stage().setup()


def test_model_stages_take_the_runs_model_cache_in_setup(tmp_path):
    from curate.storage.model_cache import CachedRows

    ctx = StageContext(model_cache=str(tmp_path / "m.duckdb"))
    on, off, given = CachedRows(True, "embed", "m"), CachedRows(False, "embed", "m"), CachedRows("/x.duckdb", "embed", "m")
    for cached in (on, off, given):
        cached.at_default(ctx.model_cache)
    assert (on.path, off.path, given.path) == (ctx.model_cache, None, "/x.duckdb")
    assert not CachedRows(True, "embed", "m").enabled  # built by hand, no context: no cache


def test_llm_stages_take_the_runs_llm_cache_in_setup(tmp_path):
    from curate.generators.cache import CachedBackend

    cfg = load_config(None, db=str(tmp_path / "r.duckdb"), stages=[{"respond": {"backend": {"kind": "openai", "model": "m"}}}])
    plan = stage_plans(cfg, run_id="r")[1]
    assert not isinstance(plan.build().backend, CachedBackend)  # by hand: no cache
    stage = plan.build_and_setup()
    assert isinstance(stage.backend, CachedBackend) and stage.backend.cache.path == plan.context.llm_cache


def test_embed_resources_come_from_the_cluster_the_run_joined(ray_local, tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # this machine's devices no longer count
    cfg = load_config(None, db=str(tmp_path / "r.duckdb"), stages=[{"embed": {}}, {"embed": {"resources": {"num_cpus": 0.5}}}])
    plans = for_cluster(stage_plans(cfg, run_id="run-1"))
    cluster = ray.cluster_resources()
    assert cluster.get("GPU", 0) == 0
    for p in plans:
        assert p.context.cluster == cluster and p.context.run_id == "run-1"
    embed, embed_2 = plans[1].resources, plans[2].resources
    assert (embed.num_gpus, embed.actor, embed.concurrency) == (0, True, 1)
    assert embed_2.num_cpus == 0.5 and embed_2.actor  # the config's resources over the cluster's choice
    on_gpus = for_cluster(stage_plans(cfg), {"CPU": 16.0, "GPU": 4.0})
    assert (on_gpus[1].resources.num_gpus, on_gpus[1].resources.concurrency) == (1, 4)
    assert on_gpus[2].resources.num_cpus == 0.5 and on_gpus[2].resources.num_gpus == 1
