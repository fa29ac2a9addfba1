"""The verdict, computed by the parent from what the jail reported and what only the parent knows.

PASS needs: the run finished (no timeout, memory, output or crash), no channel line without the
nonce, exactly one record per expected test in order, every one a pass (I/O mode: the decoded
value satisfies the check the parent kept), and a final `done` record with the right count.
The exit code alone never passes anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from curate.stages.verify.plan import IO, Check, TestPlan
from curate.stages.verify.sandbox import ExecResult

RUN_FAILURES = {"timeout": "timeout", "memory": "memory", "output_limit": "output_limit", "crash": "crash",
                "infra": "infra"}


@dataclass
class Verdict:
    passed: bool
    kind: str  # passed | syntax_error | assertion | wrong_output | exception:<Type> | timeout | memory | ...
    strength: str  # io | in_process | none
    passed_tests: int
    total_tests: int
    detail: str = ""

    @property
    def pass_rate(self) -> float:
        return self.passed_tests / self.total_tests if self.total_tests else 0.0


class Undecodable(ValueError):
    pass


def decode(value):
    """The jail's tagged encoding back into exact builtin values (never objects of its making)."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise Undecodable(repr(value)[:80])
    (tag, v), = value.items()
    if tag == "b" and isinstance(v, bool):
        return v
    if tag == "i":
        return int(v)
    if tag == "f":
        return float(v)
    if tag == "s" and isinstance(v, str):
        return v
    if tag == "y":
        return bytes.fromhex(v)
    if tag == "c":
        return complex(float(v[0]), float(v[1]))
    if tag in ("l", "t", "set", "fs"):
        items = [decode(x) for x in v]
        return {"l": list, "t": tuple, "set": set, "fs": frozenset}[tag](items)
    if tag == "d":
        return {decode(k): decode(x) for k, x in v}
    raise Undecodable(tag)


def holds(check: Check, value) -> bool:
    if check.op == "eq":
        return value == check.expected
    if check.op == "is":
        return value is check.expected
    if check.op == "truthy":
        return bool(value)
    return not value


def judge(plan: TestPlan, result: ExecResult) -> Verdict:
    strength = plan.strength if result.tier != "none" else "none"
    total = plan.count

    def fail(kind: str, detail: str = "", passed: int = 0) -> Verdict:
        return Verdict(False, kind, strength, passed, total, detail[:500])

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
    passed, first_failure = 0, None
    for i, record in enumerate(cases):
        if "e" in record:
            outcome = (record["e"], f"test {i}: {record['e']}: {record.get('m', '')}")
        elif plan.mode == IO:
            try:
                value = decode(record.get("v"))
            except (Undecodable, ValueError, TypeError) as exc:
                outcome = ("forged", f"test {i}: undecodable value {exc}")
            else:
                ok = holds(plan.checks[i], value)
                outcome = None if ok else ("wrong_output", f"test {i}: {plan.calls[i]} gave {value!r:.120}, "
                                                           f"expected {plan.checks[i].op} {plan.checks[i].expected!r:.120}")
        else:
            outcome = None if record.get("ok") is True else ("forged", f"test {i}: malformed record")
        if outcome is None:
            passed += 1
        elif first_failure is None:
            first_failure = outcome
    if first_failure:
        kind, detail = first_failure
        return fail(kind, detail, passed)
    return Verdict(True, "passed", strength, passed, total, f"{passed}/{total} tests")


def verify_programs(sandbox, pairs: list[tuple[str, str]]) -> list[Verdict]:
    """Verdicts for (solution, tests) pairs, run in parallel over the sandbox's slots."""
    from curate.stages.verify.plan import plan_tests

    plans = [plan_tests(tests) for _, tests in pairs]
    runnable = [i for i, p in enumerate(plans) if not p.error and p.count]
    results = sandbox.run_many([plans[i].payload(pairs[i][0]) for i in runnable])
    by_index = dict(zip(runnable, results))
    empty = ExecResult("finished", 0, tier=sandbox.tier)
    return [judge(plan, by_index.get(i, empty)) for i, plan in enumerate(plans)]
