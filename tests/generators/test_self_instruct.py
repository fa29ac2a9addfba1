"""Self-Instruct's parser, filters and similarity check on recorded completions (written for
these tests: good, partial and garbage outputs), and the stage's rows when fed them."""

import json
import random
from pathlib import Path
from collections import Counter

import pytest

from curate.generators.backends.base import Backend, Completion
from curate.generators.self_instruct import SelfInstruct, examples_block, parse_tasks, rejection_reason
from curate.generators.similarity import RougeIndex, lcs_length, rouge_l, rouge_tokens
from curate.pipeline.dag import apply_stage
from curate.storage import schema as S
from checks import seed_batch

GOOD = ("Suggest three names for a bakery that sells only sourdough.\n"
        "Task 10: Explain why the sky looks red at sunset to a ten-year-old.\n"
        "Task 11: Rewrite the sentence 'She don't like apples' in correct English.\n")
PARTIAL = "List the planets in order of their distance from the sun.\nTask 10: Summarise the plot of Hamlet in fif"
GARBAGE = "¿¿ ## ??"


def test_parse_tasks_splits_the_continuation():
    tasks, cut = parse_tasks(GOOD, 9, "stop")
    assert tasks == ["Suggest three names for a bakery that sells only sourdough.",
                     "Explain why the sky looks red at sunset to a ten-year-old.",
                     "Rewrite the sentence 'She don't like apples' in correct English."]
    assert not cut


def test_parse_tasks_flags_a_cut_off_last_task():
    tasks, cut = parse_tasks(PARTIAL, 9, "length")
    assert tasks[-1] == "Summarise the plot of Hamlet in fif" and cut


@pytest.mark.parametrize("text", ["", "   \n  "])
def test_parse_tasks_on_empty_output(text):
    assert parse_tasks(text, 9, "stop") == ([], False)


def test_parse_tasks_accepts_markdown_headers():
    tasks, _ = parse_tasks("Write a haiku about rain.\n**Task 10:** Name two prime numbers above 50.", 9, "stop")
    assert tasks == ["Write a haiku about rain.", "Name two prime numbers above 50."]


@pytest.mark.parametrize("task, reason", [
    ("Hi there.", "too_short"),
    ("word " * 151, "too_long"),
    ("Draw a picture of a cat sitting on a mat.", "unsuitable_for_text"),
    ("Summarise the attached file in two sentences.", "unsuitable_for_text"),
    ("?? what is the capital of France please", "bad_start"),
    ("Explain how a bicycle gear works.", None),
    ('"Translate this sentence into French: good morning."', None),
])
def test_rejection_rules(task, reason):
    assert rejection_reason(task) == reason


def _dp_lcs(a, b):
    m = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            m[i + 1][j + 1] = m[i][j] + 1 if x == y else max(m[i][j + 1], m[i + 1][j])
    return m[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]  # past 64: several machine words
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _dp_lcs(a, b)


def test_rouge_index_finds_the_closest_instruction_above_the_floor():
    index = RougeIndex()
    for text in ["Give me three tips for staying healthy.", "Translate the sentence into Spanish.", "Write a poem about the sea."]:
        index.add(text)
    score, similar = index.closest("Give me three tips for staying healthy and fit.", 0.7)
    assert similar == "Give me three tips for staying healthy." and score == pytest.approx(
        rouge_l(rouge_tokens(similar), rouge_tokens("Give me three tips for staying healthy and fit.")))
    score, similar = index.closest("Describe the water cycle.", 0.7)
    assert similar is None and score < 0.7


class Recorded(Backend):
    """Answers every Self-Instruct prompt from a queue of recorded continuations."""

    model = "recorded"

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = []

    def generate(self, requests):
        self.prompts.extend(r.messages[-1]["content"] for r in requests)
        return [[Completion(*self.replies.pop(0), 40, 20) if self.replies else Completion("", "stop", 10, 0)] for _ in requests]


SEEDS = ["Give me three tips for staying healthy.", "Translate the sentence into Spanish: I like apples.",
         "Write a short poem about the sea.", "What is the capital of Australia?"]


def test_stage_adds_new_tasks_beside_the_seeds_and_records_every_rejection():
    stage = SelfInstruct(backend={"kind": "openai", "model": "recorded"}, per_seed=1.0, seed_examples=3, max_rounds=5)
    stage.backend = Recorded([
        (GOOD, "stop"),
        ("Give me three tips for staying healthy.\nTask 5: Draw a map of Europe.", "stop"),  # copy of a seed; unsuitable
        (GARBAGE, "stop"),  # one short "task": too short
        ("", "stop"),  # nothing at all: unparseable
        (PARTIAL, "length"),  # the planets task is new; the Hamlet one is cut off
    ])
    batch = seed_batch(SEEDS)
    out = apply_stage(stage, "self_instruct", batch).to_pylist()
    counts = Counter((r[S.STATUS], r["origin"], r[S.REASON]) for r in out)
    assert counts[("kept", "seed", None)] == 4  # the seeds stay
    assert counts[("kept", "selfinstruct", None)] == 4  # three from GOOD, the planets: the target of one per seed
    for reason in ("too_similar", "unsuitable_for_text", "too_short", "unparseable", "truncated"):
        assert counts[("dropped", "selfinstruct", reason)] == 1, reason
    assert abs(sum(r[S.WEIGHT] for r in out) - 4.0) < 1e-9 and all(r[S.WEIGHT] > 0 for r in out)
    new = [r for r in out if r["origin"] == "selfinstruct"]
    seed_ids = set(batch["id"].to_pylist())
    for r in new:
        meta = json.loads(r["meta"])
        assert meta["generator"] == "self_instruct" and meta["template"] == "self_instruct/1" and meta["model"] == "recorded"
        assert 1 <= len(r["parent_ids"]) and set(r["parent_ids"]) <= seed_ids | {x["id"] for x in new}
    similar = next(r for r in new if r[S.REASON] == "too_similar")
    assert json.loads(similar["meta"])["similar_to"] == SEEDS[0]
    unparseable = next(r for r in new if r[S.REASON] == "unparseable")
    assert json.loads(unparseable["meta"])["raw"] == ""
    # The in-context examples are numbered tasks and the prompt ends where the model continues.
    first = stage.backend.prompts[0]
    assert first.rstrip().endswith("Task 4:") and sum(s in first for s in SEEDS) == 3


