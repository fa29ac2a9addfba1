"""IFEval-style stages: `add_constraints` adds sampled verifiable constraints to instructions;
`verify_constraints` keeps the responses that satisfy every constraint their row records."""

from __future__ import annotations

import hashlib
import json
import random

import pyarrow as pa

from curate.stages.base import Resources, Stage, StageResult
from curate.stages.verify import rows as R
from curate.stages.verify.constraints import CONSTRAINTS, check, describe, sample_constraints
from curate.storage import schema as S


class AddConstraints(Stage):
    """Each instruction becomes a new row: its turns up to the last user turn, with `k` sampled
    constraints appended to that turn and recorded in meta (`constraints`). Sampling is seeded by
    (seed, row id), so a rerun adds the same constraints. The parent is stored as expanded."""

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
            child_meta = {**meta, "constraints": chosen, "generator": "add_constraints"}
            children.append({"id": S.sample_id(turns), "messages": turns, "origin": "constrained",
                             "source": f"add_constraints:{source}", "parent_ids": [row_id],
                             "meta": json.dumps(child_meta, sort_keys=True, ensure_ascii=False), S.PARENT: i})
        generated = pa.table({**S.sample_arrays(children), S.PARENT: pa.array([c[S.PARENT] for c in children], pa.int64())})
        return StageResult(kept=batch.slice(0, 0), generated=generated)


class VerifyConstraints(Stage):
    """Keeps the rows whose last assistant turn satisfies every constraint in meta[`constraints_key`]
    (a list of {"id", "kwargs"}), each decided as IFEval's reference checker decides it (see
    `constraints`). A row without constraints passes through unverified, or is dropped
    (`constraints:no_constraints`) when `require_constraints`. A constraint of an unknown type, or
    with kwargs its type cannot take (missing, extra, a relation other than "at least"/"less
    than"), fails the row with its own reason (`constraints:unknown_constraint:<id>`,
    `constraints:invalid_constraint:<id>`: the data is at fault, not the response) and is named in
    the verdict's detail (`unknown` / `invalid`); the others that fail are listed in `failed`. Score `constraints_satisfied`: the share satisfied."""

    name = "verify_constraints"
    resources = Resources(num_cpus=1)
    batch_size = 1024
    verifier = "constraints"

    def __init__(self, constraints_key: str = "constraints", require_constraints: bool = False):
        self.key, self.require = constraints_key, require_constraints

    def __call__(self, batch: pa.Table) -> StageResult:
        verdicts, satisfied = [], []
        for meta, text in zip(R.metas(batch), R.responses(batch)):
            constraints = meta.get(self.key)
            if not constraints:
                verdicts.append(R.RowVerdict(self.verifier, False, "none", {"kind": "no_constraints"},
                                             f"{self.verifier}:no_constraints") if self.require
                                else R.RowVerdict(self.verifier, None))
                satisfied.append(None)
                continue
            failed, unknown, invalid = [], [], []
            for c in constraints:
                if not isinstance(c, dict) or not isinstance(c.get("id"), str) or c["id"] not in CONSTRAINTS:
                    unknown.append(str(c.get("id") if isinstance(c, dict) else c))
                    continue
                try:
                    if not check(text, c):
                        failed.append(c["id"])
                except (TypeError, ValueError, AttributeError):
                    invalid.append(c["id"])
            bad = failed + unknown + invalid
            # A constraint that cannot be checked is the data's fault, not the response's: say so.
            kind = "unknown_constraint" if unknown else "invalid_constraint" if invalid else "unsatisfied" if bad else "passed"
            detail = {"kind": kind, "checked": len(constraints), "failed": failed}
            if unknown:
                detail["unknown"] = unknown
            if invalid:
                detail["invalid"] = invalid
            reason = f"{self.verifier}:" + ",".join(failed) if failed and not (unknown or invalid) else \
                f"{self.verifier}:{kind}:" + ",".join(unknown or invalid)
            verdicts.append(R.RowVerdict(self.verifier, not bad, "checker", detail, reason))
            satisfied.append(1 - len(bad) / len(constraints))
        return R.result(batch, verdicts, {"constraints_satisfied": satisfied})
