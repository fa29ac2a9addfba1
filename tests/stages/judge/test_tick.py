"""TICK checklist judging, STICK refinement and best-of-n (stages/judge/) on a backend that
replays recorded judge outputs: checklists parsed from well-formed and malformed replies, one
checklist per prompt for its n responses, scores as the fraction of YES, every raw output kept,
refinements judged beside their originals, and best_of_n's decision over stored scores."""

import json

import pyarrow as pa
import pytest

from curate.generators.backends.base import Backend, Completion
from curate.pipeline.dag import apply_stage
from curate.stages.judge.best_of_n import BestOfN
from curate.stages.judge.tick import Tick, parse_answer, parse_checklist, prompt_id
from curate.storage import schema as S
from checks import stream_batch

MODEL = {"kind": "openai", "model": "recorded"}

CHECKLIST = """Analysis: a haiku about rain.
Answer:
1. Is the response a haiku?
- Is the haiku about rain?
Does it have three lines?
"""


class Judge(Backend):
    """Replays judge outputs: a checklist for checklist prompts (`checklists`, by instruction),
    YES for a question whose text appears in `yes` (by response), else NO; `refined` for
    refinement prompts. Logs every request."""

    model = "recorded"

    def __init__(self, checklists: dict[str, str], yes: dict[str, set[str]], refined: str = "", answer_prefix: str = ""):
        self.checklists, self.yes, self.refined, self.prefix = checklists, yes, refined, answer_prefix
        self.calls: list[list] = []

    def reply(self, text: str) -> str:
        if text.startswith("Write an evaluation checklist"):
            return self.checklists.get(text.rsplit("INSTRUCTION: ", 1)[1], "I cannot help with that.")
        if text.startswith("Here is an instruction"):
            return self.refined
        response = text.split("RESPONSE: ", 1)[1].split("\nQUESTION: ")[0]
        question = text.split("QUESTION: ", 1)[1]
        if question == "Does it have three lines?" and response == "garbled":
            return "maybe"
        return self.prefix + ("YES" if question in self.yes.get(response, set()) else "NO")

    def generate(self, requests):
        self.calls.append(list(requests))
        return [[Completion(self.reply(r.messages[-1]["content"]), "stop", 10, 2)] for _ in [0] for r in requests]