def test_later_rounds_show_generated_tasks_and_stop_at_the_target():
    stage = SelfInstruct(backend={"kind": "openai", "model": "recorded"}, per_seed=0.5, seed_examples=2,
                         generated_examples=1, max_rounds=5)
    stage.backend = Recorded([("Name a famous bridge in Asia and its length.", "stop"),
                              ("Explain the rules of chess castling briefly.", "stop"),
                              ("Describe how rainbows form in the sky.", "stop")])
    out = apply_stage(stage, "self_instruct", seed_batch(SEEDS)).to_pylist()
    new = [r for r in out if r["origin"] == "selfinstruct" and r[S.STATUS] == "kept"]
    assert len(new) == 2  # per_seed 0.5 × 4 seeds; the third reply is never asked for
    assert "Name a famous bridge in Asia" in stage.backend.prompts[1]  # round two shows round one's task
    assert len(stage.backend.prompts) == 2


def test_prompts_are_fixed_by_the_batch_so_reruns_hit_the_cache():
    def prompts():
        stage = SelfInstruct(backend={"kind": "openai", "model": "recorded"}, max_rounds=2, seed=7)
        stage.backend = Recorded([])
        apply_stage(stage, "self_instruct", seed_batch(SEEDS))
        return stage.backend.prompts

    assert prompts() == prompts()


def test_examples_block_numbers_tasks():
    assert examples_block(["a  b", "c"]) == "Task 1: a b\nTask 2: c"


def test_stage_on_chat_model_replies_keeps_only_the_tasks_and_records_unparseable_ones():
    """Replies of a chat model (the case file's, and malformed ones): an opening line or a
    closing remark never becomes an instruction; a reply with no task is one `unparseable`
    row with its raw text."""
    cases = [json.loads(line) for line in
             (Path(__file__).resolve().parents[1] / "data" / "cases" / "selfinstruct-chat-replies.jsonl").read_text().splitlines() if line.strip()]
    cut = "Sure! Here are some more tasks for the assistant:\n\nTask 5:"
    chatter = "Certainly!\n\nLet me know if you would like more tasks."
    stage = SelfInstruct(backend={"kind": "openai", "model": "recorded"}, per_seed=2.0, seed_examples=3, max_rounds=3,
                         prompts_per_round=4)
    stage.backend = Recorded([(c["completion"], "stop") for c in cases] + [(cut, "length"), (chatter, "stop")])
    out = apply_stage(stage, "self_instruct", seed_batch(SEEDS)).to_pylist()
    new = [r for r in out if r["origin"] == "selfinstruct"]
    kept = [r["messages"][0]["content"] for r in new if r[S.STATUS] == "kept"]
    assert kept == [t for c in cases for t in c["expected_tasks"]]
    unparseable = [r for r in new if r[S.REASON] == "unparseable"]
    assert sorted(json.loads(r["meta"])["raw"] for r in unparseable) == sorted([cut, chatter])
    assert all(r["messages"][0]["content"] == json.loads(r["meta"])["raw"].strip() for r in unparseable)
    texts = [r["messages"][0]["content"] for r in new if r[S.REASON] != "unparseable"]
    assert not any(t.startswith(("Sure", "I hope", "Let me know", "Certainly")) for t in texts)


def test_a_task_that_copies_a_seed_or_an_earlier_task_is_a_row_of_its_own():
    """The copy's drop (too_similar) lands on a new row, not on the seed or task it copies, and no
    row lists itself among its parents (seen with Gemma 3 270M: one task restated 40 times)."""
    stage = SelfInstruct(backend={"kind": "openai", "model": "recorded"}, per_seed=1.0, seed_examples=2,
                         generated_examples=1, max_rounds=6)
    task = "Name a famous bridge in Asia and its length."
    stage.backend = Recorded([(task, "stop"), (task, "stop"), (SEEDS[0], "stop"), (task, "stop")])
    batch = seed_batch(SEEDS)
    out = apply_stage(stage, "self_instruct", batch).to_pylist()
    ids = [r["id"] for r in out]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    assert all(r["id"] not in r["parent_ids"] for r in out)
    kept = [r for r in out if r["origin"] == "selfinstruct" and r[S.STATUS] == "kept"]
    copies = [r for r in out if r["origin"] == "selfinstruct" and r[S.REASON] == "too_similar"]
    assert [r["messages"][0]["content"] for r in kept] == [task] and kept[0]["id"] == S.sample_id(kept[0]["messages"])
    assert len(copies) == 3 and {r[S.STATUS] for r in out if r["origin"] == "seed"} == {"kept"}
