"""Split unit tests into what runs inside the jail and what the parent keeps.

When every test statement has the shape `assert <expr> == <literal>` (either side), `assert <expr>
is True/False/None`, `assert <expr>` or `assert not <expr>` (imports allowed beside them), the
plan is in I/O mode: only the expressions go into the jail; the literals stay here and the
parent compares (judge.py: as plain Python's `==` would, floats within a tolerance). Otherwise the
plan is in assert mode: each top-level statement runs in the jail.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

IO, ASSERT = "io", "assert"
STRENGTH = {IO: "io", ASSERT: "in_process"}
# Absolute tolerance for floats in I/O mode: EvalPlus's atol for float outputs. (EvalPlus's
# np.allclose also adds rtol=1e-7; a relative term would let a subtly wrong large value pass.)
FLOAT_TOLERANCE = 1e-6


@dataclass
class Check:
    op: str  # eq | is | truthy | falsy
    expected: object = None


@dataclass
class TestPlan:
    mode: str
    setup: str = ""  # io mode: the tests' imports
    calls: list[str] = field(default_factory=list)  # io mode: expressions evaluated in the jail
    checks: list[Check] = field(default_factory=list)  # io mode: what each call must give (kept here)
    tests: list[str] = field(default_factory=list)  # assert mode: top-level statements
    error: str | None = None  # the tests themselves do not parse

    @property
    def strength(self) -> str:
        return STRENGTH[self.mode]

    @property
    def count(self) -> int:
        return len(self.calls) if self.mode == IO else len(self.tests)

    def payload(self, solution: str, float_tolerance: float = FLOAT_TOLERANCE) -> dict:
        """What the jail gets. In assert mode the tolerance only names a failed `==` on floats that
        differ by less than it ("float rounding"); the comparison itself stays exact."""
        if self.mode == IO:
            return {"mode": IO, "solution": solution, "setup": self.setup, "calls": self.calls}
        return {"mode": ASSERT, "solution": solution, "tests": self.tests, "tol": float(float_tolerance)}


def _literal(node: ast.expr):
    """(True, value) when `node` is a literal (constants, containers of literals, negative numbers)."""
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _io_check(stmt: ast.stmt) -> tuple[ast.expr, Check] | None:
    if not isinstance(stmt, ast.Assert):
        return None
    test = stmt.test
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, ast.Eq):
            ok, value = _literal(right)
            if ok and not _literal(left)[0]:
                return left, Check("eq", value)
            ok, value = _literal(left)
            if ok and not _literal(right)[0]:
                return right, Check("eq", value)
            return None
        if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and right.value in (True, False, None):
            if type(right.value) in (bool, type(None)):
                return left, Check("is", right.value)
        return None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return test.operand, Check("falsy")
    if isinstance(test, (ast.Call, ast.Name, ast.Attribute, ast.Subscript)):
        return test, Check("truthy")
    return None


def plan_tests(tests: str) -> TestPlan:
    try:
        tree = ast.parse(tests)
    except SyntaxError as exc:
        return TestPlan(ASSERT, error=f"tests do not parse: {exc.msg} (line {exc.lineno})")
    setup, calls, checks = [], [], []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            setup.append(ast.unparse(stmt))
            continue
        split = _io_check(stmt)
        if split is None:
            return TestPlan(ASSERT, tests=[_strict_asserts(s) for s in tree.body])
        expr, check = split
        calls.append(ast.unparse(expr))
        checks.append(check)
    return TestPlan(IO, setup="\n".join(setup), calls=calls, checks=checks)


STRICT_EQ = "__curate_strict_eq__"


class _StrictEq(ast.NodeTransformer):
    def visit_Assert(self, node: ast.Assert):
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            node.test = ast.Call(ast.Name(STRICT_EQ, ast.Load()), [test.left, test.comparators[0]], [])
        return node


def _strict_asserts(stmt: ast.stmt) -> str:
    """`assert a == b` becomes a call to the runner's strict equality, which an object whose `==`
    is always true does not pass (it compares builtin values, or objects of one exact type)."""
    return ast.unparse(ast.fix_missing_locations(_StrictEq().visit(stmt)))


# Ways code in the runner's own process can reach the runner (its frames, its pipe, the tracer).
# They cannot forge an I/O-mode verdict; in assert mode the verdict records that they were used.
INTROSPECTION = re.compile(r"_getframe|\bgc\b|\binspect\b|\bctypes\b|/proc/self|os\.write|settrace|setprofile|"
                           r"f_back|f_locals|f_globals|__builtins__|\bbuiltins\b|__curate\w*")


def introspection(solution: str) -> list[str]:
    """The introspection tools a solution mentions (a static screen, not a proof)."""
    return sorted(set(INTROSPECTION.findall(solution)))
