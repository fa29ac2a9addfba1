"""The OpenAI-compatible backend's retries, timeouts and errors against a real local HTTP
server that fails on purpose; the LLM-call cache."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from curate.errors import CurateError
from curate.generators.backends.base import ChatRequest, Sampling
from curate.generators.backends.openai_http import OpenAIBackend
from curate.generators.cache import CachedBackend, LLMCache

OK = "ok"


class Script:
    """What the server answers, one entry per request: OK, an HTTP status, or ("sleep", s)."""

    def __init__(self, steps, default=OK):
        self.steps = list(steps)
        self.default = default
        self.seen = []  # (headers, body) of every request

    def next(self):
        return self.steps.pop(0) if self.steps else self.default


@pytest.fixture
def server():
    servers = []

    def start(script: Script) -> str:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                script.seen.append((dict(self.headers), body))
                step = script.next()
                if isinstance(step, tuple):
                    time.sleep(step[1])
                    step = OK
                if step != OK:
                    self.send_response(step)
                    self.end_headers()
                    self.wfile.write(b'{"error": "planned failure"}')
                    return
                n = body.get("n", 1)
                last = body["messages"][-1]["content"]
                reply = {"choices": [{"index": i, "message": {"role": "assistant", "content": f"echo {i}: {last}"},
                                      "finish_reason": "stop"} for i in range(n)],
                         "usage": {"prompt_tokens": 7, "completion_tokens": 3 * n}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def req(text="hello", n=1):
    return ChatRequest([{"role": "user", "content": text}], Sampling(max_tokens=8, n=n, seed=1))


def backend(url, **kw):
    return OpenAIBackend("tiny", base_url=url, backoff_s=0.01, max_backoff_s=0.05, **kw)


def test_success_returns_n_completions_with_token_counts(server):
    out = backend(server(Script([]))).generate([req("a", n=2), req("b")])
    assert [[c.text for c in r] for r in out] == [["echo 0: a", "echo 1: a"], ["echo 0: b"]]
    assert out[0][0].prompt_tokens == 7 and out[0][0].completion_tokens == 3 and out[0][0].finish_reason == "stop"


def test_429_and_5xx_are_retried_with_backoff(server):
    script = Script([429, 503, 500])
    b = backend(server(script), max_retries=3)
    assert b.generate([req()])[0][0].text == "echo 0: hello"
    assert b.calls == 4 and len(script.seen) == 4


def test_gives_up_after_the_last_retry(server):
    script = Script([], default=500)
    b = backend(server(script), max_retries=2)
    with pytest.raises(CurateError, match=r"after 3 attempts \(last: HTTP 500"):
        b.generate([req()])
    assert len(script.seen) == 3


def test_a_slow_answer_times_out_and_is_retried(server):
    script = Script([("sleep", 1.0)])
    b = backend(server(script), timeout_s=0.3, max_retries=1)
    start = time.monotonic()
    assert b.generate([req()])[0][0].text == "echo 0: hello"
    assert b.calls == 2 and time.monotonic() - start < 1.0 + 0.5


def test_client_errors_are_not_retried(server):
    script = Script([400])
    with pytest.raises(CurateError, match="refused the request"):
        backend(server(script), max_retries=5).generate([req()])
    assert len(script.seen) == 1


def test_absent_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CurateError, match="is the server running"):
        backend(f"http://127.0.0.1:{port}/v1", max_retries=1).generate([req()])


def test_api_key_comes_from_the_environment_and_stays_out_of_errors(server, monkeypatch):
    monkeypatch.setenv("CURATE_TEST_KEY", "sk-secret-123")
    script = Script([], default=500)
    with pytest.raises(CurateError) as err:
        backend(server(script), api_key_env="CURATE_TEST_KEY", max_retries=0).generate([req()])
    assert script.seen[0][0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in str(err.value)


def test_bounded_concurrency(server):
    script = Script([], default=("sleep", 0.2))
    b = backend(server(script), concurrency=4)
    start = time.monotonic()
    b.generate([req(str(i)) for i in range(8)])
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 1.2  # two waves of four, not eight at once nor one by one


def test_cache_calls_only_misses_and_survives_reopening(server, tmp_path):
    script = Script([])
    url = server(script)
    path = str(tmp_path / "x.llm_cache.duckdb")
    cache = LLMCache(path)
    cached = CachedBackend(backend(url), cache)
    first = cached.generate([req("a"), req("b"), req("a")])
    assert len(script.seen) == 2 and cached.misses == 2 and cached.hits == 1
    assert [r[0].text for r in first] == ["echo 0: a", "echo 0: b", "echo 0: a"]
    cache.close()
    again = CachedBackend(backend(url), LLMCache(path))  # a later run, a new process's view
    assert [r[0].text for r in again.generate([req("b"), req("a")])] == ["echo 0: b", "echo 0: a"]
    assert len(script.seen) == 2 and again.misses == 0
    other_seed = ChatRequest([{"role": "user", "content": "a"}], Sampling(max_tokens=8, seed=2))
    again.generate([other_seed])
    assert len(script.seen) == 3  # another seed is another call


def test_cache_counts_every_paid_call_per_key(tmp_path):
    cache = LLMCache(str(tmp_path / "c.llm_cache.duckdb"))
    entry = lambda key, text: (key, "m", {"messages": [{"role": "user", "content": key}]}, [{"text": text}])  # noqa: E731
    cache.put_many([entry("a", "first"), entry("b", "b"), entry("a", "second")])  # "a" paid twice in one call
    cache.put_many([entry("b", "b again")])
    cache.put_many([])
    assert cache.get_many(["a", "b", "c"]) == {"a": [{"text": "second"}], "b": [{"text": "b"}]}
    with cache._connect(read_only=True) as con:
        assert dict(con.execute("SELECT key, calls FROM llm_cache").fetchall()) == {"a": 2, "b": 2}


def test_cache_takes_upserts_from_threads_of_one_process(tmp_path):
    """Two batches of one respond actor write the same keys at once (a prompt in both shards):
    no write conflict, and every paid call is counted."""
    cache = LLMCache(str(tmp_path / "t.llm_cache.duckdb"))
    entries = [(f"k{i}", "m", {"messages": []}, [{"text": str(i)}]) for i in range(10)]
    errors = []

    def write():
        try:
            for _ in range(15):
                cache.put_many(entries)
                assert len(cache.get_many([k for k, *_ in entries])) == 10
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with cache._connect(read_only=True) as con:
        assert con.execute("SELECT min(calls), max(calls), count(*) FROM llm_cache").fetchone() == (60, 60, 10)
