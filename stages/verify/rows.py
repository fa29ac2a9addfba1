"""What every verifier stage does with a batch: read the response and meta, attach verdicts and
scores (the storage channel: `_verdicts`, `_score:<name>`), split kept from dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from curate.stages.base import StageResult
from curate.storage import schema as S


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


def instructions(batch: pa.Table) -> list[str]:
    return [last_turn(m, "user") for m in batch["messages"].to_pylist()]


def result(batch: pa.Table, verdicts: list[RowVerdict], scores: dict[str, list[float | None]] | None = None) -> StageResult:
    """Rows whose verdict failed are dropped with its reason; the rest are kept. Every row with a
    verdict carries it (kept and dropped alike) so the writer stores it."""
    table = S.add_verdicts(batch, [[v.as_struct()] if v.passed is not None else [] for v in verdicts])
    for name, values in (scores or {}).items():
        table = table.append_column(S.SCORE_PREFIX + name, pa.array(values, pa.float64()))
    failed = [i for i, v in enumerate(verdicts) if v.passed is False]
    kept = [i for i, v in enumerate(verdicts) if v.passed is not False]
    dropped = table.take(pa.array(failed, pa.int64())).append_column(
        "reason", pa.array([verdicts[i].reason for i in failed], pa.string()))
    return StageResult(kept=table.take(pa.array(kept, pa.int64())), dropped=dropped)
