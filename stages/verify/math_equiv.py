"""Is a final answer equal to a reference answer? Hugging Face Math-Verify decides the mathematics;
curate adds the readings a bare parser gets wrong on answers as models and data sets write them.

`compare(answer, reference)` returns a `Match`: `equal`, the `rule` that decided and the `steps`
(normalisations) taken on the way. Rules, first that applies:

- ``exact``: the two strings agree after cosmetic clean-up (whitespace, `$`/`\\(`/`\\[` delimiters,
  `\\left`/`\\right`, thin spaces, `\\dfrac`, a trailing period, thousands separators `1,234`).
- ``base``: either side is a numeral with a base subscript (`101_2`, `1A_{16}`): equal when both
  give the same value, or, when only one names its base, the other is the same digit string
  (`101` for `101_2`; `5` is not, since the question asked for the base-2 numeral).
- ``units``: both sides carry units and they differ (`5 cm` vs `5 m`): not equal. A unit on one
  side only (`12 eggs`, `5 \\text{ cm}`, `45^\\circ`, `$32.40`) is dropped; words that change
  the value (`2 pi`, `3 or 4`, `7 factorial`, `3 million`, `5 less than x`) are never units.
- ``text``: either side is plain words (`Paris`, `\\text{no solution}`): equal when both are the
  same words, ignoring case. Math-Verify would read words as products of symbols (`no` = `on`).
- ``percent``: either side is a percentage (`50%`, `50\\%`, `50 percent`). Both percentages: the
  numbers must agree. One only: `x%` equals a plain `y` when `y = x` (the reference counts in
  percent: `50%` for `50`) or `y = x/100` (it is a fraction: `50%` for `0.5`); never `y = 100x`.
- Math-Verify (`math_verify.parse` + `math_verify.verify`, strict, sets compared with relations):
  ``numeric``, ``symbolic``, ``set``, ``tuple``, ``interval``, ``matrix``, ``relation`` by the
  reference's parsed type. Both strings are parsed whole as LaTeX (never a number found inside
  them), so `4\\sqrt{2}`, `2\\pi`, `7!` and `-3` differ from `4`, `2`, `7` and `3`. An answer that
  is an equation counts by its right side only when it is an assignment (`x = 5`) or true
  arithmetic (`17 \\cdot 24 = 408`); `2x + 1 = 3` does not answer `3`.
- ``unparsed_answer`` / ``unparsed_reference``: Math-Verify could not read one side: not equal.
- ``too_long``: a side is over `MAX_CHARS` (4,000) characters after clean-up and the two are
  neither the same string (``exact``, any length) nor plain decimal numerals (compared by exact
  value, ``numeric``): too long to parse in bounded time, so not decided (the stage drops it as
  `math_answer:too_long`, not as a wrong answer).

Before these, number words are read as numbers (`twelve`, `one hundred and five`, `three
quarters`, `12 million`), plain-text names get their LaTeX form (`pi`, `sqrt(2)`, `x**2`,
`1e3`), and a reference given as a whole solution is cut to its `\\boxed{}` or GSM8K `#### `
answer.

Nothing here is time-bounded: SymPy can take unbounded time on some inputs (`10^{10^{10}}`).
Inside workers use `curate.stages.verify.math_worker.MathChecker`, which runs this in a child
process with a deadline per answer. Math-Verify's own timeouts use SIGALRM, which works only in a
process's main thread, so they are off here (`parsing_timeout=None`, `timeout_seconds=None`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from fractions import Fraction

# ------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Match:
    equal: bool
    rule: str
    steps: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        return {"equal": self.equal, "rule": self.rule, "steps": list(self.steps)}


# ------------------------------------------------------------------------------------------------
# Cosmetic clean-up


def braced(text: str, start: int) -> tuple[str, int] | None:
    """(contents, index after the closing brace) of the {...} group opening at text[start]."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1: j], j + 1
    return None


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` / `\\fbox{...}` in text, or None."""
    best = None
    for macro in ("\\boxed", "\\fbox"):
        pos = text.rfind(macro)
        while pos >= 0:
            j = pos + len(macro)
            while j < len(text) and text[j] == " ":
                j += 1
            if j < len(text) and text[j] == "{":
                got = braced(text, j)
                if got is not None and (best is None or pos > best[0]):
                    best = (pos, got[0])
                break
            pos = text.rfind(macro, 0, pos)
    return best[1].strip() if best else None


GSM8K_ANSWER = re.compile(r"####\s*([^\n]+)")
TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}$")
THOUSANDS = re.compile(r"^-?\d{1,3}(?:(?:,| |\{,\})\d{3})+(?:\.\d+)?$")  # 1,234 / 1 234 / 1{,}234


def reference_answer(reference: str) -> tuple[str, str]:
    """(answer, how) from a reference that may be a whole solution: its last `\\boxed{}`
    (MATH), its `#### ` line (GSM8K), or the text itself (``raw``)."""
    boxed = last_boxed(reference)
    if boxed is not None:
        return boxed, "boxed"
    found = GSM8K_ANSWER.findall(reference)
    if found:
        return found[-1].strip(), "gsm8k"
    return reference, "raw"


