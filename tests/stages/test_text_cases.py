"""Text normalisation and what uses it (exact dedup, near dedup, decontamination), on the cases
of issue 17 items 10-13 (tests/data/cases/, copied from ../shared/cases/) and on one more input
of each kind written here: other scripts, other symbols, other turns."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.stages.decontam import Decontaminate
from curate.stages.dedup import ExactDedup, NearDedup, dedup_text
from curate.stages.ingest import Ingest
from curate.stages.text import key_text, normalise, token_counts, tokens, word_hashes
from curate.storage.schema import sample_arrays, sample_id
from conftest import write_jsonl
from checks import assert_counts_add_up, q

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"


def case_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (CASES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def sid(row: dict) -> str:
    return sample_id(Ingest().parse(json.dumps(row, ensure_ascii=False), "x")["messages"])


def batch_of(rows: list[dict]) -> pa.Table:
    samples = [Ingest().parse(json.dumps(r, ensure_ascii=False), "x") for r in rows]
    for s in samples:
        s.update(origin="seed", source="x", parent_ids=[], meta="{}")
    return pa.table(sample_arrays(samples))


def pair(instruction: str, output: str) -> dict:
    return {"instruction": instruction, "output": output}


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def exact_drops(rows: list[dict], text: str) -> dict[str, str]:
    """ExactDedup without Ray: the stream half on one batch, then the global step on its keys."""
    stage = ExactDedup(text=text)
    batch = batch_of(rows)
    keys = pa.table({"id": batch["id"], "key": stage(batch).keys}).sort_by("key")  # the writer's key order
    return dict(stage.decide(keys.to_batches()))


def near_drops(rows: list[dict], text: str = "conversation", threshold: float = 0.8) -> dict[str, str]:
    stage = NearDedup(threshold=threshold, text=text)
    batch = batch_of(rows)
    keys = pa.table({"id": batch["id"], "key": stage(batch).keys})
    return dict(stage.decide(keys.to_batches()))


def decontam_reasons(rows: list[dict], benchmark: Path, **kw) -> dict[str, str]:
    result = Decontaminate(benchmarks=[str(benchmark)], **kw)(batch_of(rows))
    assert result.kept.num_rows + result.dropped.num_rows == len(rows)
    return dict(zip(result.dropped["id"].to_pylist(), result.reasons))


# ---------------------------------------------------------------- 10. combining marks are letters


def test_case_combining_marks_keep_words_apart_and_fold_case():
    rows = case_rows("combining-marks.jsonl")
    hindi_day, hindi_gift, en, en_lower = rows
    assert normalise(pa.array([hindi_day["instruction"], hindi_gift["instruction"]])).to_pylist() == [
        "दिन शब्द का अर्थ एक वाक्य में बताइए", "दान शब्द का अर्थ एक वाक्य में बताइए"]
    got = exact_drops(rows, text="instruction")
    assert got == {sid(en_lower): f"duplicate_of:{sid(en)}"}  # the Hindi pair stays, the English pair folds


@pytest.mark.parametrize("words", [
    ["படம்", "பாடம்"],                        # Tamil: picture / lesson (vowel sign AA)
    ["দিন", "দান"],                            # Bengali: day / gift (vowel signs I, AA)
    ["ข้าว", "ขาว"],                            # Thai: rice / white (tone mark MAI THO)
    ["عَلَم", "عِلْم", "عَلِمَ"],                  # Arabic: flag / knowledge / he knew (harakat)
    ["ma", "ma\u0300", "ma\u0301", "ma\u0309"],  # Vietnamese, decomposed tones: ghost / but / mother / grave
])
def test_words_that_differ_only_by_a_combining_mark_stay_apart(words):
    rows = [pair(f"Define the word {w} in one sentence.", "A definition.") for w in words]
    assert exact_drops(rows, text="instruction") == {}
    keys = normalise(pa.array(words)).to_pylist()
    assert len(set(keys)) == len(words), keys
    hashes, offsets = word_hashes(pa.array(words))  # what near dedup and decontamination shingle
    assert len({tuple(hashes[a:b].tolist()) for a, b in zip(offsets[:-1], offsets[1:])}) == len(words)


def test_nfkc_and_case_folding_merge_only_spellings_of_one_text():
    same = [
        ("Ｔｏｋｙｏ　ＩＳ　ＢＩＧ", "tokyo is big"),             # full-width letters and space (NFKC)
        ("STRASSE", "straße"),                                   # full case folding, not lower()
        ("ΣΟΦΟΣ", "σοφος"), ("σοφός", "ΣΟΦΌΣ"),                # final sigma
        ("caf\u00e9", "cafe\u0301"),                             # precomposed and decomposed é
        ("co\u00adoperate", "cooperate"),                        # soft hyphen (default ignorable)
        ("ﬁne", "fine"),                                          # ligature
    ]
    for a, b in same:
        assert normalise(pa.array([a])).to_pylist() == normalise(pa.array([b])).to_pylist(), (a, b)
    assert normalise(pa.array(["\u0301abc", "a\u200db", None, ""])).to_pylist() == ["abc", "ab", None, ""]


# ---------------------------------------------------------------- 11. turns that normalise to nothing


def test_case_emoji_only_turns_keep_their_own_keys():
    rows = case_rows("emoji-only-turns.jsonl")
    for on in ("instruction", "conversation"):
        assert exact_drops(rows, text=on) == {}, on
        keys = dedup_text(batch_of(rows), on).to_pylist()
        assert len(set(keys)) == len(rows) and all(keys), keys
    assert near_drops(rows, text="instruction") == {}


@pytest.mark.parametrize("texts", [
    ["???", "!!!", "...", "?!"],        # punctuation only
    [":)", ":(", ";-)", "^_^"],         # ASCII emoticons
    ["→", "★", "©", "∑"],               # symbols
    ["🇫🇷", "🇯🇵", "👍🏽", "❤️"],          # flags, a skin tone, a heart with a variation selector
])
def test_symbol_only_instructions_are_not_one_empty_key(texts):
    rows = [pair(t, f"Reply number {i}.") for i, t in enumerate(texts)]
    assert normalise(pa.array(texts)).to_pylist() == [""] * len(texts)  # nothing is left of the words
    assert len(set(key_text(pa.array(texts)).to_pylist())) == len(texts)
    assert exact_drops(rows, text="instruction") == {}
    assert near_drops(rows, text="instruction") == {}


def test_symbol_only_turns_still_match_their_own_copies():
    first, again = pair("👍", "Glad it helped."), pair("👍 ", "Happy to help!")
    assert exact_drops([first, again], text="instruction") == {sid(again): f"duplicate_of:{sid(first)}"}
    # In a conversation an emoji-only turn counts: same answer, different reaction, kept apart.
    a = chat(("user", "Tell me a joke."), ("assistant", "Why did the cat sit on the keyboard?"), ("user", "😂"), ("assistant", "To keep an eye on the mouse."))
    b = chat(("user", "Tell me a joke."), ("assistant", "Why did the cat sit on the keyboard?"), ("user", "🙄"), ("assistant", "To keep an eye on the mouse."))
    assert exact_drops([a, b], text="conversation") == {}


def test_rows_without_words_never_pair_in_near_dedup():
    stage = NearDedup(threshold=0.8)
    blank = np.full((3, stage.hasher.num_perm), np.iinfo(np.uint32).max, np.uint32)  # what a row without tokens gets
    word = stage.hasher.signatures(pa.array(["one two three four five six"]))
    assert len(stage.candidate_pairs(np.concatenate([blank, word, word]))) == 1  # only the two real rows pair
    # Rows without a user turn (ingest refuses them, a generator might not): an empty instruction matches nothing.
    samples = [{"id": f"r{i}", "messages": [{"role": "assistant", "content": f"Answer {i} without a question."}],
                "origin": "seed", "source": "x", "parent_ids": [], "meta": "{}"} for i in range(3)]
    batch = pa.table(sample_arrays(samples))
    for stage in (NearDedup(threshold=0.8, text="instruction"), ExactDedup(text="instruction")):
        keys = pa.table({"id": batch["id"], "key": stage(batch).keys}).sort_by("key")
        assert stage.decide(keys.to_batches()) == [], stage.name


# ---------------------------------------------------------------- 12. scripts without spaces


def test_case_cjk_near_duplicates_are_caught_like_english_ones():
    rows = case_rows("cjk-near-duplicates.jsonl")
    zh, en, zh_other, zh_copy, en_copy, en_other = rows
    assert near_drops(rows) == {sid(zh_copy): f"near_duplicate_of:{sid(zh)}", sid(en_copy): f"near_duplicate_of:{sid(en)}"}
    assert token_counts(pa.array([zh_other["output"]])).to_pylist() == [28]  # one token per Han character


JA = ("日本の秋は紅葉がとても美しく、多くの人が京都や日光などの名所を訪れます。山々が赤や黄色に染まる景色は、"
      "写真に収めたくなるほど見事で、毎年たくさんの観光客でにぎわいます。紅葉狩りの後には温泉に入ってゆっくり休むのもおすすめです。")
KANA = ("きょうはあさからあめがふっていたので、いえでほんをよんだり、おんがくをきいたりして、ゆっくりすごしました。"
        "ゆうがたになるとあめがやんで、そらにきれいなにじがでていました。あしたははれるといいなとおもいます。")
TH = ("การปลูกมะเขือเทศที่บ้านควรเลือกกระถางที่มีความลึกอย่างน้อยสามสิบเซนติเมตรและใช้ดินร่วนที่อุดมสมบูรณ์ "
      "รดน้ำให้ดินชุ่มชื้นแต่อย่าให้น้ำขัง เมื่อต้นกล้าสูงประมาณสิบเซนติเมตรควรปักไม้ค้ำไว้ และใส่ปุ๋ยทุกสัปดาห์หลังออกดอก")


@pytest.mark.parametrize("text, old, new", [
    (JA, "多くの人", "大勢の人"),
    (KANA, "ほんをよんだり", "えをかいたり"),
    (TH, "ดินร่วน", "ดินปน"),
])
def test_japanese_kana_and_thai_near_duplicates_are_caught(text, old, new):
    assert old in text
    original = pair("Write a short paragraph.", text)
    edited = pair("Write a short paragraph.", text.replace(old, new))
    other = pair("Write a short paragraph.", text[::-1])  # the same characters, in another order
    got = near_drops([original, edited, other])
    assert got.get(sid(edited)) == f"near_duplicate_of:{sid(original)}"
    assert sid(other) not in got  # character shingles still need the characters in order


def test_character_tokens_only_for_scripts_without_spaces():
    got = tokens(normalise(pa.array(["Python是一种编程语言", "Hello 世界", "서울은 한국의 수도입니다", "ข้าวผัด", ""]))).to_pylist()
    assert got == [["python", "是", "一", "种", "编", "程", "语", "言"], ["hello", "世", "界"],
                   ["서울은", "한국의", "수도입니다"], ["ข้", "า", "ว", "ผั", "ด"], None]  # Hangul has spaces: words


def test_decontamination_catches_a_chinese_prompt_inside_a_turn(tmp_path):
    bench = write_jsonl(tmp_path / "zh-bench.jsonl", [{"prompt": "请用三句话解释为什么天空是蓝色的，并举一个日常生活中的例子。"}])
    copied = chat(("user", "你好！"), ("assistant", "你好，有什么可以帮你？"),
                  ("user", "老师布置了作业：请用三句话解释为什么天空是蓝色的，并举一个日常生活中的例子。谢谢！"),
                  ("assistant", "好的，我们一起来看。"))
    near = chat(("user", "请用三句话解释为什么月亮会有阴晴圆缺。"), ("assistant", "因为月球绕地球公转。"))  # 10 characters shared, n = 13
    got = decontam_reasons([copied, near], bench)
    assert got == {sid(copied): "contaminated:zh-bench turn 3 (user)"}


# ---------------------------------------------------------------- 13. every turn is checked


def test_case_benchmark_prompt_in_a_later_turn_is_caught_and_named():
    rows = case_rows("decontam-later-turn.jsonl")
    first_turn, later_turn, clean = rows
    got = decontam_reasons(rows, CASES / "decontam-benchmark.jsonl")
    assert got == {sid(first_turn): "contaminated:decontam-benchmark turn 1 (user)",
                   sid(later_turn): "contaminated:decontam-benchmark turn 3 (user)"}
    # The old reach (first user turn, last answer) is still there when asked for, and misses it.
    assert set(decontam_reasons(rows, CASES / "decontam-benchmark.jsonl", text=["instruction", "response"])) == {sid(first_turn)}


def test_benchmark_prompt_in_a_system_prompt_or_an_earlier_answer_is_caught():
    bench = case_rows("decontam-benchmark.jsonl")
    in_system = chat(("system", f"You are a maths tutor. Today's exercise: {bench[0]['prompt']}"),
                     ("user", "Can you help me with today's exercise?"), ("assistant", "Sure, let us work through it together."))
    in_answer = chat(("user", "Give me a creative writing task."), ("assistant", f"Try this one: {bench[1]['prompt']}"),
                     ("user", "Too hard, another one please."), ("assistant", "Describe your street at dawn in five lines."))
    both = chat(("user", "Hello there, how are you today?"), ("assistant", bench[1]["prompt"]),
                ("user", bench[0]["prompt"]), ("assistant", "Here you go."))
    clean = chat(("system", "You are a helpful assistant."), ("user", "What rhymes with keeper?"), ("assistant", "Sleeper, deeper, cheaper."))
    got = decontam_reasons([in_system, in_answer, both, clean], CASES / "decontam-benchmark.jsonl")
    assert got == {sid(in_system): "contaminated:decontam-benchmark turn 1 (system)",
                   sid(in_answer): "contaminated:decontam-benchmark turn 2 (assistant)",
                   sid(both): "contaminated:decontam-benchmark turn 2 (assistant)"}  # the earliest turn is named


# ---------------------------------------------------------------- the real pipeline on the case files


def test_pipeline_on_the_text_cases(ray_local, tmp_path):
    names = ["combining-marks.jsonl", "emoji-only-turns.jsonl", "cjk-near-duplicates.jsonl", "decontam-later-turn.jsonl"]
    rows = {n: case_rows(n) for n in names}
    src = [str(write_jsonl(tmp_path / n, rows[n])) for n in names]
    stages = [{"exact_dedup": {"text": "conversation"}},
              {"near_dedup": {"threshold": 0.8, "num_perm": 128}},
              {"decontaminate": {"benchmarks": [str(CASES / "decontam-benchmark.jsonl")]}}]
    db = tmp_path / "cases.duckdb"
    report = run(load_config(None, input=src, db=str(db), shard_size=4, stages=stages), progress="off")
    rows_in, kept, dropped, quarantined = assert_counts_add_up(db, report.run_id)
    zh, en, _, zh_copy, en_copy, _ = rows["cjk-near-duplicates.jsonl"]
    first_turn, later_turn, _ = rows["decontam-later-turn.jsonl"]
    expected = {
        ("near_dedup", sid(zh_copy), f"near_duplicate_of:{sid(zh)}"),
        ("near_dedup", sid(en_copy), f"near_duplicate_of:{sid(en)}"),
        ("decontaminate", sid(first_turn), "contaminated:decontam-benchmark turn 1 (user)"),
        ("decontaminate", sid(later_turn), "contaminated:decontam-benchmark turn 3 (user)"),
    }
    assert set(q(db, "SELECT stage, id, reason FROM drops")) == expected
    assert (rows_in, dropped, quarantined) == (sum(map(len, rows.values())), len(expected), 0)
    every = {sid(r) for rs in rows.values() for r in rs}
    assert {r[0] for r in q(db, "SELECT id FROM curated")} == every - {i for _, i, _ in expected}

    # Exact dedup on the instruction: the Hindi pair and the emoji turns stay, the English pair folds.
    src = [str(tmp_path / n) for n in names[:2]]
    db = tmp_path / "instruction.duckdb"
    report = run(load_config(None, input=src, db=str(db), shard_size=4, stages=[{"exact_dedup": {"text": "instruction"}}]), progress="off")
    assert_counts_add_up(db, report.run_id)
    _, _, en_q, en_q_lower = rows["combining-marks.jsonl"]
    assert q(db, "SELECT id, reason FROM drops") == [(sid(en_q_lower), f"duplicate_of:{sid(en_q)}")]
    assert report.kept == len(rows["combining-marks.jsonl"]) + len(rows["emoji-only-turns.jsonl"]) - 1
