"""IFEval-style constraints: every type's checker on a response that satisfies it and one that does
not; sampling never pairs conflicting types; the generator step and the verifier stage."""

import json
import random

import pyarrow as pa
import pytest

from curate.stages.verify.constraints import CONSTRAINTS, _conflict, check, describe, sample_constraints
from curate.stages.verify.ifeval import AddConstraints, VerifyConstraints
from curate.storage import schema as S

LOREM = "The river runs past the old market. It feeds the garden! Does it reach the engine room? Yes it does."

# type → (kwargs, a response that satisfies it, one that does not)
CASES = {
    "length_words": ({"relation": "at least", "num_words": 5}, "one two three four five", "one two three"),
    "length_sentences": ({"relation": "less than", "num_sentences": 3}, "One sentence. Two sentences.", LOREM),
    "length_paragraphs": ({"num_paragraphs": 2}, "First part.\n***\nSecond part.", "First part.\n\nSecond part."),
    "keywords_include": ({"keywords": ["river", "garden"]}, LOREM, "The river is long."),
    "keywords_forbidden": ({"forbidden_words": ["market"]}, "A quiet street.", LOREM),
    "keyword_frequency": ({"keyword": "the", "relation": "at least", "frequency": 4}, LOREM, "The cat."),
    "letter_frequency": ({"letter": "z", "relation": "less than", "let_frequency": 3}, "a fizz", "zigzag zone"),
    "json_format": ({}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    "bullet_list": ({"num_bullets": 2}, "Points:\n* first\n* second", "* only one\nplain line"),
    "title": ({}, "<<A Day Out>>\nWe went out.", "A Day Out\nWe went out."),
    "lowercase": ({}, "all quiet here.", "All quiet here."),
    "uppercase": ({}, "ALL QUIET HERE.", "ALL QUIET HERe."),
    "capital_word_frequency": ({"relation": "at least", "capital_frequency": 2}, "NASA and ESA agree.", "Only NASA agrees."),
    "end_checker": ({"end_phrase": "Hope this helps."}, "Here it is. Hope this helps.", "Hope this helps. Bye."),
    "no_comma": ({}, "No commas here.", "Well, a comma."),
    "placeholders": ({"num_placeholders": 2}, "Send it to [name] at [address].", "Send it to [name]."),
    "sections": ({"section_spliter": "Section", "num_sections": 2}, "Section 1\nIntro.\nSection 2\nBody.", "Section 1\nAll of it."),
    "quotation": ({}, '"Wrapped in quotes."', 'Not "wrapped".'),
    "postscript": ({"postscript_marker": "P.S."}, "Main text.\n\nP.S. Bring snacks.", "Main text. No postscript."),
    "highlighted_sections": ({"num_highlights": 2}, "This is *key* and *also key*.", "Only *one* highlight."),
}


def test_at_least_fifteen_types_and_every_one_has_cases():
    assert len(CONSTRAINTS) >= 15
    assert set(CASES) == set(CONSTRAINTS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_checker_accepts_the_positive_and_rejects_the_negative(kind):
    kwargs, good, bad = CASES[kind]
    constraint = {"id": kind, "kwargs": kwargs}
    assert check(good, constraint) is True
    assert check(bad, constraint) is False
    assert describe(constraint)  # every type can be phrased


@pytest.mark.parametrize("kind", sorted(CASES))
def test_sampled_kwargs_describe_and_check(kind):
    rng = random.Random(7)
    for _ in range(5):
        kwargs = CONSTRAINTS[kind].sample(rng)
        assert isinstance(describe({"id": kind, "kwargs": kwargs}), str)
        check(LOREM, {"id": kind, "kwargs": kwargs})  # never raises on its own sampled kwargs


def test_sampling_avoids_conflicts_and_is_deterministic():
    rng = random.Random(0)
    for _ in range(300):
        chosen = [c["id"] for c in sample_constraints(rng, 3)]
        assert len(chosen) == 3
        assert not any(_conflict(a, b) for i, a in enumerate(chosen) for b in chosen[i + 1:])
    assert sample_constraints(random.Random(5), 2) == sample_constraints(random.Random(5), 2)
    with pytest.raises(KeyError):
        check("x", {"id": "no_such_type"})


def table(rows):
    samples = []
    for messages, meta in rows:
        samples.append({"id": S.sample_id(messages), "messages": messages, "origin": "seed", "source": "t",
                        "parent_ids": [], "meta": json.dumps(meta)})
    return pa.table(S.sample_arrays(samples))


def test_add_constraints_appends_them_to_the_instruction_and_records_them():
    rows = [([{"role": "user", "content": "Describe a river."}, {"role": "assistant", "content": "Wet."}], {"category": "writing"}),
            ([{"role": "user", "content": "Plan a trip."}], {})]
    stage = AddConstraints(min_constraints=2, max_constraints=2, seed=3)
    result = stage(table(rows))
    assert result.kept.num_rows == 0 and result.generated.num_rows == 2
    gen = result.generated.to_pylist()
    for child, (messages, _) in zip(gen, rows):
        meta = json.loads(child["meta"])
        assert len(meta["constraints"]) == 2
        assert [m["role"] for m in child["messages"]] == ["user"]  # the old answer is set aside
        text = child["messages"][0]["content"]
        assert text.startswith(messages[0]["content"]) and all(describe(c) in text for c in meta["constraints"])
        assert child["id"] == S.sample_id(child["messages"]) and child["origin"] == "constrained"
    assert json.loads(gen[0]["meta"])["category"] == "writing" and gen[0][S.PARENT] == 0
    again = stage(table(rows)).generated.to_pylist()
    assert [g["meta"] for g in again] == [g["meta"] for g in gen]
    with pytest.raises(ValueError, match="unknown constraint"):
        AddConstraints(types=["no_such_type"])


def test_verify_constraints_keeps_responses_that_satisfy_all():
    cons = [{"id": "no_comma", "kwargs": {}}, {"id": "title", "kwargs": {}}]
    rows = [([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<<T>> no commas at all"}], {"constraints": cons}),
            ([{"role": "user", "content": "q2"}, {"role": "assistant", "content": "<<T>> one, comma"}], {"constraints": cons}),
            ([{"role": "user", "content": "q3"}, {"role": "assistant", "content": "plain"}], {})]
    result = VerifyConstraints()(table(rows))
    assert [m[0]["content"] for m in result.kept["messages"].to_pylist()] == ["q1", "q3"]
    assert result.reasons == ["constraints:no_comma"]
    detail = json.loads(result.verdicts.dropped.to_pylist()[0][0]["detail"])
    assert detail == {"kind": "unsatisfied", "checked": 2, "failed": ["no_comma"]}
    assert result.scores["constraints_satisfied"].dropped.to_pylist() == [0.5]


@pytest.mark.parametrize("constraint", [
    {"id": "keywords_include", "kwargs": {"keywords": "balance"}},          # a string where a list of words belongs
    {"id": "keywords_forbidden", "kwargs": {"forbidden_words": "balance"}},
    {"id": "keywords_include", "kwargs": {"keywords": [1, 2]}},              # a list, but not of words
    {"id": "length_words", "kwargs": {"relation": "at least", "num_words": "5"}},
    {"id": "keyword_frequency", "kwargs": {"keyword": ["a"], "relation": "at least", "frequency": 1}},
    {"id": "no_comma", "kwargs": "none"},
])
def test_kwargs_of_the_wrong_type_are_invalid_not_read_letter_by_letter(constraint):
    """A string keyword list used to be iterated as letters: 'balance' was "included" in any text
    with an a and forbidden words never matched. Every type's kwargs are held to the types its
    own sampler draws."""
    with pytest.raises(TypeError, match=constraint["id"]):
        check("a cable lane, I love balance", constraint)
    rows = [([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a cable lane, I love balance"}],
             {"constraints": [constraint]})]
    result = VerifyConstraints()(table(rows))
    assert result.kept.num_rows == 0 and result.reasons == [f"constraints:invalid_constraint:{constraint['id']}"]


def test_whole_number_floats_are_numbers():  # JSON writers often give 5.0 for 5
    assert check("one two three four five six", {"id": "length_words", "kwargs": {"relation": "at least", "num_words": 5.0}})


@pytest.mark.parametrize("value, reason", [
    ("lowercase", "constraints:invalid_constraint:not_a_list"),
    (7, "constraints:invalid_constraint:not_a_list"),
    ('[{"id": "no_comma", "kwargs": {}}]', None),            # JSON text of a list: read as the list
    ('{"id": "no_comma", "kwargs": {}}', None),              # one constraint object, as text
    ({"id": "no_comma", "kwargs": {}}, None),                # one constraint object
    ('[{"id": "no_comma", "kwargs": {}}, {"id": "title", "kwargs": {}}]', "constraints:title"),
])
def test_constraints_that_are_not_a_list(value, reason):
    rows = [([{"role": "user", "content": "q"}, {"role": "assistant", "content": "no commas here"}], {"constraints": value})]
    result = VerifyConstraints()(table(rows))
    assert result.reasons == ([] if reason is None else [reason])
    assert result.kept.num_rows == (1 if reason is None else 0)