def clean(s: str) -> str:
    """Cosmetic clean-up only: nothing that could change the value."""
    s = s.strip()
    boxed = last_boxed(s) if s.startswith(("\\boxed", "\\fbox")) else None
    if boxed is not None:
        s = boxed
    s = s.replace("\\$", "$")
    for a, b in (("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""), ("$", "")):
        s = s.replace(a, b)
    if "**" in s and not re.search(r"[\w)]\s*\*\*\s*[\w(]", s):
        s = s.replace("**", "")  # markdown bold, not a power
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\\\|\\[!,;: ]|\\quad|\\qquad|~",
               lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)  # spacing; \\ (a matrix row) stays
    s = re.sub(r"\\displaystyle", "", s)
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"\.$", "", s).strip()  # a sentence's full stop ("3." is 3 anyway)
    m = TEXT_WRAPPER.match(s)
    if m:
        s = m.group(1).strip()
    if THOUSANDS.match(s):
        s = re.sub(r",| |\{,\}", "", s)
    return s


# ------------------------------------------------------------------------------------------------
# Number words

SMALL = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
DENOMINATORS = {"half": 2, "halves": 2, "third": 3, "thirds": 3, "quarter": 4, "quarters": 4, "fourth": 4, "fourths": 4,
                "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6, "seventh": 7, "sevenths": 7, "eighth": 8, "eighths": 8,
                "ninth": 9, "ninths": 9, "tenth": 10, "tenths": 10}
NUMBER_WORDS = (set(SMALL) | set(TENS) | set(SCALES) | set(DENOMINATORS)
                | {"hundred", "dozen", "and", "a", "an", "minus", "negative"})


def words_to_number(tokens: list[str]) -> Fraction | None:
    """English number words → value: `twelve`, `twenty-one`, `one hundred and five`, `three
    million`, `two dozen`, `minus four`, `three quarters`, `a half`. None unless all of tokens form
    one number."""
    if not tokens:
        return None
    sign = 1
    if tokens[0] in ("minus", "negative"):
        sign, tokens = -1, tokens[1:]
    if not tokens:
        return None
    if tokens[-1] in DENOMINATORS:
        head = tokens[:-1]
        numerator = Fraction(1) if head in (["a"], ["an"], ["one"]) else words_to_number(head)
        if numerator is None or numerator <= 0 or numerator.denominator != 1:
            return None
        if numerator != 1 and tokens[-1] in ("half", "third", "quarter", "fourth", "fifth", "sixth", "seventh",
                                             "eighth", "ninth", "tenth"):
            return None  # "three quarter" is not English; "three quarters" is
        return sign * numerator / DENOMINATORS[tokens[-1]]
    total, current, last = 0, 0, "start"  # last: start | small | tens | hundred | scale | and | a
    for t in tokens:
        if t in ("a", "an"):
            if last != "start":
                return None
            current, last = 1, "a"
        elif t in SMALL:
            if last in ("small",) or (last == "tens" and not 1 <= SMALL[t] <= 9) or last == "a":
                return None
            current, last = current + SMALL[t], "small"
        elif t in TENS:
            if last in ("small", "tens", "a"):
                return None
            current, last = current + TENS[t], "tens"
        elif t == "hundred":
            if last not in ("small", "a") or current % 100 == 0 and current != 0 and last != "a":
                return None
            current, last = current * 100, "hundred"
        elif t == "dozen":
            if last not in ("small", "a", "tens"):
                return None
            current, last = current * 12, "scale"
        elif t in SCALES:
            if last not in ("small", "tens", "hundred", "a"):
                return None
            total, current, last = total + current * SCALES[t], 0, "scale"
        elif t == "and":
            if last not in ("hundred", "scale"):
                return None
            last = "and"
        else:
            return None
    if last in ("start", "and", "a"):
        return None
    return Fraction(sign * (total + current))


