"""The prose of a turn: what a language identifier should read.

An answer that is code, an equation, a shell session or data says nothing about the language
the row is written in, and a character n-gram identifier reads it as noise (py3langid gives
`x = 3` or `{"age": 36}` to whatever language fits best, with low confidence). `prose` removes:

- fenced code blocks (```` ``` ```` and `~~~`, closed or not), indented code blocks (CommonMark:
  indented lines that do not continue a paragraph) and inline code;
- LaTeX: `$$…$$`, `$…$`, `\\[…\\]`, `\\(…\\)`, `\\begin{…}…\\end{…}` and bare commands;
- URLs, e-mail addresses and HTML/XML tags;
- lines that are code or data, written without fences: statements (`;`, `{`, `}` at the ends,
  keywords of Python, C-family, Go, Rust, shell and SQL, or an assignment, at the start), lines
  with no more words than code tokens (operators alone, as in `x + 1 = 2`, do not make a line
  code), shell sessions (a prompt and its output), comments beside code, tables, `key: value`
  (YAML) and `"key": value` (JSON) lines, delimited rows (CSV, TSV) and whole-text JSON; the
  indented lines under any of them belong to them;
- every token that is not a word (numbers, operators, identifiers such as `v[i]` or `x^2`).

What is left is the words, joined by spaces; `prose_letters` weighs how much of it there is
(an ideograph or a Hangul syllable counts as three letters: it carries about a word). Only the
first `max_chars` of a text are read. Regexes are compiled once, here; a call costs a few regex
passes over the text and one cheap test per line.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata

# -------------------------------------------------------------- characters

@functools.cache
def _mark_ranges() -> str:
    """Combining marks (Unicode category M*): Python's `\\w` leaves them out, yet they are part
    of words in Devanagari, Thai, Arabic... Built once from unicodedata, as a character-class body."""
    ranges, start, prev = [], None, None
    for cp in range(0x300, 0x20000):
        if unicodedata.category(chr(cp)).startswith("M"):
            if start is None:
                start = cp
            elif cp != prev + 1:
                ranges.append((start, prev))
                start = cp
            prev = cp
    if start is not None:
        ranges.append((start, prev))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


_WIDE = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003134f"
WIDE_RUN = re.compile(f"[{_WIDE}]+")  # scripts written without spaces between words (Han, kana, Hangul)
WIDE_WEIGHT = 3

# -------------------------------------------------------------- spans

FENCED = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)", re.M | re.S)
INLINE_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)  # ``` opened mid-line
INLINE_CODE = re.compile(r"(`+)[^`\n].*?\1")
LATEX_ENV = re.compile(r"\\begin\{([^}]*)\}.*?(?:\\end\{\1\}|\Z)", re.S)
DISPLAY_MATH = re.compile(r"\$\$.*?(?:\$\$|\Z)|\\\[.*?(?:\\\]|\Z)|\\\(.*?(?:\\\)|\Z)", re.S)
INLINE_MATH = re.compile(r"\$(?=[^\s$])[^$\n]*?[^\s$\\]\$(?!\d)|\$[^\s$]\$")  # Pandoc's rule: not "$5 and $10"
LATEX_CMD = re.compile(r"\\[A-Za-z]+\*?(?:\{[^{}\n]*\})*")
URL = re.compile(r"\b(?:[a-z][a-z0-9+.-]*://|www\.)\S+", re.I)
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
TAG = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>\n]*)?/?>|<!--.*?(?:-->|\Z)", re.S)

# -------------------------------------------------------------- lines

LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")
MARKUP = re.compile(r"^\s*(?:>\s*)*(?:#{1,6}\s+|(?:[-*+•]|\d{1,3}[.)])\s+)?")  # quote, heading, list marker
EMPHASIS = re.compile(r"(?<!\w)[*_]{1,3}(?=\S)|(?<=\S)[*_]{1,3}(?!\w)")
PROMPT = re.compile(
    r"^\s*(?:\$|%|>>>|\.\.\.|(?:PS )?[A-Za-z]:\\[^>\n]*>|PS>|[\w.-]+@[\w.-]+(?::\S*)?\s?[$#]|In \[\d*\]:|Out\[\d*\]:)(?:\s|$)")
CODE_START = re.compile(
    r"^\s*(?:"
    # Python, JS/TS, C family, Go, Rust, Java, PHP, Ruby, Lua... (in lower case: a sentence opens with a capital)
    r"(?:def|class|import|from\s+[\w.]+\s+import|return|elif|else|try|except|finally|raise|yield|lambda|async|await|pass|"
    r"del|assert|nonlocal|global|const|let|var|function|fn|func|package|namespace|using|template|typedef|struct|enum|impl|"
    r"pub|mod|use|trait|interface|public|private|protected|static|void|int|long|float|double|char|bool|auto|unsigned|"
    r"extern|inline|end|begin|local|require|module|export|echo|printf|print|puts|println|fmt|console|std)\b|System\."
    r"|(?:if|for|while|elif|with|match|foreach)\s.*:\s*$"
    r"|(?:if|for|while|switch|catch|foreach)\s*\("
    r"|#(?:include|define|ifn?def|endif|pragma|!)|//|/\*|\*/|<!--|--\s|[}\])]"
    # SQL, in capitals (a sentence does not open with SELECT) or all in lower case
    r"|(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|WITH|FROM|WHERE|GROUP\s+BY|ORDER\s+BY|HAVING|LIMIT|OFFSET|"
    r"(?:INNER\s+|LEFT\s+|RIGHT\s+|FULL\s+|OUTER\s+|CROSS\s+)*JOIN|UNION|VALUES|BEGIN|COMMIT|ROLLBACK|GRANT|TRUNCATE|PRAGMA)\b"
    r"|select\s.*\bfrom\s|insert\s+into\s|update\s+\w+\s+set\s|delete\s+from\s|create\s+(?:table|index|view|database)\s"
    # shell commands; those that are also English words only with an option or a path after them
    r"|(?:sudo\s+)?(?:pip3?|npm|npx|yarn|pnpm|git|docker|kubectl|helm|apt|apt-get|yum|dnf|brew|conda|cd|ls|mkdir|rm|rmdir|"
    r"cp|mv|cat|grep|sed|awk|curl|wget|python3?|node|cmake|gcc|g\+\+|clang|javac|java|cargo|rustc|ssh|scp|chmod|chown|"
    r"tar|unzip|pytest|systemctl|export|alias)\s+\S"
    r"|(?:make|find|head|tail|kill|touch|source|go|set|unset|ps|service|which|man|less|more|sort|cut|diff|top)"
    r"(?:\s+\S+)*?\s+(?:--?\w|\.{0,2}/|~/|\$|\S*[/|>])"
    r")"
)
ASSIGNMENT = re.compile(r"^\s*[\w.\[\]'\"]+\s*(?:[-+*/%|&^]|\*\*|//|<<|>>)?=(?!=)")  # x = 1, total += x
CODE_ENDS = (";", "{", "}", "):", "=>", "->")  # a statement, a block, a signature
TABLE = re.compile(r"^\s*\|.*\|\s*$|^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{2,}:?\s*)+\|?\s*$|^[^|\n]*(?:\|[^|\n]*){2,}$")
KEY_VALUE = re.compile(r"""^\s*(?:-\s+)?(?:"[^"\n]*"|'[^'\n]*'|[\w.$@/-]+)\s*[:=](?:\s+\S.*)?\s*$""")
KEY_ONLY = re.compile(r"""^\s*(?:-\s+)?(?:"[^"\n]*"|'[^'\n]*'|[\w.$@/-]+):\s*$""")
JSON_KEY = re.compile(r"""["'][^"'\n]*["']\s*:\s*(?:["'\d\[{-]|true|false|null|None|True|False)""")
SENTENCE_END = re.compile(r"[.!?。！？…]['\")\]»”’]*\s*$")
DELIMS = (",", "\t", ";", "|")

