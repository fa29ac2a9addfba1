"""Meta Ranking: a weak judge places a (query, response) pair against reference pairs of known
reliability (Liu et al. 2024, "Meta Ranking: Less Capable Language Models are Capable for Single
Response Judgement", arXiv:2402.12146; v3 "Enabling Weak LLMs to Judge Response Reliability via
Meta Ranking").

The paper's idea (as its abstract states it): a weak model is poor at judging one response
on its own but fair at comparing two, so the target pair is compared with each of k reference
pairs, across queries (the reference's query differs from the target's), and the k pairwise
results are aggregated into a judgement of the target (the abstract does not give the rule);
five references suffice in the paper.

Each comparison is one greedy request (generators/prompts/meta_rank_compare.txt): pair A is the
target, pair B a reference, and the judge answers `A` or `B` (read from the first word,
`parse_choice`). The aggregation is curate's reading, NOT the paper's equation: the paper's
method section (its exact aggregation formula, section and equation numbers, and weights) could
not be read where this was written (only its abstract and summaries of it were available; the
authors' repository, THUNLP-MT/MetaRanking, holds no code), so this module implements the
natural label-aware vote:

    win_i = 1 when the judge prefers the target over reference i, else 0
    score = mean over the labels L present among the answered comparisons of
            sum_{i: label_i = L} w_i * win_i / sum_{i: label_i = L} w_i

i.e. the (weighted) share of reliable references the target was judged at least as reliable as,
and the share of unreliable references it beat, averaged. A reliable target beats the unreliable
references and ties (wins about half) against the reliable ones; an unreliable one loses to the
reliable references and ties against the unreliable ones. A target judged better than every
unreliable reference and worse than every reliable one scores 0.5, whatever the mix; beating all,
1; losing to all, 0. With a balanced reference set and equal weights this is the plain fraction of
comparisons won, the target's rank among the references (hence "ranking"). The references are drawn
balanced: alternately reliable and unreliable, per row, by `seed` and the row id.

Position bias is not corrected: the target is always pair A (one order per comparison). An answer
that is neither A nor B is an `unparseable` verdict with its raw text and is left out of the
score; a row whose comparisons are all unparseable stays, unscored.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from typing import ClassVar

import pyarrow as pa

from curate.errors import CurateError
from curate.generators.backends.base import ChatRequest, Completion, Sampling
from curate.generators.base import Judged, LLMTask
from curate.generators.prompts_io import turns
from curate.lib.params import Fraction, Positive
from curate.stages.base import param
from curate.stages.judge.checklist import instruction_text, last_response

TEMPLATE_VERSION = "meta_rank/1"
VERIFIER = "meta_rank"
PROMPT = "meta_rank_compare.txt"

_CHOICE = re.compile(r"^\W*(?:(?:pair|answer|response)\b\W*)?([ab])\b", re.IGNORECASE)


class ReferencesError(CurateError):
    """A references file that cannot be used: `meta_rank.references: <problem>`."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(f"meta_rank.references: {problem}")

    def __reduce__(self):  # it pickles (a Ray worker may raise one too)
        return (ReferencesError, (self.problem,))


def parse_choice(text: str | None) -> bool | None:
    """The judge's answer to one comparison: True when it prefers pair A (the target), False for
    B (the reference), None for anything else. Read from the first word, any case, after
    punctuation (`B.`, `**A**`, `Pair B`)."""
    found = _CHOICE.match(text or "")
    return None if found is None else found.group(1).lower() == "a"


def load_references(path: str) -> list[dict]:
    """The labelled reference pairs of a JSONL file: one object a line with `instruction`,
    `response` (strings) and `reliable` (true/false), optionally `weight` (a positive number,
    default 1); blank lines are skipped. Raises ReferencesError (a CurateError) for a missing
    file, a malformed line (naming its number), or a file without both a reliable and an
    unreliable pair."""
    if not isinstance(path, str) or not path:
        raise ReferencesError(f"expected the path of a JSONL file of reference pairs, got {path!r}")
    full = os.path.expanduser(path)
    if not os.path.isfile(full):
        raise ReferencesError(f"no file {path} (from {os.getcwd()}); give a JSONL file of "
                              '{"instruction": ..., "response": ..., "reliable": true/false} lines')
    refs = []
    with open(full, encoding="utf-8", errors="strict") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise ReferencesError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ReferencesError(f"{path} line {number} is not JSON ({e.msg})") from None
            problem = _reference_problem(obj)
            if problem:
                raise ReferencesError(f"{path} line {number}: {problem}")
            refs.append({"instruction": obj["instruction"], "response": obj["response"], "reliable": obj["reliable"],
                         "weight": float(obj.get("weight", 1.0))})
    labels = {r["reliable"] for r in refs}
    if labels != {True, False}:
        have = "no reference pairs" if not refs else f"only {'reliable' if True in labels else 'unreliable'} pairs"
        raise ReferencesError(f"{path} has {have}; Meta Ranking places a response between "
                              "reliable and unreliable references: give at least one of each")
    return refs


