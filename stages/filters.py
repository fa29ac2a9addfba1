"""Heuristic quality filters.

As in Data-Juicer, each check first computes a per-row statistic, then applies its bound, so the
same numbers serve analysis and filtering. A dropped row's reason names the check, the bound
and the value (`response_words<3 (1)`); checks run in the order listed and the first failing
one gives the reason. Every check is configurable; a bound of null turns it off.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.stages.base import Resources, Stage, StageResult
from curate.stages.text import first_user_turn, last_assistant_turn, ngram_hashes, word_hashes

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


class Filters(Stage):
    name = "filters"
    resources = Resources(num_cpus=1)
    batch_size = 2048

    def __init__(
        self,
        min_instruction_chars: int | None = 1,
        max_instruction_chars: int | None = None,
        min_instruction_words: int | None = None,
        max_instruction_words: int | None = None,
        min_response_chars: int | None = 1,
        max_response_chars: int | None = None,
        min_response_words: int | None = None,
        max_response_words: int | None = None,
        max_repeated_ngram_ratio: float | None = None,
        repeated_ngram: int = 3,
        max_non_alnum_ratio: float | None = None,
        refusal_phrases: Literal["default"] | list[str] | None = "default",
        drop_unfinished: bool = True,
        languages: list[str] | None = None,
        min_language_confidence: float = 0.5,
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
        reasons: list[str | None] = self.empty_turns(batch)
        instructions = first_user_turn(batch["messages"])  # computed once, shared by the checks
        responses = last_assistant_turn(batch["messages"])
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
        if self.languages:
            for i, (lang, conf) in enumerate(self.language(instructions, responses)):
                if reasons[i] is None and (lang not in self.languages or conf < self.min_language_confidence):
                    reasons[i] = f"language:{lang} ({conf:.2f})"
        drop = pa.array([r is not None for r in reasons])
        dropped = batch.filter(drop).append_column("reason", pa.array([r for r in reasons if r is not None], pa.string()))
        return StageResult(kept=batch.filter(pc.invert(drop)), dropped=dropped)

    # -------------------------------------------------------------- checks

    @staticmethod
    def empty_turns(batch: pa.Table) -> list[str | None]:
        messages = batch["messages"].combine_chunks()
        flat = pc.list_flatten(messages)
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(flat.field("content"))), 0)
        parents = pc.list_parent_indices(messages).to_numpy()
        bad_rows = set(parents[np.flatnonzero(pc.fill_null(empty, True).to_numpy(zero_copy_only=False))].tolist())
        lengths = pc.list_value_length(messages).to_numpy(zero_copy_only=False)
        return ["empty_turn" if i in bad_rows or lengths[i] == 0 else None for i in range(batch.num_rows)]

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

    def language(self, instructions: pa.Array, responses: pa.Array) -> list[tuple[str, float]]:
        if self._langid is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return [self._langid.classify(f"{a}\n{b}"[:600]) for a, b in zip(instructions.to_pylist(), responses.to_pylist())]


def _word_count(text: pa.Array) -> pa.Array:
    return pc.fill_null(pc.list_value_length(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(text))), 0).cast(pa.int64()) \
        if len(text) else pa.array([], pa.int64())


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
    """Share of non-space characters that are neither letters nor digits."""
    spaces = pc.count_substring_regex(text, r"\s").to_numpy(zero_copy_only=False)
    total = (pc.utf8_length(text).to_numpy(zero_copy_only=False) - spaces).astype(float)
    symbols = pc.count_substring_regex(text, r"[^\p{L}\p{N}\s]").to_numpy(zero_copy_only=False)
    out = np.zeros(len(total))
    np.divide(symbols, total, out=out, where=total > 0)
    return pa.array(out)
