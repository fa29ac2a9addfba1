"""DeCRIM: Decompose, Critique and Refine (Ferraz et al. 2024, "LLM Self-Correction with DeCRIM:
Decompose, Critique, and Refine for Enhanced Following of Instructions with Multiple
Constraints", arXiv:2410.06458, §3).

The instruction is decomposed into its constraints (stored: the `decrim` verdicts' `checklist`
detail, and the `checklists` view's shape); a critic checks the response against each
constraint; while some fail, the response is refined from the failed ones and checked again, up
to `max_rounds`. Constraints the row's meta records as verifiable (IFEval-style, `constraints`:
generators/add_constraints.py) are checked by curate's IFEval checker
(stages/verify/constraints.py) instead of the critic: a verdict of strength `checker`. The flow
and what is stored are the checklist judges' (stages/judge/checklist.py): score `<score>`
(default `decrim`: the fraction of constraints met), one `item` verdict per constraint with the
critic's raw answer, and the last refinement as a new row beside the original with its own
score and verdicts, its earlier rounds in meta `history`.

Departures from the paper: the critic answers YES/NO per constraint (one request each) instead
of writing free-text feedback on the whole response; the refinement is told which constraints
failed. The paper's critic is a fine-tuned model; here it is whatever `backend` names.
"""

from __future__ import annotations

from curate.generators.base import row_meta
from curate.lib.params import Fraction, NonNegative, Positive
from curate.stages.judge.checklist import ChecklistJudge
from curate.stages.verify.constraints import CONSTRAINTS, check, describe

TEMPLATE_VERSION = "decrim/1"
VERIFIER = "decrim"


class Decrim(ChecklistJudge):
    """DeCRIM (module docstring; the flow and what is stored: ChecklistJudge). Params: `backend`
    (decomposer, critic and refiner), `score`, `max_items` (constraints kept from the
    decomposition), `max_rounds` (refinement rounds, 0: critique only), `checklist_max_tokens`
    (the decomposition), `judge_max_tokens` (a critique), `refine_max_tokens`,
    `refine_temperature`, `min_score`, `rejudge`, `constraints_key` (meta key of verifiable
    constraints; rows without it get only the critic's), `seed`, `cache`. Raises ValueError for
    a backend without a model, a min_score outside [0, 1] or max_rounds < 0."""

    name = "decrim"
    generator = "decrim"
    template_version = TEMPLATE_VERSION
    verifier = VERIFIER
    checklist_prompt, judge_prompt, refine_prompt = "decrim_decompose.txt", "decrim_critique.txt", "decrim_refine.txt"
    refiner, refine_version = "decrim", TEMPLATE_VERSION
    questions = False  # constraints are statements

    def __init__(self, backend: dict, score: str = "decrim", max_items: Positive = 10, max_rounds: NonNegative = 2,
                 checklist_max_tokens: Positive = 256, judge_max_tokens: Positive = 4, refine_max_tokens: Positive = 512,
                 refine_temperature: float = 0.0, min_score: Fraction | None = None, rejudge: bool = False,
                 constraints_key: str = "constraints", seed: int = 0, cache: str | None = None):
        super().__init__(backend, cache)
        self.setup_judge(score, max_items, checklist_max_tokens, judge_max_tokens, min_score, rejudge, max_rounds,
                         refine_max_tokens, refine_temperature, seed)
        self.constraints_key = constraints_key

    def local_items(self, row: dict):
        """The row's verifiable constraints, each checked by the IFEval checker (an unknown or
        malformed one is left to the critic's decomposition: not checked here)."""
        out = []
        for c in row_meta(row["meta"]).get(self.constraints_key) or []:
            if not isinstance(c, dict) or c.get("id") not in CONSTRAINTS:
                continue
            try:
                text = describe(c)
            except (KeyError, TypeError):
                continue
            out.append((text, lambda response, c=c: _checked(response, c)))
        return out


def _checked(response: str, constraint: dict) -> bool | None:
    try:
        return check(response, constraint)
    except (TypeError, ValueError, AttributeError, KeyError):
        return None
