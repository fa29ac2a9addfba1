"""Math answers: extraction (boxed, answer phrase, last number) and equivalence (exact, text, percent,
then Math-Verify: numeric, symbolic, ...). More kinds of input: test_verify_math_cases.py."""

import json

import pyarrow as pa
import pytest

from curate.stages.verify.math_answers import MathAnswer, equivalent, extract_answer
from curate.stages.verify.math_worker import MathChecker
from curate.storage import schema as S


@pytest.mark.parametrize("text, answer, how", [
    ("So the total is \\boxed{408}.", "408", "boxed"),
    ("First \\boxed{1}, then correcting: \\boxed{\\frac{3}{4}}", "\\frac{3}{4}", "boxed"),
    ("\\boxed{\\{1, 2\\}} is the set", "\\{1, 2\\}", "boxed"),
    ("We find x = 9.\nThe answer is 9.", "9", "answer_phrase"),
    ("Answer: 32.4", "32.4", "answer_phrase"),
    ("The final answer is $1,102.50.", "$1,102.50", "answer_phrase"),
    ("3 + 4 = 7, and 7 * 2 = 14", "14", "last_number"),
    ("It costs -3.5 dollars", "-3.5", "last_number"),
    ("No numbers at all", None, "none"),
])
def test_extract_answer(text, answer, how):
    assert extract_answer(text) == (answer, how)


@pytest.mark.parametrize("answer, reference, how", [
    ("408", "408", "exact"),
    ("\\text{Paris}", "paris", "text"),  # words compare as words (Math-Verify reads them as products: no = on)
    ("x = 9", "9", "numeric"),  # Math-Verify reads the assignment; no longer a string rule
    ("1,275", "1275", "exact"),
    ("$32.40", "32.4", "numeric"),
    ("\\frac{1}{2}", "0.5", "numeric"),
    ("3/4", "0.75", "numeric"),
    ("50%", "0.5", "percent"),  # the percent rule decides (50% is 50 or 0.5 by the reference's form)
    ("1102.5 dollars", "1102.5", "numeric"),
    ("2(x+1)", "2x + 2", "symbolic"),
    ("\\sqrt{8}", "2\\sqrt{2}", "symbolic"),
    ("\\frac{\\pi}{2}", "pi/2", "symbolic"),
    ("(x+1)^2", "x^2 + 2x + 1", "symbolic"),
])
def test_equivalent_answers(answer, reference, how):
    assert equivalent(answer, reference) == how


@pytest.mark.parametrize("answer, reference", [
    ("407", "408"), ("0.33", "1/3"), ("2x+1", "2x+2"), ("\\sqrt{8}", "3"), ("3 or 4", "3"), ("berlin", "paris"),
])
def test_inequivalent_answers(answer, reference):
    assert equivalent(answer, reference) is None


def test_no_answer_is_evaluated_as_code(tmp_path):
    """Answers are parsed as LaTeX (an ANTLR grammar), never handed to eval."""
    marker = tmp_path / "ran"
    for code in (f"__import__('os').system('touch {marker}')", f"exec(\"open('{marker}', 'w')\")", "x.__class__"):
        assert equivalent(code, "0") is None
        assert not marker.exists()


def test_huge_powers_are_bounded_in_time():
    checker = MathChecker(timeout_s=2)
    try:
        for answer in ("10^10^10", "2^123456", "10^{10^{10}}"):
            got = checker.check(answer, "1")
            assert not got.equal and got.seconds < 3
        assert got.rule == "timeout"  # 10^{10^{10}}: SymPy computes the power for ever
        assert checker.check("2^{10}", "1024").equal  # a fresh child carries on
    finally:
        checker.close()