def _fraction_latex(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return f"{sign}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


WORD_TOKEN = re.compile(r"[A-Za-z]+")


def read_number_words(s: str) -> str | None:
    """`twelve eggs` → `12 eggs`, `3 million` → `3000000`; None when s does not start with a number
    in words (or a numeral with a scale word)."""
    s = re.sub(r"\s*\\(?:text|mbox|mathrm)\s*\{\s*(thousand|million|billion|trillion|dozen)\s*\}", r" \1", s)
    m = re.match(r"^(-?\d+(?:\.\d+)?)\s+(thousand|million|billion|trillion|dozen)\b(.*)$", s, re.I)
    if m:
        value = Fraction(m.group(1)) * (12 if m.group(2).lower() == "dozen" else SCALES[m.group(2).lower()])
        return (_fraction_latex(value) + m.group(3)).strip()
    parts = re.split(r"(\s+|-)", s.strip())
    words = [p for p in parts if p.strip() and p != "-"]
    lowered = [w.lower() for w in words]
    # the longest prefix of number words that reads as one number; the rest stays (units)
    n = 0
    while n < len(lowered) and lowered[n] in NUMBER_WORDS:
        n += 1
    for k in range(n, 0, -1):
        value = words_to_number(lowered[:k])
        if value is not None:
            if k == 1 and lowered[0] in ("a", "an"):
                return None
            rest = " ".join(words[k:])
            return (_fraction_latex(value) + (" " + rest if rest else "")).strip()
    return None


# ------------------------------------------------------------------------------------------------
# Units, words, percentages, bases

# Words that change a value or make an answer something else: never dropped as a unit.
NOT_UNITS = {
    "and", "or", "nor", "not", "no", "than", "more", "less", "fewer", "greater", "smaller", "larger", "plus", "minus",
    "times", "divided", "over", "by", "to", "of", "from", "with", "without", "is", "are", "was", "equals", "equal",
    "approximately", "approx", "about", "around", "roughly", "nearly", "almost", "at", "least", "most", "exactly",
    "if", "when", "unless", "otherwise", "else", "but", "except", "either", "neither", "only", "between", "above",
    "below", "under", "up", "down", "pi", "e", "sqrt", "root", "roots", "squared", "cubed", "square", "cube",
    "factorial", "power", "powers", "percent", "percentage", "pct", "cent", "hundred", "hundreds", "thousand",
    "thousands", "million", "millions", "billion", "billions", "trillion", "dozen", "dozens", "half", "halves",
    "third", "thirds", "quarter", "quarters", "fourth", "fourths", "fifth", "fifths", "tenth", "tenths",
    "hundredth", "hundredths", "thousandth", "thousandths", "infinity", "inf", "undefined", "none", "solution",
    "solutions", "real", "complex", "imaginary", "log", "ln", "sin", "cos", "tan", "exp", "mod", "modulo", "base",
    "choose", "remainder", "digits", "th", "st", "nd", "rd", "i", "j", "k", "x", "y", "z", "n", "a", "b", "c",
    "d", "f", "t", "u", "v", "w", "p", "q", "r",
}
# "square" and "cube" above: `3 square` is ambiguous; "square meters" still reads (see UNIT_PHRASE).
SQUARE_UNITS = re.compile(r"^(?:square|sq|cubic|cu)\s+[a-z]+$", re.I)
SINGLE_LETTER_UNITS = {"m", "g", "s", "h", "l", "L", "K", "N", "J", "W", "V"}
COMPACT_UNITS = {"cm", "mm", "km", "m", "kg", "g", "mg", "s", "ms", "h", "hr", "hrs", "min", "mins", "ml", "mL", "l",
                 "L", "mph", "kph", "ft", "lb", "lbs", "oz", "in", "yd", "mi", "sec", "kmh", "st", "nd", "rd", "th"}
UNIT_WORD = r"[A-Za-z]+(?:\.|\^\{?[23]\}?|[23])?"
UNIT_PHRASE = re.compile(
    rf"^(?P<value>.*?[0-9}})!])\s+(?P<unit>{UNIT_WORD}(?:\s*/\s*{UNIT_WORD}|\s+{UNIT_WORD}){{0,3}})$")
COMPACT = re.compile(r"^(?P<value>-?\d+(?:\.\d+)?)(?P<unit>[A-Za-z]{1,4}[23]?(?:/[A-Za-z]{1,3})?)$")
LATEX_UNIT = re.compile(
    r"^(?P<value>.*?)\s*\\(?:text|textrm|mbox|mathrm|operatorname)\s*\{(?P<unit>[^{}]*)\}(?:\^\{?[23]\}?)?$")
DEGREES = re.compile(r"^(?P<value>.*?\S)\s*(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree)\s*(?P<unit>[CF]?)$")
CURRENCY = re.compile(
    r"^(?P<sign>-?)\s*(?:\$|€|£|¥|₹|\\euro|\\pounds|USD\s|EUR\s|Rs\.?\s?)\s*(?P<value>[\d.,]+.*)$")


def _unit_ok(unit: str) -> bool:
    words = re.findall(r"[A-Za-z]+", unit)
    if not words or len(words) > 4:
        return False
    if SQUARE_UNITS.match(unit.strip()):
        return True
    for w in words:
        if w.lower() in NOT_UNITS and w not in SINGLE_LETTER_UNITS:
            return False
        if len(w) == 1 and w not in SINGLE_LETTER_UNITS:
            return False
    return True


def split_unit(s: str) -> tuple[str, str]:
    """(value, unit): `12 eggs` → (`12`, `eggs`), `5 \\text{ cm}^2` → (`5`, `cm`), `45^\\circ` →
    (`45`, `degrees`), `$32.40` → (`32.40`, `$`); (s, "") when no unit can be dropped safely."""
    m = CURRENCY.match(s)
    if m:
        return (m.group("sign") + m.group("value")).strip(), "$"
    m = DEGREES.match(s)
    if m and m.group("value").strip():
        return m.group("value").strip(), "degrees"
    m = LATEX_UNIT.match(s)
    if m and re.search(r"\d", m.group("value")) and m.group("unit").strip():
        unit = m.group("unit").strip()
        if _unit_ok(unit) or unit.lower() in ("degrees", "degree"):
            return m.group("value").strip(), unit
        return s, ""
    m = COMPACT.match(s)
    if m and m.group("unit").split("/")[0].rstrip("23") in COMPACT_UNITS:
        return m.group("value"), m.group("unit")
    m = UNIT_PHRASE.match(s)
    if m and re.search(r"\d", m.group("value")) and _unit_ok(m.group("unit")):
        value = m.group("value").strip()
        if re.search(r"[A-Za-z]{2,}\s*$", value) and not re.search(r"\\[A-Za-z]+\s*$", value):
            return s, ""  # words before the number's end: not "<value> <unit>"
        return value, m.group("unit")
    return s, ""


def unit_key(unit: str) -> str:
    u = re.sub(r"[\s.]", "", unit.lower())
    aliases = {"degree": "degrees", "deg": "degrees", "°": "degrees", "dollar": "$", "dollars": "$", "usd": "$",
               "hours": "h", "hour": "h", "hr": "h", "hrs": "h", "minutes": "min", "minute": "min", "mins": "min",
               "seconds": "s", "second": "s", "sec": "s", "secs": "s", "meters": "m", "meter": "m", "metres": "m",
               "metre": "m", "centimeters": "cm", "centimeter": "cm", "kilometers": "km", "kilometer": "km",
               "grams": "g", "gram": "g", "kilograms": "kg", "kilogram": "kg", "feet": "ft", "foot": "ft",
               "inches": "in", "inch": "in", "miles": "mi", "mile": "mi", "pounds": "lb", "pound": "lb", "lbs": "lb"}
    if u in aliases:
        return aliases[u]
    return u[:-1] if u.endswith("s") and len(u) > 3 else u


MATH_NAMES = {"pi", "sqrt", "infty", "infinity", "inf", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp",
              "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "mod", "gcd", "lcm", "max", "min"}
WORDS = re.compile(r"^[A-Za-z][A-Za-z'’\- ]*[A-Za-z]$")


def is_words(s: str) -> bool:
    """Plain words (`Paris`, `no solution`, `Monday`), not a formula: a word of two letters or
    more and no maths name (`pi`, `sin`, `infinity`); single letters are variables."""
    s = s.strip()
    m = TEXT_WRAPPER.match(s)
    if m:
        s = m.group(1).strip()
    if not WORDS.match(s):
        return False
    tokens = re.findall(r"[A-Za-z]+", s)
    return any(len(t) > 1 for t in tokens) and not any(t.lower() in MATH_NAMES for t in tokens)


def words_key(s: str) -> str:
    m = TEXT_WRAPPER.match(s.strip())
    s = m.group(1) if m else s
    return re.sub(r"[\s\-]+", " ", s.replace("’", "'")).strip().casefold()


PERCENT = re.compile(r"^(?P<value>.+?)\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\s(?:per\s*cent|percent|pct)\b"
                     r"|\\text\{\s*(?:per\s*cent|percent)\s*\})$", re.I)


def split_percent(s: str) -> tuple[str, bool]:
    m = PERCENT.match(s)
    if m and m.group("value").strip():
        return m.group("value").strip(), True
    return s, False


BASE_NUMERAL = re.compile(r"^\(?(?:\\text\{|\\mathrm\{)?(?P<digits>[0-9A-Za-z]+)\}?\)?_\{?\(?"
                          r"(?:\\text\{|\\mathrm\{)?(?P<base>\d{1,2}|[a-z]+)\}?\)?\}?$")
BASE_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
              "twelve": 12, "sixteen": 16}


def base_numeral(s: str) -> tuple[str, int] | None | bool:
    """(digits, base) for a numeral with a base subscript (`101_2`, `1A_{16}`, `(101)_{(2)}`);
    False for one written so but not valid in its base (`25_2`, `7_5`: Math-Verify would drop the
    subscript and read 25, 7); None for anything else (`x_1`)."""
    m = BASE_NUMERAL.match(s.replace(" ", ""))
    if not m or not re.search(r"\d", m.group("digits")):
        return None
    digits, base = m.group("digits"), m.group("base")
    if not base.isdigit() and base not in BASE_WORDS:
        return None
    base = int(base) if base.isdigit() else BASE_WORDS[base]
    if not 2 <= base <= 36:
        return False
    try:
        int(digits, base)
    except ValueError:
        return False
    return digits, base


def compare_bases(a: str, r: str) -> bool | None:
    """None unless a side is a numeral with a base subscript."""
    na, nr = base_numeral(a), base_numeral(r)
    if na is None and nr is None:
        return None
    if na is False or nr is False:
        return False
    if na is not None and nr is not None:
        return int(na[0], na[1]) == int(nr[0], nr[1])
    (digits, base), plain = (na, r) if na is not None else (nr, a)
    plain = plain.replace(" ", "")
    if not re.fullmatch(r"[0-9A-Za-z]+", plain):
        return False
    try:
        return int(plain, base) == int(digits, base)
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------
# Plain-text maths → LaTeX, then Math-Verify


def _repeating(m: re.Match) -> str:
    """`0.1\\overline{6}` → `\\frac{1}{6}` (a repeating decimal's exact value)."""
    whole, fixed, cycle = m.group(1) or "0", m.group(2), m.group(3)
    value = Fraction(int(whole + fixed + cycle) - int(whole + fixed), 10 ** len(fixed) * (10 ** len(cycle) - 1))
    return "{" + _fraction_latex(value) + "}"


def latexify(s: str) -> str:
    """Plain-text spellings Math-Verify's LaTeX parser reads wrongly: `pi` (else p·i), `sqrt(2)`,
    `x**2`, `1e3`, `×`, `÷`, `−`, `√2`; and repeating decimals `0.\\overline{3}`."""
    s = s.replace("**", "^").replace("×", "\\times ").replace("÷", "\\div ").replace("−", "-").replace("·", "\\cdot ")
    s = s.replace("π", "\\pi ").replace("∞", "\\infty ")
    s = re.sub(r"√\s*\(([^()]*)\)", r"\\sqrt{\1}", s)
    s = re.sub(r"√\s*(\d+|[A-Za-z])", r"\\sqrt{\1}", s)
    s = re.sub(r"(?<![\\A-Za-z])(pi|sqrt|sin|cos|tan|cot|sec|csc|log|ln|exp|arcsin|arccos|arctan|infty)(?![A-Za-z])",
               r"\\\1", s)
    s = re.sub(r"(?<![\\A-Za-z])(infinity|inf)(?![A-Za-z])", r"\\infty", s)
    s = re.sub(r"\\sqrt\s*\(([^()]*)\)", r"\\sqrt{\1}", s)
    s = re.sub(r"(\d*)\.(\d*)\\overline\s*\{(\d+)\}", _repeating, s)
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)", s.strip())
    if m:
        s = f"{m.group(1)}\\times 10^{{{int(m.group(2))}}}"
    return s


