"""Benchmark decontamination: drop training rows that share a word n-gram with a benchmark prompt.

Default n = 13, as in the GPT-3 and Tülu reports. Text is compared in normalised form (case,
punctuation and white space folded). A benchmark text shorter than n words (but at least
`min_words`) counts as one n-gram of its own length, so short prompts copied verbatim are
caught too. Drops read `contaminated:<benchmark>`.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Literal

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.stages.base import Resources, Stage, StageResult
from curate.stages.text import conversation_text, first_user_turn, last_assistant_turn, ngram_hashes, word_hashes

PROMPT_FIELDS = ("text", "prompt", "instruction", "Instruction", "question", "input")


def benchmark_texts(path: str) -> list[str]:
    """Prompt texts of a benchmark file (JSONL or a JSON list), plus instance inputs."""
    with open(path, encoding="utf-8") as f:
        content = f.read()
    rows = json.loads(content) if content.lstrip().startswith("[") else [json.loads(line) for line in content.splitlines() if line.strip()]
    texts = []
    for row in rows:
        if isinstance(row, str):
            texts.append(row)
            continue
        field = next((row[k] for k in PROMPT_FIELDS if isinstance(row.get(k), str) and row[k].strip()), None)
        if field:
            texts.append(field)
        for inst in row.get("instances") or []:
            if isinstance(inst, dict) and isinstance(inst.get("input"), str) and inst["input"].strip():
                texts.append(inst["input"])
    return texts


class Decontaminate(Stage):
    name = "decontaminate"
    resources = Resources(num_cpus=1)
    batch_size = 2048

    def __init__(self, benchmarks: list[str] | dict[str, str], ngram: int = 13, min_words: int = 8,
                 fields: Literal["instruction", "response", "both", "conversation"] = "both"):
        self.ngram = ngram
        self.fields = fields
        named = benchmarks if isinstance(benchmarks, dict) else {_stem(p): p for p in _expand(benchmarks)}
        if not named:
            raise CurateError("decontaminate: no benchmark files given")
        self.names = list(named)
        grams, owners, lengths = [], [], set()
        for idx, (name, path) in enumerate(named.items()):
            if not os.path.exists(path):
                raise CurateError(f"decontaminate: benchmark file not found: {path}")
            texts = pa.array(benchmark_texts(path), pa.string())
            hashes, offsets = word_hashes(texts)
            row_len = np.diff(offsets)
            g, rows = ngram_hashes(hashes, offsets, ngram)
            keep = row_len[rows] >= min_words
            grams.append(g[keep])
            owners.append(np.full(int(keep.sum()), idx))
            lengths.update(int(x) for x in np.minimum(row_len[rows[keep]], ngram))
        self.grams = np.concatenate(grams)
        self.owners = np.concatenate(owners)
        order = np.argsort(self.grams)
        self.grams, self.owners = self.grams[order], self.owners[order]
        self.lengths = sorted(lengths)  # window sizes to slide over training text

    def texts(self, batch: pa.Table) -> list[pa.Array]:
        m = batch["messages"]
        return {
            "instruction": [first_user_turn(m)],
            "response": [last_assistant_turn(m)],
            "both": [first_user_turn(m), last_assistant_turn(m)],
            "conversation": [conversation_text(m)],
        }[self.fields]

    def contamination(self, batch: pa.Table) -> list[str | None]:
        """Per row: the first benchmark it overlaps, or None."""
        hit = np.full(batch.num_rows, -1)
        for text in self.texts(batch):
            hashes, offsets = word_hashes(text)
            for n in self.lengths:
                g, rows = ngram_hashes(hashes, offsets, n, short_rows=False)
                pos = np.searchsorted(self.grams, g)
                pos[pos == len(self.grams)] = 0
                match = self.grams[pos] == g
                for row, owner in zip(rows[match], self.owners[pos[match]]):
                    if hit[row] < 0:
                        hit[row] = owner
        return [self.names[h] if h >= 0 else None for h in hit]

    def __call__(self, batch: pa.Table) -> StageResult:
        found = self.contamination(batch)
        drop = pa.array([f is not None for f in found])
        reasons = pa.array([f"contaminated:{f}" for f in found if f is not None], pa.string())
        import pyarrow.compute as pc

        return StageResult(kept=batch.filter(pc.invert(drop)), dropped=batch.filter(drop).append_column("reason", reasons))


def _expand(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        matches = sorted(glob.glob(os.path.expanduser(p))) if glob.has_magic(p) else [p]
        if not matches:
            raise CurateError(f"decontaminate: no benchmark file matches {p}")
        out.extend(matches)
    return out


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".jsonl", ".json"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base
