"""Code execution verifier (SelfCodeAlign-style): run each response's code against unit tests.

The solution is the response's Python code blocks, concatenated (a response that is bare code
counts whole). The tests come from the row's meta (`tests`: a string or a list of statements, as
the task carried them) or else from the response itself, after a `<tests>` tag (SelfCodeAlign's
format). Each response runs once in the sandbox with all its tests; a failing one is dropped with
the failure kind (`code_exec:syntax_error`, `assertion`, `wrong_output`, `timeout`, `memory`,
`crash`, `exception:<Type>`, `early_exit`, `forged`, ...). Rows without tests pass through
unverified unless `require_tests`; a tests field of another type (`"tests": 5`, a dict, a bool, a
list holding a non-string) is dropped as `code_exec:invalid_tests:<type>`. An in-process (assert mode) verdict lists the introspection
tools the solution mentions (frames, gc, ctypes, raw fd writes, the runner's `__curate_` names),
the ways such code could forge it. Scores: `code_pass_rate` (tests passed) per response and
`code_task_pass_rate` (responses passing among the same parent's responses in the batch).

The solution runs as an imported module, not as `__main__` (as in human-eval and evalplus, whose
harnesses never run a demo block): an `if __name__ == "__main__":` block that reads stdin, loops
or exits does not fail a correct function (module-level code still runs). In I/O mode results
are compared as plain Python's `==` compares them in the test, standard-library values included
(`Counter` equals a dict, a namedtuple a tuple, a deque no list; see judge.py), except that
floats may differ by `float_tolerance` (absolute, default 1e-6 as EvalPlus's atol for float
outputs; 0 compares exactly). The verdict's detail records the tolerance (`float_tolerance`) and
the tests that passed only within it (`float_rounding`). Assert mode keeps `==` exact; a failed
`==` on values within the tolerance says "float rounding" (`message` and `float_rounding`).
"""

from __future__ import annotations

import ast
import re

import pyarrow as pa

from curate.stages.base import Resources, StageResult
from curate.stages.verify import rows as R
from curate.stages.verify.isolation import SandboxUnavailableError, probe
from curate.stages.verify.judge import verify_programs
from curate.stages.verify.plan import FLOAT_TOLERANCE, introspection
from curate.stages.verify.sandbox import Limits, shared_sandbox

FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
TESTS_TAG = re.compile(r"<tests>(.*?)(?:</tests>|\Z)", re.S | re.I)


def python_blocks(text: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang.lower() in PYTHON_TAGS]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def split_response(text: str) -> tuple[str, str | None]:
    """(solution code, tests from the response or None)."""
    tests = None
    match = TESTS_TAG.search(text)
    if match:
        inside = match.group(1)
        tests = "\n".join(python_blocks(inside)) or inside.strip()
        text = text[: match.start()]
    text = re.sub(r"</?response>", "", text, flags=re.I)
    blocks = python_blocks(text)
    if blocks:
        return "\n\n".join(b.rstrip() for b in blocks) + "\n", tests
    return (text if text.strip() and _parses(text) else ""), tests


def meta_tests(meta: dict, key: str) -> str | None:
    """The tests in `meta[key]` (a string, or a list of strings joined by lines); None when absent
    or empty. Raises `InvalidTests` for any other value (a number, a bool, a dict, a list holding
    one): the data is at fault, and a malformed field is not the same as no tests."""
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise InvalidTests("list")
        value = "\n".join(value)
    if not isinstance(value, str):
        raise InvalidTests(type(value).__name__)
    return value if value.strip() else None


class InvalidTests(ValueError):
    """`meta[tests_key]` is neither a string nor a list of strings; the message is its type."""