_MV = None


def _math_verify():
    """Math-Verify, imported on first use (with its SIGALRM timeout warnings off: we bound time ourselves)."""
    global _MV
    if _MV is None:
        import math_verify
        import math_verify.grader
        import math_verify.parser
        from math_verify import LatexExtractionConfig, LatexNormalizationConfig

        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
        # units=False: Math-Verify drops any trailing \\text{...} as a unit (`3 \\text{ million}` → 3);
        # split_unit drops only real units
        normalization = LatexNormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=True,
                                                 boxed="all", equations=False)
        config = [LatexExtractionConfig(boxed_match_priority=-1, try_extract_without_anchor=True,
                                        normalization_config=normalization)]
        _MV = (math_verify, config)
    return _MV


def parse_whole(s: str) -> list:
    """Math-Verify's parse of the whole of s as one LaTeX formula; [] when it does not parse."""
    mv, config = _math_verify()
    s = s.replace("$", "").replace("\n", " ").strip()
    if not s or s.endswith("\\"):
        return []
    got = mv.parse(f"${s}$", extraction_config=config, fallback_mode="no_fallback", extraction_mode="first_match",
                   parsing_timeout=None)
    return [g for g in got if not isinstance(g, str)]


def kind_of(expr) -> str:
    """The rule name for a parsed reference: numeric | set | tuple | interval | matrix | relation | symbolic."""
    from sympy import Interval, MatrixBase, Number, Set, Tuple
    from sympy.core.relational import Relational
    from sympy.logic.boolalg import And

    if isinstance(expr, MatrixBase):
        return "matrix"
    if isinstance(expr, Relational) or isinstance(expr, And):
        return "relation"
    if isinstance(expr, Interval):
        return "interval"
    if isinstance(expr, Tuple):
        return "tuple"
    if isinstance(expr, Set):
        return "set"
    if isinstance(expr, Number):
        return "numeric"
    return "symbolic"


