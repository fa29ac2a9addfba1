"""Math answer verifier: extract a response's final answer and compare it with the reference.

Extraction (curate's; `extract_answer`), first that applies:
- ``boxed``: the last `\\boxed{...}` / `\\fbox{...}` (with a `%` written just after it: `\\boxed{50}\\%`);
  boxes side by side at the very end (`\\boxed{3}, \\boxed{5}`) are read together as one list;
- ``gsm8k``: the last GSM8K `#### <number>` line (a markdown `#### Step 1` heading is not one);
- ``answer_phrase``: the last "(the) (final) answer is / Answer: ..." (up to the end of its sentence);
- ``last_math`` / ``last_number``: the text's last formula (`$...$`, `\\(...\\)`, `\\[...\\]`) or
  its last number, whichever comes later. A number counts only when it stands alone: not part of
  a formula (`4\\sqrt{2}`, `2\\pi`, `7!`), not after an operator or a word such as "of", "than",
  "times" and not before one ("2 pi", "5 more"), so a text whose end is not a plain number has no
  answer rather than a wrong one.

Comparison: `math_equiv.compare` (Hugging Face Math-Verify for the mathematics, curate's rules for
units, words, percentages and base subscripts); the stage runs it in a child process with a
deadline per answer (`math_worker.MathChecker`).

Verdict detail (stored per row in `verdicts.detail`): `kind` (the rule that decided when it
passed; `wrong_answer`, `no_answer`, `timeout` or `error` when not), `rule` (the rule that decided
either way), `steps` (normalisations taken: units, percent, number words), `extracted_by`,
`answer`, `reference`.
"""

from __future__ import annotations

import json
import math
import re
import threading

import pyarrow as pa

from curate.stages.base import Resources, StageResult
from curate.stages.verify import rows as R
from curate.stages.verify.math_equiv import braced, compare, equivalent  # noqa: F401  (re-exported)

ANSWER_PHRASE = re.compile(r"\banswer\s*(?:is|:|=)\s*:?\s*(?:\*\*\s*)?", re.I)
# GSM8K's final line: `#### 72` (a number, maybe with currency or a unit), not a markdown "#### Step 1" heading
GSM8K = re.compile(r"^[ \t]*####[ \t]*((?:\\?\$[ \t]*)?-?\d[\d,]*(?:\.\d+)?(?:[ \t]*(?:\\?%|[A-Za-z]+))?)[ \t]*\.?[ \t]*$",
                   re.M)
BOX_JOIN = re.compile(r"^(?:\s|\$|,|;|\\quad|\\qquad|\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b|\\,)*$")
MATH_ENV = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\\d$])\$([^$\n]+?)(?<!\\)\$", re.S)
NUMERAL = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
LEFT_WORDS_NOT = {"of", "than", "times", "over", "plus", "minus", "by", "root", "power", "sqrt", "about", "approximately",
                  "around", "nearly", "almost", "least", "most", "under", "above", "below", "between", "and", "or", "to",
                  "from", "not", "except", "nor", "exceeds", "exceed", "base", "mod", "modulo", "choose", "divided",
                  "multiplied", "per"}

# Words right after a number that change its value or make it part of something else.
VALUE_WORDS = {"and", "or", "nor", "to", "than", "more", "less", "fewer", "greater", "smaller", "plus", "minus", "times",
               "over", "divided", "multiplied", "pi", "sqrt", "root", "roots", "squared", "cubed", "factorial", "power",
               "hundred", "hundreds", "thousand", "thousands", "million", "millions", "billion", "billions", "trillion",
               "dozen", "dozens", "half", "halves", "third", "thirds", "quarter", "quarters", "fourth", "fourths",
               "fifth", "fifths", "tenth", "tenths", "hundredth", "hundredths", "thousandth", "thousandths", "mod",
               "modulo", "choose", "base", "inf", "infinity", "percent", "percentage", "pct", "cent", "out"}

_CHECKER_LOCK = threading.Lock()


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, contents) of every \\boxed{...} / \\fbox{...} in text, in order."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*(?=\{)", text):
        got = braced(text, m.end())
        if got is not None:
            out.append((m.start(), got[1], got[0].strip()))
    return out


