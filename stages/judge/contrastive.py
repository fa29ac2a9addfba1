"""CodecLM's Contrastive Filtering (Wang et al. 2024, "CodecLM: Aligning Language Models with
Tailored Synthetic Data", NAACL 2024 Findings, arXiv:2404.05875, §4.3 and Appendix A.3, A.9
Figure 11).

A row's response comes from the strong LLM f_s (`respond` with the strong `backend`). The stage
asks the TARGET LLM f_t (`target_backend`) for its own response to the same prompt, then a judge
(`judge_backend`; by default the strong `backend`, as the paper reuses f_s as the scorer S)
scores both answers on 1 to 10 in one pairwise prompt (generators/prompts/contrastive_judge.txt,
after the paper's Vicuna-style template: one line with the two scores). To offset position bias
the pair is judged twice, the answers swapped, and each side's scores averaged (`swap`, as in
§4.3). The quality gap is G = S(f_s) − S(f_t), stored as the score `contrastive_gap`.

Which side is kept (§4.3): when |G| ≥ `min_gap` the instruction is worth training on. G positive:
the strong response is better, the row (I, f_s(I)) is kept "to fill the gap". G negative: the
target is better, and the paper adds (I, f_t(I)) instead, "an implicit regularization to keep the
target LLM's desirable behavior": the row is dropped (`contrastive: target better, gap -4`) and
the target's response is a new row beside it (origin `target_response`), kept (`keep_target_wins`).
|G| below `min_gap`: both answers are alike and the target learns little; the paper sends the
instruction back to Self-Rubrics, here the row is dropped (`contrastive_gap<3.5 (1)`).
The paper's threshold is |G| > 3 on the 10-point scale; with whole-number scores averaged over the
two orders gaps are multiples of 0.5, so `min_gap: 3.5` (the default) is that rule.

Stored per judged row: score `contrastive_gap` (None when no judge reply parsed: the row stays,
unscored) and one verdict of verifier `contrastive` (strength `judge`, or `unparseable`), whose
detail holds both scores, the gap, each order's raw judge output and parsed scores, and the
target's response with its model and finish reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, ClassVar

import pyarrow as pa
from pydantic import Field

from curate.generators.backends.base import Backend, ChatRequest, Completion, Sampling
from curate.generators.base import FollowUp, Judged, LLMTask, child_row, row_meta, row_turns, stage_backend
from curate.generators.prompts_io import turns
from curate.lib.params import Positive
from curate.generators.respond import INHERIT_NOT
from curate.stages.base import StageContext
from curate.stages.judge.checklist import instruction_text, last_response, prompt_turns
from curate.storage import schema as S

TEMPLATE_VERSION = "contrastive/1"
VERIFIER = "contrastive"
SCORE = "contrastive_gap"
_LABEL = re.compile(r"\b(?:assistant|answer|response)\s*#?\s*[12ab]\b|\bscores?\b|\bout of 10\b|/\s*10\b|\band\b|\bvs\.?", re.IGNORECASE)
_PAIR = re.compile(r"[\s:,;*()\[\]|=-]*(\d+(?:\.\d+)?)[\s:,;/*()\[\]|=-]+(\d+(?:\.\d+)?)[\s.*()\[\]]*")


def parse_scores(text: str) -> tuple[float, float] | None:
    """The two scores (Assistant 1's, Assistant 2's) of a judge reply: its first non-blank line,
    once labels (`Assistant 1:`), `/10`, `out of 10`, `and` are removed, must hold two numbers
    and nothing else; each in [1, 10]. None otherwise."""
    line = next((line for line in (text or "").splitlines() if line.strip()), "")
    found = _PAIR.fullmatch(_LABEL.sub(" ", line))
    if not found:
        return None
    a, b = float(found.group(1)), float(found.group(2))
    return (a, b) if 1 <= a <= 10 and 1 <= b <= 10 else None


@dataclass
class RoutedRequest(ChatRequest):
    """A request with the backend it goes to (`target` or `judge`). A target request and a judge
    request never share their messages, so `distinct_calls` never merges the two."""
    route: str = "judge"


class Routes(Backend):
    """Two backends behind one: each request goes to the backend its `route` names; one call per
    backend per round, answers in request order."""

    def __init__(self, backends: dict[str, Backend]):
        self.backends = backends
        self.model = backends["judge"].model

    def generate(self, requests):
        out: list = [None] * len(requests)
        for route, backend in self.backends.items():
            at = [i for i, r in enumerate(requests) if getattr(r, "route", "judge") == route]
            if at:
                answers = backend.generate([ChatRequest(requests[i].messages, requests[i].sampling) for i in at])
                for i, answer in zip(at, answers):
                    out[i] = answer
        return out


class ContrastiveFilter(LLMTask):
    """Contrastive Filtering (module docstring). Params: `backend` (the strong LLM: the judge
    unless `judge_backend` names another), `target_backend` (the LLM being aligned), `min_gap`,
    `keep_target_wins`, `swap`, the target's sampling (`target_temperature`, `target_max_tokens`),
    `judge_max_tokens` (greedy), `rejudge` (judge rows that already carry the score), `seed`,
    `cache`. Rows without an assistant turn pass through. Raises ValueError for a backend without
    a model or a negative `min_gap`."""

    name = "contrastive_filter"
    generator = "contrastive_filter"
    origin = "target_response"
    template_version = TEMPLATE_VERSION
    verifier: ClassVar[str] = VERIFIER

    def __init__(self, backend: dict, target_backend: dict, judge_backend: dict | None = None, min_gap: Annotated[float, Field(ge=0)] = 3.5,
                 keep_target_wins: bool = True, swap: bool = True, target_temperature: float = 0.7, target_max_tokens: Positive = 512,
                 judge_max_tokens: Positive = 16, rejudge: bool = False, seed: int = 0, cache: str | None = None):
        super().__init__(backend, cache)
        for key, spec in (("target_backend", target_backend), ("judge_backend", judge_backend)):
            if spec is not None and (not isinstance(spec, dict) or "model" not in spec):
                raise ValueError(f"{key} needs a model: {{kind: vllm, model: PATH}} or {{kind: openai, model: NAME, base_url: URL}}")
        if min_gap < 0:
            raise ValueError(f"min_gap is a score difference on the 1-10 scale, at least 0; got {min_gap}")
        self.target_spec, self.judge_spec = dict(target_backend), dict(judge_backend or backend)
        self.target_model, self.judge_model = self.target_spec["model"], self.judge_spec["model"]
        self.min_gap, self.keep_target_wins, self.swap, self.rejudge = min_gap, keep_target_wins, swap, rejudge
        self.target_sampling = Sampling(temperature=target_temperature, max_tokens=target_max_tokens, seed=seed)
        self.judge_sampling = Sampling(temperature=0.0, max_tokens=judge_max_tokens, seed=seed)
        self.backend = self.routes(cache)

    def routes(self, cache: str | None) -> Routes:
        return Routes({"target": stage_backend(self.target_spec, cache), "judge": stage_backend(self.judge_spec, cache)})

    def setup(self, context: StageContext | None = None) -> None:
        """`cache` None: both backends behind the run's LLM-call cache."""
        if self.cache_arg is None and context is not None and context.llm_cache:
            self.backend = self.routes(context.llm_cache)

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Every backend the stage names: `backend`, `target_backend`, `judge_backend` when set. The
        config normalises `backend`'s base_url (`http://host:8000` → `.../v1`); the other two are
        normalised here, so the probe asks what the backend will call."""
        from curate.generators.backends.openai_http import normalise_base_url
        from curate.pipeline.preflight import check_llm_backend

        for key in ("backend", "target_backend", "judge_backend"):
            spec = params.get(key)
            if key != "backend" and spec is None:
                continue
            if key != "backend" and isinstance(spec, dict) and spec.get("kind") == "openai" and isinstance(spec.get("base_url"), str):
                spec = {**spec, "base_url": normalise_base_url(spec["base_url"])}
            check_llm_backend(spec, f"{cls.name}.{key}")

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"scores:{SCORE}", f"verdicts:{VERIFIER}"}

    # --- requests ---------------------------------------------------------------------------

    def selects(self, batch: pa.Table) -> list[bool] | None:
        answered = [any(m["role"] == "assistant" for m in c or ()) for c in batch["messages"].to_pylist()]
        column = S.SCORE_PREFIX + SCORE
        if self.rejudge or column not in batch.column_names:
            return answered
        return [a and v is None for a, v in zip(answered, batch[column].to_pylist())]

    def requests(self, batch: pa.Table) -> list[list[ChatRequest]]:
        return [[RoutedRequest(prompt_turns(m), self.target_sampling, route="target")] for m in batch["messages"].to_pylist()]

    def judge_request(self, question: str, first: str, second: str) -> RoutedRequest:
        return RoutedRequest(turns("contrastive_judge.txt", question=question, answer_1=first, answer_2=second),
                             self.judge_sampling, route="judge")

    # --- the judgement ----------------------------------------------------------------------

    def parse(self, row: dict, completions: list[list[Completion]]) -> Judged | FollowUp:
        messages = row["messages"]
        question, strong = instruction_text(messages), last_response(messages)
        target = completions[0][0]
        if len(completions) == 1:
            asks = [self.judge_request(question, strong, target.text.strip())]
            if self.swap:
                asks.append(self.judge_request(question, target.text.strip(), strong))
            return FollowUp(asks)
        orders, strong_scores, target_scores = [], [], []
        for k, name in enumerate(["strong_first", "target_first"][: len(completions) - 1]):
            raw = completions[1 + k][0].text
            scores = parse_scores(raw)
            orders.append({"order": name, "raw": raw, "scores": list(scores) if scores else None})
            if scores:
                s, t = scores if name == "strong_first" else scores[::-1]
                strong_scores.append(s)
                target_scores.append(t)
        detail = {"kind": "contrastive", "orders": orders, "target_response": target.text, "target_model": self.target_model,
                  "target_finish_reason": target.finish_reason, "judge_model": self.judge_model, "min_gap": self.min_gap}
        if not strong_scores:
            return Judged({SCORE: None}, [self.verdict(None, "unparseable", detail)])
        s, t = sum(strong_scores) / len(strong_scores), sum(target_scores) / len(target_scores)
        gap = round(s - t, 4)
        detail.update(strong_score=s, target_score=t, gap=gap)
        if gap >= self.min_gap:
            return Judged({SCORE: gap}, [self.verdict(True, "judge", {**detail, "kept": "strong"})])
        if gap > -self.min_gap:
            return Judged({SCORE: gap}, [self.verdict(False, "judge", {**detail, "kept": None})],
                          reason=f"contrastive_gap<{self.min_gap:g} ({gap:g})")
        reason = f"{VERIFIER}: target better, gap {gap:g}"
        if not self.keep_target_wins or not target.text.strip():
            return Judged({SCORE: gap}, [self.verdict(False, "judge", {**detail, "kept": None})], reason=reason)
        judged = Judged({SCORE: gap}, [self.verdict(False, "judge", {**detail, "kept": "target"})], reason=reason)
        judged.children = [(self.target_row(row, target), Judged({SCORE: gap}, [self.verdict(True, "judge", {**detail, "kept": "target"})]))]
        return judged

    def target_row(self, row: dict, target: Completion) -> dict:
        """The target's response as a row beside the judged one (origin `target_response`), with
        the parent's task-level meta and the target call's meta."""
        inherited = {k: v for k, v in row_meta(row["meta"]).items() if k not in INHERIT_NOT}
        meta = {**inherited, **self.meta(self.target_sampling, target, model=self.target_model, contrastive_of=row["id"])}
        messages = [*prompt_turns(row_turns(row)), {"role": "assistant", "content": target.text.strip()}]
        return child_row(messages, meta, origin=self.origin, source=f"{self.generator}:{self.target_model}", parent_ids=[row["id"]])

    def verdict(self, passed: bool | None, strength: str, detail: dict) -> dict:
        return {"verifier": VERIFIER, "passed": passed, "strength": strength,
                "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True)}
