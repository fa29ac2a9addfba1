"""Engines per run: the plan names the run in each vLLM spec, so two runs of the same model on
one Ray cluster each have their own engine actor; the LLM cache does not see the run."""

import pytest

from curate.generators.backends.base import Backend, ChatRequest, Completion, Sampling
from curate.generators.engines import EngineHost, engine_name, find_engine, start_engines, vllm_specs
from curate.pipeline.config import load_config
from curate.pipeline.dag import stage_plans

VLLM = {"kind": "vllm", "model": "/models/tiny", "max_model_len": 256}
OPENAI = {"kind": "openai", "model": "gpt", "base_url": "http://127.0.0.1:9/v1"}


def config(tmp_path, backend=VLLM):
    return load_config(None, db=str(tmp_path / "x.duckdb"), ingest={"require_response": False},
                       stages=[{"self_instruct": {"backend": backend}}, {"respond": {"backend": backend}},
                               {"respond": {"backend": OPENAI}}])


def names(plans) -> list[str]:
    return [engine_name(s) for s in vllm_specs([p.params for p in plans])]


def test_engine_names_differ_between_runs_and_agree_within_one(tmp_path):
    cfg = config(tmp_path)
    a, a_again, b = stage_plans(cfg, run_id="run-a"), stage_plans(cfg, run_id="run-a"), stage_plans(cfg, run_id="run-b")
    assert len(names(a)) == 1  # both vLLM stages of a run share one engine
    assert names(a) == names(a_again)
    assert names(a) != names(b)
    # Every vLLM stage of a run looks up the engine the runner starts for it.
    assert {engine_name(p.params["backend"]) for p in a[1:3]} == set(names(a))
    assert a[3].params["backend"] == OPENAI  # no engine, no scope
    # One config run into two databases has one run id, and still two engines.
    other_db = load_config(None, db=str(tmp_path / "y.duckdb"), ingest={"require_response": False},
                           stages=[{"respond": {"backend": VLLM}}])
    assert names(stage_plans(other_db, run_id="run-a")) != names(a)
    # Without a run id (a plan built outside the runner) the spec is as configured.
    assert stage_plans(cfg)[2].params["backend"] == VLLM


def test_the_scope_is_no_backend_argument():
    (spec,) = vllm_specs([p.params for p in stage_plans(load_config(None, stages=[{"respond": {"backend": VLLM}}]), "r")])
    assert spec["engine_scope"]
    assert EngineHost({**spec, "preload": True}).spec == VLLM
    from curate.generators.backends import make_backend

    assert make_backend({**OPENAI, "engine_scope": "r"}).model == "gpt"


class Recorded(Backend):
    model = "/models/tiny"

    def __init__(self):
        self.calls = 0

    def generate(self, requests):
        self.calls += len(requests)
        return [[Completion(f"answer {i}", "stop", 3, 2)] for i, _ in enumerate(requests)]


def test_another_run_hits_the_cache_of_the_first(tmp_path):
    """The cache key is the model and the request: a run with another engine scope replays."""
    cfg = load_config(None, db=str(tmp_path / "x.duckdb"), stages=[{"respond": {"backend": VLLM}}])
    requests = [ChatRequest([{"role": "user", "content": f"Say {i}."}], Sampling(max_tokens=4)) for i in range(3)]
    first = stage_plans(cfg, run_id="run-a")[1].build_and_setup()  # the run's LLM cache comes with the setup context
    first.backend.backend = Recorded()
    out = first.backend.generate(requests)
    assert first.backend.misses == 3
    second = stage_plans(cfg, run_id="run-b")[1].build_and_setup()
    assert second.spec["engine_scope"] != first.spec["engine_scope"]
    second.backend.backend = Recorded()
    assert second.backend.generate(requests) == out
    assert second.backend.hits == 3 and second.backend.backend.calls == 0


def test_two_runs_engines_live_side_by_side(ray_local, tmp_path):
    """Two runs of the same model on one Ray: two engine actors; the end of one run (the runner
    kills its engines) leaves the other's alive and findable. Engines load lazily: no model here."""
    import ray

    cfg = config(tmp_path)
    specs_a = vllm_specs([p.params for p in stage_plans(cfg, run_id="run-a")])
    specs_b = vllm_specs([p.params for p in stage_plans(cfg, run_id="run-b")])
    (engine_a,) = start_engines(specs_a, gpus_available=0)
    (engine_b,) = start_engines(specs_b, gpus_available=0)
    try:
        assert engine_a._actor_id != engine_b._actor_id
        assert find_engine(specs_a[0])._actor_id == engine_a._actor_id
        assert find_engine(specs_b[0])._actor_id == engine_b._actor_id
        ray.kill(engine_a)  # run a ends
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(engine_a.started.remote(), timeout=60)
        assert ray.get(engine_b.started.remote(), timeout=60) is False  # alive, engine not loaded
        assert find_engine(specs_b[0])._actor_id == engine_b._actor_id
        # A second start of run b's engines (the same run) finds the one it has.
        (again,) = start_engines(specs_b, gpus_available=0)
        assert again._actor_id == engine_b._actor_id
    finally:
        for actor in (engine_a, engine_b):
            ray.kill(actor)
