"""What every verifier stage does with a batch: read the response and meta, give verdicts and
scores (StageResult's `verdicts` and `scores`), split kept from dropped.

A verifier stage has a class attribute `verifier` (the verdicts' name) and `SCORES`, the names
of the scores it gives; `VerifierStage.writes` declares both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from curate.stages.base import Stage, StageResult


@dataclass
class RowVerdict:
    verifier: str
    passed: bool | None  # None: nothing to verify on this row (it passes through, no verdict stored)
    strength: str = ""
    detail: dict | None = None
    reason: str = ""  # drop reason when not passed

    def as_struct(self) -> dict:
        return {"verifier": self.verifier, "passed": self.passed, "strength": self.strength,
                "detail": json.dumps(self.detail or {}, ensure_ascii=False, sort_keys=True)}


def metas(batch: pa.Table) -> list[dict]:
    out = []
    for text in batch["meta"].to_pylist():
        try:
            value = json.loads(text) if text else {}
        except ValueError:
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out


def last_turn(messages: list[dict], role: str) -> str:
    for m in reversed(messages or []):
        if m["role"] == role:
            return m["content"] or ""
    return ""


def responses(batch: pa.Table) -> list[str]:
    return [last_turn(m, "assistant") for m in batch["messages"].to_pylist()]


class VerifierStage(Stage):
    """A stage that gives verdicts named `verifier` and the scores named in `SCORES`."""

    verifier: ClassVar[str] = "verifier"
    SCORES: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"verdicts:{cls.verifier}"} | {f"scores:{name}" for name in cls.SCORES}


def result(batch: pa.Table, verdicts: list[RowVerdict], scores: dict[str, list[float | None]] | None = None) -> StageResult:
    """Rows whose verdict failed are dropped with its reason; the rest are kept. Every row with a
    verdict keeps it (kept and dropped alike), and so do its scores, so the writer stores them."""
    reasons = [v.reason if v.passed is False else None for v in verdicts]
    return StageResult.split(batch, reasons, scores=scores,
                             verdicts=[[v.as_struct()] if v.passed is not None else [] for v in verdicts])
