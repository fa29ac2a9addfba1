"""`add_constraints`: make instruction-following tasks out of instructions with IFEval's
verifiable instructions (Zhou et al. 2023, arXiv:2311.07911): each instruction gets sampled,
compatible constraints (stages/verify/constraints.py) that a checker verifies later
(`verify_constraints`, stages/verify/ifeval.py).

A generator, but not an LLM one: its new rows are built with the task base's child-row builder
(generators/base.py `child_row`).
"""

from __future__ import annotations

import hashlib
import random

import pyarrow as pa

from curate.generators.base import child_row, generated_table
from curate.stages.base import Resources, Stage, StageResult
from curate.stages.verify import rows as R
from curate.stages.verify.constraints import CONSTRAINTS, describe, sample_constraints


class AddConstraints(Stage):
    """Each instruction becomes a new row: its turns up to the last user turn, with `k` sampled
    constraints appended to that turn and recorded in meta (`constraints`). Sampling is seeded by
    (seed, row id), so a rerun adds the same constraints. The parent is stored as expanded.

    Rows: origin `constrained`, source `add_constraints:<parent's source>`, `parent_ids` [the
    parent's id], meta the parent's plus `constraints` (a list of {"id", "kwargs"}) and
    `generator: add_constraints`. Raises ValueError for unknown constraint types or bad counts."""

    name = "add_constraints"
    resources = Resources(num_cpus=1)
    batch_size = 1024

    def __init__(self, min_constraints: int = 1, max_constraints: int = 3, types: list[str] | None = None, seed: int = 0):
        unknown = set(types or ()) - set(CONSTRAINTS)
        if unknown:
            raise ValueError(f"unknown constraint types {sorted(unknown)} (known: {', '.join(sorted(CONSTRAINTS))})")
        if not 1 <= min_constraints <= max_constraints:
            raise ValueError("need 1 <= min_constraints <= max_constraints")
        self.min_k, self.max_k, self.types, self.seed = min_constraints, max_constraints, types, seed

    def __call__(self, batch: pa.Table) -> StageResult:
        children = []
        for i, (row_id, messages, meta, source) in enumerate(zip(batch["id"].to_pylist(), batch["messages"].to_pylist(),
                                                                  R.metas(batch), batch["source"].to_pylist())):
            rng = random.Random(hashlib.blake2b(f"{self.seed}:{row_id}".encode(), digest_size=8).digest())
            chosen = sample_constraints(rng, rng.randint(self.min_k, self.max_k), self.types)
            last_user = max(j for j, m in enumerate(messages) if m["role"] == "user")
            turns = [dict(m) for m in messages[: last_user + 1]]
            turns[-1]["content"] = turns[-1]["content"].rstrip() + "\n\n" + " ".join(describe(c) for c in chosen)
            children.append(child_row(turns, {**meta, "constraints": chosen, "generator": "add_constraints"}, origin="constrained",
                                      source=f"add_constraints:{source}", parent_ids=[row_id], parent=i, ensure_ascii=False))
        return StageResult(kept=batch.slice(0, 0), generated=generated_table(children))
