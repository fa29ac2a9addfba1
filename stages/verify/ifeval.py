"""IFEval-style stages: `add_constraints` adds sampled verifiable constraints to instructions
(a generator: generators/add_constraints.py, re-exported here); `verify_constraints` keeps the
responses that satisfy every constraint their row records."""

from __future__ import annotations

import json

import pyarrow as pa

from curate.generators.add_constraints import AddConstraints  # noqa: F401  (it moved; the old import keeps working)
from curate.stages.base import Resources, Stage, StageResult
from curate.stages.verify import rows as R
from curate.stages.verify.constraints import CONSTRAINTS, check


def as_constraint_list(value) -> list | None:
    """meta's constraints as a list: a list as is, one constraint object as a list of one, JSON
    text of either parsed (as ingest parses a `meta` given as text); None for anything else."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) else None


class VerifyConstraints(R.VerifierStage):
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
    SCORES = ("constraints_satisfied",)

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
            constraints = as_constraint_list(constraints)
            if constraints is None:  # neither a list nor JSON text of one: it cannot be read letter by letter
                verdicts.append(R.RowVerdict(self.verifier, False, "checker", {"kind": "invalid_constraint", "checked": 0,
                                                                                "failed": [], "invalid": ["not_a_list"]},
                                             f"{self.verifier}:invalid_constraint:not_a_list"))
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
