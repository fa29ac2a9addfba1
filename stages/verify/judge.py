"""The verdict, computed by the parent from what the jail reported and what only the parent knows.

PASS needs: the run finished (no timeout, memory, output or crash), no channel line without the
nonce, exactly one record per expected test in order, every one a pass (I/O mode: the decoded
value satisfies the check the parent kept), and a final `done` record with the right count.
The exit code alone never passes anything.

I/O mode compares as plain Python's `==` would in the test, on values the parent rebuilds from the
jail's canonical encoding with its own types (`decode`: builtins, Counter, OrderedDict,
defaultdict, deque, Fraction, Decimal, range, dict views; a namedtuple or other subclass that
keeps its base's `==` as its base value; an identity-`==` object, or a date, UUID or path, which
never equals a builtin value, as `Opaque`). So `Counter(s) == {...}` and `Bounds(1, 9) == (1, 9)`
hold, and a deque never equals a list. One departure: numbers where a float is involved, alone
or inside lists, tuples and dict values, are equal when they differ by at most `float_tolerance`
(absolute, default 1e-6 as EvalPlus's atol for float outputs; NaN equals nothing); the verdict
records the tolerance and how many tests needed it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from curate.stages.verify.plan import FLOAT_TOLERANCE, IO, Check, TestPlan
from curate.stages.verify.sandbox import ExecResult

RUN_FAILURES = {"timeout": "timeout", "memory": "memory", "output_limit": "output_limit", "crash": "crash",
                "infra": "infra"}
FLOAT_ROUNDING = "float rounding"


@dataclass
class Verdict:
    passed: bool
    kind: str  # passed | syntax_error | assertion | wrong_output | exception:<Type> | timeout | memory | ...
    strength: str  # io | in_process | none
    passed_tests: int
    total_tests: int
    detail: str = ""
    float_tolerance: float | None = None  # I/O mode: the tolerance floats were compared with
    within_tolerance: int = 0  # I/O mode: tests that passed only thanks to it
    float_rounding: bool = False  # assert mode: the failed `==` was on values within the tolerance

    @property
    def pass_rate(self) -> float:
        return self.passed_tests / self.total_tests if self.total_tests else 0.0


class Undecodable(ValueError):
    pass


class Opaque:
    """A jail value whose type keeps object's identity `==` (a generator, a function, a plain
    object): equal to nothing a test can write; its truth is what the jail reported."""

    __slots__ = ("name", "truth")

    def __init__(self, name: str, truth: bool | None):
        self.name, self.truth = name, truth

    def __bool__(self) -> bool:
        if self.truth is None:
            raise TypeError(f"the truth of a {self.name} object is unknown")
        return self.truth

    def __repr__(self) -> str:
        return f"<{self.name} object>"


HEX = re.compile(r"-?[0-9a-f]+")
DECIMAL = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:E[+-]?\d+)?|Infinity|s?NaN\d*)", re.I)
MAX_FRACTION_HEX = 20_000  # 80,000 bits (the jail's limit): Fraction() takes a gcd, keep a forged one quick
SEQUENCES = {"l": list, "t": tuple, "set": set, "fs": frozenset, "dq": deque}
MAPPINGS = {"d": dict, "ctr": Counter, "od": OrderedDict, "dd": lambda pairs: defaultdict(None, pairs)}


def _str(v) -> str:
    if not isinstance(v, str):
        raise Undecodable(repr(v)[:80])
    return v


def _hex_int(v, limit: int | None = None) -> int:
    if not isinstance(v, str) or not HEX.fullmatch(v) or (limit and len(v.lstrip("-")) > limit):
        raise Undecodable(repr(v)[:80])
    return int(v, 16)


def _list(v) -> list:
    if not isinstance(v, list):
        raise Undecodable(repr(v)[:80])
    return v


def _pairs(v) -> list[tuple]:
    out = []
    for pair in _list(v):
        if not isinstance(pair, list) or len(pair) != 2:
            raise Undecodable(repr(pair)[:80])
        out.append((decode(pair[0]), decode(pair[1])))
    return out


def decode(value):
    """The jail's canonical encoding back into values of the parent's own making (never objects of
    the jail's): builtins, the standard-library types above, `Opaque`."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise Undecodable(repr(value)[:80])
    (tag, v), = value.items()
    if tag == "b" and isinstance(v, bool):
        return v
    if tag == "i":
        return _hex_int(v)
    if tag == "f":
        return float(_str(v))
    if tag == "s":
        return _str(v)
    if tag == "y":
        return bytes.fromhex(_str(v))
    if tag == "ya":
        return bytearray.fromhex(_str(v))
    if tag == "c":
        re_, im = _list(v)
        return complex(float(_str(re_)), float(_str(im)))
    if tag in SEQUENCES:
        return SEQUENCES[tag](decode(x) for x in _list(v))
    if tag in MAPPINGS:
        return MAPPINGS[tag](dict(_pairs(v)))
    if tag == "dk":
        return dict.fromkeys(decode(x) for x in _list(v)).keys()
    if tag == "di":
        return dict(_pairs(v)).items()
    if tag == "r":
        start, stop, step = (decode(x) for x in _list(v))
        if not all(type(x) is int for x in (start, stop, step)):
            raise Undecodable("range of non-int parts")
        return range(start, stop, step)
    if tag == "fr":
        n, d = _list(v)
        n, d = _hex_int(n, MAX_FRACTION_HEX), _hex_int(d, MAX_FRACTION_HEX)
        if d <= 0:
            raise Undecodable("fraction denominator")
        return Fraction(n, d)
    if tag == "dec":
        if len(_str(v)) > 100_000 or not DECIMAL.fullmatch(v):
            raise Undecodable(repr(v)[:80])
        return Decimal(v)
    if tag == "x":  # a subclass that keeps its base's ==: compared as its base value
        name, base = _list(v)
        _str(name)
        return decode(base)
    if tag == "o":
        name, truth = _list(v)
        if truth is not None and not isinstance(truth, bool):
            raise Undecodable(repr(truth)[:80])
        return Opaque(_str(name)[:200], truth)
    raise Undecodable(tag)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, complex, Fraction, Decimal)) and not isinstance(x, bool)


