"""The model-output cache (storage/model_cache.py): embeddings, IFD losses and RDS vectors are
keyed by (model, text, output parameters), so a rerun with another threshold computes none of
them again, and what it reads back equals what an uncached stage computes."""

import json
import os
import random

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from curate.storage import schema as S
from curate.storage.model_cache import KeyMaker, ModelCache, model_cache_path_for, model_fingerprint
from conftest import write_jsonl
from tiny_llm import build_tiny_llama

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), max_positions=1024))


def _convs(n: int, seed: int = 0) -> list[list[dict]]:
    rnd = random.Random(seed)
    words = "the cat sat on a mat while two dogs ran past quickly and then stopped".split()
    return [[{"role": "user", "content": " ".join(rnd.choices(words, k=rnd.randint(2, 12))) + f" #{i}?"},
             {"role": "assistant", "content": " ".join(rnd.choices(words, k=rnd.randint(1, 10)))}] for i in range(n)]


def _batch(convs) -> pa.Table:
    return pa.table({"messages": S.messages_array(convs)})


def test_keys_follow_model_parameters_and_text(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden": 8}')
    fp = model_fingerprint(str(folder))
    k = KeyMaker("embed", fp, {"max_length": 8})
    assert k(["a", "b", "a"])[0] == k(["a"])[0] != k(["b"])[0]
    assert k(["a"]) != KeyMaker("embed", fp, {"max_length": 9})(["a"])
    assert k(["a"]) != KeyMaker("ifd", fp, {"max_length": 8})(["a"])
    (folder / "config.json").write_text('{"hidden": 16}')  # the model changed in place
    assert model_fingerprint(str(folder)) != fp
    assert model_fingerprint("no/such-model") == json.dumps({"name": "no/such-model"})
    assert model_cache_path_for("/x/run.duckdb") == "/x/run.model_cache.duckdb"


def test_cache_file_is_shared_and_logs_each_batch(tmp_path):
    path = str(tmp_path / "c.model_cache.duckdb")
    a, b = ModelCache(path), ModelCache(path)  # two actors' views of one file
    a.store("embed", "m", ["k1", "k2"], [b"\x01", b"\x02"], [None, "why"])
    b.store("embed", "m", ["k2"], [b"\x09"], [None])  # a key already there keeps its first value
    assert b.lookup(["k1", "k2", "k3", "k1"], "embed", "m") == {"k1": (b"\x01", None), "k2": (b"\x02", "why")}
    assert a.stats() == {"hits": 3, "misses": 1, "entries": 2}


def test_embed_second_pass_computes_nothing_and_equals_uncached(tmp_path):
    pytest.importorskip("sentence_transformers")
    from curate.stages.embed import Embed

    convs = _convs(40)
    convs[5] = convs[3]  # a repeat within the batch is computed once
    path = str(tmp_path / "e.model_cache.duckdb")
    uncached = Embed(cache=False)
    ref = np.array(uncached(_batch(convs)).vectors["embed"][0].to_pylist(), np.float32)
    assert (uncached.cached.hits, uncached.cached.misses) == (0, 40)

    first = Embed(cache=path)
    first._model = uncached.model  # the same weights, loaded once for the test
    one = np.array(first(_batch(convs)).vectors["embed"][0].to_pylist(), np.float32)
    assert (first.cached.hits, first.cached.misses) == (1, 39)
    again = Embed(cache=path)  # another run: a new stage, the same file
    again._model = uncached.model
    two = np.array(again(_batch(convs[::-1])).vectors["embed"][0].to_pylist(), np.float32)[::-1]
    assert (again.cached.hits, again.cached.misses) == (40, 0)
    np.testing.assert_array_equal(two, one)  # read back exactly as computed
    # as an uncached pass computes them (here 39 distinct texts encoded against 40: other
    # mini-batches, so equal to float32 rounding; the runner test below compares bit for bit)
    np.testing.assert_allclose(one, ref, atol=1e-6)

    other = Embed(cache=path, text=["instruction", "response"])  # another text: computed
    other._model = uncached.model
    other(_batch(convs[:4]))
    assert other.cached.misses == 4
    assert ModelCache(path).stats() == {"hits": 41, "misses": 43, "entries": 43}


def test_ifd_and_rds_read_back_what_they_computed(tmp_path, tiny_model):
    from curate.stages.score.ifd import IFDScore
    from curate.stages.score.rds import RDSEmbed

    convs = _convs(30, seed=1)
    convs.append([{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}])  # skipped: prompt fills the window
    path = str(tmp_path / "s.model_cache.duckdb")

    def ifd(cache, variant="loss_ratio"):
        stage = IFDScore(tiny_model, max_length=160, variant=variant, on_skip="drop", cache=cache)
        res = stage(_batch(convs))
        scores = {name: values.kept.to_pylist() for name, values in res.scores.items()}
        return stage.cached, scores, res.reasons

    ref = ifd(False)[1:]
    first, *one = ifd(path)
    again, *two = ifd(path)
    assert (first.misses, again.hits, again.misses) == (31, 31, 0)
    assert one == two == list(ref) and ref[1] == ["ifd_skip:prompt_fills_window"] and len(ref[0]["ifd"]) == 30
    ppl, *three = ifd(path, "ppl_ratio")  # ifd and ic_ifd derive from the stored losses
    assert ppl.misses == 0 and three[0]["loss_answer"] == ref[0]["loss_answer"] and three[0]["ifd"] != ref[0]["ifd"]

    def rds(cache, max_length=64):
        stage = RDSEmbed(tiny_model, max_length=max_length, cache=cache)
        return stage.cached, stage(_batch(convs)).vectors["rds"][0].to_pylist()

    ref_vecs = rds(False)[1]
    first, one = rds(path)
    again, two = rds(path)
    assert (first.misses, again.hits, again.misses) == (31, 31, 0) and one == two == ref_vecs
    assert rds(path, max_length=32)[0].misses == 31  # another window: other vectors


def test_a_changed_threshold_reembeds_nothing_through_the_runner(ray_local, tmp_path, alpaca_rows, tiny_model):
    """The issue's case: embed (and IFD) then semdedup; the second run changes semdedup's
    threshold (a new run, every shard streamed again) and computes no vector and no loss."""
    pytest.importorskip("sentence_transformers")
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    copies = [dict(r, instruction=r["instruction"].rstrip(".") + ", please.") for r in alpaca_rows[:8]]
    src = write_jsonl(tmp_path / "s.jsonl", alpaca_rows[:72] + copies)
    db = str(tmp_path / "c.duckdb")
    cache = model_cache_path_for(db)
    half = {"num_cpus": 0.5}

    def stages(threshold, cache_on=True):
        return [{"embed": {"batch_size": 32, "cache": cache_on, "resources": half}},
                {"ifd": {"model": tiny_model, "max_length": 1024, "on_skip": "keep", "cache": cache_on, "resources": half}},
                {"semdedup": {"threshold": threshold, "k": 2}}]

    def results(path, run_id):
        con = duckdb.connect(path, read_only=True)
        vecs = dict(con.execute("SELECT id, vec FROM vectors WHERE run_id = ? AND name = 'embed'", [run_id]).fetchall())
        scores = dict(con.execute("SELECT id || name, value FROM scores WHERE run_id = ?", [run_id]).fetchall())
        drops = con.execute("SELECT count(*) FROM drops WHERE run_id = ? AND stage = 'semdedup'", [run_id]).fetchone()[0]
        con.close()
        return vecs, scores, drops

    def log(kind):
        con = duckdb.connect(cache, read_only=True)
        out = con.execute("SELECT coalesce(sum(hits), 0), coalesce(sum(misses), 0) FROM model_cache_log WHERE kind = ?", [kind]).fetchone()
        con.close()
        return out

    first = run(load_config(None, input=[str(src)], db=db, shard_size=40, stages=stages(0.93)), progress="off")
    assert log("embed") == (0, 80) and log("ifd") == (0, 80)
    second = run(load_config(None, input=[str(src)], db=db, shard_size=40, stages=stages(0.8)), progress="off")
    assert second.run_id != first.run_id
    assert log("embed") == (80, 80) and log("ifd") == (80, 80)  # the second run: 80 hits, no miss
    vecs1, scores1, drops1 = results(db, first.run_id)
    vecs2, scores2, drops2 = results(db, second.run_id)
    assert len(vecs1) == 80 and vecs1 == vecs2 and len(scores1) >= 5 * 60 and scores1 == scores2
    assert drops2 >= drops1 >= 7

    plain_db = str(tmp_path / "plain.duckdb")  # no cache at all: the same vectors and scores
    plain = run(load_config(None, input=[str(src)], db=plain_db, shard_size=40, stages=stages(0.93, cache_on=False)), progress="off")
    assert plain.run_id == first.run_id and not os.path.exists(model_cache_path_for(plain_db))
    vecs0, scores0, _ = results(plain_db, plain.run_id)
    assert vecs0 == vecs1 and scores0 == scores1
