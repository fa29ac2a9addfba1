"""Math answer verifier: extract a response's final answer and compare it with the reference.

Extraction, first that applies: the last `\\boxed{...}` (or `\\fbox{...}`), the last "the (final)
answer is ..." / "Answer: ..." phrase, the last number in the text. Comparison, first that
holds: exact (after normalising LaTeX wrappers, spacing, `$`, thousands separators, a trailing
period), numeric (fractions, decimals, percentages, within a relative tolerance), symbolic
(SymPy: the difference simplifies to 0). SymPy parses with `eval`, so only strings made of
numbers, operators, brackets and a short list of names ever reach it, and huge powers are refused.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pyarrow as pa

from curate.stages.base import Resources, Stage, StageResult
from curate.stages.verify import rows as R

ANSWER_PHRASE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*(.+)", re.I)
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
SAFE_NAMES = {"sqrt", "pi", "e", "E", "sin", "cos", "tan", "log", "ln", "exp", "I", "oo"}
SAFE_EXPR = re.compile(r"^[0-9a-zA-Z+\-*/^()., ]*$")


def _braced(text: str, start: int) -> str | None:
    """The contents of the {...} group opening at text[start] (nested braces allowed)."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1: j]
    return None


def extract_answer(text: str) -> tuple[str | None, str]:
    """(answer, how): how is boxed | answer_phrase | last_number | none."""
    for macro in ("\\boxed", "\\fbox"):
        pos = text.rfind(macro + "{")
        if pos >= 0:
            inner = _braced(text, pos + len(macro))
            if inner is not None:
                return inner.strip(), "boxed"
    phrases = list(ANSWER_PHRASE.finditer(text))
    if phrases:
        answer = phrases[-1].group(1).strip().split("\n")[0]
        answer = re.split(r"(?<=[^\d])\.\s|\.$", answer)[0].strip()  # end of the sentence, not a decimal point
        if answer:
            return answer, "answer_phrase"
    numbers = NUMBER.findall(text)
    if numbers:
        return numbers[-1], "last_number"
    return None, "none"


def normalise(answer: str) -> str:
    s = answer.strip()
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\$", "")
    s = s.replace("$", "").replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "")
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^[a-z]\s*=\s*(?=\S)", "", s, flags=re.I)  # "x = 9" answers 9
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and s.count(",") == 0:
        s = s[1:-1]
    return re.sub(r"\s+", " ", s).strip().lower()


def as_number(s: str) -> float | None:
    s = s.replace(" ", "")
    percent = s.endswith("%")
    s = s.rstrip("%")
    m = re.fullmatch(r"\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    try:
        value = float(Fraction(s)) if "/" in s else float(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def _latex_to_sympy(s: str) -> str:
    s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
    s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi").replace("{", "(").replace("}", ")")
    return s.replace("\\", "")


def _sympy_safe(expr: str) -> bool:
    if len(expr) > 200 or not SAFE_EXPR.match(expr) or "__" in expr:
        return False
    if re.search(r"(\^|\*\*)\s*\(?\s*\d{4,}", expr) or re.search(r"(\^|\*\*)[^+\-]*(\^|\*\*)", expr):
        return False  # 10^100000 or towers would hang simplification
    if re.search(r"[a-zA-Z]\.|\.[a-zA-Z]", expr):
        return False  # attribute access
    names = set(re.findall(r"[a-zA-Z_]+", expr))
    return all(n in SAFE_NAMES or len(n) == 1 for n in names)


def symbolic_equal(a: str, b: str) -> bool:
    a, b = _latex_to_sympy(a), _latex_to_sympy(b)
    if not (_sympy_safe(a) and _sympy_safe(b)):
        return False
    from sympy import simplify
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    try:
        ea = parse_expr(a, transformations=transformations, evaluate=True)
        eb = parse_expr(b, transformations=transformations, evaluate=True)
        return bool(simplify(ea - eb) == 0)
    except Exception:
        return False


def equivalent(answer: str, reference: str, rel_tol: float = 1e-6, use_sympy: bool = True) -> str | None:
    """How `answer` matches `reference` (exact | numeric | symbolic), or None."""
    a, r = normalise(answer), normalise(reference)
    if a == r:
        return "exact"
    na, nr = as_number(a), as_number(r)
    if na is not None and nr is not None:
        return "numeric" if math.isclose(na, nr, rel_tol=rel_tol, abs_tol=1e-9) else None
    if use_sympy and symbolic_equal(a, r):
        return "symbolic"
    numbers = NUMBER.findall(a)
    if nr is not None and len(numbers) == 1:  # "408 apples", "$32.40 in total"
        value = as_number(numbers[0].replace(",", ""))
        if value is not None and math.isclose(value, nr, rel_tol=rel_tol, abs_tol=1e-9):
            return "numeric"
    return None


class MathAnswer(Stage):
    name = "verify_math"
    resources = Resources(num_cpus=1)
    batch_size = 512
    verifier = "math_answer"

    def __init__(self, answer_key: str = "answer", require_answer: bool = False, rel_tol: float = 1e-6,
                 use_sympy: bool = True):
        self.answer_key, self.require_answer = answer_key, require_answer
        self.rel_tol, self.use_sympy = rel_tol, use_sympy

    def __call__(self, batch: pa.Table) -> StageResult:
        verdicts = []
        for meta, text in zip(R.metas(batch), R.responses(batch)):
            reference = meta.get(self.answer_key)
            if reference is None or str(reference).strip() == "":
                verdicts.append(R.RowVerdict(self.verifier, False, "none", {"kind": "no_reference"},
                                             f"{self.verifier}:no_reference") if self.require_answer
                                else R.RowVerdict(self.verifier, None))
                continue
            reference = str(reference)
            answer, how = extract_answer(text)
            if answer is None:
                verdicts.append(R.RowVerdict(self.verifier, False, "reference", {"kind": "no_answer", "reference": reference},
                                             f"{self.verifier}:no_answer"))
                continue
            match = equivalent(answer, reference, self.rel_tol, self.use_sympy)
            detail = {"kind": match or "wrong_answer", "answer": answer[:200], "extracted_by": how, "reference": reference}
            verdicts.append(R.RowVerdict(self.verifier, match is not None, "reference", detail,
                                         f"{self.verifier}:wrong_answer"))
        return R.result(batch, verdicts)
