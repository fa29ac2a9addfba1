"""The scoring stages and selectors through the Ray runner, results queryable by SQL."""

import json
import random

import duckdb
import pytest

from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from conftest import write_jsonl
from test_rds_less_targeted import poem, word_problem
from tiny_llm import build_tiny_llama


pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_ifd_rds_and_less_through_the_runner(ray_local, tmp_path):
    rnd = random.Random(1)
    convs = [word_problem(rnd) for _ in range(20)] + [poem(rnd) for _ in range(40)]
    convs.append([{"role": "user", "content": "Repeat after me: " + "la " * 200}, {"role": "assistant", "content": "la"}])
    src = write_jsonl(tmp_path / "pool.jsonl", [{"messages": c} for c in convs])
    targets = write_jsonl(tmp_path / "targets.jsonl", [{"messages": word_problem(random.Random(7)), "task": "math"},
                                                         {"messages": word_problem(random.Random(8)), "task": "math"},
                                                         {"messages": poem(random.Random(9)), "task": "poems"}])
    model = str(build_tiny_llama(tmp_path / "tiny"))
    db = str(tmp_path / "scored.duckdb")
    half = {"num_cpus": 0.5}  # two model actors beside the read tasks on a 2-CPU Ray
    stages = [{"ifd": {"model": model, "max_length": 256, "batch_size": 32, "resources": half}},
              {"rds_embed": {"model": model, "max_length": 256, "resources": half}}]
    selectors = [
        {"ifd": {"budget": 0.2, "max_ifd": None}},
        {"ifd": {"budget": 0.5, "name": "ifd_at_most_1"}},
        {"ifd": {"budget": 10, "score": "ic_ifd", "clusters": 2, "max_ifd": None, "name": "ic_ifd_clustered"}},
        {"rds": {"model": model, "targets": str(targets), "budget": 6}},
        {"less": {"model": model, "targets": str(targets), "budget": 6, "warmup_fraction": 0.3, "epochs": 2, "lr": 1e-3,
                  "batch_size": 8, "lora_r": 4, "lora_alpha": 16, "max_length": 128, "dim": 256}},
    ]
    report = run(load_config(None, input=[str(src)], db=db, shard_size=20, stages=stages, selectors=selectors), progress="off")
    assert report.rows_in == 61 and report.kept == 60 and report.dropped == 1
    rows = {s["name"]: s["rows"] for s in report.selections}
    assert rows.pop("ifd_at_most_1") <= 30
    assert rows == {"ifd": 12, "ic_ifd_clustered": 10, "rds": 6, "less": 6}

    con = duckdb.connect(db, read_only=True)
    q = lambda sql, *p: con.execute(sql, list(p)).fetchall()  # noqa: E731
    assert q("SELECT stage, reason FROM drops") == [("ifd", "ifd_skip:prompt_fills_window")]
    per_name = dict(q("SELECT name, count(*) FROM scores GROUP BY 1"))
    assert per_name == {n: 60 for n in ("ifd", "ic_ifd", "loss_answer_given_prompt", "loss_answer", "loss_prompt")}
    (bad,), = q("""SELECT count(*) FROM scores a JOIN scores b USING (run_id, id) JOIN scores c USING (run_id, id)
                   WHERE a.name = 'ifd' AND b.name = 'loss_answer_given_prompt' AND c.name = 'loss_answer'
                     AND abs(a.value - b.value / c.value) > 1e-9""")
    assert bad == 0
    assert q("SELECT count(*), min(len(vec)), max(abs(list_inner_product(vec, vec) - 1)) < 1e-4 FROM vectors WHERE name = 'rds'") == [(60, 128, True)]
    top_ifd = [r[0] for r in q("SELECT score FROM selections WHERE name = 'ifd' ORDER BY rank")]
    assert top_ifd == sorted(top_ifd, reverse=True)
    assert top_ifd[-1] >= q("SELECT max(value) FROM scores WHERE name = 'ifd' AND value < ?", top_ifd[-1])[0][0]
    (n_le_1,), = q("SELECT count(*) FROM scores WHERE name = 'ifd' AND value <= 1")
    assert q("SELECT count(*), max(score) <= 1 FROM selections WHERE name = 'ifd_at_most_1'") == [(min(30, n_le_1), True)]
    assert {c for (c,) in q("SELECT DISTINCT cluster FROM selections WHERE name = 'ic_ifd_clustered'")} <= {0, 1}
    feats = q("SELECT epoch, count(*), min(len(vec)) FROM less_features GROUP BY 1 ORDER BY 1")
    assert feats == [(1, 60, 256), (2, 60, 256)]
    con.close()

    # Another target set: only matching runs, on the stored features.
    only_math = write_jsonl(tmp_path / "math.jsonl", [{"messages": word_problem(random.Random(s))} for s in (11, 12, 13)])
    selectors[-1]["less"]["targets"] = str(only_math)
    selectors[-1]["less"]["resources"] = {"num_cpus": 1}  # the model in a Ray actor this time; the features stay stored
    again = run(load_config(None, input=[str(src)], db=db, shard_size=20, stages=stages, selectors=selectors), progress="off")
    assert [s["name"] for s in again.selections] == ["less"]
    con = duckdb.connect(db, read_only=True)
    picked = [json.loads(m) for (m,) in con.execute(
        "SELECT to_json(s.messages)::VARCHAR FROM selections x JOIN samples s USING (run_id, id) WHERE x.name = 'less'").fetchall()]
    assert sum("How many" in m[0]["content"] or "left" in m[0]["content"] for m in picked) >= 5
    assert con.execute("SELECT count(*) FROM less_features").fetchone()[0] == 120
    con.close()
