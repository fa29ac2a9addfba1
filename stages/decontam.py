"""Benchmark decontamination: drop training rows that share a token n-gram with a benchmark prompt.

Default n = 13, as in the GPT-3 and Tülu reports. Text is compared in normalised form
(`curate.stages.text`: NFKC, case folded, punctuation and white space folded, combining marks
kept); tokens are words, and characters in scripts written without spaces (Chinese, Japanese,
Thai...), so there n-grams are character n-grams. A benchmark text shorter than n tokens (but at
least `min_words`) counts as one n-gram of its own length, so short prompts copied verbatim are
caught too.

By default every turn is checked (system prompt, every user turn, every answer), each on its
own; a drop reads `contaminated:<benchmark> turn <k> (<role>)`, k counting the conversation's
messages from 1, naming the earliest turn that overlaps.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.errors import CurateError
from curate.stages.base import Resources, Stage, StageResult
from curate.stages.text import TextPart, conversation_text, ngram_hashes, text_messages, turn_positions, word_hashes

# `text` as a list: the turns checked, each on its own ([instruction, response]: those two)
TurnParts = Annotated[list[Literal["instruction", "response"]], Field(min_length=1)]

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
    """Drop rows that share an n-gram with a benchmark prompt; the reason names the benchmark
    and the turn.

    `text`: which turns are checked. `turns` (default): every turn on its own, whatever its role;
    `instruction`: the first user turn; `response`: the last assistant turn; `[instruction,
    response]`: those two; `conversation`: all turns joined into one text (n-grams may then span
    turns; the reason names no turn). Old spelling: `fields: all | both | ...`."""

    name = "decontaminate"
    # old parameter name → new, with the old values spelt differently (pipeline/config.py)
    ALIASES = {"fields": ("text", {"all": "turns", "both": ["instruction", "response"]})}
    resources = Resources(num_cpus=1)
    batch_size = 2048

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Before any Ray work (pipeline/preflight.py): `benchmarks` given as an empty list or
        mapping is an error (nothing would be checked); each path or glob in it must match at
        least one readable file. Left out, the stage's own default set (if it has one) is used."""
        import inspect

        from curate.pipeline.preflight import PreflightError, check_files

        benchmarks = params.get("benchmarks")
        default = inspect.signature(cls.__init__).parameters["benchmarks"].default
        if benchmarks is None or benchmarks == default:  # the stage's own default set: its business
            return
        if not benchmarks:
            bundled = default is not inspect.Parameter.empty
            raise PreflightError(f"{cls.name}.benchmarks", "empty, so no row would be checked for contamination",
                                 "list benchmark prompt files (JSONL or JSON; globs allowed; `bundled`: curate's own set)"
                                 + (", or leave the key out for the bundled set" if bundled else ", or remove the stage"))
        check_files(expand_bundled(benchmarks), f"{cls.name}.benchmarks", what="benchmark file")

    def __init__(self, benchmarks: list[str] | dict[str, str], ngram: int = 13, min_words: int = 8,
                 text: Literal["turns"] | TextPart | TurnParts = "turns"):
        self.ngram = ngram
        self.text = text
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

    def turns(self, m: pa.Array) -> np.ndarray:
        """Indices into the flattened turns of `m` (a batch's text_messages) that `text` selects,
        ascending (so each row's turns come in conversation order)."""
        total = int(pc.sum(pc.fill_null(pc.list_value_length(m), 0)).as_py() or 0)
        if self.text == "turns":
            return np.arange(total)
        where = {"instruction": ("user", False), "response": ("assistant", True)}
        picks = [where[part] for part in ([self.text] if isinstance(self.text, str) else self.text)]
        chosen = np.concatenate([turn_positions(m, role, last) for role, last in picks])
        return np.unique(chosen[chosen >= 0])

    def hits(self, text: pa.Array) -> np.ndarray:
        """Per text: the index of the first benchmark it shares an n-gram with, or -1."""
        hit = np.full(len(text), -1)
        hashes, offsets = word_hashes(text)
        for n in self.lengths:
            g, rows = ngram_hashes(hashes, offsets, n, short_rows=False)
            pos = np.searchsorted(self.grams, g)
            pos[pos == len(self.grams)] = 0
            match = self.grams[pos] == g
            for row, owner in zip(rows[match], self.owners[pos[match]]):
                if hit[row] < 0:
                    hit[row] = owner
        return hit

    def contamination(self, batch: pa.Table) -> list[str | None]:
        """Per row: None, or what it overlaps: `<benchmark> turn <k> (<role>)` for its earliest
        contaminated turn (k from 1 over all its messages), `<benchmark> (conversation)` when
        `text` is `conversation`."""
        out: list[str | None] = [None] * batch.num_rows
        if self.text == "conversation":
            for row, h in enumerate(self.hits(conversation_text(text_messages(batch)))):
                if h >= 0:
                    out[row] = f"{self.names[h]} (conversation)"
            return out
        m = text_messages(batch)
        m = m.combine_chunks() if isinstance(m, pa.ChunkedArray) else m
        flat = pc.list_flatten(m)
        selected = self.turns(m)
        if len(selected) == 0:
            return out
        contents = flat.field("content")
        hit = self.hits(contents if len(selected) == len(contents) else contents.take(pa.array(selected)))
        found = np.flatnonzero(hit >= 0)
        if len(found) == 0:
            return out
        parents = pc.list_parent_indices(m).to_numpy()
        lengths = pc.fill_null(pc.list_value_length(m), 0).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        turn_idx = selected[found]
        rows, first = np.unique(parents[turn_idx], return_index=True)  # earliest turn per row
        roles = flat.field("role").take(pa.array(turn_idx[first])).to_pylist()
        for row, t, h, role in zip(rows.tolist(), turn_idx[first].tolist(), hit[found][first].tolist(), roles):
            out[row] = f"{self.names[h]} turn {t - starts[row] + 1} ({role})"
        return out

    def __call__(self, batch: pa.Table) -> StageResult:
        found = self.contamination(batch)
        return StageResult.split(batch, [None if f is None else f"contaminated:{f}" for f in found])


BUNDLED = "bundled"  # in `benchmarks`: the benchmark-style prompts shipped in curate/data/bench_*.jsonl


def bundled_benchmarks() -> list[str]:
    """The benchmark-style prompt files shipped with curate (curate/data/bench_*.jsonl: Python
    functions, math word problems, instruction-following and open questions, written for this
    project), wherever curate is installed. Raises CurateError when the installation lacks them."""
    import curate

    for base in curate.__path__:
        found = sorted(glob.glob(os.path.join(base, "data", "bench_*.jsonl")))
        if found:
            return found
    raise CurateError("the bundled benchmark prompts (curate/data/bench_*.jsonl) are missing from this installation")


def expand_bundled(patterns):
    """`patterns` with the name `bundled` replaced by the bundled files (a list stays a list)."""
    if patterns == BUNDLED:
        return bundled_benchmarks()
    if isinstance(patterns, (list, tuple)):
        return [f for p in patterns for f in (bundled_benchmarks() if p == BUNDLED else [p])]
    return patterns


def _expand(paths: list[str]) -> list[str]:
    out = []
    for p in expand_bundled(list(paths)):
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
