"""Self-Instruct and SkillMix work on whole shards (`pool = "shard"`): a shard's live rows,
sorted by (`_row`, `id`), are the in-context pool, whatever Ray Data's batching, the order
shards arrive in, or which shards a resumed run streams.

In process: the pool actor fed one set of shards in different batchings gives the same rows.
Through the runner (real Ray, the tiny Llama on vLLM's CPU backend): two runs with different
batch sizes, and a run killed after its first commit then resumed, send the same prompts (the
second run of each pair pays for no call: every prompt is in the shared LLM cache) and store
the same Self-Instruct rows. On batch pools the second run's prompts differ, miss the cache,
and the model writes other rows.
"""

import json
import os
import random
import signal
from collections import Counter

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate.generators.backends.base import Backend, Completion
from curate.pipeline.dag import StageActor, StagePlan, pool_order
from curate.stages.base import Resources
from curate.storage import schema as S
from checks import seed_batch

pytestmark = [pytest.mark.vllm, pytest.mark.model]  # the engine runs are marked slow one by one

WORDS = ("explain describe list compare summarise write plan design outline translate the a of rivers poems "
         "budgets gardens engines markets storms cities proteins novels bridges recipes orbits").split()


class Echo(Backend):
    """A deterministic model: each reply is drawn from a hash of the prompt."""

    model = "echo"

    def __init__(self):
        self.prompts = []

    def generate(self, requests):
        out = []
        for r in requests:
            text = json.dumps(r.messages)
            self.prompts.append(text)
            rng = random.Random(text)
            if "List the skills" in text:
                reply = "\n".join(f"Skill: {rng.choice(WORDS)} {rng.choice(WORDS)} {i} | Using {' '.join(rng.sample(WORDS, 5))}."
                                  for i in range(2))
            elif "## Instruction" in text or "query type" in text.lower() or "skills" in text.lower():
                reply = f"## Instruction\n{' '.join(rng.sample(WORDS, 8))}?\n## Response\n{' '.join(rng.sample(WORDS, 6))}."
            else:
                reply = "\nTask 9: ".join(" ".join(rng.sample(WORDS, 9)).capitalize() + "." for _ in range(2))
            out.append([Completion(reply, "stop", 10, 10)])
        return out


def shards(sizes: dict[str, int], dropped_every: int = 4) -> pa.Table:
    """Rows of several shards as an earlier stage would pass them on: every `dropped_every`th
    row already dropped (it travels on and counts towards completion, but is not in the pool)."""
    parts = []
    for shard, n in sizes.items():
        t = seed_batch([f"{shard} instruction number {i}: {' '.join(random.Random(shard + str(i)).sample(WORDS, 6))}" for i in range(n)])
        status = [S.DROPPED if i % dropped_every == dropped_every - 1 else S.KEPT for i in range(n)]
        t = t.set_column(t.column_names.index(S.SHARD), S.SHARD, pa.array([shard] * n))
        t = t.set_column(t.column_names.index(S.STATUS), S.STATUS, pa.array(status))
        parts.append(t)
    return pa.concat_tables(parts)


def feed(key: str, params: dict, table: pa.Table, batches: list[list[int]]) -> tuple[list[pa.Table], list[str]]:
    """A fresh pool actor fed `table`'s rows in the given batches of row positions."""
    actor = StageActor(StagePlan(key, key, {"backend": {"kind": "openai", "model": "echo"}, **params},
                                 Resources(actor=True, concurrency=1), None))
    actor.stage.backend = Echo()
    outs = [actor(table.take(pa.array(b, pa.int64()))) for b in batches]
    assert actor.shards is None or not actor.shards.pending(), "every shard was complete"
    return outs, actor.stage.backend.prompts


def rows(outs: list[pa.Table]) -> list[tuple]:
    t = pa.concat_tables(outs, promote_options="permissive")
    return sorted((r["id"], r[S.SHARD], r[S.STATUS], r[S.REASON], r["meta"], round(r[S.WEIGHT], 9), tuple(r["parent_ids"] or ()))
                  for r in t.to_pylist())


@pytest.mark.parametrize("key, params", [("self_instruct", {"seed_examples": 3, "max_rounds": 3}),
                                         ("skillmix", {"per_seed": 1.0, "k": 2})])
