"""Instruct-SkillMix's parsers on recorded completions (good, partial and garbage), and the
stage's rows, skill records and lineage when fed them."""

import json
from collections import Counter

import pytest

from curate.generators.backends.base import Backend, Completion
from curate.generators.skillmix import SkillMix, parse_pair, parse_skills, skill_key
from curate.pipeline.dag import apply_stage
from curate.storage import schema as S
from checks import seed_batch

SKILLS_GOOD = """Skill: Arithmetic | Carrying out additions and multiplications accurately.
Skill: Unit conversion | Changing quantities between units such as km and miles.
- Clear explanation: Writing steps so that a reader can follow them.
1. **Estimation** — Judging whether a result is of a plausible size."""
SKILLS_PARTIAL = "Skill: Poetic imagery | Using concrete images to evoke feeling.\nSkill: Rhy"
SKILLS_GARBAGE = "blue blue blue 123 ::: ||"


def test_parse_skills_reads_each_line_format():
    skills = parse_skills(SKILLS_GOOD)
    assert [s["name"] for s in skills] == ["Arithmetic", "Unit conversion", "Clear explanation", "Estimation"]
    assert skills[1]["definition"] == "Changing quantities between units such as km and miles."


def test_parse_skills_keeps_the_complete_lines_of_a_partial_reply():
    assert parse_skills(SKILLS_PARTIAL) == [{"name": "Poetic imagery", "definition": "Using concrete images to evoke feeling."}]


@pytest.mark.parametrize("text", [SKILLS_GARBAGE, "", "Skill: x | y"])
def test_parse_skills_on_garbage(text):
    assert parse_skills(text) == []


def test_parse_skills_caps_and_dedupes():
    text = "\n".join(f"Skill: Skill number {i} | Definition of skill {i} here." for i in range(8)) + "\nSkill: skill NUMBER 0 | Again the same skill."
    skills = parse_skills(text, max_skills=5)
    assert len(skills) == 5 and len({skill_key(s["name"]) for s in skills}) == 5


@pytest.mark.parametrize("text, expected", [
    ("## Instruction\nPlan a 3-day trip to Kyoto on a budget.\n## Response\nDay 1: temples.\nDay 2: markets.",
     ("Plan a 3-day trip to Kyoto on a budget.", "Day 1: temples.\nDay 2: markets.")),
    ("Instruction: Convert 5 km to miles.\nResponse: About 3.11 miles.", ("Convert 5 km to miles.", "About 3.11 miles.")),
    ("Critique: too generic.\n## Instruction\nold\n## Response\nold answer\nImproved:\n**Instruction:** Convert 42 km to miles and round.\n**Response:** 26.1 miles.",
     ("Convert 42 km to miles and round.", "26.1 miles.")),
    ("## Instruction\nWrite a limerick about tea.\n## Response\n", None),  # cut off before the answer
    ("Here is a nice question about maths.", None),
    ("", None),
])
def test_parse_pair(text, expected):
    assert parse_pair(text) == expected