def test_stage_keeps_right_answers_and_drops_wrong_ones():
    rows = [("What is 17*24?", "17*24 = 408. The answer is 408.", {"answer": "408"}),
            ("What is 17*24?", "It is \\boxed{418}", {"answer": "408"}),
            ("Half of one?", "\\boxed{\\frac{1}{2}}", {"answer": "0.5"}),
            ("Say hi", "hi", {}),
            ("What is 2+2?", "I am not sure.", {"answer": "4"})]
    samples = []
    for q, a, meta in rows:
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        samples.append({"id": S.sample_id(messages), "messages": messages, "origin": "seed", "source": "t",
                        "parent_ids": [], "meta": json.dumps(meta)})
    result = MathAnswer()(pa.table(S.sample_arrays(samples)))
    assert [m[1]["content"] for m in result.kept["messages"].to_pylist()] == [rows[0][1], rows[2][1], rows[3][1]]
    assert result.reasons == ["math_answer:wrong_answer", "math_answer:no_answer"]
    kept_verdicts = result.verdicts.kept.to_pylist()
    assert [json.loads(v[0]["detail"])["kind"] for v in kept_verdicts[:2]] == ["exact", "numeric"] and kept_verdicts[2] == []
    assert json.loads(result.verdicts.dropped.to_pylist()[0][0]["detail"])["answer"] == "418"


# -- a reference that is not a string, a number or a list of those; answers longer than MAX_CHARS ----
def _stage_result(rows, stage=None):
    samples = []
    for q, a, meta in rows:
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        samples.append({"id": S.sample_id(messages), "messages": messages, "origin": "seed", "source": "t",
                        "parent_ids": [], "meta": json.dumps(meta)})
    stage = stage or MathAnswer()
    try:
        return stage(pa.table(S.sample_arrays(samples)))
    finally:
        if stage._checker is not None:
            stage.checker().close()


def test_a_reference_of_the_wrong_type_is_dropped_as_invalid_never_compared_by_repr():
    rows = [("dict", "The answer is \\boxed{{'value': 4}}", {"answer": {"value": 4}}),  # its repr, word for word
            ("bool", "The answer is True.", {"answer": True}),
            ("list of dicts", "\\boxed{{'a': 1}}", {"answer": [{"a": 1}]}),
            ("nested list", "\\boxed{1, 2}", {"answer": [[1, 2]]}),
            ("int", "The answer is 4.", {"answer": 4}),  # numbers and lists keep comparing as before
            ("float", "The answer is 0.5.", {"answer": 0.5}),
            ("list", "\\boxed{3, 5}", {"answer": [3, "5"]}),
            ("empty list", "4", {"answer": []})]  # nothing to check against: passes unverified
    result = _stage_result(rows)
    assert [m[0]["content"] for m in result.kept["messages"].to_pylist()] == ["int", "float", "list", "empty list"]
    assert result.reasons == ["math_answer:invalid_answer:dict", "math_answer:invalid_answer:bool",
                              "math_answer:invalid_answer:list", "math_answer:invalid_answer:list"]
    details = [json.loads(v[0]["detail"]) for v in result.verdicts.dropped.to_pylist()]
    assert details[0] == {"kind": "invalid_answer", "rule": "invalid_answer", "type": "dict", "reference": '{"value": 4}'}
    assert result.verdicts.kept.to_pylist()[3] == []


def test_an_exact_long_answer_is_accepted_and_an_unverifiable_one_has_its_own_reason():
    digits = "".join(str((i * 7 + 3) % 10) for i in range(5000))
    formula = "+".join(["x"] * 2100)  # 4,199 characters: too long to parse, not the same string
    rows = [("exact", f"The result is \\boxed{{{digits}}}.", {"answer": digits}),
            ("numeral", f"The answer is {digits}.0", {"answer": digits}),  # long plain numerals: by value
            ("wrong digit", f"\\boxed{{{digits[:-1]}9}}", {"answer": digits[:-1] + "8"}),
            ("unverifiable", f"\\boxed{{{formula}}}", {"answer": "2100x"}),
            ("long reference", "\\boxed{2100x}", {"answer": formula})]
    result = _stage_result(rows)
    assert [m[0]["content"] for m in result.kept["messages"].to_pylist()] == ["exact", "numeral"]
    assert [json.loads(v[0]["detail"])["rule"] for v in result.verdicts.kept.to_pylist()] == ["exact", "numeric"]
    assert result.reasons == ["math_answer:wrong_answer", "math_answer:too_long", "math_answer:too_long"]