def test_pool_actor_gives_the_same_rows_however_the_shards_are_batched(key, params):
    table = shards({"s000-00000": 7, "s000-00001": 5, "s001-00000": 9})
    n = table.num_rows
    whole = [list(range(7)), list(range(7, 12)), list(range(12, n))]  # one call per shard
    order = list(range(n))
    random.Random(3).shuffle(order)  # shards interleaved, split across calls, rows out of order
    interleaved = [order[i:i + 4] for i in range(0, n, 4)]
    one = [list(range(n))]  # all at once
    outs_whole, prompts_whole = feed(key, params, table, whole)
    outs_mixed, prompts_mixed = feed(key, params, table, interleaved)
    outs_one, _ = feed(key, params, table, one)
    assert rows(outs_whole) == rows(outs_mixed) == rows(outs_one)
    assert sorted(prompts_whole) == sorted(prompts_mixed)
    out = pa.concat_tables(outs_whole, promote_options="permissive").to_pylist()
    generated = [r for r in out if r[S.BORN] == key]
    assert generated and Counter(r[S.STATUS] for r in out if r[S.BORN] is None) == {S.KEPT: 17, S.DROPPED: 4}
    # Every row of a shard comes out in one call, and a call that completes no shard emits nothing.
    for batch_out in outs_mixed:
        for shard in set(batch_out[S.SHARD].to_pylist()):
            part = batch_out.filter(pc.equal(batch_out[S.SHARD], shard))
            assert abs(sum(part[S.WEIGHT].to_pylist()) - part[S.SHARD_ROWS][0].as_py()) < 1e-9
    assert any(o.num_rows == 0 for o in outs_mixed)
    # A shard's pool is its own: its generated rows' parents are rows of that shard only.
    ids_of = {s: set(table.filter(pc.equal(table[S.SHARD], s))["id"].to_pylist()) for s in set(table[S.SHARD].to_pylist())}
    for r in generated:
        assert set(r["parent_ids"]) - {g["id"] for g in generated} <= ids_of[r[S.SHARD]]


def test_pool_order_is_row_then_id():
    t = pa.table({S.ROW: [2, 1, 1, 0], "id": ["b", "z", "a", "q"]})
    assert pool_order(t).to_pydict() == {S.ROW: [0, 1, 1, 2], "id": ["q", "a", "z", "b"]}


def test_self_instruct_similarity_is_checked_within_the_shard():
    """The same task generated for two shards is new in each: the similarity index is the
    shard's, not the actor's memory of every shard it has seen (which would depend on their
    order)."""
    table = shards({"s000-00000": 4, "s000-00001": 4}, dropped_every=99)

    class Same(Echo):
        def generate(self, requests):
            return [[Completion("Describe how tides follow the moon across a month.", "stop", 10, 10)] for _ in requests]

    actor = StageActor(StagePlan("self_instruct", "self_instruct", {"backend": {"kind": "openai", "model": "echo"}, "seed_examples": 2,
                                                                    "max_rounds": 1, "per_seed": 0.25}, Resources(actor=True), None))
    actor.stage.backend = Same()
    out = pa.concat_tables([actor(table.slice(4, 4)), actor(table.slice(0, 4))]).to_pylist()
    new = [r for r in out if r[S.BORN] == "self_instruct"]
    assert len(new) == 2 and all(r[S.STATUS] == S.KEPT for r in new)


def test_config_rejects_a_pool_stage_on_several_actors():
    from curate.errors import CurateError
    from curate.pipeline.config import load_config
    from curate.pipeline.dag import stage_plans

    backend = {"kind": "openai", "model": "m"}
    with pytest.raises(CurateError, match=r"stages\.0\.self_instruct\.resources.*whole shards"):
        load_config(None, stages=[{"self_instruct": {"backend": backend, "resources": {"concurrency": 2}}}])
    with pytest.raises(CurateError, match=r"stages\.0\.skillmix\.resources.*actor: false"):
        load_config(None, stages=[{"skillmix": {"backend": backend, "resources": {"actor": False}}}])
    config = load_config(None, stages=[{"skillmix": {"backend": backend, "resources": {"calls_per_actor": 3}}}])
    res = stage_plans(config)[1].resources
    assert res.actor and res.concurrency == 1 and res.calls_per_actor == 3


# ---------------------------------------------------------------------------- through the runner

vllm_needed = pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None, reason="vLLM is not installed")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_llm import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), max_positions=1024))


def _settings(tmp_path, alpaca_rows, model: str, batch_size: int, rows: int = 30, rounds: int = 2) -> dict:
    from conftest import write_jsonl

    src = tmp_path / "seeds.jsonl"
    if not src.exists():  # short instructions: short prompts for the tiny model
        short = [r for r in alpaca_rows if len(r["instruction"]) < 60][:rows]
        write_jsonl(src, [{"instruction": r["instruction"]} for r in short])
    backend = {"kind": "vllm", "model": model, "dtype": "float32", "max_model_len": 1024, "enforce_eager": True}
    stage = {"backend": backend, "seed_examples": 2, "generated_examples": 1, "max_rounds": rounds, "max_tokens": 12,
             "cache": str(tmp_path / "shared.llm_cache.duckdb"), "batch_size": batch_size}
    return dict(input=[str(src)], shard_size=6, ingest={"require_response": False}, stages=[{"self_instruct": stage}])


