"""verify_code on the issue-18 cases (tests/data/cases/code-*.jsonl: every row gets its
`meta.expect`) and on inputs of each kind written here:

- a demo block (`if __name__ == "__main__":`) that reads stdin, loops, exits or kills the process
  does not fail a correct function (the solution runs as a module, as in human-eval/evalplus);
- standard-library values in I/O mode get the verdict plain Python's `==` gives in the test (an
  in-process oracle computes it here), a wrong one is `wrong_output`;
- floats in I/O mode compare within an absolute tolerance (recorded), assert mode stays exact but
  names "float rounding".
All programs of a group run in one batch over the sandbox's slots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from curate.stages.verify.code import CodeExecution, split_response
from curate.stages.verify.isolation import probe
from curate.stages.verify.judge import Opaque, close, decode, verify_programs
from curate.stages.verify.plan import plan_tests
from curate.stages.verify.sandbox import Limits, Sandbox
from test_verify_code import rows_table

pytestmark = [pytest.mark.sandbox]

CAPS = probe()
needs_jail = pytest.mark.skipif(not CAPS.jail, reason=f"no sandbox jail here: {CAPS.explain()}")
CASES = Path(__file__).resolve().parents[2] / "data" / "cases"
CASE_ROWS = [json.loads(line) for name in ("code-main-block", "code-return-type", "code-float-tolerance")
             for line in (CASES / f"{name}.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sandbox():
    if not CAPS.jail:
        pytest.skip(CAPS.explain())
    with Sandbox(Limits(cpu_s=2), slots=4) as sb:
        yield sb


# ---------------------------------------------------------------------------------------- case files

@pytest.fixture(scope="module")
def case_outcome():
    if not CAPS.jail:
        pytest.skip(CAPS.explain())
    rows = [{"instruction": r["prompt"], "response": r["response"], "meta": r["meta"], "parent": r["meta"]["case"]}
            for r in CASE_ROWS]
    result = CodeExecution(timeout_s=2)(rows_table(rows))
    out = {}
    for table, verdicts_of, kept in ((result.kept, result.verdicts.kept, True), (result.dropped, result.verdicts.dropped, False)):
        for meta, verdicts in zip(table["meta"].to_pylist(), verdicts_of.to_pylist()):
            out[json.loads(meta)["case"]] = (kept, json.loads(verdicts[0]["detail"]))
    return out


def test_case_files_are_copied_whole():
    assert len(CASE_ROWS) == 14 and len({r["meta"]["case"] for r in CASE_ROWS}) == 14


@needs_jail
@pytest.mark.parametrize("row", CASE_ROWS, ids=[r["meta"]["case"] for r in CASE_ROWS])
def test_case_row_gets_its_expected_verdict(case_outcome, row):
    kept, detail = case_outcome[row["meta"]["case"]]
    assert kept == row["meta"]["expect"].startswith("keep"), (row["meta"]["case"], detail)


@needs_jail
def test_case_details_record_the_float_tolerance(case_outcome):
    kept, detail = case_outcome["x1_exact_float_literal"]
    assert kept and detail["float_tolerance"] == 1e-6 and "float_rounding" in detail
    assert "float_rounding" not in case_outcome["x7_ctrl_wrong_exact"][1]
    assert "float_tolerance" not in case_outcome["x3_abs_diff"][1]  # assert mode: exact
    assert case_outcome["r7_ctrl_counter_wrong"][1]["kind"] == "wrong_output"


# ------------------------------------------------------------------------ a main block is never run

ADD = "def add(a, b):\n    return a + b\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
ADD_TESTS = "assert add(2, 3) == 5\nassert add(-4, 4) == 0"
MAIN_BLOCKS = {
    "input": "if __name__ == '__main__':\n    a, b = map(int, input().split())\n    print(add(a, b))\n",
    "input_loop": "if __name__ == \"__main__\":\n    while True:\n        line = input('> ')\n        print(add(*map(int, line.split())))\n",
    "sys_stdin": "import sys\nif __name__ == '__main__':\n    for line in sys.stdin:\n        print(add(*map(int, line.split())))\n",
    "os_exit": "import os\nif __name__ == '__main__':\n    print(add(1, 2))\n    os._exit(3)\n",
    "sys_exit_error": "import sys\nif __name__ == '__main__':\n    sys.exit('usage: add A B')\n",
    "infinite_loop": "if __name__ == '__main__':\n    while True:\n        pass\n",
    "raises": "if __name__ == '__main__':\n    raise RuntimeError('demo only')\n",
    "reversed_test": "import os\nif '__main__' == __name__:\n    os._exit(0)\n",
    "main_function": "import sys\ndef main(argv):\n    return add(int(argv[1]), int(argv[2]))\nif __name__ == '__main__':\n    raise SystemExit(main(sys.argv))\n",
    "unittest_main": "import unittest\nclass T(unittest.TestCase):\n    def test(self):\n        self.assertEqual(add(1, 1), 2)\n"
                     "if __name__ == '__main__':\n    unittest.main()\n",
}


@needs_jail
def test_a_main_block_never_fails_a_correct_function_nor_rescues_a_wrong_one(sandbox):
    right = [(ADD + "\n" + block, ADD_TESTS) for block in MAIN_BLOCKS.values()]
    wrong = [(WRONG_ADD + "\n" + block, ADD_TESTS) for block in MAIN_BLOCKS.values()]
    assert_mode = [(ADD + "\n" + block, "total = add(2, 3)\nassert total == 5") for block in MAIN_BLOCKS.values()]
    verdicts = verify_programs(sandbox, right + wrong + assert_mode)
    n = len(MAIN_BLOCKS)
    for name, v in zip(MAIN_BLOCKS, verdicts[:n]):
        assert v.passed and v.strength == "io", (name, v)
    for name, v in zip(MAIN_BLOCKS, verdicts[n:2 * n]):
        assert not v.passed and v.kind == "wrong_output", (name, v)
    for name, v in zip(MAIN_BLOCKS, verdicts[2 * n:]):
        assert v.passed and v.strength == "in_process", (name, v)


@needs_jail
def test_module_level_code_still_runs_and_the_tests_are_the_script(sandbox):
    tests_main = "def test_add():\n    assert add(2, 3) == 5\nif __name__ == '__main__':\n    test_add()\n"
    cases = [
        (ADD + "x = input()\n", ADD_TESTS, False, "exception:EOFError"),  # not in a main block: runs, as everywhere
        (ADD + "import sys\nsys.exit(0)\n", ADD_TESTS, False, "exit"),
        (ADD + "import os\nos._exit(0)\n", ADD_TESTS, False, "early_exit"),
        (ADD + "import os\nif __name__ != '__main__':\n    os._exit(0)\n", ADD_TESTS, False, "early_exit"),
        (ADD + "NAME = __name__\n", "assert NAME == 'solution'", True, "passed"),
        (ADD, tests_main, True, "passed"),  # the tests' own main block does run
        (WRONG_ADD, tests_main, False, "assertion"),
    ]
    verdicts = verify_programs(sandbox, [(s, t) for s, t, _, _ in cases])
    for (solution, tests, passed, kind), v in zip(cases, verdicts):
        assert (v.passed, v.kind) == (passed, kind), (solution, tests, v)


# ------------------------------------------------------------------ standard-library values, I/O mode

RETURNS = {  # name → (solution, a test `assert f() == literal` or a truth test)
    "counter_vs_dict": ("from collections import Counter\ndef f():\n    return Counter('noon')\n", "assert f() == {'n': 2, 'o': 2}"),
    "counter_wrong": ("from collections import Counter\ndef f():\n    return Counter('non')\n", "assert f() == {'n': 2, 'o': 2}"),
    "counter_zero_count_vs_dict": ("from collections import Counter\ndef f():\n    c = Counter('ab')\n    c['b'] -= 1\n    return c\n",
                                   "assert f() == {'a': 1}"),
    "counter_dict_on_left": ("from collections import Counter\ndef f():\n    return Counter('aab')\n", "assert {'a': 2, 'b': 1} == f()"),
    "counter_empty": ("from collections import Counter\ndef f():\n    return Counter()\n", "assert f() == {}"),
    "counter_empty_falsy": ("from collections import Counter\ndef f():\n    return Counter()\n", "assert not f()"),
    "most_common": ("from collections import Counter\ndef f():\n    return Counter('aab').most_common(1)\n", "assert f() == [('a', 2)]"),
    "defaultdict_lists": ("from collections import defaultdict\ndef f():\n    d = defaultdict(list)\n    for k, v in [('a', 1), ('b', 2), ('a', 3)]:\n"
                          "        d[k].append(v)\n    return d\n", "assert f() == {'a': [1, 3], 'b': [2]}"),
    "defaultdict_wrong": ("from collections import defaultdict\ndef f():\n    d = defaultdict(int)\n    d['a'] += 1\n    return d\n",
                          "assert f() == {'a': 2}"),
    "ordereddict_other_order": ("from collections import OrderedDict\ndef f():\n    return OrderedDict([('b', 2), ('a', 1)])\n",
                                "assert f() == {'a': 1, 'b': 2}"),
    "namedtuple_vs_tuple": ("from collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f():\n    return P(1, 2)\n", "assert f() == (1, 2)"),
    "namedtuple_wrong": ("from collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f():\n    return P(2, 1)\n", "assert f() == (1, 2)"),
    "namedtuple_vs_list": ("from collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f():\n    return P(1, 2)\n", "assert f() == [1, 2]"),
    "typing_namedtuple": ("from typing import NamedTuple\nclass P(NamedTuple):\n    x: int\n    y: str\ndef f():\n    return P(1, 'a')\n",
                          "assert f() == (1, 'a')"),
    "namedtuple_subclass_with_method": ("from collections import namedtuple\nclass P(namedtuple('P', 'x y')):\n    def norm(self):\n"
                                        "        return abs(self.x) + abs(self.y)\ndef f():\n    return [P(1, 2), P(3, 4)]\n",
                                        "assert f() == [(1, 2), (3, 4)]"),
    "fraction_vs_float": ("from fractions import Fraction\ndef f():\n    return Fraction(1, 2)\n", "assert f() == 0.5"),
    "fraction_vs_int": ("from fractions import Fraction\ndef f():\n    return Fraction(6, 3)\n", "assert f() == 2"),
    "fraction_wrong": ("from fractions import Fraction\ndef f():\n    return Fraction(1, 3)\n", "assert f() == 0.5"),
    "fraction_vs_string": ("from fractions import Fraction\ndef f():\n    return Fraction(1, 2)\n", "assert f() == '1/2'"),
    "decimal_vs_float": ("from decimal import Decimal\ndef f():\n    return Decimal('2.5')\n", "assert f() == 2.5"),
    "decimal_vs_int": ("from decimal import Decimal\ndef f():\n    return Decimal('3.00')\n", "assert f() == 3"),
    "decimal_wrong": ("from decimal import Decimal\ndef f():\n    return Decimal('3.01')\n", "assert f() == 3"),
    "decimal_vs_string": ("from decimal import Decimal\ndef f():\n    return Decimal('3')\n", "assert f() == '3'"),
    "decimal_in_dict": ("from decimal import Decimal\ndef f():\n    return {'total': Decimal('10.50')}\n", "assert f() == {'total': 10.5}"),
    "deque_vs_list": ("from collections import deque\ndef f():\n    return deque([1, 2])\n", "assert f() == [1, 2]"),
    "deque_truthy": ("from collections import deque\ndef f():\n    return deque([1])\n", "assert f()"),
    "frozenset_vs_set": ("def f():\n    return frozenset({1, 2})\n", "assert f() == {2, 1}"),
    "frozenset_of_namedtuples": ("from collections import namedtuple\nE = namedtuple('E', 'a b')\ndef f():\n    return frozenset({E(1, 2)})\n",
                                 "assert f() == {(1, 2)}"),
    "nested_counters": ("from collections import Counter\ndef f():\n    return [Counter('ab'), Counter('b')]\n",
                        "assert f() == [{'a': 1, 'b': 1}, {'b': 1}]"),
    "dict_keys_vs_set": ("def f():\n    return {'a': 1, 'b': 2}.keys()\n", "assert f() == {'a', 'b'}"),
    "dict_items_vs_set": ("def f():\n    return {'a': 1}.items()\n", "assert f() == {('a', 1)}"),
    "dict_values_vs_list": ("def f():\n    return {'a': 1}.values()\n", "assert f() == [1]"),
    "range_vs_list": ("def f():\n    return range(3)\n", "assert f() == [0, 1, 2]"),
    "generator_vs_list": ("def f():\n    return (i for i in range(3))\n", "assert f() == [0, 1, 2]"),
    "generator_truthy": ("def f():\n    return (i for i in range(3))\n", "assert f()"),
    "map_is_none": ("def f():\n    return map(str, [1])\n", "assert f() is None"),
    "plain_object_vs_int": ("class Box:\n    pass\ndef f():\n    return Box()\n", "assert f() == 1"),
    "intenum_vs_int": ("import enum\nclass C(enum.IntEnum):\n    RED = 1\ndef f():\n    return C.RED\n", "assert f() == 1"),
    "enum_vs_int": ("import enum\nclass C(enum.Enum):\n    RED = 1\ndef f():\n    return C.RED\n", "assert f() == 1"),
    "str_subclass": ("class Name(str):\n    pass\ndef f():\n    return Name('ada')\n", "assert f() == 'ada'"),
    "bytearray_vs_bytes": ("def f():\n    return bytearray(b'ab')\n", "assert f() == b'ab'"),
    "huge_int_truthy": ("def f():\n    return 3 ** 20000\n", "assert f()"),
    "huge_int_wrong": ("def f():\n    return 3 ** 20000\n", "assert f() == 1"),
    "date_vs_string": ("import datetime\ndef f():\n    return datetime.date(2024, 1, 31)\n", "assert f() == '2024-01-31'"),
    "zero_timedelta_falsy": ("from datetime import timedelta\ndef f():\n    return timedelta(0)\n", "assert not f()"),
    "uuid_vs_string": ("import uuid\ndef f():\n    return uuid.UUID(int=1)\n", "assert f() == '00000000-0000-0000-0000-000000000001'"),
    "path_vs_string": ("from pathlib import PurePosixPath\ndef f():\n    return PurePosixPath('/a/b')\n", "assert f() == '/a/b'"),
    "big_fraction": ("from fractions import Fraction\ndef f():\n    return Fraction(3 ** 5000, 2 ** 7000)\n", "assert f() == 0"),
}


def plain_python(solution: str, tests: str) -> bool:
    """The verdict plain Python gives: the solution and the test in one namespace (trusted code)."""
    namespace: dict = {"__name__": "solution"}
    exec(solution, namespace)
    try:
        exec(tests, namespace)
    except AssertionError:
        return False
    return True


@needs_jail
def test_standard_library_values_get_plain_pythons_verdict(sandbox):
    pairs = [RETURNS[name] for name in RETURNS]
    verdicts = verify_programs(sandbox, pairs)
    for name, (solution, tests), v in zip(RETURNS, pairs, verdicts):
        assert plan_tests(tests).mode == "io", name
        expected = plain_python(solution, tests)
        assert v.passed == expected, (name, v)
        assert v.kind == ("passed" if expected else "wrong_output"), (name, v)  # never TypeError
        assert v.strength == "io" and v.within_tolerance == 0, (name, v)


@needs_jail
def test_comparison_errors_and_own_equality(sandbox):
    cases = [
        # the test's own == raises, as it would in plain Python
        ("from decimal import Decimal\ndef f():\n    return Decimal('sNaN')\n", "assert f() == 1", "exception:InvalidOperation"),
        # a type with its own == cannot be trusted outside the jail (an always-equal object would pass)
        ("from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\ndef f():\n    return P(1)\n", "assert f() == 1",
         "exception:TypeError"),
        ("from collections import namedtuple\nclass P(namedtuple('P', 'x y')):\n    def __eq__(self, other):\n        return True\n"
         "def f():\n    return P(0, 0)\n", "assert f() == (1, 2)", "exception:TypeError"),
        ("from collections import Counter\nclass C(Counter):\n    def __eq__(self, other):\n        return True\ndef f():\n    return C()\n",
         "assert f() == {'a': 1}", "exception:TypeError"),
    ]
    verdicts = verify_programs(sandbox, [(s, t) for s, t, _ in cases])
    for (solution, tests, kind), v in zip(cases, verdicts):
        assert not v.passed and v.kind == kind, (solution, v)


def test_decode_builds_the_parents_own_values():
    from collections import Counter, OrderedDict, defaultdict, deque
    from decimal import Decimal
    from fractions import Fraction

    assert type(decode({"ctr": [[{"s": "a"}, {"i": "2"}]]})) is Counter
    assert decode({"od": [[{"s": "b"}, {"i": "1"}], [{"s": "a"}, {"i": "-ff"}]]}) == OrderedDict(b=1, a=-255)
    assert type(decode({"dd": []})) is defaultdict and decode({"dd": []}).default_factory is None
    assert decode({"dq": [{"i": "1"}]}) == deque([1]) and decode({"fr": ["-1", "3"]}) == Fraction(-1, 3)
    assert decode({"dec": "1.10"}) == Decimal("1.10") and decode({"x": ["P", {"t": [{"i": "1"}]}]}) == (1,)
    opaque = decode({"o": ["generator", True]})
    assert isinstance(opaque, Opaque) and bool(opaque) and opaque != opaque.name and opaque != 1
    for bad in ({"fr": ["1", "0"]}, {"fr": ["1", "1" * 20_001]}, {"dec": "__import__('os')"}, {"i": "0x1"}, {"i": " 1"},
                {"r": [{"i": "1"}, {"f": "2.0"}, {"i": "1"}]}, {"o": ["x", "yes"]}, {"x": [1, None]}, {"zz": 1}):
        with pytest.raises((ValueError, TypeError)):
            decode(bad)


# ------------------------------------------------------------------------------------------- floats

FLOATS = {  # name → (solution, tests, passes with the default tolerance, passes only within it)
    "sum_vs_literal": ("def f():\n    return 0.1 + 0.2\n", "assert f() == 0.3", True, True),
    "nested_dict_of_lists": ("def f():\n    return {'a': [0.1 + 0.2, 1.0], 'b': (0.7 * 3, 'x')}\n",
                             "assert f() == {'a': [0.3, 1.0], 'b': (2.1, 'x')}", True, True),
    "list_of_tuples": ("def f():\n    return [(0.1 * 3, 1), (2.0, 2)]\n", "assert f() == [(0.3, 1), (2, 2)]", True, True),
    "int_expected": ("def f():\n    return 3 * 1.1 - 0.3\n", "assert f() == 3", True, True),
    "complex": ("def f():\n    return (0.1 + 0.2) * 1j\n", "assert f() == 0.3j", True, True),
    "half_tolerance": ("def f():\n    return 2.0000005\n", "assert f() == 2.0", True, True),
    "twice_tolerance": ("def f():\n    return 2.000002\n", "assert f() == 2.0", False, False),
    "wrong_by_a_lot": ("def f():\n    return 0.31\n", "assert f() == 0.3", False, False),
    "exact": ("def f():\n    return 0.5\n", "assert f() == 0.5", True, False),
    "infinity": ("def f():\n    return float('inf')\n", "assert f() == 1e999", True, False),
    "infinity_vs_big": ("def f():\n    return float('inf')\n", "assert f() == 1e308", False, False),
    "nan_vs_number": ("def f():\n    return float('nan')\n", "assert f() == 0.0", False, False),
    "nan_in_list": ("def f():\n    return [1.0, float('nan')]\n", "assert f() == [1.0, 2.0]", False, False),
    "nan_checked_with_isnan": ("import math\ndef f():\n    return float('nan')\n", "import math\nassert math.isnan(f())", True, False),
    "set_of_floats_exact": ("def f():\n    return {0.1 + 0.2}\n", "assert f() == {0.3}", False, False),
    "float_dict_keys_exact": ("def f():\n    return {0.1 + 0.2: 'a'}\n", "assert f() == {0.3: 'a'}", False, False),
    "list_vs_tuple_still_differs": ("def f():\n    return [0.1 + 0.2]\n", "assert f() == (0.3,)", False, False),
    "length_differs": ("def f():\n    return [0.3, 0.3]\n", "assert f() == [0.3]", False, False),
    "bool_is_no_number": ("def f():\n    return True\n", "assert f() == 1.0000001", False, False),
    "counter_of_floats": ("from collections import Counter\ndef f():\n    return Counter({'a': 0.1 + 0.2})\n",
                          "assert f() == {'a': 0.3}", True, True),
}


@needs_jail
def test_io_floats_compare_within_the_tolerance(sandbox):
    pairs = [(s, t) for s, t, _, _ in FLOATS.values()]
    verdicts = verify_programs(sandbox, pairs)
    for (name, (_, _, passes, within)), v in zip(FLOATS.items(), verdicts):
        assert v.passed == passes and v.float_tolerance == 1e-6, (name, v)
        assert (v.within_tolerance > 0) == within, (name, v)
        assert v.passed or v.kind == "wrong_output", (name, v)
    exact = verify_programs(sandbox, pairs, float_tolerance=0)
    for (name, (_, _, passes, within)), v in zip(FLOATS.items(), exact):
        assert v.passed == (passes and not within) and v.float_tolerance == 0, (name, v)
    loose = verify_programs(sandbox, [FLOATS["wrong_by_a_lot"][:2], FLOATS["twice_tolerance"][:2]], float_tolerance=0.02)
    assert all(v.passed and v.within_tolerance == 1 for v in loose)


def test_close_is_symmetric_and_never_passes_nan():
    assert close(0.1 + 0.2, 0.3, 1e-6) and close(0.3, 0.1 + 0.2, 1e-6)
    assert not close(float("nan"), float("nan"), 1e-6) and not close(float("nan"), 0.0, math.inf)
    assert close(float("-inf"), float("-inf"), 1e-6) and not close(float("inf"), float("-inf"), math.inf)
    assert not close(0.1 + 0.2, 0.3, 0.0)


@needs_jail
def test_assert_mode_stays_exact_but_names_float_rounding(sandbox):
    cases = [
        ("def mean(xs):\n    return sum(xs) / len(xs)\n", "m = mean([0.1, 0.2, 0.3])\nassert m == 0.2", True),
        ("def scale(xs, k):\n    return [x * k for x in xs]\n", "r = scale([0.1, 0.7], 3)\nassert r == [0.3, 2.1]", True),
        ("def f():\n    return {'a': (0.1 + 0.2,)}\n", "r = f()\nassert r == {'a': (0.3,)}", True),
        ("def mean(xs):\n    return sum(xs) / (len(xs) + 1)\n", "m = mean([0.1, 0.2, 0.3])\nassert m == 0.2", False),
        ("def f():\n    return float('nan')\n", "r = f()\nassert r == 0.0", False),
    ]
    verdicts = verify_programs(sandbox, [(s, t) for s, t, _ in cases])
    for (solution, tests, rounding), v in zip(cases, verdicts):
        assert not v.passed and v.kind == "assertion" and v.strength == "in_process", (tests, v)
        assert v.float_rounding == rounding and ("float rounding" in v.detail) == rounding, (tests, v)
        assert v.float_tolerance is None


@needs_jail
def test_stage_records_the_tolerance_and_takes_it_as_a_parameter():
    rows = [{"instruction": "sum", "response": "```python\ndef f():\n    return 0.1 + 0.2\n```\n", "meta": {"tests": "assert f() == 0.3"}},
            {"instruction": "mean", "response": "```python\ndef f():\n    return 0.1 + 0.2\n```\n",
             "meta": {"tests": "r = f()\nassert r == 0.3"}}]
    result = CodeExecution(timeout_s=2)(rows_table(rows))
    (kept,), (dropped,) = result.verdicts.kept.to_pylist(), result.verdicts.dropped.to_pylist()
    kept, dropped = json.loads(kept[0]["detail"]), json.loads(dropped[0]["detail"])
    assert kept["float_tolerance"] == 1e-6 and "1 test(s)" in kept["float_rounding"]
    assert "float rounding" in dropped["message"] and "float_rounding" in dropped and "float_tolerance" not in dropped
    strict = CodeExecution(timeout_s=2, float_tolerance=0)(rows_table(rows[:1]))
    assert strict.kept.num_rows == 0 and json.loads(strict.verdicts.dropped.to_pylist()[0][0]["detail"])["float_tolerance"] == 0
    with pytest.raises(ValueError, match="float_tolerance"):
        CodeExecution(float_tolerance=-1)


def test_split_response_keeps_the_main_block():
    solution, _ = split_response(CASE_ROWS[0]["response"])
    assert "__main__" in solution  # nothing is cut out of the code: the runner just never runs it as main


@needs_jail
def test_the_runner_is_precompiled_and_its_source_still_works(sandbox, monkeypatch):
    from curate.stages.verify.sandbox import INSIDE_SOURCE, runner_code

    assert isinstance(runner_code(sandbox.python), bytes) and sandbox.runner == runner_code(sandbox.python)
    monkeypatch.setattr(sandbox, "runner", INSIDE_SOURCE)  # the fallback when precompiling fails
    (v,) = verify_programs(sandbox, [RETURNS["counter_vs_dict"]])
    assert v.passed and v.strength == "io"
