"""The three verifiers through the real Ray runner: verdicts land in DuckDB and the counts add up."""

import json

import pytest

from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.stages.ingest import Ingest
from curate.stages.verify.isolation import probe
from curate.storage.schema import sample_id
from conftest import write_jsonl
from checks import assert_counts_add_up, q
from verify_problems import PROBLEMS

CAPS = probe()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(not CAPS.jail, reason=f"no sandbox jail here: {CAPS.explain()}")]


def fenced(code: str) -> str:
    return f"Here is my solution.\n\n```python\n{code}```\n"


def rows() -> list[tuple[dict, str | None]]:
    """(input row, expected drop reason or None when kept)."""
    out = []
    for p in PROBLEMS[:6]:
        out.append(({"instruction": f"Solve {p['name']}.", "output": fenced(p["solution"]), "tests": p["tests"]}, None))
        out.append(({"instruction": f"Solve {p['name']} (again).", "output": fenced(p["wrong"]), "tests": p["tests"]},
                    "code_exec:wrong_output"))
    out += [
        ({"instruction": "Loop forever.", "output": fenced("def f():\n    while True:\n        pass\n"), "tests": "assert f() == 1"},
         "code_exec:timeout"),
        ({"instruction": "Broken code.", "output": fenced("def f(:\n    return 1\n"), "tests": "assert f() == 1"},
         "code_exec:syntax_error"),
        ({"instruction": "Exit early.", "output": fenced("import os\nos._exit(0)\n"), "tests": "assert f() == 1"},
         "code_exec:early_exit"),
        ({"instruction": "What is 17 * 24?", "output": "17 * 24 = 408. The answer is 408.", "answer": "408"}, None),
        ({"instruction": "What is 17 * 25?", "output": "That is \\boxed{415}.", "answer": "425"}, "math_answer:wrong_answer"),
        ({"instruction": "Half of 1?", "output": "\\boxed{\\frac{1}{2}}", "answer": "0.5"}, None),
        ({"instruction": "Write a title.", "output": "<<Spring>> flowers bloom", "constraints":
          [{"id": "title", "kwargs": {}}, {"id": "no_comma", "kwargs": {}}]}, None),
        ({"instruction": "Write a tagline.", "output": "Fresh, bright, new", "constraints": [{"id": "no_comma", "kwargs": {}}]},
         "constraints:no_comma"),
        ({"instruction": "Say hello.", "output": "Hello there, friend."}, None),
    ]
    return out


def row_id(row: dict) -> str:
    return sample_id(Ingest().parse(json.dumps(row), "x")["messages"])


def test_verifiers_through_the_runner(ray_local, tmp_path):
    table = rows()
    src = write_jsonl(tmp_path / "verify.jsonl", [r for r, _ in table])
    db = tmp_path / "verify.duckdb"
    stages = [{"verify_code": {"timeout_s": 1, "slots": 4}}, {"verify_math": {}}, {"verify_constraints": {}}]
    report = run(load_config(None, input=[str(src)], db=str(db), shard_size=8, stages=stages), progress="off")
    rows_in, kept, dropped, _ = assert_counts_add_up(db, report.run_id)
    expected_drops = {row_id(r): reason for r, reason in table if reason}
    assert dict(q(db, "SELECT id, reason FROM drops WHERE run_id = ?", report.run_id)) == expected_drops
    assert rows_in == len(table) and dropped == len(expected_drops) and kept == len(table) - len(expected_drops)

    verdicts = {(i, v): (p, s, json.loads(d)) for i, v, p, s, d in
                q(db, "SELECT id, verifier, passed, strength, detail FROM verdicts WHERE run_id = ?", report.run_id)}
    verifier_of = {"tests": "code_exec", "answer": "math_answer", "constraints": "constraints"}
    for r, reason in table:
        key = next((k for k in verifier_of if k in r), None)
        mine = {v: x for (i, v), x in verdicts.items() if i == row_id(r)}
        if key is None:
            assert mine == {}  # nothing to verify: no verdict, kept
            continue
        passed, strength, detail = mine[verifier_of[key]]
        assert passed == (reason is None), (r["instruction"], detail)
        if reason:
            assert reason.endswith(detail["kind"] if key != "constraints" else ",".join(detail["failed"]))
    code = [(p, s) for (i, v), (p, s, d) in verdicts.items() if v == "code_exec" and p]
    assert len(code) == 6 and {s for _, s in code} <= {"io", "in_process"}
    assert q(db, "SELECT count(*) FROM scores WHERE run_id = ? AND name = 'code_pass_rate'", report.run_id) == [(15,)]


def test_malformed_tests_and_answers_through_the_runner(ray_local, tmp_path):
    """A JSONL file as a user writes it: `"tests": 5`, an answer given as a dict or a bool, a
    5,000-digit answer the response gives exactly; each gets its own verdict in the database."""
    digits = "".join(str((i * 3 + 1) % 10) for i in range(5000))
    code = fenced("def f():\n    return 1\n")
    table = [
        ({"instruction": "Tests as a number.", "output": code, "tests": 5}, "code_exec:invalid_tests:int"),
        ({"instruction": "Tests as a dict.", "output": code, "tests": {"f()": 1}}, "code_exec:invalid_tests:dict"),
        ({"instruction": "Tests as a bool.", "output": code, "tests": False}, "code_exec:invalid_tests:bool"),
        ({"instruction": "No tests at all.", "output": code}, None),
        ({"instruction": "Answer as a dict.", "output": "\\boxed{{'n': 4}}", "answer": {"n": 4}},
         "math_answer:invalid_answer:dict"),
        ({"instruction": "Answer as a bool.", "output": "The answer is True.", "answer": True},
         "math_answer:invalid_answer:bool"),
        ({"instruction": "Answer as a number.", "output": "The answer is 12.", "answer": 12}, None),
        ({"instruction": "A long exact answer.", "output": f"It is \\boxed{{{digits}}}.", "answer": digits}, None),
        ({"instruction": "A long formula.", "output": "\\boxed{" + "+".join(["y"] * 2100) + "}", "answer": "2100y"},
         "math_answer:too_long"),
    ]
    src = write_jsonl(tmp_path / "malformed.jsonl", [r for r, _ in table])
    db = tmp_path / "malformed.duckdb"
    stages = [{"verify_code": {"timeout_s": 1, "slots": 2}}, {"verify_math": {}}]
    report = run(load_config(None, input=[str(src)], db=str(db), shard_size=16, stages=stages), progress="off")
    assert_counts_add_up(db, report.run_id)
    assert dict(q(db, "SELECT id, reason FROM drops WHERE run_id = ?", report.run_id)) == \
        {row_id(r): reason for r, reason in table if reason}
    kinds = dict(q(db, "SELECT id, detail::JSON->>'kind' FROM verdicts WHERE run_id = ?", report.run_id))
    assert kinds[row_id(table[7][0])] == "exact" and kinds[row_id(table[6][0])] == "exact"