# -------------------------------------------------------------- tokens

OPEN = "\"'«‹“‘„(\\[¿¡「『（《〈【*_"
CLOSE = "\"'»›”’)\\].,;:!?…。，、；：？！」』）》〉】%*_"


def _token(letter: str) -> re.Pattern:
    """A whitespace-delimited token that is a word, bar the punctuation around it."""
    word = f"(?:{letter})+(?:['’-](?:{letter})+)*"
    return re.compile(rf"(?<!\S)[{OPEN}]*({word})[{CLOSE}]*(?!\S)")


TOKEN = _token(r"[^\W\d_]")  # fast: most texts have no combining mark


@functools.cache
def _token_marks() -> re.Pattern:
    """TOKEN for texts with combining marks: a letter of any script, or a mark (built on first use)."""
    return _token(rf"[^\W\d_]|[{_mark_ranges()}]")


# Blocks that hold combining marks (a superset, and a cheap test: a class of all marks is slow).
HAS_MARK = re.compile("[\u0300-\u036f\u0483-\u0489\u0591-\u0fff\u1000-\u109f\u1700-\u18af\u1a00-\u1aff"
                      "\u1b00-\u1bff\u1dc0-\u1dff\u20d0-\u20ff\u3099\u309a\ua8e0-\ua8ff\ufe20-\ufe2f]")
