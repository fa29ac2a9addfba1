"""DeCRIM (stages/judge/decrim.py) on a backend that replays recorded outputs: the instruction's
constraints parsed from the decomposition (copied examples and junk left out), verifiable
constraints checked by the IFEval checker instead of the critic, refinement rounds until the
critic passes or max_rounds, the last rewrite a row beside its original with the earlier rounds
in its meta, and a malformed decomposition recorded as unparseable with its raw text."""

import json

import pytest

from curate.generators.backends.base import Backend, Completion
from curate.pipeline.dag import apply_stage
from curate.stages.judge.decrim import Decrim
from curate.storage import schema as S
from checks import stream_batch

MODEL = {"kind": "openai", "model": "recorded"}
INSTRUCTION = "Describe the moon in two sentences and mention craters."
DECOMPOSITION = """- The response describes the moon.
- The response has two sentences.
- The response mentions craters.
- The response has exactly two paragraphs.
"""  # the last line copies the prompt's worked example: dropped


class Critic(Backend):
    """Decomposition for INSTRUCTION; YES for a constraint the response meets by `rules`
    (constraint → predicate on the response); `rewrites` answered in order to refinement prompts."""

    model = "recorded"

    def __init__(self, rules, rewrites=(), decomposition=DECOMPOSITION):
        self.rules, self.rewrites, self.decomposition = rules, list(rewrites), decomposition
        self.calls = []

    def reply(self, text):
        if text.startswith("List the constraints"):
            return self.decomposition
        if text.startswith("A response to the instruction below breaks"):
            return self.rewrites.pop(0)
        response = text.split("RESPONSE: ", 1)[1].split("\nCONSTRAINT: ")[0]
        constraint = text.split("CONSTRAINT: ", 1)[1]
        return "YES" if self.rules[constraint](response) else "NO"

    def generate(self, requests):
        self.calls.append(list(requests))
        return [[Completion(self.reply(r.messages[-1]["content"]), "stop", 10, 3)] for r in requests]


RULES = {"The response describes the moon.": lambda r: "moon" in r.lower(),
         "The response has two sentences.": lambda r: r.count(".") == 2,
         "The response mentions craters.": lambda r: "crater" in r.lower()}


def batch_of(response, meta=None):
    batch = stream_batch([[{"role": "user", "content": INSTRUCTION}, {"role": "assistant", "content": response}]])
    if meta is not None:
        batch = batch.set_column(batch.column_names.index("meta"), "meta", [[json.dumps(meta)]])
    return batch


def items(row):
    return [(json.loads(v["detail"])["question"], v["passed"], v["strength"]) for v in row[S.VERDICTS]
            if json.loads(v["detail"])["kind"] == "item"]


def test_rounds_refine_until_the_critic_passes():
    stage = Decrim(backend=MODEL, max_rounds=3)
    stage.backend = Critic(RULES, rewrites=["The moon is grey. It is far.", "The moon is grey. It has craters."])
    out = apply_stage(stage, "decrim", batch_of("It is big"), Decrim.writes({}))
    original, child = sorted(out.to_pylist(), key=lambda r: r["origin"] == "refined")
    assert original[S.SCORE_PREFIX + "decrim"] == 0.0 and original[S.STATUS] == S.KEPT
    assert [i[0] for i in items(original)] == list(RULES)  # the copied example constraint is gone
    assert child["origin"] == "refined" and child["messages"][-1]["content"] == "The moon is grey. It has craters."
    assert child[S.SCORE_PREFIX + "decrim"] == 1.0 and child["parent_ids"] == [original["id"]]
    meta = json.loads(child["meta"])
    assert meta["generator"] == "decrim" and meta["rounds"] == 2 and meta["failed_items"] == list(RULES)
    (earlier,) = meta["history"]
    assert earlier["response"] == "The moon is grey. It is far." and earlier["failed"] == ["The response mentions craters."]
    assert earlier["raw_answers"] == ["YES", "YES", "NO"]


def test_max_rounds_stops_the_loop_and_zero_rounds_only_critiques():
    stage = Decrim(backend=MODEL, max_rounds=1)
    stage.backend = Critic(RULES, rewrites=["The moon is grey. It is far."])
    out = apply_stage(stage, "decrim", batch_of("It is big"), Decrim.writes({}))
    (child,) = [r for r in out.to_pylist() if r["origin"] == "refined"]
    assert child[S.SCORE_PREFIX + "decrim"] == pytest.approx(2 / 3) and json.loads(child["meta"])["history"] == []
    only = Decrim(backend=MODEL, max_rounds=0)
    only.backend = Critic(RULES)
    out = apply_stage(only, "decrim", batch_of("It is big"), Decrim.writes({}))
    assert out.num_rows == 1 and out[S.SCORE_PREFIX + "decrim"].to_pylist() == [0.0]


def test_verifiable_constraints_are_checked_by_the_ifeval_checker():
    stage = Decrim(backend=MODEL, max_rounds=1)
    stage.backend = critic = Critic(RULES, rewrites=["the moon has craters. it is grey."])
    meta = {"constraints": [{"id": "lowercase", "kwargs": {}}, {"id": "no_such_type", "kwargs": {}}]}
    out = apply_stage(stage, "decrim", batch_of("The Moon. It has craters.", meta), Decrim.writes({}))
    original, child = sorted(out.to_pylist(), key=lambda r: r["origin"] == "refined")
    checked = [i for i in items(original) if i[2] == "checker"]
    assert len(checked) == 1 and checked[0][1] is False and "lowercase" in checked[0][0]
    assert original[S.SCORE_PREFIX + "decrim"] == pytest.approx(3 / 4)
    assert [i for i in items(child) if i[2] == "checker"][0][1] is True and child[S.SCORE_PREFIX + "decrim"] == 1.0
    judged = [r.messages[-1]["content"] for call in critic.calls for r in call if "CONSTRAINT: " in r.messages[-1]["content"]]
    assert not any("lowercase" in t.split("CONSTRAINT: ")[1] for t in judged)  # the critic is not asked about it


@pytest.mark.parametrize("decomposition", ["", "Sure! Here you go.", "- ok\n- fine"])
def test_malformed_decomposition_is_recorded_unparseable_with_the_raw_text(decomposition):
    stage = Decrim(backend=MODEL)
    stage.backend = Critic(RULES, decomposition=decomposition)
    out = apply_stage(stage, "decrim", batch_of("It is big"), Decrim.writes({}))
    (row,) = out.to_pylist()
    assert row[S.STATUS] == S.KEPT and row[S.SCORE_PREFIX + "decrim"] is None
    (verdict,) = row[S.VERDICTS]
    assert verdict["strength"] == "unparseable" and json.loads(verdict["detail"])["raw"] == decomposition


def test_an_unchanged_rewrite_is_a_drop_and_parameters_are_checked():
    stage = Decrim(backend=MODEL, max_rounds=2)
    stage.backend = Critic(RULES, rewrites=["It is big"])
    out = apply_stage(stage, "decrim", batch_of("It is big"), Decrim.writes({}))
    (child,) = [r for r in out.to_pylist() if r["origin"] == "refined"]
    assert child[S.STATUS] == S.DROPPED and child[S.REASON] == "unchanged"
    with pytest.raises(ValueError, match="rounds"):
        Decrim(backend=MODEL, max_rounds=-1)