def _answer_equation(pred, gold):
    """An equation given as the answer to a non-equation reference: its right side when it is an
    assignment (`x = 5`, `f(2) = 4`) or true arithmetic (`17 \\cdot 24 = 408`); None (not an
    answer) otherwise (`2x + 1 = 3`)."""
    from sympy import Eq
    from sympy.logic.boolalg import And
    from math_verify.grader import is_assignment_relation, is_equation, take_last_relation

    if not is_equation(pred) or is_equation(gold) or isinstance(gold, And):
        return pred
    if is_assignment_relation(pred):
        return pred  # Math-Verify unwraps assignments itself
    parts = list(getattr(pred, "_unsorted_args", pred.args)) if isinstance(pred, And) else [pred]
    for eq in parts:
        if not isinstance(eq, Eq) or eq.lhs.free_symbols or eq.rhs.free_symbols:
            return None
        try:
            if abs(complex((eq.lhs - eq.rhs).evalf(30))) > 1e-9:
                return None
        except (TypeError, ValueError):
            return None
    return take_last_relation(pred).rhs


def verify_parsed(gold: list, pred: list, float_rounding: int = 6) -> bool:
    mv, _ = _math_verify()
    fixed = []
    for p in pred:
        q = p
        for g in gold:
            q = _answer_equation(p, g)
            if q is None:
                break
        if q is not None:
            fixed.append(q)
    if not fixed:
        return False
    return bool(mv.verify(gold, fixed, float_rounding=float_rounding, strict=True, allow_set_relation_comp=True,
                          timeout_seconds=None))


