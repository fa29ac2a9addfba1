"""Targeted selection where the answer is known: a pool of arithmetic word problems and short
poems, a target set of word problems. After a short warmup, LESS and RDS+ put most of their top
10% in the target kind.

Threshold: at least 10 of the top 12 (83%). A third of the pool is of the target kind, so a
selector blind to the target draws 4 of 12 on average, and 10 or more with probability 0.03%
(hypergeometric, 12 of 120 with 40 targets). The two kinds share no content words and differ in
characters (digits and operators against letters), which even a random tiny model separates:
both selectors put 12 of 12 there for three model seeds tried.
"""

import json
import random

import duckdb
import pyarrow as pa
import pytest

from curate.selectors.less import LessSelector
from curate.selectors.rds import RDSSelector
from curate.storage import schema as S
from tiny_llm import build_tiny_llama


pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

NAMES = ["Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Eva", "Raj"]
ITEMS = ["apples", "coins", "books", "marbles", "pencils", "stamps"]
TOPICS = ["the sea", "autumn", "a candle", "the moon", "rain", "an old house", "snow", "a garden"]
WORDS = ["soft", "light", "falls", "silver", "quiet", "dream", "wind", "glow", "shadow", "whisper", "gold", "sleep"]


def word_problem(rnd: random.Random) -> list[dict]:
    a, b = rnd.randint(2, 60), rnd.randint(2, 40)
    name, item = rnd.choice(NAMES), rnd.choice(ITEMS)
    if rnd.random() < 0.5:
        q, ans = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", f"{a} + {b} = {a + b}. {name} has {a + b} {item}."
    else:
        a = a + b
        q, ans = f"{name} had {a} {item} and gave away {b}. How many {item} are left?", f"{a} - {b} = {a - b}. {a - b} {item} are left."
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]


def poem(rnd: random.Random) -> list[dict]:
    lines = [" ".join(rnd.sample(WORDS, 4)) for _ in range(3)]
    return [{"role": "user", "content": f"Write a short poem about {rnd.choice(TOPICS)}."},
            {"role": "assistant", "content": ",\n".join(lines) + "."}]


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory):
    rnd = random.Random(0)
    convs = [word_problem(rnd) for _ in range(40)] + [poem(rnd) for _ in range(80)]
    kinds = ["math"] * 40 + ["poem"] * 80
    con = duckdb.connect()
    con.execute("CREATE TABLE pool (id VARCHAR, messages STRUCT(role VARCHAR, content VARCHAR)[])")
    ids = [S.sample_id(c) for c in convs]
    con.register("_p", pa.table({"id": ids, "messages": S.messages_array(convs)}))
    con.execute("INSERT INTO pool SELECT * FROM _p")
    con.execute("CREATE TABLE vectors (run_id VARCHAR, name VARCHAR, id VARCHAR, model VARCHAR, vec FLOAT[])")
    kind_of = dict(zip(ids, kinds))
    tmp = tmp_path_factory.mktemp("targeted")
    targets = tmp / "targets.jsonl"
    trnd = random.Random(99)
    targets.write_text("".join(json.dumps({"messages": word_problem(trnd)}) + "\n" for _ in range(8)))
    model = str(build_tiny_llama(tmp / "tiny"))
    yield con, kind_of, str(targets), model, tmp
    con.close()


def share_of_math(picked, kind_of):
    return sum(kind_of[p[0]] == "math" for p in picked)


def test_rds_targets_the_word_problems(mixed_pool):
    con, kind_of, targets, model, _ = mixed_pool
    picked = RDSSelector(model, targets, budget=12, max_length=128).select(con, "r", "pool", 12)
    assert len({p[0] for p in picked}) == 12
    assert share_of_math(picked, kind_of) >= 10, picked


def test_less_targets_the_word_problems(mixed_pool):
    con, kind_of, targets, model, tmp = mixed_pool
    sel = LessSelector(model, targets, budget=12, warmup_fraction=0.25, epochs=2, lr=1e-3, batch_size=8, lora_r=8,
                       lora_alpha=32, max_length=128, dim=512, workdir=str(tmp / "less"), max_batch_tokens=2048)
    picked = sel.select(con, "r", "pool", 12)
    assert len({p[0] for p in picked}) == 12
    assert share_of_math(picked, kind_of) >= 10, picked
    print(sel.timings)


def test_less_in_a_ray_actor_selects_as_in_process(mixed_pool, ray_local):
    """`resources` moves the model work into a Ray actor (a GPU node on a cluster); the
    selector still reads and stores in its own process, and the selection is the same."""
    con, _, targets, model, tmp = mixed_pool
    kwargs = dict(budget=12, warmup_fraction=0.25, epochs=2, lr=1e-3, batch_size=8, lora_r=8, lora_alpha=32,
                  max_length=128, dim=512, max_batch_tokens=2048, feature_batch_rows=50)
    here = LessSelector(model, targets, workdir=str(tmp / "less_here"), **kwargs).select(con, "here", "pool", 12)
    remote = LessSelector(model, targets, workdir=str(tmp / "less_actor"), resources={"num_cpus": 1}, **kwargs)
    assert LessSelector.uses_ray({"resources": {"num_cpus": 1}}) and not LessSelector.uses_ray({})
    there = remote.select(con, "there", "pool", 12)
    assert [p[0] for p in there] == [p[0] for p in here]
    assert max(abs(a[1] - b[1]) for a, b in zip(here, there)) < 1e-4
    stored = dict(con.execute("SELECT run_id, count(*) FROM less_features WHERE run_id IN ('here', 'there') GROUP BY 1").fetchall())
    assert stored == {"here": 240, "there": 240}  # 120 rows x 2 checkpoints, in batches of 50
    with pytest.raises(ValueError, match="resources takes"):
        LessSelector(model, targets, resources={"gpus": 1})