def _sentence(rest: str) -> str:
    """The answer in the text after an answer phrase: to the end of its line and sentence."""
    rest = rest.split("\n")[0]
    rest = re.split(r"\.(?=\s|$)|\s+I hope\b", rest)[0]  # a full stop, never a decimal point
    return rest.strip().strip("*").strip()


def _standalone(text: str, start: int, end: int) -> bool:
    """Whether the number text[start:end] stands alone (see the module doc)."""
    before, after = text[:start], text[end:]
    pct = re.match(r"\s*\\?%", after)
    if pct:
        after = after[pct.end():]
    elif after[:1].isalnum() or after[:1] in ("!", "^", "_", "\\", "{", "}", "/") or \
            (after[:1] == "*" and not after.startswith("**")):
        return False  # 2x, 7!, 2^3, 4\sqrt2, 3/4, 2*3: part of a formula
    if before[-1:].isalnum() or before[-1:] in (".", "_"):
        return False  # C2, x2, H2O, 1.2.3: part of a token
    b = re.sub(r"(?:\$|€|£|¥|\\\$)$", "", before[-200:].rstrip(" \t")).rstrip(" \t")
    if b:
        last = b[-1]
        if last == "," and (len(b) < 2 or b[-2].isdigit()):
            return False  # the end of a list: 3, 5
        if last == "*" and not b.endswith("**"):
            return False
        if not (last.isalpha() or last in "\n(=:*\"'“[,"):
            return False  # after an operator, a digit, a brace...
        word = re.search(r"(\\?[A-Za-z]+)$", b)
        if word and (word.group(1).startswith("\\") or word.group(1).lower() in LEFT_WORDS_NOT):
            return False  # \sqrt 2, "square root of 2", "less than 5"
    tail = re.match(r"[^.\n;,?)]*", after).group(0).replace("*", " ").split()[:2]
    if tail and not re.fullmatch(r"[A-Za-z][A-Za-z'’-]*", tail[0]):
        return False  # "3 + 4", "14 = x"
    for w in tail:
        w = w.lower().strip("'’")
        if w in VALUE_WORDS or (len(w) == 1 and w not in ("m", "g", "s", "h", "l")):
            return False  # "2 pi", "5 more than x", "3 million", "3 hours and 20 minutes"
    return True


def extract_answer(text: str) -> tuple[str | None, str]:
    """(answer, how): how is boxed | gsm8k | answer_phrase | last_math | last_number | none."""
    boxes = _boxes(text)
    if boxes:
        group = [boxes[-1]]
        for prev in reversed(boxes[:-1]):
            between = text[prev[1]:group[0][0]]
            if len(between) > 20 or not BOX_JOIN.match(between):
                break
            group.insert(0, prev)
        pct = "%" if re.match(r"\s*\$?\s*\\?%", text[boxes[-1][1]:]) else ""  # \boxed{50}\%
        if len(group) > 1 and not text[group[-1][1]:].strip(" .$\n"):  # boxes side by side end the text: one list
            return ", ".join(b[2] for b in group), "boxed"
        return boxes[-1][2] + pct, "boxed"
    found = GSM8K.findall(text)
    if found:
        return found[-1].strip(), "gsm8k"
    phrases = list(ANSWER_PHRASE.finditer(text))
    if phrases:
        answer = _sentence(text[phrases[-1].end():])
        if answer:
            return answer, "answer_phrase"
    envs = [m for m in MATH_ENV.finditer(text)
            if not (m.lastindex == 4 and re.search(r"\s[A-Za-z]{2,}\b", m.group(4)))]  # "$5 and $7": dollars
    numbers = list(NUMERAL.finditer(text))
    env = envs[-1] if envs else None
    number = numbers[-1] if numbers else None
    if number is not None and (env is None or number.start() >= env.end()):
        if not _standalone(text, number.start(), number.end()):
            return None, "none"
        pct = re.match(r"\s*\\?%", text[number.end():])
        return number.group(0) + ("%" if pct else ""), "last_number"
    if env is not None:
        return env.group(env.lastindex).strip(), "last_math"
    return None, "none"


def _scalar_text(value) -> str:
    """A string as it is; a number as JSON writes it (`3`, `0.5`)."""
    return value if isinstance(value, str) else json.dumps(value)