class CodeExecution(R.VerifierStage):
    name = "verify_code"
    resources = Resources(num_cpus=1, actor=True, concurrency=1)  # one sandbox pool per actor; its slots run in parallel
    batch_size = 256
    verifier = "code_exec"
    SCORES = ("code_pass_rate", "code_task_pass_rate")

    def __init__(self, timeout_s: float = 4.0, memory_mb: int = 512, slots: int | None = None,
                 tests_key: str = "tests", require_tests: bool = False, allow_unsandboxed: bool = False,
                 python: str | None = None, float_tolerance: float = FLOAT_TOLERANCE):
        self.preflight({"python": python, "allow_unsandboxed": allow_unsandboxed, "float_tolerance": float_tolerance})
        self.float_tolerance = float(float_tolerance)
        self.limits = Limits(cpu_s=timeout_s, memory_mb=memory_mb)
        self.slots, self.allow_unsandboxed, self.python = slots, allow_unsandboxed, python
        self.tests_key, self.require_tests = tests_key, require_tests

    @classmethod
    def preflight(cls, params: dict) -> None:
        tolerance = params.get("float_tolerance", FLOAT_TOLERANCE)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
            raise ValueError(f"verify_code: float_tolerance must be a number >= 0 (absolute), not {tolerance!r}")
        caps = probe(params.get("python"))
        if not caps.jail and not params.get("allow_unsandboxed"):
            raise SandboxUnavailableError("verify_code: no sandbox here (tier none). Missing: " + caps.explain()
                                          + ". Set allow_unsandboxed: true to run without isolation.")

    def __call__(self, batch: pa.Table) -> StageResult:
        metas, texts = R.metas(batch), R.responses(batch)
        jobs, pairs, sources = [], [], []
        verdicts: list[R.RowVerdict | None] = [None] * batch.num_rows
        for i, (meta, text) in enumerate(zip(metas, texts)):
            solution, response_tests = split_response(text)
            try:
                tests, source = meta_tests(meta, self.tests_key), "meta"
            except InvalidTests as e:
                verdicts[i] = R.RowVerdict(self.verifier, False, "none", {"kind": "invalid_tests", "type": str(e)},
                                           f"{self.verifier}:invalid_tests:{e}")
                continue
            if tests is None:
                tests, source = response_tests, "response"
            if tests is None:
                verdicts[i] = (R.RowVerdict(self.verifier, False, "none", {"kind": "no_tests"}, f"{self.verifier}:no_tests")
                               if self.require_tests else R.RowVerdict(self.verifier, None))
            elif not solution.strip():
                verdicts[i] = R.RowVerdict(self.verifier, False, "none", {"kind": "no_code"}, f"{self.verifier}:no_code")
            else:
                jobs.append(i)
                pairs.append((solution, tests))
                sources.append(source)
        pass_rate: list[float | None] = [None] * batch.num_rows
        if jobs:
            sandbox = shared_sandbox(self.limits, self.slots, self.allow_unsandboxed, self.python)
            verdicts_run = verify_programs(sandbox, pairs, self.float_tolerance)
            for i, (solution, _), source, v in zip(jobs, pairs, sources, verdicts_run):
                detail = {"kind": v.kind, "tests": f"{v.passed_tests}/{v.total_tests}", "tests_from": source,
                          "tier": sandbox.tier}
                if v.detail and not v.passed:
                    detail["message"] = v.detail
                if v.float_tolerance is not None:
                    detail["float_tolerance"] = v.float_tolerance
                if v.within_tolerance:
                    detail["float_rounding"] = f"{v.within_tolerance} test(s) equal only within the float tolerance"
                elif v.float_rounding:
                    detail["float_rounding"] = ("the failed == compared values within the float tolerance; "
                                                "assert mode is exact")
                if v.strength == "in_process":
                    suspicious = introspection(solution)
                    if suspicious:
                        detail["introspection"] = suspicious
                verdicts[i] = R.RowVerdict(self.verifier, v.passed, v.strength, detail, f"{self.verifier}:{v.kind}")
                pass_rate[i] = v.pass_rate
        return R.result(batch, verdicts, {"code_pass_rate": pass_rate,
                                          "code_task_pass_rate": task_pass_rates(batch, verdicts)})


def task_pass_rates(batch: pa.Table, verdicts: list[R.RowVerdict]) -> list[float | None]:
    """Per row: the share of verified responses to the same task (first parent id) that passed."""
    parents = [p[0] if p else i for i, p in zip(batch["id"].to_pylist(), batch["parent_ids"].to_pylist())]
    tally: dict[str, list[int]] = {}
    for task, v in zip(parents, verdicts):
        if v.passed is not None:
            t = tally.setdefault(task, [0, 0])
            t[0] += bool(v.passed)
            t[1] += 1
    return [tally[t][0] / tally[t][1] if v.passed is not None else None for t, v in zip(parents, verdicts)]
