"""Heuristic quality filters. Each check computes a per-row statistic, then applies its bound;
a dropped row's reason names the check and the value, e.g. `response_words<3 (1)`."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curate.stages.base import Resources, Stage, StageResult
from curate.stages.text import first_user_turn, last_assistant_turn


class Filters(Stage):
    name = "filters"
    resources = Resources(num_cpus=1)
    batch_size = 2048

    def __init__(
        self,
        min_instruction_chars: int = 1,
        max_instruction_chars: int | None = None,
        min_response_chars: int = 1,
        max_response_chars: int | None = None,
        min_response_words: int = 0,
    ):
        self.bounds = [
            ("instruction_chars", min_instruction_chars, max_instruction_chars),
            ("response_chars", min_response_chars, max_response_chars),
            ("response_words", min_response_words, None),
        ]

    def statistics(self, batch: pa.Table) -> dict[str, pa.Array]:
        instructions = first_user_turn(batch["messages"])
        responses = last_assistant_turn(batch["messages"])
        words = pc.list_value_length(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(responses)))
        return {
            "instruction_chars": pc.utf8_length(instructions),
            "response_chars": pc.utf8_length(responses),
            "response_words": pc.if_else(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(responses)), 0), 0, words),
        }

    def __call__(self, batch: pa.Table) -> StageResult:
        stats = self.statistics(batch)
        reasons: list[str | None] = [None] * batch.num_rows
        for name, lo, hi in self.bounds:
            values = stats[name].to_pylist()
            for i, v in enumerate(values):
                if reasons[i] is not None:
                    continue
                if lo is not None and v < lo:
                    reasons[i] = f"{name}<{lo} ({v})"
                elif hi is not None and v > hi:
                    reasons[i] = f"{name}>{hi} ({v})"
        drop = pa.array([r is not None for r in reasons])
        dropped = batch.filter(drop).append_column("reason", pa.array([r for r in reasons if r is not None], pa.string()))
        return StageResult(kept=batch.filter(pc.invert(drop)), dropped=dropped)
