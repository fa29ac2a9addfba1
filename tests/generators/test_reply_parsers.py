"""The generators' parsers on replies shaped like chat models' (written for these tests, after
the shapes instruction-tuned models reply in): an opening line, their own numbering or headers,
quotes and fences around the answer, a closing remark; and malformed replies, which must not
crash a parser and must end as `unparseable` rows that keep the raw text."""

import json
import random
from pathlib import Path

import pytest

from curate.generators.evol import parse_evolved
from curate.generators.replies import is_closer, is_opener, numbered_items, strip_fence, unwrap
from curate.generators.self_instruct import parse_task_reply, parse_tasks
from curate.generators.skillmix import parse_pair, parse_skills

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"
A = "Write a limerick about a forgetful cat who loses her keys."
B = "Explain the difference between weather and climate to a ten-year-old."
C = "List four benefits of stretching before a morning run."


def chat_rows():
    return [json.loads(line) for line in (CASES / "selfinstruct-chat-replies.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("row", chat_rows(), ids=lambda r: r["completion"][:30])
def test_case_file_chat_replies_give_exactly_the_tasks(row):
    for first in (1, 9, 11):  # the number the prompt ended on does not matter
        tasks, cut = parse_tasks(row["completion"], first, "stop")
        assert tasks == row["expected_tasks"] and not cut


# Self-Instruct: every numbering form, with and without an opening line and a closing remark.
NUMBERINGS = {
    "task_colon": "Task {n}: {t}",
    "task_dot": "Task {n}. {t}",
    "task_dash": "Task {n} - {t}",
    "task_hash": "Task #{n}: {t}",
    "bare_dot": "{n}. {t}",
    "bare_paren": "{n}) {t}",
    "bold_task": "**Task {n}:** {t}",
    "bold_task_outside": "**Task {n}**: {t}",
    "bold_bare": "**{n}.** {t}",
    "heading_task": "### Task {n}\n{t}",
    "heading_task_colon": "## Task {n}: {t}",
    "bold_header_alone": "**Task {n}**\n{t}",
    "bullet_task": "- Task {n}: {t}",
    "whole_line_bold": "**Task {n}: {t}**",
    "quoted": "Task {n}: \"{t}\"",
    "upper_spaced": "TASK {n} : {t}",
    "bare_dash": "{n} - {t}",
    "parenthesised": "({n}) {t}",
}
OPENERS = ["", "Sure! Here are some new tasks for the assistant:", "Certainly. Below are a few more tasks.",
           "Here are three more diverse tasks:", "Of course, continuing the list:", "Okay, here you go:",
           "Absolutely! I'll continue the list.", "## New tasks", "Great, here are more tasks!", "Okay here they are:",
           "Below you will find new tasks for the assistant:", "New instructions:"]
CLOSERS = ["Is there anything else I can help with?", "Do let me know if you want changes.", "Let me know if you'd like more tasks!", "I hope these new tasks are useful for your collection!",
           "Feel free to ask for more.", "These tasks cover a range of topics and formats.", "Hope this helps!",
           "Would you like me to generate more?", "Each of these can be answered with text alone.",
           "Note: all tasks are text-only."]


@pytest.mark.parametrize("form", list(NUMBERINGS))
@pytest.mark.parametrize("opener", OPENERS)
def test_self_instruct_numbering_and_opening_lines(form, opener):
    items = "\n".join(NUMBERINGS[form].format(n=n, t=t) for n, t in ((11, A), (12, B), (13, C)))
    reply = (opener + "\n\n" if opener else "") + items
    assert parse_tasks(reply, 11, "stop") == ([A, B, C], False)


# A remark that could be a task's own note ("Note: ...", "Each of these ...") closes the list only
# after a blank line; the others right under the last task too.
ENDINGS = [(closer, sep) for closer in CLOSERS for sep in ("\n\n", "\n") if closer and not (sep == "\n" and closer.startswith(("Each", "Note")))]


@pytest.mark.parametrize("form", list(NUMBERINGS))
@pytest.mark.parametrize("closer, sep", [("", ""), *ENDINGS])
def test_self_instruct_closing_remarks(form, closer, sep):
    items = "\n".join(NUMBERINGS[form].format(n=n, t=t) for n, t in ((11, A), (12, B)))
    reply = parse_task_reply("Sure! Here are two more:\n\n" + items + sep + closer)
    assert reply.tasks == [A, B]
    assert reply.closed == bool(closer)


def test_a_note_right_under_a_task_is_part_of_it():
    reply = f"Task 11: {A}\nTask 12: Write a story about a lighthouse keeper.\nNote: keep it under 100 words."
    assert parse_tasks(reply, 11, "stop")[0] == [A, "Write a story about a lighthouse keeper. Note: keep it under 100 words."]


def test_a_closing_remark_means_the_last_task_was_not_cut_off():
    reply = f"Task 11: {A}\nTask 12: {B}\n\nLet me know if you need more!"
    assert parse_tasks(reply, 11, "length") == ([A, B], False)
    assert parse_tasks(f"Task 11: {A}\nTask 12: Summarise the plot of Ham", 11, "length")[1]


def test_a_base_model_continuation_keeps_its_unnumbered_first_task():
    assert parse_tasks(f"{A}\nTask 12: {B}\nTask 13: {C}", 11, "stop") == ([A, B, C], False)
    assert parse_tasks(f"{A}\n12. {B}", 11, "stop") == ([A, B], False)


def test_a_tasks_own_numbered_list_or_input_stays_inside_it():
    one = "Put these steps of baking bread in order:\n1. Bake\n2. Mix\n3. Knead"
    assert parse_tasks(one, 11, "stop")[0] == ["Put these steps of baking bread in order: 1. Bake 2. Mix 3. Knead"]
    with_input = "Task 11: Rewrite this sentence formally:\n\"gonna be late lol\"\nTask 12: " + B
    assert parse_tasks(with_input, 11, "stop")[0] == ['Rewrite this sentence formally: "gonna be late lol"', B]
    compare = "Compare these two ways of working:\n1. Agile development with two-week sprints\n2. Waterfall with fixed phases and sign-offs"
    assert parse_tasks(compare, 11, "stop")[0] == [" ".join(compare.split())]
    listed = f"Task 11: Rank these planets by size:\n1. Mars\n2. Earth\n3. Jupiter\nTask 12: {B}"
    assert parse_tasks(listed, 11, "stop")[0] == ["Rank these planets by size: 1. Mars 2. Earth 3. Jupiter", B]


def test_tasks_that_look_a_little_like_chat_are_kept():
    for task in ["Great Britain has how many countries? Name them.", "Here is a list of numbers: 4, 8, 15. Find their mean.",
                 "Let me know the three largest deserts on Earth.", "These are my symptoms: cough and fever. What could it be?"]:
        assert parse_tasks(task, 11, "stop")[0] == [task], task
        assert parse_tasks(f"{task}\nTask 12: {B}", 11, "stop")[0] == [task, B], task


@pytest.mark.parametrize("reply", ["", "   \n", "Sure! Here are some new tasks:", "Sure!\n\nLet me know if you need more!",
                                   "```\n```", "**Task 11**\n**Task 12**", "Sure!\n\nI hope these help!"])
def test_replies_with_no_task_give_none(reply):
    assert parse_tasks(reply, 11, "stop") == ([], False)


def test_fences_and_rules_around_the_list_are_dropped():
    reply = f"Here you go:\n```\nTask 11: {A}\nTask 12: {B}\n```\n---\nEnjoy!"
    assert parse_tasks(reply, 11, "stop")[0] == [A, B]


# Evol-Instruct.
REWRITE = "Explain photosynthesis in three steps, citing one experiment for each step."


@pytest.mark.parametrize("reply", [
    REWRITE,
    f"#Rewritten Prompt#:\n{REWRITE}",
    f"#Rewritten Prompt#: {REWRITE}",
    f"Sure, here is the rewritten prompt:\n\n{REWRITE}",
    f"Sure! Here's the rewritten prompt:\n\n\"{REWRITE}\"",
    f"Certainly. Here is a more complex version of the prompt:\n{REWRITE}\n\nThis version adds a constraint on the number of steps.",
    f"**Rewritten Prompt:**\n{REWRITE}",
    f"**Rewritten Prompt**: {REWRITE}",
    f"### Rewritten Prompt\n{REWRITE}\n\nLet me know if you want another version!",
    f"Rewritten prompt: “{REWRITE}”",
    f"```\n{REWRITE}\n```",
    f"Of course! Here's the rewritten prompt:\n```text\n{REWRITE}\n```\nI added a requirement to cite an experiment.",
    f"#The Given Prompt#:\nExplain photosynthesis.\n#Rewritten Prompt#:\n{REWRITE}",
    f"#Rewritten Prompt#:\n{REWRITE}\n\n#Explanation#:\nThe rewrite adds structure.",
    f"New prompt: {REWRITE}\n\nExplanation: I asked for experiments.",
    f"Sure, here's a harder version: {REWRITE}",
    f"Here is the revised prompt:\n\n**{REWRITE}**\n\nIn this rewritten prompt, the reader must cite experiments.",
    f"#Created Prompt#:\n'{REWRITE}'",
    f"The rewritten prompt is:\n{REWRITE}",
    f"Rewritten Prompt (more complex): {REWRITE}",
    f"Here's a more challenging version of the prompt:\n\n{REWRITE}\n\nThis adds a requirement to cite experiments.",
])
def test_evol_reads_the_rewritten_prompt_out_of_chat(reply):
    assert parse_evolved(reply) == REWRITE


def test_evol_keeps_a_multi_line_prompt_with_data_and_code_whole():
    table = "Here is a table of July temperatures:\n| City | °C |\n| --- | --- |\n| Oslo | 17 |\n| Cairo | 28 |\nWhich city is warmest, and by how much?"
    assert parse_evolved(table) == table
    assert parse_evolved("#Rewritten Prompt#:\n" + table + "\n\nI added a table of data.") == table
    code = "Given the function below, find the bug and explain the fix:\n```python\ndef f(x):\n    return x +\n```"
    assert parse_evolved(code) == code
    opens_with_code = "```python\ndef f(x):\n    return x * 2\n```\nWhat does f(21) return, and why?"
    assert parse_evolved(opens_with_code) == opens_with_code


@pytest.mark.parametrize("reply", ["", "  \n", "### Rewritten Prompt ###", "Sure, here is the rewritten prompt:",
                                   "I'm sorry, but I can't rewrite this prompt.", "```\n```", '""', "#Rewritten Prompt#:\n\n"])
def test_evol_unparseable_replies(reply):
    assert parse_evolved(reply) is None


# SkillMix.
ARITH = {"name": "Arithmetic", "definition": "Carrying out sums and products accurately."}
UNITS = {"name": "Unit conversion", "definition": "Changing quantities between units of measure."}


@pytest.mark.parametrize("reply", [
    "Skill: Arithmetic | Carrying out sums and products accurately.\nSkill: Unit conversion | Changing quantities between units of measure.",
    "Sure! Here are the skills needed for this task:\n\nSkill: Arithmetic | Carrying out sums and products accurately.\n"
    "Skill: Unit conversion | Changing quantities between units of measure.\n\nLet me know if you need more detail!",
    "1. **Arithmetic** — Carrying out sums and products accurately.\n2. **Unit conversion** — Changing quantities between units of measure.",
    "- Arithmetic: Carrying out sums and products accurately.\n- Unit conversion: Changing quantities between units of measure.",
    "| Skill | Definition |\n|---|---|\n| Arithmetic | Carrying out sums and products accurately. |\n"
    "| Unit conversion | Changing quantities between units of measure. |",
    "### Skill 1: Arithmetic\nDefinition: Carrying out sums and products accurately.\n\n### Skill 2: Unit conversion\n"
    "Definition: Changing quantities between units of measure.",
    "1. **Arithmetic**\n   Carrying out sums and products accurately.\n2. **Unit conversion**\n   Changing quantities between units of measure.",
    "- **Name:** Arithmetic\n  **Definition:** Carrying out sums and products accurately.\n- **Name:** Unit conversion\n"
    "  **Definition:** Changing quantities between units of measure.",
    "Skill: Arithmetic | Definition: Carrying out sums and products accurately.\nSkill: Unit conversion | Changing quantities "
    "between units of measure.\n\nNote: these skills overlap with each other a lot.",
    "```\nSkill: Arithmetic | Carrying out sums and products accurately.\nSkill: Unit conversion | Changing quantities between units of measure.\n```",
])
def test_skillmix_reads_skill_lists_in_chat_shapes(reply):
    assert parse_skills(reply) == [ARITH, UNITS]


@pytest.mark.parametrize("reply", ["Sure! Here are 3 skills: arithmetic, conversions, clarity.", "Note: these skills overlap with each other.",
                                   "Here are the skills needed for this task:", "These skills: are all about numbers and units."])
def test_skillmix_chat_lines_are_no_skills(reply):
    assert parse_skills(reply) == []


Q, ANS = "Plan a 3-day trip to Kyoto for under $500.", "Day 1: Fushimi Inari (free).\nDay 2: Nishiki market."


@pytest.mark.parametrize("reply", [
    f"## Instruction\n{Q}\n## Response\n{ANS}",
    f"Sure! Here's a request and an answer:\n\n## Instruction\n{Q}\n## Response\n{ANS}\n\nThis request requires both budgeting and planning.",
    f"**Instruction:** {Q}\n**Response:**\n{ANS}\n\nLet me know if you'd like another example!",
    f"### Instruction:\n{Q}\n\n### Response:\n{ANS}\n\n**Skills used:** budgeting, itinerary planning",
    f"**Request:** {Q}\n**Answer:**\n{ANS}",
    f"## Request\n\"{Q}\"\n## Answer\n{ANS}\n\n---\n\nFeel free to ask for another pair.",
    f"User: {Q}\nAssistant: {ANS}",
    f"### Instruction ###\n{Q}\n### Response ###\n{ANS}",
    f"Critique: the request is vague.\n\nImproved version:\n## Instruction\n{Q}\n## Response\n{ANS}\n\n---\nNote: both skills are needed.",
])
def test_skillmix_reads_the_pair_out_of_chat(reply):
    assert parse_pair(reply) == (Q, ANS)


def test_skillmix_pair_keeps_the_answers_own_headers_and_code():
    quiz = "## Instruction\nQuiz me on sums.\n## Response\nQuestion: What is 2+2?\nAnswer: 4.\nUser: next one?"
    assert parse_pair(quiz) == ("Quiz me on sums.", "Question: What is 2+2?\nAnswer: 4.\nUser: next one?")
    code = "## Instruction\nWrite a Python function that adds two numbers.\n## Response\n```python\ndef add(a, b):\n    return a + b\n```"
    assert parse_pair(code)[1] == "```python\ndef add(a, b):\n    return a + b\n```"


@pytest.mark.parametrize("reply", ["", "Here is a nice question about maths.", "## Instruction\nWrite a limerick about tea.\n## Response\n",
                                   "## Response\nOnly an answer.", "Sure! Let me know if you need anything else.",
                                   "## Instruction\nold\n## Response\nold answer\nImproved:\n## Instruction\nA new one, cut off"])
def test_skillmix_unparseable_pairs(reply):
    assert parse_pair(reply) is None


# The shared helpers, and no parser crashes on garbage.
def test_unwrap_and_fences():
    assert unwrap('**"Name two rivers."**') == "Name two rivers."
    assert unwrap("`x`") == "x" and unwrap('"a" and "b"') == '"a" and "b"'
    assert strip_fence("```json\n{}\n```") == "{}" and strip_fence("a\n```\nb\n```") == "a\n```\nb\n```"


def test_openers_and_closers():
    assert is_opener("Sure! Here are some new tasks:") and is_opener("Here are five more tasks.")
    assert not is_opener("Great Britain has four countries; name them.") and not is_opener("Here is a list: 1, 2. Sum it.")
    assert is_closer("Let me know if you need more!", after_blank=False)
    assert is_closer("Enjoy!", after_blank=True) and not is_closer("Enjoy!", after_blank=False)
    assert numbered_items("Task 1: a b c d\nTask 2: e f g h").items == [["a b c d"], ["e f g h"]]


def test_no_parser_crashes_on_garbage():
    rng = random.Random(0)
    alphabet = list("abc XYZ019.:)#*-|`\"'\n\t—–“”") + ["Task ", "## ", "**", "Instruction", "Response", "Skill:", "```", "\n\n"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        tasks, _ = parse_tasks(text, 3, rng.choice(["stop", "length", None]))
        assert all(isinstance(t, str) and t for t in tasks)
        evolved = parse_evolved(text)
        assert evolved is None or (isinstance(evolved, str) and evolved)
        assert isinstance(parse_skills(text), list)
        pair = parse_pair(text)
        assert pair is None or (pair[0] and pair[1])
