"""Heuristic quality filters.

As in Data-Juicer, each check first computes a per-row statistic, then applies its bound, so the
same numbers serve analysis and filtering. A dropped row's reason names the check, the bound
and the value (`response_words<3 (1)`); checks run in the order listed and the first failing
one gives the reason. Every check is configurable; a bound of null turns it off.

The language check reads prose, not code (stages/prose.py removes code blocks, inline code,
formulas, URLs, data and other non-word spans): the answer's, or the instruction's when the
answer has fewer than `min_language_letters` letters of prose or the identifier is unsure of it.
A row is dropped (`language:xx (confidence)`) when the identifier is at least
`min_language_confidence` sure of a language not in `languages` and gives those languages
together under 5%, or when its prose is in a script none of them is written in (Han for `[en]`,
however short). A row with too little prose to judge, or on which the identifier is unsure, is
kept and gets the score `language:undetermined` (1.0), so it can be found and reviewed.

The statistics are kept as scores (the `scores` table), named `filters.<statistic>`, for every
row the stage sees, kept and dropped alike, so thresholds can be tried in SQL without running
the stage again (`SELECT count(*) FROM scores WHERE name = 'filters.response_words' AND value
< 5`):

    filters.instruction_chars, filters.instruction_words    the first user turn
    filters.response_chars, filters.response_words          the last assistant turn
    filters.repeated_ngram_ratio                             when max_repeated_ngram_ratio is set
    filters.non_alnum_ratio                                  when max_non_alnum_ratio is set
    filters.language_confidence, filters.language_wanted     when languages is set, on the rows the
        language check judged (no other check dropped them, and it could decide): the
        identifier's confidence in the language it found, and 1.0 when that language is one of
        `languages`, 0.0 when not (such a row is dropped)

A row another check dropped still has its statistics, so each dropped row's value of the check
that dropped it lies beyond that check's bound. Two filters stages in one run write the same
names; a row both score keeps the later stage's values.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pydantic import AfterValidator

from curate.lib.params import Fraction, NonNegative, Positive
from curate.stages.base import Resources, Stage, StageResult, param
from curate.stages.prose import foreign_share, prose, prose_letters, scripts_of
from curate.stages.text import first_user_turn, last_assistant_turn, ngram_hashes, text_messages, token_counts, word_hashes


@lru_cache(maxsize=1)
def langid_languages() -> frozenset[str]:
    """The ISO 639-1 codes py3langid can tell apart (142)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return frozenset(LanguageIdentifier.from_model_file(MODEL_FILE).nb_classes)


def _language_code(code: str) -> str:
    # The shape first: loading py3langid's model takes a second, and the config check probes
    # parameter types with a dummy value.
    if not re.fullmatch(r"[a-z]{2,3}", code) or code not in langid_languages():
        raise ValueError(f"{code!r} is not a language code py3langid knows: ISO 639-1, such as en, de, zh")
    return code


LanguageCode = Annotated[str, AfterValidator(_language_code)]

DEFAULT_REFUSALS = (
    "as an ai language model",
    "as an ai assistant",
    "as a language model",
    "i cannot fulfill",
    "i can't fulfill",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm unable to",
    "i am unable to",
    "i cannot assist with",
    "i can't assist with",
    "i cannot help with",
    "i'm not able to provide",
    "it is not appropriate for me",
    "openai's use case policy",
)
SENTENCE_END = (".", "!", "?", '"', "'", ")", "]", "`", "*", ":", ";", "…", "。", "！", "？")
UNDETERMINED = "language:undetermined"  # the score a row gets when its language could not be judged
NO_LANGUAGE = "zxx"
LANGID_CHARS = 400  # prose the identifier reads: enough to be sure, and its cost grows with length
WANTED_DOUBT = 0.05  # a row is in another language only when the wanted ones get less than this, together
SCORES = "filters."  # the statistics' score names: filters.<statistic>
LANGUAGE_SCORES = ("language_confidence", "language_wanted")