def close(value, expected, tolerance: float, depth: int = 0) -> bool:
    """`value == expected`, except that numbers where a float (or complex) is involved, alone or in
    lists, tuples and dict values, may differ by at most `tolerance`. NaN is close to nothing and an
    infinity only equal to itself.
    (Exceptions of `==` itself, as Decimal('sNaN') raises, propagate as they would in the test.)"""
    if value == expected:
        return True
    if tolerance <= 0 or depth > 100:
        return False
    if _is_number(value) and _is_number(expected):
        if not any(isinstance(x, (float, complex)) for x in (value, expected)):
            return False
        try:
            difference = abs(complex(value) - complex(expected))
            return math.isfinite(difference) and difference <= tolerance  # an infinity is only equal to itself
        except (TypeError, ValueError, OverflowError, ArithmeticError):
            return False
    if (isinstance(value, list) and isinstance(expected, list)) or \
            (isinstance(value, tuple) and isinstance(expected, tuple)):
        return len(value) == len(expected) and all(close(v, e, tolerance, depth + 1) for v, e in zip(value, expected))
    if isinstance(value, dict) and isinstance(expected, dict) and value.keys() == expected.keys():
        return all(close(value[k], expected[k], tolerance, depth + 1) for k in expected)
    return False


def holds(check: Check, value, tolerance: float = 0.0) -> bool:
    if check.op == "eq":
        return close(value, check.expected, tolerance)
    if check.op == "is":
        return value is check.expected
    if check.op == "truthy":
        return bool(value)
    return not value


def _show(value) -> str:
    try:
        return f"{value!r:.120}"
    except Exception:  # an int over the 4,300-digit repr limit, say
        return f"<{type(value).__name__}>"


