"""Evol-Instruct's parser and elimination rules on recorded completions (written for these
tests: good, partial and garbage outputs), and the stage's rows when fed them."""

import json

import pyarrow as pa
import pytest

from curate.generators.backends.base import Backend, Completion
from curate.generators.evol import OPERATIONS, EvolInstruct, elimination_reason, evolution_prompt, parse_evolved
from curate.pipeline.dag import apply_stage
from curate.storage import schema as S
from checks import seed_batch


@pytest.mark.parametrize("raw, expected", [
    ("#Rewritten Prompt#:\nExplain photosynthesis in three steps, citing one experiment.", "Explain photosynthesis in three steps, citing one experiment."),
    ("Rewritten Prompt: \"List five rivers in Africa longer than 1,000 km.\"", "List five rivers in Africa longer than 1,000 km."),
    ("#Created Prompt#: Describe a rare bird of the Andes.", "Describe a rare bird of the Andes."),
    ("  \n ", None),
    ("", None),
    ("### Rewritten Prompt ###", None),
])
def test_parse_evolved(raw, expected):
    assert parse_evolved(raw) == expected


ORIGINAL = "Name three fruits."


@pytest.mark.parametrize("evolved, response, reason", [
    (None, None, "unparseable"),
    ("As in #The Given Prompt#, name three fruits that grow in winter.", "Apples, pears and kiwis.", "copied_scaffold"),
    ("Name three fruits!", "Apples, pears, plums.", "no_information_gain"),
    ("Name three tropical fruits and their origins.", "Sorry, I can't help with that.", "refusal_response"),
    ("Name three tropical fruits and their origins.", "the of and, ... !", "empty_response"),
    ("Name three tropical fruits and their origins.", "Mango (South Asia), papaya (Central America), pineapple (South America).", None),
])
def test_elimination_rules(evolved, response, reason):
    assert elimination_reason(ORIGINAL, evolved, response) == reason


def test_long_answers_that_say_sorry_are_not_refusals():
    long = "I am sorry to say the history is complicated. " + "word " * 90
    assert elimination_reason(ORIGINAL, "Name three tropical fruits and where they grow.", long) is None


def test_templates_are_filled_safely():
    text = evolution_prompt("constraints", "Format {this} as JSON: {\"a\": 1}")
    assert "Please add one more constraints" in text and 'Format {this} as JSON: {"a": 1}' in text
    assert text.rstrip().endswith("#Rewritten Prompt#:")
    assert "#Created Prompt#:" in evolution_prompt("breadth", "x")


class Recorded(Backend):
    """Replays recorded completions, in order of the prompts' first words."""

    model = "recorded"

    def __init__(self, evolutions: dict[str, str], answers: dict[str, str]):
        self.evolutions, self.answers = evolutions, answers

    def generate(self, requests):
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            if "#Rewritten Prompt#:" in text or "#Created Prompt#:" in text:
                key = next(k for k in self.evolutions if k in text)
                out.append([Completion(self.evolutions[key], "stop", 50, 20)])
            else:
                out.append([Completion(self.answers.get(text, "A plain answer with enough words."), "stop", 20, 30)])
        return out


def test_stage_replaces_evolved_rows_and_keeps_failed_parents():
    stage = EvolInstruct(backend={"kind": "openai", "model": "recorded"}, seed=0)
    stage.backend = Recorded(
        evolutions={"Name three fruits.": "#Rewritten Prompt#: Name three fruits that ripen in winter, with one recipe each.",
                    "Say hi.": "Say hi.",  # no information gain
                    "Count to five.": ""},  # unparseable
        answers={"Name three fruits that ripen in winter, with one recipe each.": "Kiwi (kiwi salad), pear (poached pears), persimmon (persimmon bread)."},
    )
    batch = seed_batch(["Name three fruits.", "Say hi.", "Count to five."])
    out = apply_stage(stage, "evol_instruct", batch)
    from collections import Counter

    assert Counter((r[S.STATUS], r[S.REASON]) for r in out.to_pylist()) == Counter({
        ("kept", None): 3,  # the evolved child and the two parents whose evolution failed
        ("expanded", None): 1, ("dropped", "no_information_gain"): 1, ("dropped", "unparseable"): 1})
    child = next(r for r in out.to_pylist() if r[S.STATUS] == "kept" and r["origin"] == "evol")
    assert child["messages"][0]["content"].startswith("Name three fruits that ripen in winter")
    assert child["messages"][1]["role"] == "assistant" and child["parent_ids"] == [batch["id"][0].as_py()]
    meta = json.loads(child["meta"])
    assert meta["operation"] in OPERATIONS and meta["generation"] == 1 and meta["template"] == "evol/2"
    # Failed evolutions: the parents stay kept, unchanged, for the next round; weights still sum to the input.
    kept_seeds = [r["messages"][0]["content"] for r in out.to_pylist() if r[S.STATUS] == "kept" and r["origin"] == "seed"]
    assert sorted(kept_seeds) == ["Count to five.", "Say hi."]
    assert abs(sum(r[S.WEIGHT] for r in out.to_pylist()) - 3.0) < 1e-9
    # Every row carries weight, so a shard cannot complete before all of its rows reach the writer.
    assert all(r[S.WEIGHT] > 0 for r in out.to_pylist())
    dropped_raw = [json.loads(r["meta"]).get("raw") for r in out.to_pylist() if r[S.STATUS] == "dropped"]
    assert sorted(dropped_raw) == ["", "Say hi."]


