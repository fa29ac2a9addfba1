"""`curate plan CONFIG` (issue 21, item 8): phases, stages with their resources, what each reads
and writes, and every preflight check, without starting Ray; a failed check exits non-zero."""

import json
import re
import socket
import subprocess
import sys
import time

from conftest import ALPACA, ROOT, curate_cmd


def sh(cwd, *args):
    start = time.perf_counter()
    proc = subprocess.run([*curate_cmd(), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    return proc, time.perf_counter() - start


def write_config(path, body: dict):
    path.write_text(json.dumps(body))
    return path


def test_plan_prints_phases_stages_and_what_they_read_and_write(tmp_path, shared_data):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "gsm.jsonl").write_text(json.dumps({"question": "How many apples does Tom have if he has three?"}) + "\n")
    config = write_config(tmp_path / "p.yaml", {
        "name": "planned", "input": str(ALPACA), "shard_size": 1000,
        "stages": [{"filters": {"min_response_words": 3}}, {"exact_dedup": {"text": "instruction"}},
                   {"verify_math": {}}, {"decontaminate": {"benchmarks": str(bench / "*.jsonl")}},
                   {"embed": {"text": "instruction"}}, {"semdedup": {"threshold": 0.9}}],
        "selectors": [{"kmeans_diversity": {"budget": 0.1, "k": 4, "name": "diverse"}}],
        "export": {"format": "jsonl", "out": "out.jsonl", "selection": "diverse"},
    })
    proc, seconds = sh(tmp_path, "plan", str(config))
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:] + out
    assert re.search(r"^input: .*alpaca_ifd_5pct\.json \(json\); 4 shards of at most 1000 rows$", out, re.M)
    assert re.search(r"^db: planned\.duckdb; run id \w{16} \(a new database\)$", out, re.M)
    assert "phase 0: streams the input through ingest, filters, exact_dedup; then the barrier: exact_dedup decide" in out
    assert ("phase 1: streams the survivors of phase 0 through verify_math, decontaminate, embed, semdedup; "
            "then the barrier: semdedup decide") in out
    assert re.search(r"stages\.1 +exact_dedup: task, 1 CPU, batch \d+\n +writes: keys:exact_dedup \(row_keys\), drops at the barrier", out)
    assert re.search(r"stages\.2 +verify_math: .*\n +reads: meta\.answer\n +writes: verdicts:math_answer", out)
    assert re.search(r"stages\.4 +embed: actor ×1, [\d.]+ CPU.*\n +writes: vectors:embed", out)
    assert re.search(r"stages\.5 +semdedup: .*\n +reads: vectors:embed\n +writes: drops at the barrier", out)
    assert "barrier  semdedup: reads vectors:embed" in out
    assert re.search(r"selectors\.0 +diverse \(kmeans_diversity\): budget 0\.1; reads vectors:embed; writes selections:diverse", out)
    assert "export: selection diverse as jsonl → out.jsonl" in out
    for check in ("input: 1 file found", "stages.0.filters", "stages.3.decontaminate", "stages.4.embed"):
        assert re.search(rf"^    ok    {re.escape(check)}$", out, re.M), check
    assert re.search(r"^(\d+) of \1 checks passed$", out, re.M)
    assert not (tmp_path / "planned.duckdb").exists()  # nothing written
    assert "Token authentication" not in proc.stderr and "ray" not in proc.stderr.lower()
    assert seconds < 60


def test_plan_starts_no_ray(tmp_path, shared_data):
    code = ("import sys; from curate.plan import plan; p = plan(None, input=[sys.argv[1]]); "
            "import ray; print(p.ok, ray.is_initialized())")
    proc = subprocess.run([sys.executable, "-c", code, str(ALPACA)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["True", "False"], proc.stderr[-2000:]


def test_plan_lists_every_failed_check_and_exits_non_zero(tmp_path, shared_data):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path / "bad.yaml", {
        "input": [str(ALPACA), str(tmp_path / "missing.jsonl")], "db": "bad.duckdb",
        "stages": [{"decontaminate": {"benchmarks": str(tmp_path / "nothing" / "*.jsonl")}},
                   {"respond": {"backend": {"kind": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1"}}},
                   {"filters": {}},
                   {"ifd": {"model": str(tmp_path / "no-model")}}],
    })
    proc, _ = sh(tmp_path, "plan", str(config))
    out = proc.stdout
    assert proc.returncode == 1, out
    fails = re.findall(r"^    FAIL  (.*)$", out, re.M)
    assert [f.split(":")[0] for f in fails] == ["input", "stages.0.decontaminate.benchmarks.0",
                                               "stages.1.respond.backend.base_url", "stages.3.ifd.model"], fails
    assert f"missing.jsonl" in fails[0] and "no benchmark file matches" in fails[1]
    assert f"no server answers at http://127.0.0.1:{port}/v1" in fails[2]
    assert re.search(r"^    ok    stages\.2\.filters$", out, re.M)
    assert "1 of 5 checks passed; 4 failed" in out
    assert "phase 0: streams the input through ingest, decontaminate, respond, filters, ifd" in out  # the plan still prints


def test_plan_of_a_finished_run_says_a_rerun_adds_nothing_and_the_demo_plans(tmp_path, shared_data):
    config = write_config(tmp_path / "small.yaml", {"input": str(ALPACA), "shard_size": 2000,
                                                     "stages": [{"filters": {"min_response_words": 3}}]})
    proc, _ = sh(tmp_path, "run", str(config), "--progress", "off", "--no-export")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc, _ = sh(tmp_path, "plan", str(config))
    assert proc.returncode == 0 and re.search(r"^db: small\.duckdb; run id \w+ \(finished already: a rerun adds nothing\)$",
                                              proc.stdout, re.M), proc.stdout
    proc, _ = sh(ROOT, "plan", "jobs/configs/demo.yaml", "--set", "filters.min_response_words=4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "export: selection random_half as hf → ./out/demo" in proc.stdout
    assert re.search(r"^db: curated\.duckdb", proc.stdout, re.M)


def test_plan_of_a_finished_run_names_the_selectors_a_rerun_runs_again(tmp_path, shared_data):
    """A changed selector budget keeps the run id (selectors are not in it) but a rerun writes
    that selection again: the plan said `a rerun adds nothing`."""
    config = write_config(tmp_path / "sel.yaml", {"input": str(ALPACA), "shard_size": 4000,
                                                   "stages": [{"filters": {"min_response_words": 3}}],
                                                   "selectors": [{"random": {"budget": 10, "name": "ten"}},
                                                                 {"random": {"budget": 0.5, "name": "half"}}]})
    proc, _ = sh(tmp_path, "run", str(config), "--progress", "off", "--no-export")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = lambda out: re.search(r"^db: sel\.duckdb; run id \w+ \((.*)\)$", out, re.M).group(1)  # noqa: E731
    assert line(sh(tmp_path, "plan", str(config))[0].stdout) == "finished already: a rerun adds nothing"
    for override, names in (("ten.budget=20", "ten"), ("half.seed=3", "half")):
        out = sh(tmp_path, "plan", str(config), "--set", override)[0].stdout
        assert line(out) == f"finished already: a rerun processes no shard, and runs the selectors new or changed since: {names}"