def _self_instruct_rows(db) -> tuple[list, list, list]:
    """What the Self-Instruct stage made, in a form that does not depend on the order shards
    committed in: (id, text, kept) of every row it made; each of its drops with its shard; and
    the whole stored row (parents, meta, shard) of each id made once. The store keeps the first
    committed occurrence of an id that two shards made (an empty output, say)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        made = con.execute("SELECT id, to_json(messages)::VARCHAR, kept, parent_ids, meta, shard FROM samples "
                           "WHERE origin = 'selfinstruct' ORDER BY id").fetchall()
        drops = con.execute("SELECT id, reason, shard FROM drops WHERE stage = 'self_instruct' ORDER BY ALL").fetchall()
        repeats = {r[0] for r in con.execute("SELECT id FROM drops WHERE stage = 'store'").fetchall()}
    finally:
        con.close()
    times_dropped = Counter(d[0] for d in drops)
    once = [(id_, text, kept, tuple(parents), meta, shard) for id_, text, kept, parents, meta, shard in made
            if (kept and id_ not in repeats) or (not kept and times_dropped[id_] == 1)]
    return [r[:3] for r in made], drops, once


def _cache_entries(tmp_path) -> int:
    con = duckdb.connect(str(tmp_path / "shared.llm_cache.duckdb"), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM llm_cache").fetchone()[0]
    finally:
        con.close()


@vllm_needed
@pytest.mark.slow
def test_batch_size_does_not_change_self_instruct_rows(ray_local, tiny_model, tmp_path, alpaca_rows):
    """Batch sizes 4 and 16 over 6-row shards: batch pools differ (slices of 4 and 2 rows of a
    shard, or 4 rows across a shard boundary, against a whole shard or 16 rows of three);
    shard pools are the same."""
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    first = run(load_config(None, db=str(tmp_path / "a.duckdb"), **_settings(tmp_path, alpaca_rows, tiny_model, 4, 24, 1)), progress="off")
    paid = _cache_entries(tmp_path)
    rows = _self_instruct_rows(tmp_path / "a.duckdb")
    assert first.generated > 0 and rows[0] and rows[1] and rows[2] and paid > 0
    second = run(load_config(None, db=str(tmp_path / "b.duckdb"), **_settings(tmp_path, alpaca_rows, tiny_model, 16, 24, 1)), progress="off")
    assert _cache_entries(tmp_path) == paid, "the second run sent prompts the first did not"
    assert _self_instruct_rows(tmp_path / "b.duckdb") == rows
    assert (second.generated, second.kept, second.dropped) == (first.generated, first.kept, first.dropped)


@vllm_needed
@pytest.mark.slow
def test_a_resumed_run_makes_the_self_instruct_rows_of_an_uninterrupted_one(ray_local, tiny_model, tmp_path, alpaca_rows):
    """Killed (SIGKILL, driver and Ray) after its first shard commits, then resumed: the resumed
    run streams only the uncommitted shards, whose pools are still their own rows. (Batch pools
    fail this when Ray Data's batches span shards, as with a step batch size of 8 over 6-row
    shards; with one block per shard per call they fail only the batch-size test above.)"""
    from conftest import curate_cmd, run_killing_at_first_commit
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    settings = _settings(tmp_path, alpaca_rows, tiny_model, 8)
    killed_db = tmp_path / "killed.duckdb"
    cmd = [*curate_cmd(), "run", "--db", str(killed_db), "--input", settings["input"][0], "--progress", "lines",
           "--set", f"shard_size={settings['shard_size']}", "--set", "ingest.require_response=false",
           "--set", "stages=" + json.dumps(settings["stages"])]

    def kill_all(driver: int) -> list[int]:
        os.killpg(driver, signal.SIGKILL)
        return [driver]

    _, killed = run_killing_at_first_commit(cmd, kill_all)
    assert killed
    con = duckdb.connect(str(killed_db), read_only=True)
    committed = con.execute("SELECT count(*) FROM shards").fetchone()[0]
    con.close()
    assert 1 <= committed < 5, "the kill must land mid-run (5 shards)"

    resumed = run(load_config(None, db=str(killed_db), **settings), progress="off")
    assert resumed.attempt == 2 and resumed.shards_skipped == committed
    paid = _cache_entries(tmp_path)
    clean = run(load_config(None, db=str(tmp_path / "clean.duckdb"), **settings), progress="off")
    assert clean.run_id == resumed.run_id
    assert _cache_entries(tmp_path) == paid, "the uninterrupted run sent prompts the killed and resumed one did not"
    assert _self_instruct_rows(killed_db) == _self_instruct_rows(tmp_path / "clean.duckdb")
