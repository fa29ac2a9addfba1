"""Math answers: extraction (boxed, answer phrase, last number) and equivalence (exact, numeric, SymPy)."""

import json

import pyarrow as pa
import pytest

from curate.stages.verify.math_answers import MathAnswer, equivalent, extract_answer, symbolic_equal
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
    ("\\text{Paris}", "paris", "exact"),
    ("x = 9", "9", "exact"),
    ("1,275", "1275", "exact"),
    ("$32.40", "32.4", "numeric"),
    ("\\frac{1}{2}", "0.5", "numeric"),
    ("3/4", "0.75", "numeric"),
    ("50%", "0.5", "numeric"),
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


def test_sympy_never_sees_code_or_huge_powers():
    assert not symbolic_equal("__import__('os').system('true')", "0")
    assert not symbolic_equal("x.__class__", "x")
    assert not symbolic_equal("10^10^10", "1")
    assert not symbolic_equal("2^123456", "1")


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
    assert result.dropped["reason"].to_pylist() == ["math_answer:wrong_answer", "math_answer:no_answer"]
    kept_verdicts = result.kept[S.VERDICTS].to_pylist()
    assert [json.loads(v[0]["detail"])["kind"] for v in kept_verdicts[:2]] == ["exact", "numeric"] and kept_verdicts[2] == []
    assert json.loads(result.dropped[S.VERDICTS].to_pylist()[0][0]["detail"])["answer"] == "418"