def _reference_problem(obj) -> str | None:
    if not isinstance(obj, dict):
        return "expected a JSON object"
    for key in ("instruction", "response"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            return f"`{key}` must be a non-empty string"
    if not isinstance(obj.get("reliable"), bool):
        return "`reliable` must be true or false"
    weight = obj.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        return f"`weight` must be a positive number, got {weight!r}"
    return None


def aggregate(outcomes: list[tuple[bool, float, bool | None]]) -> float | None:
    """The score from (reference reliable, weight, target won or None) per comparison: per label
    present among the answered comparisons, the weighted share won; their mean (module docstring).
    None when no comparison was answered."""
    shares = []
    for label in (True, False):
        answered = [(w, won) for reliable, w, won in outcomes if reliable is label and won is not None]
        if answered:
            shares.append(sum(w for w, won in answered if won) / sum(w for w, _ in answered))
    return sum(shares) / len(shares) if shares else None


class MetaRank(LLMTask):
    """Meta Ranking judge (module docstring). Per row with a response: `k` references drawn
    (balanced by label, by `seed` and the row id; all when the file has no more), one comparison
    each (`max_tokens`, greedy); stores score `<score>` in [0, 1] (None when no answer parsed) and
    one verdict of verifier `meta_rank` per comparison: passed = the target won, strength
    `comparison` (`unparseable`, passed None, when the answer is neither A nor B), detail with the
    reference's index in the file, its label and weight, the raw answer and its finish reason
    (`prompt_too_long`: the engine's context could not hold the comparison). `min_score`: drop rows
    below it (`meta_rank: 0.25 below 0.5`); unscored rows stay.

    Raises CurateError for a references file that is missing, malformed or not a mix of labels;
    ValueError for `k` < 1 or a `min_score` outside [0, 1]."""

    name = "meta_rank"
    generator = "meta_rank"
    template_version = TEMPLATE_VERSION
    verifier: ClassVar[str] = VERIFIER

    def __init__(self, backend: dict, references: str, k: Positive = 5, score: str = "meta_rank", min_score: Fraction | None = None,
                 max_tokens: Positive = 4, seed: int = 0, cache: str | None = None):
        super().__init__(backend, cache)
        if k < 1:
            raise ValueError(f"k is how many references each row is compared with, at least 1; got {k}")
        if min_score is not None and not 0 <= min_score <= 1:
            raise ValueError(f"min_score is a share of comparisons won, in [0, 1]; got {min_score}")
        self.references = load_references(references)
        self.k, self.score, self.min_score, self.seed = k, score, min_score, seed
        self.sampling = Sampling(temperature=0.0, max_tokens=max_tokens, seed=seed)

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"scores:{param(cls, params, 'score')}", f"verdicts:{cls.verifier}"}

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Before any Ray work: the references file is there, readable and well formed (one
        PreflightError naming `references`), then the backend."""
        from curate.pipeline.preflight import PreflightError, check_file

        check_file(params.get("references"), f"{cls.name}.references", what="references file")
        try:
            load_references(params["references"])
        except ReferencesError as e:
            raise PreflightError(f"{cls.name}.references", e.problem) from None
        super().preflight(params)

    # --- requests ---------------------------------------------------------------------------

    def chosen(self, row_id: str) -> list[int]:
        """Indices (into the file) of the row's references: all when there are at most `k`, else
        `k` drawn by `seed` and the row id, alternately reliable and unreliable (the other label
        fills in when one runs out), in file order."""
        n = len(self.references)
        if n <= self.k:
            return list(range(n))
        rng = random.Random(f"{self.seed}:{row_id}")
        pools = [[i for i, r in enumerate(self.references) if r["reliable"] is label] for label in (True, False)]
        for pool in pools:
            rng.shuffle(pool)
        first = rng.randrange(2)  # which label leads when k is odd
        picked = []
        while len(picked) < self.k:
            for j in (first, 1 - first):
                if pools[j] and len(picked) < self.k:
                    picked.append(pools[j].pop())
        return sorted(picked)

    def selects(self, batch: pa.Table) -> list[bool] | None:
        return [any(m["role"] == "assistant" for m in c or ()) for c in batch["messages"].to_pylist()]

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:
        return [[self.compare_request(row["messages"], self.references[i]) for i in self.chosen(row["id"])]
                for row in batch.select(["id", "messages"]).to_pylist()]

    def compare_request(self, messages: list[dict], reference: dict) -> ChatRequest:
        return ChatRequest(turns(PROMPT, instruction_a=instruction_text(messages), response_a=last_response(messages),
                                 instruction_b=reference["instruction"], response_b=reference["response"]), self.sampling)

    # --- the judgement ----------------------------------------------------------------------

    def parse(self, row: dict, completions: list[list[Completion]]) -> Judged:
        indices = self.chosen(row["id"])
        verdicts, outcomes = [], []
        for i, answer in zip(indices, completions):
            raw = answer[0].text
            won = parse_choice(raw)
            ref = self.references[i]
            outcomes.append((ref["reliable"], ref["weight"], won))
            detail = {"kind": "comparison", "reference": i, "reliable": ref["reliable"], "weight": ref["weight"], "raw": raw,
                      "finish_reason": answer[0].finish_reason}
            verdicts.append({"verifier": self.verifier, "passed": won, "strength": "comparison" if won is not None else "unparseable",
                             "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True)})
        score = aggregate(outcomes)
        reason = None
        if self.min_score is not None and score is not None and score < self.min_score:
            reason = f"{self.score}<{self.min_score:g} ({score:.3g})"
        return Judged({self.score: score}, verdicts, reason)
