"""best_of_n: of the responses to one prompt, keep the `keep` highest-scoring (best-of-n
selection; with the `tick` score this is STICK's best-of-n, Cook et al. 2024, arXiv:2410.03608
§5.2: sample n responses, keep the one whose checklist pass rate is highest).

Responses share a prompt when their turns before the last assistant turn are equal (the n
responses `respond` makes for one instruction, and a `tick` refinement beside its original). A
global stage: in the stream each row gets its prompt's id as its key; after the phase, the kept
rows are read in key order with their stored score, best first, and every row after the first
`keep` of its prompt is dropped with a reason that names the score, its value, and the row kept
in its place. Rows without the score rank below every scored row; ties go to the smaller id.
"""

from __future__ import annotations

import pyarrow as pa

from curate.stages.base import GlobalStage, Resources, StageResult, param
from curate.stages.judge.tick import prompt_id


class BestOfN(GlobalStage):
    """Per prompt, the `keep` rows with the highest stored score `score` (default `tick`, which
    an earlier stage must write); the others are dropped, `best_of_n: tick 0.25 < 0.75 of <id>`
    (`no tick score` for a row without one). Raises ValueError for keep < 1."""

    name = "best_of_n"
    resources = Resources(num_cpus=1)
    batch_size = 4096
    order = "key"
    decides = "keeps the best-scored rows of each prompt, drops the others"

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        return {f"scores:{param(cls, params, 'score')}"}

    def __init__(self, score: str = "tick", keep: int = 1):
        if keep < 1:
            raise ValueError(f"keep is how many responses per prompt stay, at least 1; got {keep}")
        self.score, self.keep = score, keep

    def __call__(self, batch: pa.Table) -> StageResult:
        keys = [bytes.fromhex(prompt_id(m)) for m in batch["messages"].to_pylist()]
        return StageResult.keep(batch, keys=keys)

    def decide_in(self, store, run_id: str, stage_name: str) -> list[tuple[str, str]]:
        reader = store.con.cursor().sql("""
            SELECT k.id, k.key, sc.value FROM row_keys k
            JOIN samples s ON s.run_id = k.run_id AND s.id = k.id AND s.kept
            LEFT JOIN (SELECT id, max(value) AS value FROM scores WHERE run_id = $run AND name = $score GROUP BY id) sc
                   ON sc.id = k.id
            WHERE k.run_id = $run AND k.stage = $stage
            ORDER BY k.key, sc.value DESC NULLS LAST, k.id
        """, params={"run": run_id, "stage": stage_name, "score": self.score}).to_arrow_reader(65_536)
        return self.decide(reader)

    def decide(self, batches) -> list[tuple[str, str]]:
        """(id, reason) of every row past the first `keep` of its key, from (id, key, value)
        batches sorted by key, then value (best first)."""
        drops, last_key, seen, best = [], None, 0, None
        for batch in batches:
            values = batch.column("value").to_pylist() if "value" in batch.schema.names else [None] * batch.num_rows
            for id_, key, value in zip(batch.column("id").to_pylist(), batch.column("key").to_pylist(), values):
                if key != last_key:
                    last_key, seen, best = key, 0, (id_, value)
                seen += 1
                if seen <= self.keep:
                    continue
                if value is None:
                    drops.append((id_, f"best_of_n: no {self.score} score; kept {best[0]}"))
                else:
                    drops.append((id_, f"best_of_n: {self.score} {value:.3g} < {best[1]:.3g} of {best[0]}"
                                  if best[1] is not None and value < best[1] else
                                  f"best_of_n: {self.score} {value:.3g}, tied with {best[0]} (smaller id kept)"))
        return drops
