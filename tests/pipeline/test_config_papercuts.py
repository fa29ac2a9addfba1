"""Config papercuts (issue 21, item 6): `--set` by stage or selector name, one glob string where a
list of paths is taken, `base_url` with or without `/v1`, the demo exporting its selection,
databases named after their config, and `curate sql` saying which run `curated` shows."""

import http.server
import json
import re
import subprocess
import threading

import pytest
import yaml

from curate.errors import CurateError
from curate.pipeline.config import load_config
from conftest import ROOT, curate_cmd, curate_sh, write_jsonl

THREE = {"name": "three", "stages": [{"filters": {}}, {"near_dedup": {}}, {"near_dedup": {"threshold": 0.5}},
                                     "exact_dedup", {"decontaminate": {"benchmarks": ["a.jsonl"]}}],
         "selectors": [{"random": {"budget": 0.5, "name": "half"}}]}


def config(tmp_path, body: dict, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return str(path)


sh = curate_sh


def test_set_addresses_stages_and_selectors_by_name(tmp_path):
    from curate.pipeline.dag import stage_plans

    cfg = load_config(config(tmp_path, THREE), [
        "near_dedup_2.threshold=0.6",                 # the second near_dedup, as the runner names it
        "stages.1.near_dedup.threshold=0.9",          # the list-index form still works
        "decontaminate.benchmarks=[b.jsonl, c.jsonl]",
        "exact_dedup.text=conversation",              # an entry written as a bare name
        "half.budget=10",                             # a selector, by its selection name
        "filters.resources.num_cpus=0.5",
    ])
    assert [s.params.get("threshold") for s in cfg.stages[1:3]] == [0.9, 0.6]
    assert cfg.stages[4].params["benchmarks"] == ["b.jsonl", "c.jsonl"]
    assert cfg.stages[3].params["text"] == "conversation"
    assert cfg.selectors[0].params["budget"] == 10
    assert cfg.stages[0].resources.num_cpus == 0.5
    assert [p.name for p in stage_plans(cfg)][1:] == ["filters", "near_dedup", "near_dedup_2", "exact_dedup", "decontaminate"]
    renamed = load_config(str(ROOT / "jobs/configs/synthesis.yaml"), ["evol_instruct_round2.generation=3"])
    assert [s.params["generation"] for s in renamed.stages if s.key == "evol_instruct"] == [1, 3]


@pytest.mark.parametrize("override, message", [
    ("nodedup.threshold=0.7", r"--set nodedup\.threshold: 'nodedup' is neither a config key nor the name of a stage or "
                              r"selector \(stages: filters, near_dedup, near_dedup_2, exact_dedup, decontaminate; "
                              r"selectors: half; config keys: name, .*\)"),
    ("near_dedup.threshold=0.7", r"near_dedup names 2 entries: stages\.1 \(stage near_dedup, run as near_dedup\); "
                                 r"stages\.2 \(stage near_dedup, run as near_dedup_2\); address them as "
                                 r"stages\.1\.near_dedup\.… and near_dedup_2\.…"),
    ("stages.10.decontaminate.benchmarks=x", r"stages has 5 entries \(indices 0 to 4\) \(filters, near_dedup, "
                                             r"near_dedup_2, exact_dedup, decontaminate\); no stages\.10"),
    ("stages.3.filters.min_response_words=2", r"stages\.3 is exact_dedup, not filters"),
    ("stages.x.filters.min_response_words=2", r"stages is a list: expected an index, got 'x'"),
])
def test_set_errors_name_the_stages(tmp_path, override, message):
    with pytest.raises(CurateError, match=message):
        load_config(config(tmp_path, THREE), [override])


def test_a_stage_and_a_selector_of_one_name_must_be_told_apart(tmp_path):
    body = {"stages": [{"ifd": {"model": "m"}}], "selectors": [{"ifd": {"budget": 0.1}}]}
    with pytest.raises(CurateError, match=r"ifd names 2 entries: .*address them as stages\.0\.ifd\.… and selectors\.0\.ifd\.…"):
        load_config(config(tmp_path, body), ["ifd.budget=0.2"])
    cfg = load_config(config(tmp_path, body), ["selectors.0.ifd.budget=0.2", "stages.0.ifd.max_length=256"])
    assert cfg.selectors[0].params["budget"] == 0.2 and cfg.stages[0].params["max_length"] == 256


def test_set_by_name_through_the_cli(tmp_path, alpaca_rows):
    src = write_jsonl(tmp_path / "seeds.jsonl", alpaca_rows[:30])
    cfg = config(tmp_path, {"name": "cli", "input": str(src), "stages": [{"filters": {"min_response_words": 1}}]})
    sh(tmp_path, "run", cfg, "--set", "filters.min_response_words=100000", "--progress", "off")
    out = sh(tmp_path, "sql", "SELECT count(*) AS n FROM curated", "--db", "cli.duckdb", "-f", "json").stdout
    assert json.loads(out) == {"n": 0}
    proc = subprocess.run([*curate_cmd(), "run", cfg, "--set", "filterz.min_response_words=1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "'filterz' is neither a config key nor the name of a stage or selector (stages: filters;" in proc.stderr


def test_one_glob_string_for_benchmarks(tmp_path, alpaca_rows):
    bench = tmp_path / "bench"
    bench.mkdir()
    contaminated = alpaca_rows[3]
    write_jsonl(bench / "mmlu.jsonl", [{"question": contaminated["instruction"]}])
    write_jsonl(bench / "gsm.jsonl", [{"question": "A question that no training row shares with the benchmark at all, surely."}])
    src = write_jsonl(tmp_path / "seeds.jsonl", alpaca_rows[:20])
    cfg = config(tmp_path, {"name": "decon", "input": str(src),
                            "stages": [{"decontaminate": {"benchmarks": str(bench / "*.jsonl"), "min_words": 3}}]})
    assert load_config(cfg).stages[0].params["benchmarks"] == [str(bench / "*.jsonl")]
    sh(tmp_path, "run", cfg, "--progress", "off")
    drops = sh(tmp_path, "sql", "SELECT stage, kind FROM drops", "--db", "decon.duckdb", "-f", "json").stdout
    assert [json.loads(line) for line in drops.splitlines()] == [{"stage": "decontaminate", "kind": "contaminated"}]
    # other parameters that take a list of strings take one string too; a string-or-list keeps its string
    cfg = load_config(None, stages=[{"filters": {"languages": "en"}}])
    assert cfg.stages[0].params["languages"] == ["en"]
    with pytest.raises(CurateError, match=r"benchmarks"):
        load_config(None, stages=[{"decontaminate": {"benchmarks": 3}}])


class _OpenAIServer(http.server.BaseHTTPRequestHandler):
    """Answers only under /v1, as `vllm serve` does."""

    def do_GET(self):  # noqa: N802
        if self.path == "/v1/models":
            return self._json({"data": [{"id": "m"}]})
        self.send_error(404)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/chat/completions":
            return self._json({"choices": [{"index": 0, "message": {"content": "pong"}, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
        self.send_error(404)

    def _json(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def openai_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_base_url_with_or_without_v1(tmp_path, openai_server):
    from curate.generators.backends.base import ChatRequest, Sampling
    from curate.generators.backends.openai_http import OpenAIBackend, normalise_base_url

    assert normalise_base_url("http://h:8000") == normalise_base_url("http://h:8000/") == "http://h:8000/v1"
    assert normalise_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalise_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    for base in (openai_server, openai_server + "/", openai_server + "/v1"):
        backend = OpenAIBackend("m", base_url=base, max_retries=0)
        (completion,), = backend.generate([ChatRequest([{"role": "user", "content": "ping"}], Sampling(max_tokens=4))])
        assert completion.text == "pong"
        cfg = config(tmp_path, {"input": "demo", "stages": [
            {"respond": {"backend": {"kind": "openai", "model": "m", "base_url": base}}}]})
        assert load_config(cfg).stages[0].params["backend"]["base_url"] == openai_server + "/v1"
        proc = sh(tmp_path, "plan", cfg)  # the preflight probes the same URL the backend calls
        assert re.search(r"^    ok    stages\.0\.respond$", proc.stdout, re.M), proc.stdout
    kept = load_config(config(tmp_path, {"stages": [{"respond": {"backend": {"kind": "openai", "model": "m",
                                                                              "base_url": "http://h:1/v1/"}}}]}))
    assert kept.stages[0].params["backend"]["base_url"] == "http://h:1/v1/"  # as given: the run id stays


def test_the_demo_exports_its_selection():
    cfg = load_config(str(ROOT / "jobs/configs/demo.yaml"))
    assert cfg.export.selection == cfg.selectors[0].name == "random_half"
    assert cfg.db == "curated.duckdb"  # what the README's quick start reads


def test_a_config_without_db_is_named_after_it_and_sql_says_which_run_curated_shows(tmp_path, alpaca_rows):
    src = write_jsonl(tmp_path / "seeds.jsonl", alpaca_rows[:12])
    named = config(tmp_path, {"name": "my run", "input": str(src)}, "a.yaml")
    unnamed = config(tmp_path, {"input": str(src), "stages": [{"filters": {"min_response_words": 3}}]}, "b-config.yaml")
    assert load_config(named).db == "my_run.duckdb" and load_config(unnamed).db == "b-config.duckdb"
    assert load_config(named, db="x.duckdb").db == load_config(named, ["db=x.duckdb"]).db == "x.duckdb"
    assert load_config(None).db == "curated.duckdb"
    sh(tmp_path, "run", named, "--progress", "off")
    assert (tmp_path / "my_run.duckdb").is_file() and not (tmp_path / "curated.duckdb").exists()

    # two runs in one database: `curated` shows the latest finished, and sql says so
    sh(tmp_path, "run", unnamed, "--db", "my_run.duckdb", "--progress", "off")
    runs = json.loads("[" + ",".join(sh(tmp_path, "runs", "--db", "my_run.duckdb", "-f", "json").stdout.splitlines()) + "]")
    latest = runs[-1]["run_id"]
    proc = sh(tmp_path, "sql", "SELECT count(*) FROM curated", "--db", "my_run.duckdb")
    assert proc.stderr.strip().splitlines()[-1] == (
        f"curated = run {latest} (unnamed), the latest finished run; 1 other run here: curated_all holds every run's "
        "rows, `curate runs` lists them")
    assert "curated =" not in sh(tmp_path, "sql", "SELECT count(*) FROM curated_all", "--db", "my_run.duckdb").stderr

    # the default database is missing: say which databases are here
    proc = subprocess.run([*curate_cmd(), "sql", "SELECT 1"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "database not found: curated.duckdb" in proc.stderr and "here: my_run.duckdb" in proc.stderr