def _json_text(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def invalid_reference(value) -> str | None:
    """The type name of a reference answer that cannot be compared (`dict`, `bool`, a list holding
    either, a number that is not finite), or None for a string, a finite number or a list of those."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, list, tuple)):
        return type(value).__name__
    if isinstance(value, float) and not math.isfinite(value):
        return "float"
    if isinstance(value, (list, tuple)) and any(invalid_reference(v) is not None or isinstance(v, (list, tuple))
                                                for v in value):
        return "list"
    return None


class MathAnswer(R.VerifierStage):
    """Rows whose `meta[answer_key]` is set: the response's final answer must equal it.

    Params: `answer_key`, `require_answer` (rows without a reference fail as `no_reference`),
    `float_rounding` (decimal places Math-Verify rounds floats to; 6), `timeout_s` (wall seconds
    per answer, in a child process; an overrun fails the row as `timeout`), `memory_mb` (the
    child's address-space limit). Drop reasons: `math_answer:wrong_answer`, `no_answer`,
    `no_reference`, `timeout`, `error`, `too_long` (an answer or reference over
    `math_equiv.MAX_CHARS` that is not the same string or numeral), `invalid_answer:<type>` (the
    reference is not a string, a number or a list of those: `dict`, `bool`, ...).
    """

    name = "verify_math"
    resources = Resources(num_cpus=1)
    batch_size = 512
    verifier = "math_answer"

    def __init__(self, answer_key: str = "answer", require_answer: bool = False, float_rounding: int = 6,
                 timeout_s: float = 5.0, memory_mb: int = 2048):
        self.answer_key, self.require_answer = answer_key, require_answer
        self.float_rounding, self.timeout_s, self.memory_mb = float_rounding, timeout_s, memory_mb
        self._checker = None

    @classmethod
    def preflight(cls, params: dict) -> None:
        import importlib.util

        if importlib.util.find_spec("math_verify") is None:
            raise RuntimeError("verify_math needs Hugging Face's math-verify: reinstall curate (`pip install -e .`), "
                               "which installs it")

    def checker(self):
        """This stage's `MathChecker` (one child process), started on first use."""
        with _CHECKER_LOCK:
            if self._checker is None:
                from curate.stages.verify.math_worker import MathChecker

                self._checker = MathChecker(timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                                            float_rounding=self.float_rounding)
            return self._checker

    def __getstate__(self):
        return {**self.__dict__, "_checker": None}  # a child process does not travel

    def __call__(self, batch: pa.Table) -> StageResult:
        verdicts = []
        for meta, text in zip(R.metas(batch), R.responses(batch)):
            reference = meta.get(self.answer_key)
            if reference is None or (isinstance(reference, (str, list, tuple)) and not "".join(map(str, reference)).strip()):
                verdicts.append(R.RowVerdict(self.verifier, False, "none", {"kind": "no_reference", "rule": "no_reference"},
                                             f"{self.verifier}:no_reference") if self.require_answer
                                else R.RowVerdict(self.verifier, None))
                continue
            bad = invalid_reference(reference)
            if bad is not None:  # the data is at fault, not the response: never a Python repr compared
                verdicts.append(R.RowVerdict(self.verifier, False, "none",
                                             {"kind": "invalid_answer", "rule": "invalid_answer", "type": bad,
                                              "reference": _json_text(reference)[:200]},
                                             f"{self.verifier}:invalid_answer:{bad}"))
                continue
            reference = ", ".join(map(_scalar_text, reference)) if isinstance(reference, (list, tuple)) \
                else _scalar_text(reference)
            answer, how = extract_answer(text)
            if answer is None:
                verdicts.append(R.RowVerdict(self.verifier, False, "reference",
                                             {"kind": "no_answer", "rule": "no_answer", "extracted_by": how,
                                              "reference": reference}, f"{self.verifier}:no_answer"))
                continue
            checked = self.checker().check(answer, reference)
            if checked.equal:
                kind = checked.rule
            else:  # too_long: neither equal as written nor readable in bounded time, so not judged wrong
                kind = checked.rule if checked.rule in ("timeout", "error", "too_long") else "wrong_answer"
            detail = {"kind": kind, "rule": checked.rule, "steps": list(checked.steps), "answer": answer[:200],
                      "extracted_by": how, "reference": reference}
            if checked.error:
                detail["error"] = checked.error
            verdicts.append(R.RowVerdict(self.verifier, checked.equal, "reference", detail, f"{self.verifier}:{kind}"))
        return R.result(batch, verdicts)