def _percent_compare(a: str, a_pct: bool, r: str, r_pct: bool, float_rounding: int) -> bool:
    from sympy import Rational

    gold, pred = parse_whole(r), parse_whole(a)
    if not gold or not pred:
        return False
    if a_pct and r_pct:
        return verify_parsed(gold, pred, float_rounding)
    if verify_parsed(gold, pred, float_rounding):  # 50% for 50: the reference counts in percent
        return True
    try:
        if a_pct:  # 50% for 0.5
            return verify_parsed(gold, [p * Rational(1, 100) for p in pred], float_rounding)
        return verify_parsed([g * Rational(1, 100) for g in gold], pred, float_rounding)  # 0.5 for 50%
    except TypeError:
        return False


# ------------------------------------------------------------------------------------------------


MAX_CHARS = 4000  # longer sides are compared only as strings or plain numerals (parsing stays cheap)
LONG_NUMERAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def compare_long_numerals(a: str, r: str) -> bool | None:
    """Two plain decimal numerals (`-12.50`, any length) compared by exact value; None when either
    side is anything else."""
    if not (LONG_NUMERAL.fullmatch(a) and LONG_NUMERAL.fullmatch(r)):
        return None
    from decimal import Decimal

    return Decimal(a) == Decimal(r)  # exact whatever the context's precision


