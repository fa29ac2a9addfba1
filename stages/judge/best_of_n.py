"""best_of_n: of the responses to one prompt, keep the `keep` highest-scoring (best-of-n
selection; with the `tick` score this is STICK's best-of-n, Cook et al. 2024, arXiv:2410.03608
§5.2: sample n responses, keep the one whose checklist pass rate is highest).

Responses share a prompt when their turns before the last assistant turn are equal (the n
responses `respond` makes for one instruction, and a `tick` refinement beside its original). A
global stage: in the stream each row gets its prompt's id as its key; after the phase, the kept
rows are read in key order with their stored score, best first, and every row after the first
`keep` of its prompt is dropped with a reason that names the score, the row kept in its place
and, in parentheses, the dropped row's value (`drops.value`). Rows without the score rank below
every scored row; on a tie an original response beats a refinement of one (origin `refined`: a
rewrite must do better to replace it), then the smaller id wins.
"""

from __future__ import annotations

import pyarrow as pa

from curate.lib.params import Positive
from curate.stages.base import GlobalStage, Resources, StageResult, param
from curate.stages.judge.tick import prompt_id


class BestOfN(GlobalStage):
    """Per prompt, the `keep` rows with the highest stored score `score` (default `tick`, which
    an earlier stage must write); the others are dropped, `not_best: tick < 0.75 of <id> (0.25)`
    (`not_best: tied with <id>, ...` on a tie, `not_best: no tick score; kept <id>` without one).
    Raises ValueError for keep < 1."""

    name = "best_of_n"
    resources = Resources(num_cpus=1)
    batch_size = 4096
    order = "key"
    decides = "keeps the best-scored rows of each prompt, drops the others"

    @classmethod
    def reads(cls, params: dict) -> set[str]:
        return {f"scores:{param(cls, params, 'score')}"}

    def __init__(self, score: str = "tick", keep: Positive = 1):
        if keep < 1:
            raise ValueError(f"keep is how many responses per prompt stay, at least 1; got {keep}")
        self.score, self.keep = score, keep

    def __call__(self, batch: pa.Table) -> StageResult:
        keys = [bytes.fromhex(prompt_id(m)) for m in batch["messages"].to_pylist()]
        return StageResult.keep(batch, keys=keys)

    def decide_in(self, store, run_id: str, stage_name: str) -> list[tuple[str, str]]:
        reader = store.con.cursor().sql("""
            SELECT k.id, k.key, sc.value, s.origin = 'refined' AS refined FROM row_keys k
            JOIN samples s ON s.run_id = k.run_id AND s.id = k.id AND s.kept
            LEFT JOIN (SELECT id, max(value) AS value FROM scores WHERE run_id = $run AND name = $score GROUP BY id) sc
                   ON sc.id = k.id
            WHERE k.run_id = $run AND k.stage = $stage
            ORDER BY k.key, sc.value DESC NULLS LAST, refined, k.id
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
                    drops.append((id_, f"not_best: no {self.score} score; kept {best[0]}"))
                elif best[1] is not None and value < best[1]:
                    drops.append((id_, f"not_best: {self.score} < {best[1]:.3g} of {best[0]} ({value:.3g})"))
                else:
                    drops.append((id_, f"not_best: {self.score} tied with {best[0]}, kept first: an original before a "
                                       f"refinement, then the smaller id ({value:.3g})"))
        return drops