def test_operation_choice_is_stable_and_uniform():
    stage = EvolInstruct(backend={"kind": "openai", "model": "m"}, seed=3)
    ids = [f"id{i}" for i in range(2000)]
    picks = [stage.operation_for(i) for i in ids]
    assert picks == [stage.operation_for(i) for i in ids]
    counts = {op: picks.count(op) for op in OPERATIONS}
    assert min(counts.values()) > 300
    other_round = EvolInstruct(backend={"kind": "openai", "model": "m"}, seed=3, generation=2)
    assert sum(a != other_round.operation_for(i) for a, i in zip(picks, ids)) > 1000


def test_rows_with_tests_or_answers_pass_through_unevolved():
    stage = EvolInstruct(backend={"kind": "openai", "model": "recorded"}, seed=0)
    stage.backend = Recorded(evolutions={"Name three fruits.": "Name three fruits that ripen in winter, with one recipe each."}, answers={})
    batch = seed_batch(["Name three fruits.", "What is 2 + 3?"])
    metas = pa.array(["{}", json.dumps({"answer": "5"})])
    batch = batch.set_column(batch.column_names.index("meta"), "meta", metas)
    out = apply_stage(stage, "evol_instruct", batch).to_pylist()
    math = [r for r in out if r["messages"][0]["content"] == "What is 2 + 3?"]
    assert len(math) == 1 and math[0][S.STATUS] == "kept" and json.loads(math[0]["meta"]) == {"answer": "5"}
    assert any(r["origin"] == "evol" and r[S.STATUS] == "kept" for r in out)
    assert abs(sum(r[S.WEIGHT] for r in out) - 2.0) < 1e-9


def test_stage_on_chat_model_replies():
    """A chat model's rewrites: the prompt is read out of the chat around it; a reply with no
    rewritten prompt in it (a refusal, an empty header) is an `unparseable` drop with its raw text."""
    rewrite = "Name three fruits that ripen in winter, with one recipe each."
    chatty = f"Sure, here is the rewritten prompt:\n\n```\n{rewrite}\n```\n\nThis version adds a season and asks for recipes."
    refusal = "I'm sorry, but I can't rewrite this prompt."
    empty = "**Rewritten Prompt:**\n\nLet me know if you need anything else!"
    stage = EvolInstruct(backend={"kind": "openai", "model": "recorded"}, seed=0)
    stage.backend = Recorded(evolutions={"Name three fruits.": chatty, "Say hi.": refusal, "Count to five.": empty},
                             answers={rewrite: "Kiwi (kiwi salad), pear (poached pears), persimmon (persimmon bread)."})
    out = apply_stage(stage, "evol_instruct", seed_batch(["Name three fruits.", "Say hi.", "Count to five."])).to_pylist()
    child = next(r for r in out if r["origin"] == "evol" and r[S.STATUS] == "kept")
    assert child["messages"][0]["content"] == rewrite
    dropped = {json.loads(r["meta"])["raw"]: r for r in out if r[S.STATUS] == "dropped"}
    assert set(dropped) == {refusal, empty} and {r[S.REASON] for r in dropped.values()} == {"unparseable"}
    assert dropped[refusal]["messages"][0]["content"] == refusal  # the raw reply stays readable in the row
