"""TICK: checklist judging (Cook et al. 2024, "TICKing All the Boxes: Generated Checklists
Improve LLM Evaluation and Generation", arXiv:2410.03608), and STICK's self-refinement.

Per instruction, the judge model writes a checklist of YES/NO questions (the paper's §3.1 and
its checklist-generation prompt, Appendix; generators/prompts/tick_checklist.txt); each
response is then judged against every question (§3.2), and its score is the fraction answered
YES (the paper's "pass rate"). The flow, what is stored and the refinement are the checklist
judges' (stages/judge/checklist.py): score `<score>` (default `tick`), verdicts of verifier
`tick` (one `checklist` verdict with the questions and the raw output, read by the `checklists`
view; one `item` verdict per question with the raw answer).

Departures from the paper: each question is asked in its own request (the paper asks the
evaluator for all answers in one completion), so a small judge cannot lose its place in a list
and one malformed answer costs one item, not the row; the answer is read from the first word,
not from a format the judge must keep. A checklist is asked once per distinct prompt (the n
responses of one instruction share it: generators/base.py `distinct_calls`, and the LLM cache).
The prompts are dialogues with worked examples as earlier turns, and questions copied from those
examples are dropped (a 270M base model copies them).
"""

from __future__ import annotations

from curate.lib.params import Fraction, Positive
from curate.stages.judge.checklist import (ChecklistJudge, copied_examples, example_lines, instruction_text,  # noqa: F401
                                           last_response, list_lines, parse_answer, prompt_id, prompt_turns)

TEMPLATE_VERSION = "tick/1"
REFINE_VERSION = "stick/1"
VERIFIER = "tick"
MAX_ITEMS = 8  # the paper's prompt asks for two to eight questions


def example_questions() -> frozenset[str]:
    """The questions of the checklist prompt's worked examples (lower case)."""
    return example_lines("tick_checklist.txt", question=True)


def parse_checklist(text: str, max_items: int = MAX_ITEMS, instruction: str = "") -> list[str]:
    """The questions of a checklist reply: after its last `Answer:` if it has one, each line that
    ends in a question mark and has at least three words, bullets and numbering removed,
    repeats (case-insensitively) and copies of the prompt's example questions that share no
    content word with `instruction` removed, at most `max_items`. [] when none is found."""
    return list_lines(text, True, max_items, copied_examples("tick_checklist.txt", True, instruction))


class Tick(ChecklistJudge):
    """TICK checklist judge (module docstring; the flow and what is stored: ChecklistJudge).
    Params: `backend` (the judge), `score`, `max_items`, `checklist_max_tokens`,
    `judge_max_tokens`, `min_score` (drop below: `tick: 0.25 below 0.5`), `rejudge`, `seed`,
    `cache`.

    `refine` (STICK, the paper's §5: self-refinement with checklist feedback): a response that
    fails some questions is rewritten once from its failed questions
    (generators/prompts/stick_refine.txt, `refine_max_tokens`, `refine_temperature`) and the
    rewrite judged against the same checklist; it is a new row beside the original (meta
    `generator: stick`), so a `best_of_n` after this stage keeps whichever scores higher.

    Raises ValueError for a backend without a model or a min_score outside [0, 1]."""

    name = "tick"
    generator = "tick"
    template_version = TEMPLATE_VERSION
    verifier = VERIFIER
    checklist_prompt, judge_prompt, refine_prompt = "tick_checklist.txt", "tick_judge.txt", "stick_refine.txt"
    refiner, refine_version = "stick", REFINE_VERSION

    def __init__(self, backend: dict, score: str = "tick", max_items: Positive = MAX_ITEMS, checklist_max_tokens: Positive = 256,
                 judge_max_tokens: Positive = 4, min_score: Fraction | None = None, rejudge: bool = False, refine: bool = False,
                 refine_max_tokens: Positive = 512, refine_temperature: float = 0.0, seed: int = 0, cache: str | None = None):
        super().__init__(backend, cache)
        self.setup_judge(score, max_items, checklist_max_tokens, judge_max_tokens, min_score, rejudge, 1 if refine else 0,
                         refine_max_tokens, refine_temperature, seed)
