"""A CPU stage: drop rows whose response is shorter than `min_words` words; store every row's
word count as the score `word_count.words`."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from curate.stages.base import Resources, Stage, StageResult
from curate.stages.text import last_assistant_turn


class WordCount(Stage):
    name = "word_count"  # the config key, and the key in pipeline/registry.py STAGES
    resources = Resources(num_cpus=1)
    batch_size = 2048

    def __init__(self, min_words: int = 3):  # the config's parameters, validated from this signature
        self.min_words = min_words

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {"scores:word_count.words"}

    def __call__(self, batch: pa.Table) -> StageResult:
        response = last_assistant_turn(batch["messages"])  # "" where a row has no answer
        words = pc.count_substring_regex(response, r"\S+").to_pylist()  # words: runs of non-space
        reasons = [None if n >= self.min_words else f"response_words<{self.min_words} ({n})" for n in words]
        return StageResult.split(batch, reasons, scores={"word_count.words": words})