# A token that is code: an operator or bracket anywhere, a call, an index, a dotted name,
# camelCase, a number glued to a letter.
CODE_TOKEN = re.compile(r"(?<!\S)\S*?(?:[=<>{}\\^_*/|&$@#~+]|\w[(\[]|[)\]]\w|\(\)|\w\.\w|;\S|[a-z][A-Z]|\d[^\W\d_]|[^\W\d_]\d)\S*")
CODE_CHAR = re.compile(r"[=<>{}\\^_*/|&$@#~+;(\[]")  # cheap pre-test: a line of code has one of these
OPERATOR = re.compile(r"(?<!\S)[-=<>+*/^%|&~!×÷±−]+(?!\S)")
NUMBER = re.compile(r"^[-+±−]?[\d.,%:/]+$")
_WIDE_PUNCT = re.compile(r"[\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]")


def prose(text: str, max_chars: int = 1500) -> str:
    """The words of `text` that are prose, joined by single spaces ("" when there are none)."""
    if not text:
        return ""
    head = text.lstrip()[:1]
    if head and head in "{[":
        try:
            json.loads(text)
            return ""  # the whole text is data
        except ValueError:
            pass
    text = text[:max_chars]  # enough to find the prose the identifier reads
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "`" in text or "~~~" in text:
        text = FENCED.sub("\n", text)
        text = INLINE_FENCE.sub(" ", text)
        text = INLINE_CODE.sub(" ", text)
    if "\\" in text or "$" in text:
        text = LATEX_ENV.sub(" ", text)
        text = DISPLAY_MATH.sub(" ", text)
        text = INLINE_MATH.sub(" ", text)
        text = LATEX_CMD.sub(" ", text)
    if "://" in text or "www." in text:
        text = URL.sub(" ", text)
    if "@" in text:
        text = EMAIL.sub(" ", text)
    if "<" in text:
        text = TAG.sub(" ", text)
    lines = _prose_lines(text.split("\n"))
    if not lines:
        return ""
    kept = "\n".join(lines)
    if WIDE_RUN.search(kept):  # no spaces between words: set the runs apart from what touches them
        kept = _WIDE_PUNCT.sub(" ", WIDE_RUN.sub(r" \g<0> ", kept))
    return " ".join((_token_marks() if HAS_MARK.search(kept) else TOKEN).findall(kept))


def prose_letters(words: str) -> int:
    """How much prose there is: letters, an ideograph or a Hangul syllable counting three."""
    if not words:
        return 0
    wide = sum(len(m) for m in WIDE_RUN.findall(words))
    return len(words) - words.count(" ") + (WIDE_WEIGHT - 1) * wide


def _is_code(line: str) -> bool:
    """A line of code or data, by its look alone."""
    if ("|" in line and TABLE.match(line)) or (":" in line and JSON_KEY.search(line)) or "\t" in line.strip():
        return True
    body = MARKUP.sub("", line, count=1)
    if "*" in body or "_" in body:
        body = EMPHASIS.sub("", body)
    if WIDE_RUN.search(body):
        body = _WIDE_PUNCT.sub(" ", WIDE_RUN.sub(" \\g<0> ", body))
    code = len(CODE_TOKEN.findall(body)) if CODE_CHAR.search(body) else 0
    head = line.lstrip()[:2]
    if not (head[:1].isupper() and head[1:].islower()) or head == "Sy":  # a capitalised word opens a sentence
        start = CODE_START.match(line)
        if start or ASSIGNMENT.match(line):
            # code by its start, unless it reads as a sentence: "print the result to the screen.",
            # "E = mc^2 is the best known equation of physics."
            if not (SENTENCE_END.search(line) and len(body.split()) >= 4) or (start and code):
                return True
    if line.rstrip().endswith(CODE_ENDS):
        return True
    if not code:
        return False
    # Operators standing alone (`x + 1 = 2`) are maths as much as code: the line is code only
    # with some other code token (a call, an index, a dotted name...) and no more words than code.
    if code <= sum(1 for op in OPERATOR.findall(body) if CODE_CHAR.search(op)):
        return False
    token = _token_marks() if HAS_MARK.search(body) else TOKEN
    words = sum(WIDE_WEIGHT * len(w) if WIDE_RUN.match(w) else 1 for w in token.findall(body))  # as prose_letters weighs them
    return words <= code