class Filters(Stage):
    name = "filters"
    resources = Resources(num_cpus=1)
    batch_size = 2048

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        stats = ["instruction_chars", "instruction_words", "response_chars", "response_words"]
        if param(cls, params, "max_repeated_ngram_ratio") is not None:
            stats.append("repeated_ngram_ratio")
        if param(cls, params, "max_non_alnum_ratio") is not None:
            stats.append("non_alnum_ratio")
        if param(cls, params, "languages"):
            stats += LANGUAGE_SCORES
        out = {f"scores:{SCORES}{s}" for s in stats}
        return out | ({f"scores:{UNDETERMINED}"} if param(cls, params, "languages") else set())

    @classmethod
    def check_params(cls, params: dict) -> None:
        """A lower bound above its upper bound would drop every row: a config error."""
        for stat in ("instruction_chars", "instruction_words", "response_chars", "response_words"):
            lo, hi = params.get(f"min_{stat}"), params.get(f"max_{stat}")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"min_{stat} ({lo}) is above max_{stat} ({hi}): no row could pass")

    def __init__(
        self,
        min_instruction_chars: NonNegative | None = 1,
        max_instruction_chars: NonNegative | None = None,
        min_instruction_words: NonNegative | None = None,
        max_instruction_words: NonNegative | None = None,
        min_response_chars: NonNegative | None = 1,
        max_response_chars: NonNegative | None = None,
        min_response_words: NonNegative | None = None,
        max_response_words: NonNegative | None = None,
        max_repeated_ngram_ratio: Fraction | None = None,
        repeated_ngram: Positive = 3,
        max_non_alnum_ratio: Fraction | None = None,
        refusal_phrases: Literal["default"] | list[str] | None = "default",
        drop_unfinished: bool = True,
        languages: list[LanguageCode] | None = None,
        min_language_confidence: Fraction = 0.5,
        min_language_letters: NonNegative = 15,
    ):
        self.bounds = [
            ("instruction_chars", min_instruction_chars, max_instruction_chars),
            ("instruction_words", min_instruction_words, max_instruction_words),
            ("response_chars", min_response_chars, max_response_chars),
            ("response_words", min_response_words, max_response_words),
            ("repeated_ngram_ratio", None, max_repeated_ngram_ratio),
            ("non_alnum_ratio", None, max_non_alnum_ratio),
        ]
        self.repeated_ngram = repeated_ngram
        phrases = DEFAULT_REFUSALS if refusal_phrases == "default" else (refusal_phrases or ())
        self.refusals = [p.lower() for p in phrases]
        self.drop_unfinished = drop_unfinished
        self.languages = set(languages) if languages else None
        self.min_language_confidence = min_language_confidence
        self.min_language_letters = min_language_letters
        self._scripts = scripts_of(self.languages) if self.languages else set()
        self._langid = None

    # -------------------------------------------------------------- statistics

    def statistics(self, instructions: pa.Array, responses: pa.Array) -> dict[str, pa.Array]:
        stats = {
            "instruction_chars": pc.utf8_length(instructions),
            "instruction_words": _word_count(instructions),
            "response_chars": pc.utf8_length(responses),
            "response_words": _word_count(responses),
        }
        if self.bounds[4][2] is not None:
            stats["repeated_ngram_ratio"] = repeated_ngram_ratio(responses, self.repeated_ngram)
        if self.bounds[5][2] is not None:
            stats["non_alnum_ratio"] = non_alnum_ratio(responses)
        return stats

    def __call__(self, batch: pa.Table) -> StageResult:
        n = batch.num_rows
        messages = text_messages(batch)  # with tool calls as text: built once, shared by the checks
        reasons: list[str | None] = self.empty_turns(messages)
        instructions = first_user_turn(messages)
        responses = last_assistant_turn(messages)
        stats = self.statistics(instructions, responses)
        for name, lo, hi in self.bounds:
            if name not in stats or (lo is None and hi is None):
                continue
            values = stats[name].to_numpy(zero_copy_only=False)
            bad = np.zeros(n, bool)
            if lo is not None:
                bad |= values < lo
            if hi is not None:
                bad |= values > hi
            for i in np.flatnonzero(bad):
                if reasons[i] is None:
                    v = values[i]
                    shown = f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
                    reasons[i] = f"{name}<{lo} ({shown})" if lo is not None and v < lo else f"{name}>{hi} ({shown})"
        if self.refusals:
            for i, text in enumerate(pc.utf8_lower(responses).to_pylist()):
                if reasons[i] is None:
                    phrase = next((p for p in self.refusals if p in text), None)
                    if phrase:
                        reasons[i] = f"refusal:{phrase}"
        if self.drop_unfinished:
            for i in self.unfinished(batch["meta"], responses):
                if reasons[i] is None:
                    reasons[i] = "unfinished_response"
        scores = {SCORES + name: values for name, values in stats.items()}
        if self.languages:
            todo = [i for i in range(n) if reasons[i] is None]  # rows another check drops need no language
            undetermined = np.full(n, None, dtype=object)
            confidence, wanted = np.full(n, np.nan), np.full(n, np.nan)
            verdicts = self.language(instructions.take(pa.array(todo, pa.int64())), responses.take(pa.array(todo, pa.int64())))
            for i, (lang, conf) in zip(todo, verdicts):
                if lang is None:
                    undetermined[i] = 1.0
                    continue
                confidence[i], wanted[i] = conf, float(lang in self.languages)
                if lang not in self.languages:
                    reasons[i] = f"language:{lang} ({conf:.2f})"
            scores[UNDETERMINED] = undetermined
            scores[SCORES + "language_confidence"] = confidence
            scores[SCORES + "language_wanted"] = wanted
        return StageResult.split(batch, reasons, scores=scores)

    # -------------------------------------------------------------- checks

    @staticmethod
    def empty_turns(messages: pa.ChunkedArray | pa.Array) -> list[str | None]:
        """Per row (of text_messages), "empty_turn" where a turn is blank or there is none, else None."""
        messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
        flat = pc.list_flatten(messages)
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(flat.field("content"))), 0)
        parents = pc.list_parent_indices(messages).to_numpy()
        bad_rows = set(parents[np.flatnonzero(pc.fill_null(empty, True).to_numpy(zero_copy_only=False))].tolist())
        lengths = pc.list_value_length(messages).to_numpy(zero_copy_only=False)
        return ["empty_turn" if i in bad_rows or lengths[i] == 0 else None for i in range(len(messages))]

    @staticmethod
    def unfinished(metas: pa.Array, responses: pa.Array) -> list[int]:
        """Rows the generator cut at its token limit (meta.finish_reason == "length") whose
        response does not end a sentence."""
        out = []
        texts = None
        for i, meta in enumerate(metas.to_pylist()):
            if not meta or ("length" not in meta and "truncated" not in meta):
                continue  # cheap pre-check before parsing the JSON
            info = json.loads(meta)
            if info.get("finish_reason") == "length" or info.get("truncated") is True:
                if texts is None:
                    texts = responses.to_pylist()
                if not texts[i].rstrip().endswith(SENTENCE_END):
                    out.append(i)
        return out

    def language(self, instructions: pa.Array, responses: pa.Array) -> list[tuple[str | None, float]]:
        """Per row, the language of its prose and the identifier's confidence; (None, 0.0)
        where it cannot be judged: too little prose, or an unsure identifier."""
        if self._langid is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return [self.judge(prose(response or ""), instruction or "") for instruction, response in
                zip(instructions.to_pylist(), responses.to_pylist())]

    def judge(self, answer: str, instruction: str) -> tuple[str | None, float]:
        """The language of the answer's prose (`answer`); failing that (too little of it, or an
        unsure identifier), of the instruction's prose, then of both together; failing all, a
        language only when the letters are in a script none of `languages` is written in.

        An answer that reads as another language is confirmed on the prose of the instruction
        and the answer together (or, where that is undecided, of the instruction), so that a few
        words (names, UI strings) or a translation asked for in a wanted language do not drop
        the row."""
        found = self._confident(answer)
        if found and found[0] in self.languages:
            return found
        asked = prose(instruction)
        if found:
            again = self._confident(f"{asked[:LANGID_CHARS // 2]} {answer}") or self._confident(asked)
            if again is None:
                return None, 0.0
            return again if again[0] in self.languages else found
        both = f"{asked} {answer}".strip()
        for text in (asked, both) if asked and answer else (asked,):
            found = self._confident(text)
            if found:
                return found
        if both and foreign_share(both[:LANGID_CHARS], self._scripts) >= 0.5:
            lang, conf = self._langid.classify(both[:LANGID_CHARS])
            if lang not in self.languages and lang != NO_LANGUAGE:
                return lang, conf
        return None, 0.0

    def _confident(self, text: str) -> tuple[str, float] | None:
        """(language, confidence) when the identifier decides `text`: at least
        `min_language_confidence` sure that it is in a wanted language (the likeliest of them is
        returned), or as sure of another language while giving the wanted ones together under
        WANTED_DOUBT (English prose often scores 0.5-0.6 for Nigerian Pidgin or Latin, with
        0.2-0.4 left for English). None when it does not decide, or finds no language (zxx)."""
        if prose_letters(text) < self.min_language_letters:
            return None
        lang, conf = self._langid.classify(text[:LANGID_CHARS])
        if lang in self.languages and conf >= self.min_language_confidence:
            return lang, conf  # the common case, without ranking every language
        ranked = self._langid.rank(text[:LANGID_CHARS])
        wanted = [(p, l) for l, p in ranked if l in self.languages]
        p_wanted = sum(p for p, _ in wanted)
        if wanted and p_wanted >= self.min_language_confidence:
            return max(wanted)[1], p_wanted
        if conf >= self.min_language_confidence and p_wanted < WANTED_DOUBT and lang != NO_LANGUAGE:
            return lang, conf
        return None


