"""Code-execution verifier: correct solutions pass and subtly wrong ones fail on 33 small problems;
responses are split into solution and tests; the stage drops failures with their kind."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from curate.stages.verify.code import CodeExecution, split_response
from curate.stages.verify.isolation import probe
from curate.stages.verify.judge import verify_programs
from curate.stages.verify.plan import plan_tests
from curate.stages.verify.sandbox import Limits, Sandbox
from curate.storage import schema as S
from verify_problems import PROBLEMS

pytestmark = [pytest.mark.sandbox]

CAPS = probe()
needs_jail = pytest.mark.skipif(not CAPS.jail, reason=f"no sandbox jail here: {CAPS.explain()}")


@pytest.fixture(scope="module")
def sandbox():
    if not CAPS.jail:
        pytest.skip(CAPS.explain())
    with Sandbox(Limits(cpu_s=2), slots=4) as sb:
        yield sb


@needs_jail
def test_correct_solutions_pass_and_subtly_wrong_ones_fail(sandbox):
    assert len(PROBLEMS) >= 30
    pairs = [(p["solution"], p["tests"]) for p in PROBLEMS] + [(p["wrong"], p["tests"]) for p in PROBLEMS]
    verdicts = verify_programs(sandbox, pairs)
    right, wrong = verdicts[: len(PROBLEMS)], verdicts[len(PROBLEMS):]
    for p, v in zip(PROBLEMS, right):
        assert v.passed, (p["name"], v)
    for p, v in zip(PROBLEMS, wrong):
        assert not v.passed and v.kind in ("wrong_output", "assertion"), (p["name"], v)
    strengths = {p["name"]: v.strength for p, v in zip(PROBLEMS, right)}
    assert strengths["fizzbuzz"] == "io" and strengths["stack_class_assert_mode"] == "in_process"
    assert sum(s == "io" for s in strengths.values()) >= 25


def test_introspection_screen():
    from curate.stages.verify.plan import introspection

    assert introspection("import sys\nf = sys._getframe(1).f_back") == ["_getframe", "f_back"]
    assert introspection("import gc, ctypes\nos.write(3, b'x')") == ["ctypes", "gc", "os.write"]
    assert introspection("def f(x):\n    return x + 1\n") == []


def test_plan_keeps_expected_values_out_of_the_payload():
    plan = plan_tests("import math\nassert area(2) == 12.566\nassert area(0) == 0")
    payload = plan.payload("def area(r): ...")
    assert plan.mode == "io" and "12.566" not in repr(payload) and payload["setup"] == "import math"
    assert plan_tests("assert (").error is not None
    assert plan_tests("").count == 0


@pytest.mark.parametrize("text, solution_has, tests", [
    ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f", None),
    ("```py\nimport os\n```\ntext\n```python\ndef g(): pass\n```", "def g", None),
    ("def f():\n    return 1\n", "def f", None),
    ("Just words, no code.", "", None),
    ("```python\ndef f(): return 2\n```\n</response>\n<tests>\n```python\nassert f() == 2\n```\n</tests>", "def f", "assert f() == 2"),
    ("```js\nfunction f() {}\n```", "", None),
])
def test_split_response(text, solution_has, tests):
    solution, found = split_response(text)
    assert (solution_has in solution) if solution_has else solution == ""
    assert (found.strip() if found else None) == tests


def rows_table(rows: list[dict]) -> pa.Table:
    samples = []
    for r in rows:
        messages = [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}]
        samples.append({"id": S.sample_id(messages), "messages": messages, "origin": "response", "source": "test",
                        "parent_ids": [r.get("parent", "task")], "meta": json.dumps(r.get("meta", {}))})
    return pa.table(S.sample_arrays(samples))


def fenced(code: str) -> str:
    return f"Solution:\n```python\n{code}```\n"


@needs_jail
def test_stage_drops_failures_with_their_kind_and_records_verdicts():
    p = PROBLEMS[0]
    rows = [
        {"instruction": "palindrome", "response": fenced(p["solution"]), "meta": {"tests": p["tests"]}},
        {"instruction": "palindrome", "response": fenced(p["wrong"]), "meta": {"tests": p["tests"]}},
        {"instruction": "palindrome", "response": fenced("def is_palindrome(s)\n    return True\n"), "meta": {"tests": p["tests"]}},
        {"instruction": "palindrome", "response": fenced("def is_palindrome(s):\n    while True:\n        pass\n"),
         "meta": {"tests": p["tests"].splitlines()}},
        {"instruction": "other", "response": fenced("def f():\n    return 1\n") + "<tests>\nassert f() == 1\n</tests>", "parent": "t2"},
        {"instruction": "prose", "response": "No code here.", "parent": "t3"},
    ]
    stage = CodeExecution(timeout_s=1)
    result = stage(rows_table(rows))
    kept_instr = [m[0]["content"] for m in result.kept["messages"].to_pylist()]
    assert kept_instr == ["palindrome", "other", "prose"]
    assert result.reasons == ["code_exec:wrong_output", "code_exec:syntax_error", "code_exec:timeout"]
    verdicts = result.verdicts.kept.to_pylist()
    assert [len(v) for v in verdicts] == [1, 1, 0]  # prose has nothing to verify
    first = verdicts[0][0]
    assert first["verifier"] == "code_exec" and first["passed"] and first["strength"] == "io"
    assert json.loads(first["detail"])["tests"] == "3/3" and json.loads(verdicts[1][0]["detail"])["tests_from"] == "response"
    dropped_verdicts = result.verdicts.dropped.to_pylist()
    assert all(v[0]["passed"] is False for v in dropped_verdicts)
    assert json.loads(dropped_verdicts[0][0]["detail"])["tests"] == "2/3"
    rates = result.scores["code_task_pass_rate"].kept.to_pylist()
    assert rates == [0.25, 1.0, None]  # 1 of the 4 palindrome responses passed
    assert result.scores["code_pass_rate"].dropped.to_pylist()[0] == pytest.approx(2 / 3)


def test_stage_refuses_without_a_jail_unless_allowed(monkeypatch):
    from curate.stages.verify import code
    from curate.stages.verify.isolation import Capabilities, SandboxUnavailableError

    bare = Capabilities(None, False, True, "/usr/bin/python3", False, None, None,
                        missing={"bwrap": "install bubblewrap: `apt-get install -y bubblewrap`"})
    monkeypatch.setattr(code, "probe", lambda python=None: bare)
    with pytest.raises(SandboxUnavailableError, match="apt-get install -y bubblewrap"):
        CodeExecution()
    CodeExecution(allow_unsandboxed=True)


def test_a_tests_field_of_another_type_is_dropped_as_invalid_not_passed_as_no_tests():
    code = fenced("def f():\n    return 1\n")
    rows = [{"instruction": "int", "response": code, "meta": {"tests": 5}},
            {"instruction": "dict", "response": code, "meta": {"tests": {"assert": "f() == 1"}}},
            {"instruction": "bool", "response": code, "meta": {"tests": True}},
            {"instruction": "float", "response": code, "meta": {"tests": 0.5}},
            {"instruction": "list of numbers", "response": code, "meta": {"tests": ["assert f() == 1", 3]}},
            # the response's own tests do not stand in for a malformed field
            {"instruction": "int, tests in the response", "response": code + "<tests>\nassert f() == 1\n</tests>",
             "meta": {"tests": 7}},
            {"instruction": "absent", "response": code, "meta": {}},  # these three: no tests, as before
            {"instruction": "null", "response": code, "meta": {"tests": None}},
            {"instruction": "blank", "response": code, "meta": {"tests": "  "}}]
    result = CodeExecution(allow_unsandboxed=True)(rows_table(rows))  # no row here reaches the sandbox
    assert [m[0]["content"] for m in result.kept["messages"].to_pylist()] == ["absent", "null", "blank"]
    assert result.verdicts.kept.to_pylist() == [[], [], []]
    assert result.reasons == ["code_exec:invalid_tests:int", "code_exec:invalid_tests:dict",
                              "code_exec:invalid_tests:bool", "code_exec:invalid_tests:float",
                              "code_exec:invalid_tests:list", "code_exec:invalid_tests:int"]
    detail = json.loads(result.verdicts.dropped.to_pylist()[0][0]["detail"])
    assert detail == {"kind": "invalid_tests", "type": "int"}
    required = CodeExecution(allow_unsandboxed=True, require_tests=True)(rows_table(rows[6:]))
    assert result.kept.num_rows == 3 and required.reasons == ["code_exec:no_tests"] * 3