def _prose_lines(lines: list[str]) -> list[str]:
    """Keep the lines that are prose. A line is code or data by its own look; by belonging to a
    block (indented under a code or data line, a shell prompt's output, an indented code block);
    or by being one of several consecutive `key: value` lines or delimited rows."""
    n = len(lines)
    kind = [""] * n  # "" blank, "p" prose, "c" code or data
    prev = ""  # kind of the previous line
    session = False
    for i, line in enumerate(lines):
        if not line.strip():
            prev, session = "", False
            continue
        if PROMPT.match(line):
            k, session = "c", True
        elif session:
            k = "c"  # a shell session's output runs to the next blank line
        elif line[:1] in " \t" and (prev == "c" or (prev == "" and line.startswith(("    ", "\t")) and not LIST_ITEM.match(line))):
            k = "c"  # the body under a code line, or an indented code block (it cannot interrupt a paragraph)
        elif KEY_ONLY.match(line) and i + 1 < n and _indent(lines[i + 1]) > _indent(line):
            k = "c"  # `key:` opening an indented block (YAML)
        else:
            k = "c" if _is_code(line) else "p"
        kind[i] = prev = k
    i = 0
    while i < n:  # runs of `key: value` lines (YAML, headers) and of rows with as many delimiters (CSV)
        if kind[i] != "p":
            i += 1
            continue
        j = i
        while j < n and kind[j] == "p":
            j += 1
        if j - i >= 2:
            _mark_runs(lines, kind, i, j)
        i = j
    for i in range(n):  # comments ('#', '--', ';') beside code are code
        if kind[i] == "p" and lines[i].lstrip()[:1] in "#-;%" and not LIST_ITEM.match(lines[i]):
            if (i > 0 and kind[i - 1] == "c") or (i + 1 < n and kind[i + 1] == "c"):
                kind[i] = "c"
    return [line for line, k in zip(lines, kind) if k == "p"]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip()) if line.strip() else -1


def _mark_runs(lines: list[str], kind: list[str], lo: int, hi: int) -> None:
    ended = [bool(SENTENCE_END.search(lines[i])) for i in range(lo, hi)]
    kv = [bool(KEY_VALUE.match(lines[i])) and not e for i, e in zip(range(lo, hi), ended)]
    for s, e in _runs(kv):
        if e - s >= 2:
            kind[lo + s:lo + e] = ["c"] * (e - s)
    for d in DELIMS:
        counts = []
        for i, e in zip(range(lo, hi), ended):
            c = lines[i].count(d)
            # a row of short fields (at most two words each on average), not a sentence
            counts.append(c if c and not e and len(lines[i].split()) <= 2 * (c + 1) else 0)
        s = 0
        while s < len(counts):
            e = s + 1
            while e < len(counts) and counts[e] == counts[s]:
                e += 1
            if counts[s] and e - s >= 2:
                kind[lo + s:lo + e] = ["c"] * (e - s)
            s = e


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, f in enumerate(flags + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i))
            start = None
    return out


# -------------------------------------------------------------- scripts

# Scripts of the languages py3langid knows that are not written in Latin letters (the rest are).
_SCRIPTS = {
    "ARABIC": "ar ary arz fa ps sdh ug ur ku",
    "CYRILLIC": "ba be bg kk ky mk mn ru sr tg tt uk uz crh",
    "GREEK": "el grc",
    "HEBREW": "he hbo yi",
    "DEVANAGARI": "hi mr ne sa gom",
    "BENGALI": "bn as",
    "GUJARATI": "gu",
    "GURMUKHI": "pa",
    "ORIYA": "or",
    "TAMIL": "ta",
    "TELUGU": "te",
    "KANNADA": "kn",
    "MALAYALAM": "ml",
    "SINHALA": "si",
    "THAI": "th",
    "LAO": "lo",
    "KHMER": "km",
    "MYANMAR": "my",
    "TIBETAN": "dz bo",
    "GEORGIAN": "ka",
    "ARMENIAN": "hy",
    "ETHIOPIC": "am ti",
    "CJK": "zh wuu yue ja ko",
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
    "HANGUL": "ko",
}
_NOT_LATIN = {lang for langs in _SCRIPTS.values() for lang in langs.split()}
_LATIN_TOO = {"sr", "uz", "ku", "crh"}  # written in either
_CHAR_SCRIPT = {"FULLWIDTH": "LATIN", "HALFWIDTH": "KATAKANA", "IDEOGRAPHIC": "CJK"}


def scripts_of(languages) -> set[str]:
    """The scripts the given languages are written in (by Unicode name prefix: LATIN, CJK...)."""
    out = set()
    for lang in languages:
        found = {s for s, langs in _SCRIPTS.items() if lang in langs.split()}
        out |= found
        if lang not in _NOT_LATIN or lang in _LATIN_TOO:
            out.add("LATIN")
    return out


def foreign_share(words: str, scripts: set[str]) -> float:
    """Share of the letters of `words` written in none of `scripts` (0 when there are none)."""
    total = foreign = 0
    for ch in words:
        if ch == " ":
            continue
        name = unicodedata.name(ch, "")
        if not name or name.startswith("COMBINING"):
            continue
        script = name.split(" ", 1)[0]
        script = _CHAR_SCRIPT.get(script, script)
        total += 1
        foreign += script not in scripts
    return foreign / total if total else 0.0