# Scripts written without spaces between words: a whitespace split counts a whole answer as one word.
_SPACELESS = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]"


def _word_count(text: pa.Array) -> pa.Array:
    """Words per row: whitespace-separated, or for rows in a script without spaces, the tokens
    near dedup uses (one per character there: `stages/text.py` token_counts)."""
    if not len(text):
        return pa.array([], pa.int64())
    trimmed = pc.utf8_trim_whitespace(text)
    counts = pc.list_value_length(pc.utf8_split_whitespace(trimmed)).cast(pa.int64())
    counts = pc.fill_null(pc.if_else(pc.equal(pc.utf8_length(trimmed), 0), 0, counts), 0)  # "" splits into [""]
    spaceless = pc.fill_null(pc.match_substring_regex(text, _SPACELESS), False)
    if not pc.any(spaceless).as_py():
        return counts
    rows = np.flatnonzero(spaceless.to_numpy(zero_copy_only=False))
    out = counts.to_numpy(zero_copy_only=False).copy()
    out[rows] = token_counts(pc.take(text, pa.array(rows))).to_numpy(zero_copy_only=False)
    return pa.array(out, pa.int64())


def repeated_ngram_ratio(text: pa.Array, n: int) -> pa.Array:
    """Share of a text's word n-grams that repeat an earlier one (0: none; near 1: degenerate loops)."""
    hashes, offsets = word_hashes(text)
    grams, rows = ngram_hashes(hashes, offsets, n, short_rows=False)
    ratio = np.zeros(len(offsets) - 1)
    if len(grams):
        order = np.lexsort((grams, rows))
        g, r = grams[order], rows[order]
        first = np.ones(len(g), bool)
        first[1:] = (g[1:] != g[:-1]) | (r[1:] != r[:-1])
        distinct = np.bincount(r[first], minlength=len(ratio))
        total = np.bincount(rows, minlength=len(ratio))
        has = total > 0
        ratio[has] = 1 - distinct[has] / total[has]
    return pa.array(ratio)


def non_alnum_ratio(text: pa.Array) -> pa.Array:
    """Share of non-space characters that are neither letters (with their combining marks:
    Devanagari vowel signs, Thai tone marks) nor digits."""
    spaces = pc.count_substring_regex(text, r"\s").to_numpy(zero_copy_only=False)
    total = (pc.utf8_length(text).to_numpy(zero_copy_only=False) - spaces).astype(float)
    symbols = pc.count_substring_regex(text, r"[^\p{L}\p{M}\p{N}\s]").to_numpy(zero_copy_only=False)
    out = np.zeros(len(total))
    np.divide(symbols, total, out=out, where=total > 0)
    return pa.array(out)