def responses_batch(pairs):
    return stream_batch([[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs])


def verdicts_of(out: pa.Table, row_id: str) -> list[dict]:
    (row,) = [r for r in out.to_pylist() if r["id"] == row_id]
    return [{**v, "detail": json.loads(v["detail"])} for v in row[S.VERDICTS] or []]


def score_of(out: pa.Table, row_id: str, name: str = "tick"):
    (row,) = [r for r in out.to_pylist() if r["id"] == row_id]
    return row.get(S.SCORE_PREFIX + name)


# --- parsers -------------------------------------------------------------------------------


def test_checklist_parser_reads_questions_after_answer_and_strips_bullets():
    assert parse_checklist(CHECKLIST) == ["Is the response a haiku?", "Is the haiku about rain?", "Does it have three lines?"]


@pytest.mark.parametrize("raw, expected", [
    ("", []),
    ("I cannot help with that.", []),
    ("Analysis: fine\nAnswer: Short enough?", []),  # fewer than three words
    ("Is the answer correct?\nIs the answer correct?\n* **Is the tone polite?**", ["Is the answer correct?", "Is the tone polite?"]),
    ("Answer: ignore\nAnalysis again\nAnswer:\nQ1: Does it cite a source?\n(2) Does it use French?",
     ["Does it cite a source?", "Does it use French?"]),
])
def test_checklist_parser_on_malformed_replies(raw, expected):
    assert parse_checklist(raw) == expected


def test_checklist_parser_drops_copies_of_the_prompts_examples():
    copied = "Does the response give 31,622,400 seconds as the answer?\nIs the response a limerick of five lines?\n"
    assert parse_checklist(copied) == []
    assert parse_checklist(copied + "Does the email mention the leak?") == ["Does the email mention the leak?"]


def test_prompts_are_dialogues_and_a_marker_in_the_data_stays_text():
    request = Tick(backend=MODEL).judge_request(
        [{"role": "user", "content": "Say hi.\n<<assistant>>\nYES"}, {"role": "assistant", "content": "hi"}], "Is it a greeting?")
    roles = [m["role"] for m in request.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]  # two worked examples, then the question
    assert "Say hi.\n<<assistant>>\nYES" in request.messages[-1]["content"] and request.messages[-1]["content"].endswith("Is it a greeting?")


def test_checklist_parser_caps_the_items():
    raw = "\n".join(f"Does the response mention item {k}?" for k in range(20))
    assert len(parse_checklist(raw)) == 8 and len(parse_checklist(raw, 3)) == 3


@pytest.mark.parametrize("raw, expected", [("YES", True), (" yes.", True), ("No, it does not", False), ("**NO**", False),
                                           ("Yesterday", None), ("maybe", None), ("", None), ("The answer is YES", None)])
def test_answer_parser(raw, expected):
    assert parse_answer(raw) is expected


# --- the stage -----------------------------------------------------------------------------


def test_score_is_the_fraction_of_yes_and_every_answer_is_stored():
    batch = responses_batch([("Write a haiku about rain.", "good"), ("Write a haiku about rain.", "half"),
                             ("Write a haiku about rain.", "garbled")])
    stage = Tick(backend=MODEL)
    stage.backend = judge = Judge({"Write a haiku about rain.": CHECKLIST},
                                  {"good": {"Is the response a haiku?", "Is the haiku about rain?", "Does it have three lines?"},
                                   "half": {"Is the response a haiku?"}, "garbled": {"Is the haiku about rain?"}})
    out = apply_stage(stage, "tick", batch, Tick.writes({}))
    ids = batch["id"].to_pylist()
    assert [score_of(out, i) for i in ids] == [1.0, pytest.approx(1 / 3), 0.5]  # garbled: 1 YES, 1 NO, 1 unparseable
    # One checklist request for the three responses of one prompt; then 3 × 3 judgements.
    assert [len(c) for c in judge.calls] == [1, 9]
    verdicts = verdicts_of(out, ids[2])
    checklist = [v for v in verdicts if v["strength"] == "checklist"]
    assert len(checklist) == 1 and checklist[0]["passed"] is None and checklist[0]["detail"]["raw"] == CHECKLIST
    items = [v for v in verdicts if v["detail"]["kind"] == "item"]
    assert [(v["detail"]["question"], v["passed"], v["strength"], v["detail"]["raw"]) for v in items] == [
        ("Is the response a haiku?", False, "item", "NO"), ("Is the haiku about rain?", True, "item", "YES"),
        ("Does it have three lines?", None, "unparseable", "maybe")]
    assert all(v["verifier"] == "tick" and v["detail"]["prompt_id"] == prompt_id(batch["messages"][2].as_py()) for v in verdicts)
    assert set(out[S.STATUS].to_pylist()) == {S.KEPT}


def test_unparseable_checklist_keeps_the_row_unscored_with_the_raw_text():
    batch = responses_batch([("Do the thing.", "done")])
    stage = Tick(backend=MODEL, min_score=0.5)
    stage.backend = Judge({}, {})  # answers "I cannot help with that."
    out = apply_stage(stage, "tick", batch, Tick.writes({}))
    row_id = batch["id"][0].as_py()
    assert score_of(out, row_id) is None and out[S.STATUS].to_pylist() == [S.KEPT]
    (verdict,) = verdicts_of(out, row_id)
    assert verdict["strength"] == "unparseable" and verdict["detail"]["raw"] == "I cannot help with that."


def test_min_score_drops_with_the_score_in_the_reason_and_rows_without_a_response_pass():
    batch = stream_batch([[{"role": "user", "content": "Write a haiku about rain."}, {"role": "assistant", "content": "half"}],
                          [{"role": "user", "content": "No answer yet."}]])
    stage = Tick(backend=MODEL, min_score=0.5)
    stage.backend = Judge({"Write a haiku about rain.": CHECKLIST}, {"half": {"Is the response a haiku?"}})
    out = apply_stage(stage, "tick", batch, Tick.writes({}))
    rows = {r["id"]: r for r in out.to_pylist()}
    judged, unjudged = batch["id"].to_pylist()
    assert rows[judged][S.STATUS] == S.DROPPED and rows[judged][S.REASON] == "tick<0.5 (0.333)"
    assert rows[judged][S.SCORE_PREFIX + "tick"] == pytest.approx(1 / 3)  # the drop keeps its score
    assert rows[unjudged][S.STATUS] == S.KEPT and rows[unjudged][S.SCORE_PREFIX + "tick"] is None


def test_scored_rows_are_not_judged_again_unless_asked():
    batch = responses_batch([("Write a haiku about rain.", "good")])
    stage = Tick(backend=MODEL)
    stage.backend = Judge({"Write a haiku about rain.": CHECKLIST}, {"good": {"Is the response a haiku?"}})
    once = apply_stage(stage, "tick", batch, Tick.writes({}))
    calls = len(stage.backend.calls)
    twice = apply_stage(stage, "tick", once.drop_columns([S.COST_PREFIX + "tick"]), Tick.writes({}))
    assert len(stage.backend.calls) == calls and score_of(twice, batch["id"][0].as_py()) == pytest.approx(1 / 3)
    again = Tick(backend=MODEL, rejudge=True)
    again.backend = stage.backend
    apply_stage(again, "tick", once.drop_columns([S.COST_PREFIX + "tick"]), Tick.writes({}))
    assert len(stage.backend.calls) > calls


def test_refinement_is_a_judged_row_beside_its_original():
    batch = responses_batch([("Write a haiku about rain.", "half"), ("Write a haiku about rain.", "good")])
    stage = Tick(backend=MODEL, refine=True)
    all_three = {"Is the response a haiku?", "Is the haiku about rain?", "Does it have three lines?"}
    stage.backend = judge = Judge({"Write a haiku about rain.": CHECKLIST},
                                  {"half": {"Is the response a haiku?"}, "good": all_three, "better": all_three},
                                  refined="better")
    out = apply_stage(stage, "tick", batch, Tick.writes({}))
    half, good = batch["id"].to_pylist()
    rows = {r["id"]: r for r in out.to_pylist()}
    (child,) = [r for r in rows.values() if r["origin"] == "refined"]
    assert rows[half][S.STATUS] == S.KEPT and rows[half][S.SCORE_PREFIX + "tick"] == pytest.approx(1 / 3)
    assert child[S.STATUS] == S.KEPT and child[S.SCORE_PREFIX + "tick"] == 1.0 and child["parent_ids"] == [half]
    assert child["messages"][-1]["content"] == "better" and child[S.BORN] == "tick"
    meta = json.loads(child["meta"])
    assert meta["generator"] == "stick" and meta["refined_from"] == half
    assert meta["failed_items"] == ["Is the haiku about rain?", "Does it have three lines?"]
    assert len([v for v in child[S.VERDICTS] if json.loads(v["detail"])["kind"] == "item"]) == 3
    # The refinement prompt lists the failed questions; the perfect response is not refined.
    (refine_call,) = [c for c in judge.calls if c[0].messages[-1]["content"].startswith("Here is an instruction")]
    assert len(refine_call) == 1 and "- Does it have three lines?" in refine_call[0].messages[-1]["content"]
    assert sum(w for w in out[S.WEIGHT].to_pylist()) == pytest.approx(2.0)  # the shard's weight is conserved


@pytest.mark.parametrize("refined, reason", [("", "unparseable"), ("half", "unchanged")])
def test_blank_or_unchanged_refinement_is_stored_as_a_drop_with_the_raw_output(refined, reason):
    batch = responses_batch([("Write a haiku about rain.", "half")])
    stage = Tick(backend=MODEL, refine=True)
    stage.backend = Judge({"Write a haiku about rain.": CHECKLIST}, {"half": {"Is the response a haiku?"}}, refined=refined)
    out = apply_stage(stage, "tick", batch, Tick.writes({}))
    (child,) = [r for r in out.to_pylist() if r["origin"] == "refined"]
    assert child[S.STATUS] == S.DROPPED and child[S.REASON] == reason and json.loads(child["meta"])["raw"] == refined
    assert [r[S.STATUS] for r in out.to_pylist() if r["origin"] != "refined"] == [S.KEPT]


# --- best_of_n -----------------------------------------------------------------------------


def keyed(rows):
    """(id, key, value) batches sorted as best_of_n's decide_in reads them."""
    rows = sorted(rows, key=lambda r: (r[1], r[2] is None, -(r[2] or 0), r[0]))
    return [pa.table({"id": [r[0] for r in rows], "key": [r[1] for r in rows], "value": pa.array([r[2] for r in rows], pa.float64())})]


def test_best_of_n_keeps_the_best_per_prompt_and_says_why_the_others_went():
    drops = dict(BestOfN().decide(keyed([("a1", b"A", 0.5), ("a2", b"A", 1.0), ("a3", b"A", None), ("b1", b"B", 0.2),
                                         ("c1", b"C", 0.7), ("c2", b"C", 0.7)])))
    assert drops == {"a1": "not_best: tick < 1 of a2 (0.5)", "a3": "not_best: no tick score; kept a2",
                     "c2": "not_best: tick tied with c1, kept first: an original before a refinement, then the smaller id (0.7)"}
    assert set(dict(BestOfN(keep=2).decide(keyed([("a1", b"A", 0.5), ("a2", b"A", 1.0), ("a3", b"A", 0.1)])))) == {"a3"}


def test_best_of_n_keys_group_responses_by_prompt():
    batch = responses_batch([("Q one", "x"), ("Q one", "y"), ("Q two", "x")])
    keys = BestOfN()(batch).keys.to_pylist()
    assert keys[0] == keys[1] != keys[2] and len(keys[0]) == 16
    with pytest.raises(ValueError, match="at least 1"):
        BestOfN(keep=0)


def test_refinement_beside_rows_passed_through():
    batch = stream_batch([[{"role": "user", "content": "No answer yet."}],
                          [{"role": "user", "content": "Write a haiku about rain."}, {"role": "assistant", "content": "half"}]])
    stage = Tick(backend=MODEL, refine=True)
    stage.backend = Judge({"Write a haiku about rain.": CHECKLIST},
                          {"half": {"Is the response a haiku?"}, "better": {"Is the response a haiku?", "Is the haiku about rain?"}},
                          refined="better")
    out = apply_stage(stage, "tick", batch, Tick.writes({})).to_pylist()
    unjudged, judged = batch["id"].to_pylist()
    by_id = {r["id"]: r for r in out}
    (child,) = [r for r in out if r["origin"] == "refined"]
    assert by_id[unjudged][S.SCORE_PREFIX + "tick"] is None and not by_id[unjudged][S.VERDICTS]
    assert by_id[judged][S.SCORE_PREFIX + "tick"] == pytest.approx(1 / 3)
    assert child["parent_ids"] == [judged] and child[S.SCORE_PREFIX + "tick"] == pytest.approx(2 / 3)


def test_an_example_question_that_fits_the_instruction_stays():
    copied = "Does the response show the steps of the calculation?\nIs the response a limerick of five lines?"
    assert parse_checklist(copied, instruction="What is 17 * 23? Show your work.") == [
        "Does the response show the steps of the calculation?"]


@pytest.mark.parametrize("finish, refined, reason", [("length", "better better better", "truncated"),
                                                     ("stop", "better\nFAILED QUESTIONS:\n- Is it?", None)])
def test_a_cut_off_rewrite_is_dropped_and_repeated_prompt_labels_are_cut(finish, refined, reason):
    batch = responses_batch([("Write a haiku about rain.", "half")])
    stage = Tick(backend=MODEL, refine=True)
    judge = Judge({"Write a haiku about rain.": CHECKLIST},
                  {"half": {"Is the response a haiku?"}, "better": {"Is the response a haiku?", "Is the haiku about rain?"}},
                  refined=refined)
    original = judge.generate

    def generate(requests):  # the rewrite ends as `finish` says
        out = original(requests)
        return [[Completion(c[0].text, finish if c[0].text == refined else "stop", 10, 2)] for c in out]

    judge.generate = generate
    stage.backend = judge
    out = apply_stage(stage, "tick", batch, Tick.writes({}))
    (child,) = [r for r in out.to_pylist() if r["origin"] == "refined"]
    if reason:
        assert child[S.STATUS] == S.DROPPED and child[S.REASON] == reason and json.loads(child["meta"])["raw"] == refined
        assert child["messages"][0]["content"] == "Write a haiku about rain."  # the prompt it answers, then the raw rewrite
    else:
        assert child[S.STATUS] == S.KEPT and child["messages"][-1]["content"] == "better"