class Recorded(Backend):
    model = "recorded"

    def __init__(self, skills: dict[str, str], pairs: list[tuple[str, str]]):
        self.skills, self.pairs = skills, list(pairs)
        self.requests = []

    def generate(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            text = r.messages[0]["content"]
            if "List the skills" in text:
                key = next((k for k in self.skills if k in text), None)
                out.append([Completion(self.skills.get(key, ""), "stop", 30, 20)])
            else:
                out.append([Completion(*self.pairs.pop(0), 40, 60) if self.pairs else Completion("", "stop", 40, 0)])
        return out


SEEDS = ["How many miles is a marathon?", "Write a poem about autumn leaves.", "Say something."]
PAIR = "## Instruction\nA recipe needs 2.5 cups of flour per loaf; how much for 3 loaves, in grams?\n## Response\n7.5 cups, about 940 g."


def test_stage_extracts_skills_then_mixes_pairs():
    stage = SkillMix(backend={"kind": "openai", "model": "recorded"}, per_seed=1.0, k=2)
    stage.backend = Recorded(skills={"marathon": SKILLS_GOOD, "autumn": SKILLS_PARTIAL, "Say something": SKILLS_GARBAGE},
                             pairs=[(PAIR, "stop"), ("no format at all", "stop"), (PAIR.replace("940 g.", "940"), "length")])
    batch = seed_batch(SEEDS)
    out = apply_stage(stage, "skillmix", batch).to_pylist()
    counts = Counter((r[S.STATUS], r["origin"], r[S.REASON]) for r in out)
    assert counts == Counter({("kept", "seed", None): 3, ("kept", "skillmix", None): 1,
                              ("dropped", "skillmix", "unparseable"): 2,  # the garbage skill list, the unformatted pair
                              ("dropped", "skillmix", "truncated"): 1})
    assert abs(sum(r[S.WEIGHT] for r in out) - 3.0) < 1e-9 and all(r[S.WEIGHT] > 0 for r in out)
    seeds = {r["messages"][0]["content"]: json.loads(r["meta"]) for r in out if r["origin"] == "seed"}
    assert [s["name"] for s in seeds[SEEDS[0]]["skills_extracted"]][:2] == ["Arithmetic", "Unit conversion"]
    assert seeds[SEEDS[2]]["skills_extracted"] == []
    pool = {s["name"]: s["definition"] for m in seeds.values() for s in m["skills_extracted"]}
    made = next(r for r in out if r["origin"] == "skillmix" and r[S.STATUS] == "kept")
    meta = json.loads(made["meta"])
    assert len(meta["skills"]) == 2 and all(pool[s["name"]] == s["definition"] for s in meta["skills"])
    assert meta["query_type"] and meta["generator"] == "skillmix" and meta["template"] == "skillmix/1"
    assert made["messages"][1]["content"] == "7.5 cups, about 940 g."
    by_skill = {s["name"]: sid for sid, m in zip(batch["id"].to_pylist(), [seeds[t] for t in SEEDS]) for s in m["skills_extracted"]}
    assert set(made["parent_ids"]) == {by_skill[s["name"]] for s in meta["skills"]}
    # Generation prompts name both skills with their definitions.
    gen = [r for r in stage.backend.requests if "List the skills" not in r.messages[0]["content"]]
    assert len(gen) == 3 and all(gen[0].messages[0]["content"].count("\n- ") == 2 for _ in [0])


def test_refine_adds_a_critique_turn():
    stage = SkillMix(backend={"kind": "openai", "model": "recorded"}, per_seed=1.0, refine=True)
    stage.backend = Recorded(skills={"marathon": SKILLS_GOOD}, pairs=[(PAIR, "stop"), ("Critique: fine.\n" + PAIR, "stop")])
    out = apply_stage(stage, "skillmix", seed_batch(SEEDS[:1])).to_pylist()
    made = [r for r in out if r["origin"] == "skillmix"]
    assert len(made) == 1 and made[0][S.STATUS] == "kept" and json.loads(made[0]["meta"])["refined"]
    second = stage.backend.requests[-1].messages
    assert [m["role"] for m in second] == ["user", "assistant", "user"] and "Critique" in second[-1]["content"]


def test_skill_pairs_are_fixed_by_the_batch_and_seed():
    def pairs(seed):
        stage = SkillMix(backend={"kind": "openai", "model": "recorded"}, per_seed=2.0, seed=seed)
        stage.backend = Recorded(skills={"marathon": SKILLS_GOOD}, pairs=[])
        apply_stage(stage, "skillmix", seed_batch(SEEDS[:1]))
        return [r.messages[0]["content"] for r in stage.backend.requests[1:]]

    assert pairs(42) == pairs(42)
    assert pairs(42) != pairs(1)


def test_stage_on_chat_model_replies():
    """A chat model's skill lists and pairs: chat around them is dropped; unparseable replies
    (skills or pairs) are drops with their raw text, and a refined reply that cannot be read
    keeps the draft it rewrote too."""
    skills = ("Sure! Here are the skills this task needs:\n\n1. **Arithmetic** — Carrying out sums and products accurately.\n"
              "2. **Unit conversion** — Changing quantities between units of measure.\n\nLet me know if you need more detail!")
    no_skills = "Certainly! Here are the skills needed for this task:\n\nI hope this helps!"
    pair = ("Of course! Here's a request and a response:\n\n**Instruction:** How many grams are 2.5 cups of flour?\n"
            "**Response:**\nAbout 313 g, at 125 g per cup.\n\nThis request requires both skills. Let me know if you'd like another pair!")
    stage = SkillMix(backend={"kind": "openai", "model": "recorded"}, per_seed=1.0, k=2)
    stage.backend = Recorded(skills={"marathon": skills, "autumn": no_skills}, pairs=[(pair, "stop"), ("Sure! Happy to help.", "stop")])
    out = apply_stage(stage, "skillmix", seed_batch(SEEDS[:2])).to_pylist()
    seeds = {r["messages"][0]["content"]: json.loads(r["meta"]) for r in out if r["origin"] == "seed"}
    assert [s["name"] for s in seeds[SEEDS[0]]["skills_extracted"]] == ["Arithmetic", "Unit conversion"]
    made = next(r for r in out if r["origin"] == "skillmix" and r[S.STATUS] == "kept")
    assert made["messages"] == [{"role": "user", "content": "How many grams are 2.5 cups of flour?"},
                                {"role": "assistant", "content": "About 313 g, at 125 g per cup."}]
    raws = sorted(json.loads(r["meta"])["raw"] for r in out if r[S.REASON] == "unparseable")
    assert raws == sorted([no_skills, "Sure! Happy to help."])

    stage = SkillMix(backend={"kind": "openai", "model": "recorded"}, per_seed=1.0, refine=True)
    stage.backend = Recorded(skills={"marathon": skills}, pairs=[(pair, "stop"), ("Critique: fine.\nSure, no changes needed!", "stop")])
    out = apply_stage(stage, "skillmix", seed_batch(SEEDS[:1])).to_pylist()
    (bad,) = [r for r in out if r[S.REASON] == "unparseable"]
    meta = json.loads(bad["meta"])
    assert meta["raw"] == "Critique: fine.\nSure, no changes needed!" and meta["raw_draft"] == pair