def compare(answer: str, reference: str, float_rounding: int = 6) -> Match:
    """Decide whether `answer` (an extracted final answer) equals `reference`; see the module doc
    for the rules. Never raises on odd input (an unreadable side is simply not equal); not
    time-bounded (see `MathChecker`)."""
    steps: list[str] = []
    reference, how = reference_answer(str(reference))
    if how != "raw":
        steps.append(f"reference_{how}")
    a, r = clean(str(answer)), clean(reference)  # linear in the length: safe on any size
    if not a:
        return Match(False, "empty_answer", tuple(steps))
    if not r:
        return Match(False, "empty_reference", tuple(steps))
    if a == r:
        return Match(True, "exact", tuple(steps))
    if len(a) > MAX_CHARS or len(r) > MAX_CHARS:
        decided = compare_long_numerals(a, r)
        if decided is not None:
            return Match(decided, "numeric", tuple(steps))
        return Match(False, "too_long", tuple(steps))  # not verifiable in bounded time: neither equal nor wrong

    decided = compare_bases(a, r)
    if decided is not None:
        return Match(decided, "base", tuple(steps))

    for side in ("answer", "reference"):
        s = a if side == "answer" else r
        read = read_number_words(s)
        if read is not None and read != s:
            steps.append(f"number_words:{side}")
            if side == "answer":
                a = read
            else:
                r = read

    a, ua = split_unit(a)
    r, ur = split_unit(r)
    if ua:
        steps.append("units:answer")
    if ur:
        steps.append("units:reference")
    if ua and ur and unit_key(ua) != unit_key(ur):
        return Match(False, "units", tuple(steps))

    wa, wr = is_words(a), is_words(r)
    if wa or wr:
        return Match(wa and wr and words_key(a) == words_key(r), "text", tuple(steps))

    a, a_pct = split_percent(a)
    r, r_pct = split_percent(r)
    a, r = latexify(a), latexify(r)
    try:
        if a_pct or r_pct:
            steps.append("percent")
            return Match(_percent_compare(a, a_pct, r, r_pct, float_rounding), "percent", tuple(steps))
        gold = parse_whole(r)
        if not gold:
            return Match(False, "unparsed_reference", tuple(steps))
        pred = parse_whole(a)
        if not pred:
            return Match(False, "unparsed_answer", tuple(steps))
        return Match(verify_parsed(gold, pred, float_rounding), kind_of(gold[0]), tuple(steps))
    except RecursionError:
        return Match(False, "too_deep", tuple(steps))


def equivalent(answer: str, reference: str, float_rounding: int = 6) -> str | None:
    """The rule by which `answer` equals `reference` (exact, numeric, symbolic, set, tuple,
    interval, matrix, relation, percent, base, text), or None when it does not."""
    m = compare(answer, reference, float_rounding)
    return m.rule if m.equal else None