def judge(plan: TestPlan, result: ExecResult, float_tolerance: float = FLOAT_TOLERANCE) -> Verdict:
    strength = plan.strength if result.tier != "none" else "none"
    total = plan.count
    tolerance = float_tolerance if plan.mode == IO else None

    def fail(kind: str, detail: str = "", passed: int = 0, rounding: bool = False) -> Verdict:
        return Verdict(False, kind, strength, passed, total, detail[:500], tolerance, 0, rounding)

    if plan.error:
        return fail("bad_tests", plan.error)
    if total == 0:
        return fail("no_tests")
    if result.status in RUN_FAILURES:
        return fail(RUN_FAILURES[result.status], result.stderr.decode(errors="replace")[-300:])
    if result.forged:
        return fail("forged", f"{result.forged} channel line(s) without the run's nonce")
    records = result.records
    if records and records[0].get("t") == "solution":
        return fail(records[0].get("e", "exception"), records[0].get("m", ""))
    cases = [r for r in records if r.get("t") == "case"]
    done = [r for r in records if r.get("t") == "done"]
    if [r.get("i") for r in cases] != list(range(total)) or len(records) != total + 1 or len(done) != 1 \
            or records[-1] is not done[0] or done[0].get("count") != total:
        return fail("early_exit" if len(cases) < total else "forged",
                    f"{len(cases)} of {total} test records, done={bool(done)}, exit={result.returncode}")
    if result.returncode != 0:
        return fail("crash", f"runner exit status {result.returncode}")
    passed, within, first_failure = 0, 0, None
    for i, record in enumerate(cases):
        if "e" in record:
            message = str(record.get("m", ""))
            outcome = (record["e"], f"test {i}: {record['e']}: {message}")
            if plan.mode != IO and record["e"] == "assertion" and message.startswith(FLOAT_ROUNDING):
                outcome += (True,)
        elif plan.mode == IO:
            outcome = _io_outcome(i, plan, record, float_tolerance)
            if outcome == "within":
                within += 1
                outcome = None
        else:
            outcome = None if record.get("ok") is True else ("forged", f"test {i}: malformed record")
        if outcome is None:
            passed += 1
        elif first_failure is None:
            first_failure = outcome
    if first_failure:
        return fail(first_failure[0], first_failure[1], passed, len(first_failure) > 2)
    return Verdict(True, "passed", strength, passed, total, f"{passed}/{total} tests", tolerance, within)


def _io_outcome(i: int, plan: TestPlan, record: dict, tolerance: float):
    """None (passed), "within" (passed within the float tolerance) or (kind, detail)."""
    try:
        value = decode(record.get("v"))
    except (Undecodable, ValueError, TypeError, ArithmeticError, RecursionError, MemoryError) as exc:
        return "forged", f"test {i}: undecodable value {exc}"
    check = plan.checks[i]
    try:
        if holds(check, value, tolerance):
            return "within" if check.op == "eq" and not value == check.expected else None
    except Exception as exc:  # what the test's own `==` or truth test would have raised
        return f"exception:{type(exc).__name__}", f"test {i}: {plan.calls[i]} gave {_show(value)}: {exc}"[:500]
    return "wrong_output", (f"test {i}: {plan.calls[i]} gave {_show(value)}, "
                            f"expected {check.op} {_show(check.expected)}")


def verify_programs(sandbox, pairs: list[tuple[str, str]], float_tolerance: float = FLOAT_TOLERANCE) -> list[Verdict]:
    """Verdicts for (solution, tests) pairs, run in parallel over the sandbox's slots. Floats in
    I/O mode compare within `float_tolerance` (absolute; 0 compares exactly)."""
    from curate.stages.verify.plan import plan_tests

    if not float_tolerance >= 0:
        raise ValueError(f"float_tolerance must be a number >= 0, not {float_tolerance!r}")
    plans = [plan_tests(tests) for _, tests in pairs]
    runnable = [i for i, p in enumerate(plans) if not p.error and p.count]
    results = sandbox.run_many([plans[i].payload(pairs[i][0], float_tolerance) for i in runnable])
    by_index = dict(zip(runnable, results))
    empty = ExecResult("finished", 0, tier=sandbox.tier)
    return [judge(plan, by_index.get(i, empty), float_tolerance) for i, plan in enumerate(plans)]
