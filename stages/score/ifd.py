"""IFD (Cherry LLM) and IC-IFD: how much the instruction helps the model produce the answer.

Per row, three mean token losses: L(A|Q) over the answer tokens after the prompt, L(Q) over the
prompt tokens (given the start token only), both from one pass over Q+A; and L(A) over the
answer tokens given only the start token (plus an optional masked `direct_prefix`, Cherry's
"### Response:" header). Both kinds of sequences share one length-bucketed batch stream.

    ifd    = L(A|Q) / L(A)                 (variant "loss_ratio", Cherry's data_by_IFD.py)
           = exp(L(A|Q) - L(A))            (variant "ppl_ratio", Superfiltering)
    ic_ifd = L(A|Q) / (L(Q) * L(A))        (Hui et al. 2024; always the loss ratio over L(Q))

Truncation as Cherry's filters: a row is skipped when its prompt fills the `max_length` window,
when prompt + answer exceed it (the answer would be cut in one pass and not the other), or when
the prompt or answer span is empty. A skipped row is dropped with the reason by default
(`on_skip: drop`; Cherry never selects it either), or kept without scores (`on_skip: keep`).

The model runs in `dtype`; by default `lm.scoring_dtype`'s pick: bf16 on a GPU and on a CPU with
bf16 instructions (AVX-512 BF16, AMX), fp32 elsewhere. bf16 moves each loss by up to about 2%
(bench/scoring.py and tests/stages/test_scoring_dtype.py measure it against the fp32 reference);
`dtype: float32` gives the reference's losses to 1e-4.

The stage caches each row's three losses and skip reason by (model, conversation, max_length,
direct_prefix, dtype, device) in `<db>.model_cache.duckdb` (storage/model_cache.py; `cache:
false` turns it off); `ifd` and `ic_ifd` are derived from them, so `variant` needs no new pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from curate.stages.base import StageContext, StageResult, param
from curate.stages.score.base import ModelStage
from curate.lib import lm as L
from curate.lib.cpu_workers import BatchRunner, CpuParallel
from curate.storage.model_cache import CachedRows, model_fingerprint
from curate.storage.schema import canonical_messages

SCORE_NAMES = ("ifd", "ic_ifd", "loss_answer_given_prompt", "loss_answer", "loss_prompt")
LOSS_NAMES = ("loss_answer_given_prompt", "loss_answer", "loss_prompt")  # what a model pass gives; the rest derives


@dataclass
class Spans:
    """One sequence and the token spans [start, end) whose mean loss it contributes."""

    ids: list[int]
    row: int
    spans: dict[str, tuple[int, int]]


def plan_sequences(tok, convs: list[list[dict]], max_length: int, direct_prefix: str = "") -> tuple[list[Spans], list[str | None]]:
    """The sequences to run and, per row, the reason it is skipped (None: scored)."""
    start = L.context_ids(tok)
    prefix = start + (tok(direct_prefix, add_special_tokens=False)["input_ids"] if direct_prefix else [])
    first = max(1, len(prefix))  # a span can only start where a token before it exists
    seqs, reasons = [], []
    for row, messages in enumerate(convs):
        enc = L.encode(tok, messages)
        p, a = len(enc.prompt), len(enc.answer)
        reason = None
        if a == 0 or p <= 1:
            reason = "ifd_skip:empty_span"
        elif p >= max_length:
            reason = "ifd_skip:prompt_fills_window"
        elif p + a > max_length or len(prefix) + a > max_length:
            reason = "ifd_skip:answer_truncated"
        reasons.append(reason)
        if reason:
            continue
        seqs.append(Spans(enc.prompt + enc.answer, row, {"prompt": (1, p), "answer_given_prompt": (p, p + a)}))
        direct = prefix + enc.answer
        seqs.append(Spans(direct, row, {"answer": (first, len(direct))}))
    return seqs, reasons


def span_losses(model, seqs: list[Spans], pad: int, device: str, max_tokens: int, max_rows: int,
                runner: BatchRunner | None = None) -> list[dict[str, float]]:
    """Mean token NLL of every span of every sequence, batched by length, padding ignored; the
    batches run through `runner` (lib/cpu_workers.py), else one at a time."""
    import torch

    def one(idx: list[int]) -> list[dict[str, float]]:
        batch = [seqs[i] for i in idx]
        ids = L.pad_right([s.ids for s in batch], pad, device)
        needed = torch.zeros((len(batch), ids.shape[1] - 1), dtype=torch.bool)
        for k, s in enumerate(batch):
            for b, e in s.spans.values():
                needed[k, b - 1 : e - 1] = True
        with torch.inference_mode():
            nll = L.token_nll(model, ids, needed.to(device))
            # cum[:, j] = loss of tokens 1..j, so a span [s, e) sums to cum[e-1] - cum[s-1].
            cum = torch.nn.functional.pad(nll.double().cumsum(1), (1, 0)).cpu().numpy()
        return [{name: (cum[k, e - 1] - cum[k, b - 1]) / (e - b) for name, (b, e) in s.spans.items()}
                for k, s in enumerate(batch)]

    batches = list(L.length_batches([len(s.ids) for s in seqs], max_tokens, max_rows))
    results = runner.map(one, batches) if runner is not None else [one(idx) for idx in batches]
    out: list[dict[str, float]] = [{} for _ in seqs]
    for idx, spans in zip(batches, results):
        for i, m in zip(idx, spans):
            out[i] = m
    return out


def ifd_scores(loss_aq: float, loss_a: float, loss_q: float, variant: str) -> tuple[float, float]:
    ifd = loss_aq / loss_a if variant == "loss_ratio" else math.exp(loss_aq - loss_a)
    return ifd, loss_aq / (loss_q * loss_a)


class IFDScorer:
    """The model and the scoring logic, outside any stage (the bench and tests use it too)."""

    def __init__(self, model: str, max_length: int = 512, variant: str = "loss_ratio", direct_prefix: str = "",
                 max_batch_tokens: int | None = None, max_batch_rows: int = 64, device: str | None = None, dtype: str | None = None,
                 threads: int | None = None, cpu_parallel: CpuParallel = "batches"):
        """`threads` / `cpu_parallel`: on a CPU, `batches` runs length batches on `threads`
        single-threaded workers sharing the model (lib/cpu_workers.py; default one per core);
        `intra_op` runs them one at a time on `threads` torch threads (default one per core). Same
        losses either way."""
        self.lm, self.tok, self.device = L.load_causal_lm(model, device, dtype, scoring=True)
        self.model = model
        self.runner = BatchRunner(self.device, threads, cpu_parallel, "ifd")
        self.max_length, self.variant, self.direct_prefix = max_length, variant, direct_prefix
        self.max_batch_tokens = max_batch_tokens or L.default_batch_tokens(self.device, self.lm.dtype)
        self.max_batch_rows = max_batch_rows

    def losses(self, convs: list[list[dict]]) -> tuple[np.ndarray, list[str | None]]:
        """(rows, 3) float64 losses in LOSS_NAMES order (NaN where skipped); and the skip reasons."""
        seqs, reasons = plan_sequences(self.tok, convs, self.max_length, self.direct_prefix)
        spans = span_losses(self.lm, seqs, L.pad_id(self.tok), self.device, self.max_batch_tokens, self.max_batch_rows,
                            self.runner)
        out = np.full((len(convs), len(LOSS_NAMES)), np.nan)
        column = {"answer_given_prompt": 0, "answer": 1, "prompt": 2}
        for s, m in zip(seqs, spans):
            for name, value in m.items():
                out[s.row, column[name]] = value
        return out, reasons

    def scores(self, losses: np.ndarray, reasons: list[str | None]) -> dict[str, np.ndarray]:
        """Per score name, one float64 per row (NaN where skipped), from `losses`."""
        cols = {name: np.full(len(losses), np.nan) for name in SCORE_NAMES}
        for row, reason in enumerate(reasons):
            if reason is not None:
                continue
            aq, a, q = losses[row]
            cols["ifd"][row], cols["ic_ifd"][row] = ifd_scores(aq, a, q, self.variant)
            cols["loss_answer_given_prompt"][row], cols["loss_answer"][row], cols["loss_prompt"][row] = aq, a, q
        return cols

    def score(self, convs: list[list[dict]]) -> tuple[dict[str, np.ndarray], list[str | None]]:
        """Per score name, one float64 per row (NaN where skipped); and the skip reasons."""
        losses, reasons = self.losses(convs)
        return self.scores(losses, reasons), reasons

    def cache_identity(self) -> tuple[str, dict]:
        """(model fingerprint, what else changes a row's losses): the conversation is the rest of the key."""
        return model_fingerprint(L.resolve_model(self.model)), {
            "v": 1, "max_length": self.max_length, "direct_prefix": self.direct_prefix, "dtype": str(self.lm.dtype),
            "device": str(self.device).split(":")[0]}


class IFDScore(ModelStage):
    """Scores `<prefix>ifd`, `<prefix>ic_ifd` and the three losses (`<prefix>loss_...`) of every
    row it scores; a skipped row has none."""

    name = "ifd"

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"scores:{param(cls, params, 'prefix')}{name}" for name in SCORE_NAMES}

    def __init__(self, model: str, max_length: int = 512, variant: Literal["loss_ratio", "ppl_ratio"] = "loss_ratio",
                 direct_prefix: str = "", on_skip: Literal["drop", "keep"] = "drop", prefix: str = "",
                 max_batch_tokens: int | None = None, max_batch_rows: int = 64, device: str | None = None, dtype: str | None = None,
                 threads: int | None = None, cpu_parallel: CpuParallel = "batches", cache: bool | str = True):
        """`threads` / `cpu_parallel`: how a CPU runs the model (IFDScorer). `cache`: true, the
        model-output cache beside the database (its path comes with the run's context in `setup`;
        a stage built by hand without one has none); false, off; a path, that file."""
        self.scorer = IFDScorer(model, max_length, variant, direct_prefix, max_batch_tokens, max_batch_rows, device, dtype,
                                threads, cpu_parallel)
        self.on_skip, self.prefix = on_skip, prefix
        self.cached = CachedRows(cache, "ifd", model)

    def setup(self, context: StageContext | None = None) -> None:
        self.cached.at_default(context.model_cache if context else None)  # `cache: true`: the run's model cache

    def __call__(self, batch: pa.Table) -> StageResult:
        convs = L.conversations(batch)

        def compute(rows: list[int]) -> list[tuple[bytes, str | None]]:
            losses, reasons = self.scorer.losses([convs[i] for i in rows])
            return [(v.tobytes(), r) for v, r in zip(losses, reasons)]

        found = self.cached.rows([canonical_messages(c) for c in convs], self.scorer.cache_identity, compute)
        losses = np.frombuffer(b"".join(v for v, _ in found), np.float64).reshape(len(convs), len(LOSS_NAMES))
        reasons = [r for _, r in found]
        scores = {self.prefix + name: values for name, values in self.scorer.scores(losses, reasons).items()}
        return StageResult.split(batch, reasons if self.on_skip == "drop" else None, scores=scores)
