"""CPU curation stages on the Alpaca data with planted problems: which rows go, and why."""

import glob
import json
import os
import random
import unicodedata

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.stages.decontam import benchmark_texts
from curate.stages.dedup import MinHasher, NearDedup, dedup_text, greedy_drops
from curate.stages.filters import Filters
from curate.stages.ingest import Ingest
from curate.stages.text import ngram_hashes, word_hashes
from curate.storage.schema import sample_arrays, sample_id
from conftest import SHARED_DATA, write_jsonl
from checks import assert_counts_add_up, q

BENCHMARKS = sorted(glob.glob(str(SHARED_DATA / "benchmarks" / "*.jsonl")))


def sid(row) -> str:
    return sample_id(Ingest().parse(json.dumps(row), "x")["messages"])


def pipeline(tmp_path, rows, stages, name="pool"):
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    db = tmp_path / f"{name}.duckdb"
    report = run(load_config(None, input=[str(src)], db=str(db), shard_size=400, stages=stages), progress="off")
    assert_counts_add_up(db, report.run_id)
    return db, report


def drops(db, stage):
    return dict(q(db, "SELECT id, reason FROM drops WHERE stage = ?", stage))


# ---------------------------------------------------------------------------- filters


def test_filters_drop_planted_rows_with_their_reasons(ray_local, tmp_path, alpaca_rows):
    base = alpaca_rows[:600]
    planted = {
        "refusal:as an ai language model": {"instruction": "Tell me a secret recipe.", "output": "As an AI language model, I do not have recipes of my own to share with you."},
        "repeated_ngram_ratio": {"instruction": "Describe the sea.", "output": " ".join(["the sea is blue and wide"] * 20)},
        "non_alnum_ratio": {"instruction": "Draw a border.", "output": "=== *** ### --- +++ !!! @@@ %%% ^^^ &&& ((( ))) <<< >>> word"},
        "unfinished_response": {"instruction": "Explain photosynthesis in detail.", "output": "Photosynthesis is the process by which green plants use light to turn water and carbon dioxide into",
                                "finish_reason": "length"},
        "language:fr": {"instruction": "Décrivez votre ville préférée.", "output": "Ma ville préférée est Lyon, car la cuisine y est excellente et les rues sont pleines d'histoire et de charme."},
        "language:de": {"instruction": "Beschreiben Sie Ihren Lieblingsort.", "output": "Mein Lieblingsort ist der Wald hinter unserem Haus, wo ich jeden Morgen spazieren gehe und den Vögeln zuhöre."},
    }
    finished = {"instruction": "Explain gravity briefly.", "output": "Gravity pulls masses toward each other.", "finish_reason": "length"}
    stages = [{"filters": {"min_response_words": 3, "max_repeated_ngram_ratio": 0.5, "max_non_alnum_ratio": 0.6, "languages": ["en"]}}]
    db, report = pipeline(tmp_path, base + list(planted.values()) + [finished], stages)
    got = drops(db, "filters")
    for reason, row in planted.items():
        assert got.get(sid(row), "").startswith(reason), (reason, got.get(sid(row)))
    assert sid(finished) not in got  # cut at the token limit, but it ends a sentence
    short = {sid(r) for r in base if len(r["output"].split()) < 3}
    planted_ids = {sid(r) for r in planted.values()}
    extra = {i: got[i] for i in set(got) - planted_ids - short}
    # Real Alpaca rows the other checks drop must deserve it: show them if this fails.
    assert all(r.startswith(("language:", "non_alnum_ratio", "repeated_ngram_ratio", "response_words")) for r in extra.values())
    assert len(extra) <= 6, extra
    assert short <= set(got)


def test_unfinished_reads_finish_reason_or_truncated():
    metas = pa.array(['{"finish_reason": "length"}', '{"truncated": true}', '{"truncated": true}', "{}", '{"finish_reason": "stop"}'])
    responses = pa.array(["cut mid", "also cut mid", "Complete sentence.", "no meta", "stopped mid"])
    assert Filters.unfinished(metas, responses) == [0, 1]


def test_empty_turns_and_word_bounds_without_ray():
    samples = [
        {"id": "a", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
        {"id": "b", "messages": [{"role": "user", "content": "one two three four five six"}, {"role": "assistant", "content": "fine answer here"}]},
        {"id": "c", "messages": [{"role": "user", "content": "short"}, {"role": "assistant", "content": "fine answer here"}]},
    ]
    for s in samples:
        s.update(origin="seed", source="t", parent_ids=[], meta="{}")
    batch = pa.table(sample_arrays(samples))
    result = Filters(min_instruction_words=2, max_instruction_words=5)(batch)
    assert dict(zip(result.dropped["id"].to_pylist(), result.reasons)) == {
        "a": "empty_turn", "b": "instruction_words>5 (6)", "c": "instruction_words<2 (1)"}


# ---------------------------------------------------------------------------- exact dedup


def test_exact_dedup_folds_case_space_and_punctuation(ray_local, tmp_path, alpaca_rows):
    base = alpaca_rows[:800]
    rnd = random.Random(0)
    originals = rnd.sample(base, 25)
    variants = []
    for i, r in enumerate(originals):
        text = r["instruction"]
        text = [text.upper(), "  " + text.replace(" ", "   ") + " ", text.rstrip(".?!") + "!!", text.lower()][i % 4]
        variants.append(dict(r, instruction=text, output=r["output"] + " (variant)"))
    db, _ = pipeline(tmp_path, base + variants, [{"exact_dedup": {"text": "instruction"}}])
    got = drops(db, "exact_dedup")
    first_of = {}
    for r in base:  # the first row with each normalised instruction is the one kept
        first_of.setdefault(" ".join("".join(c if c.isalnum() or c.isspace() else " " for c in (r["instruction"] + "\n\n" + r["input"] if r["input"] else r["instruction"]).lower()).split()), sid(r))
    for v, o in zip(variants, originals):
        assert sid(v) in got
        assert got[sid(v)].startswith("duplicate_of:")
    expected_in_base = len(base) - len(first_of)
    assert len(got) == len(variants) + expected_in_base
    kept = {r[0] for r in q(db, "SELECT id FROM curated")}
    assert all(got[sid(v)].split(":", 1)[1] in kept for v in variants)


def test_exact_dedup_on_conversation_keeps_different_answers(ray_local, tmp_path, alpaca_rows):
    base = alpaca_rows[:200]
    same_q = [dict(base[0], output="A different answer entirely.")]
    same_both = [dict(base[1], output=base[1]["output"].upper() + "  ")]
    db, _ = pipeline(tmp_path, base + same_q + same_both, [{"exact_dedup": {"text": "conversation"}}])
    got = drops(db, "exact_dedup")
    assert sid(same_q[0]) not in got
    assert got[sid(same_both[0])] == f"duplicate_of:{sid(base[1])}"


# ---------------------------------------------------------------------------- near dedup


def edit(text: str, rnd: random.Random, n_edits: int) -> str:
    words = text.split()
    for _ in range(n_edits):
        k = rnd.randrange(len(words))
        words[k] = rnd.choice(["quite", "really", "also", "indeed", words[k].upper()])
    return " ".join(words)


def shingle_sets(rows, k=5):
    texts = pa.array([f"user: {r['instruction']}" + (f"\n\n{r['input']}" if r["input"] else "") + f"\nassistant: {r['output']}" for r in rows])
    hashes, offsets = word_hashes(texts)
    grams, owner = ngram_hashes(hashes, offsets, k)
    return grams, owner


def brute_force_pairs(rows, k=5):
    """Exact Jaccard of every pair of rows sharing a shingle."""
    grams, owner = shingle_sets(rows, k)
    pairs = np.unique(np.stack([owner.astype(np.uint64), grams]), axis=1)
    owner, grams = pairs[0].astype(np.int64), pairs[1]
    sizes = np.bincount(owner, minlength=len(rows))
    order = np.argsort(grams, kind="stable")
    grams, owner = grams[order], owner[order]
    cuts = np.flatnonzero(np.diff(grams)) + 1
    inter = {}
    for group in np.split(owner, cuts):
        if len(group) > 1:
            for a in range(len(group)):
                for b in range(a + 1, len(group)):
                    key = (min(group[a], group[b]), max(group[a], group[b]))
                    inter[key] = inter.get(key, 0) + 1
    return {key: c / (sizes[key[0]] + sizes[key[1]] - c) for key, c in inter.items()}


@pytest.fixture(scope="module")
def near_dup_pool(alpaca_rows):
    rnd = random.Random(1)
    base = [r for r in alpaca_rows if len(r["output"].split()) >= 60][:2500]
    planted = [dict(r, output=edit(r["output"], rnd, rnd.choice([1, 2, 4, 8]))) for r in rnd.sample(base, 150)]
    rows = base + planted
    batch = pa.table(sample_arrays([Ingest().parse(json.dumps(r), "x") for r in rows]))
    return rows, batch, brute_force_pairs(rows)


# Scripts written without spaces: near dedup shingles characters there. The pools are built from
# words of each script; the reference below tokenises on its own (unicodedata only), so these
# check the tokenisation as well as MinHash + LSH.
ZH_WORDS = ("我们 今天 明天 学习 工作 时间 问题 朋友 学校 老师 学生 城市 国家 世界 经济 发展 社会 文化 历史 科学 "
            "技术 电脑 手机 网络 音乐 电影 图书 新闻 天气 季节 春天 夏天 秋天 冬天 早上 晚上 中午 周末 家庭 父母 "
            "孩子 医生 医院 身体 健康 运动 跑步 游泳 旅行 飞机 火车 汽车 公园 山上 河边 大海 森林 动物 植物 花园 "
            "水果 苹果 香蕉 米饭 面条 茶叶 咖啡 牛奶 鸡蛋 市场 商店 价格 便宜 漂亮 重要 简单 困难 快乐 安静 热闹 "
            "认真 努力 希望 喜欢 觉得 知道 需要 开始 结束 准备 参加 讨论 研究 解决 提高 帮助 介绍 选择 保护 环境 "
            "能源 农业 工厂 银行 公司 市长 会议 计划 目标 方法 结果 原因 影响 变化 机会 经验 能力 语言 文字 故事").split()
JA_WORDS = ("わたし あなた きょう あした がっこう せんせい ともだち てんき さくら やま うみ かわ ごはん おちゃ "
            "日本 東京 京都 大阪 電車 新聞 料理 写真 音楽 映画 会社 仕事 勉強 旅行 季節 天気 家族 時間 お店 公園 "
            "たべます のみます いきます みます かきます よみます あそびます はなします").split()
TH_WORDS = ("สวัสดี ขอบคุณ อาหาร ประเทศ ภาษา โรงเรียน ครู นักเรียน เมือง ตลาด ทะเล ภูเขา แม่น้ำ ต้นไม้ ดอกไม้ "
            "กาแฟ ข้าว น้ำ บ้าน รถไฟ เพื่อน ครอบครัว อากาศ ฤดูฝน หนังสือ เพลง ทำงาน เรียน กิน ดื่ม เดินทาง").split()
SPACELESS = ("CJK UNIFIED IDEOGRAPH", "HIRAGANA", "KATAKANA LETTER", "THAI CHARACTER")


def reference_tokens(text: str) -> list[str]:
    """NFKC + casefold; letters, marks and digits make words; a character of Han, kana or Thai is
    a token of its own, with the marks after it."""
    out, word, spaceless_last = [], "", False
    for ch in unicodedata.normalize("NFKC", text).casefold():
        cat = unicodedata.category(ch)
        if cat[0] != "M" and unicodedata.name(ch, "").startswith(SPACELESS):
            out += [word] if word else []
            out.append(ch)
            word, spaceless_last = "", True
        elif cat[0] == "M" and not word and spaceless_last:
            out[-1] += ch
        elif cat[0] in "LMN":
            word += ch
            spaceless_last = False
        else:
            out += [word] if word else []
            word, spaceless_last = "", False
    return out + ([word] if word else [])


def reference_pairs(rows, k=5):
    """Exact Jaccard, on `reference_tokens` shingles, of every pair of rows sharing one."""
    sets = []
    for r in rows:
        toks = reference_tokens(f"user: {r['instruction']}\nassistant: {r['output']}")
        sets.append({tuple(toks[i: i + k]) for i in range(max(1, len(toks) - k + 1))})
    index: dict[tuple, list[int]] = {}
    for n, sh in enumerate(sets):
        for g in sh:
            index.setdefault(g, []).append(n)
    inter: dict[tuple[int, int], int] = {}
    for owners in index.values():
        for a in range(len(owners)):
            for b in range(a + 1, len(owners)):
                inter[owners[a], owners[b]] = inter.get((owners[a], owners[b]), 0) + 1
    return {key: c / (len(sets[key[0]]) + len(sets[key[1]]) - c) for key, c in inter.items()}


def render(pieces) -> str:
    """(word, script) pieces as text: English words apart by spaces, Chinese and Japanese words
    run together with a comma every six words, Thai words run together with a space every four."""
    out, prev, run = [], None, 0
    for word, script in pieces:
        if prev is not None and (script != prev or script == "en"):
            out.append("，" if prev == "zh" and script == "zh" else " ")
        elif script == prev:
            run += 1
            out.append({"zh": "，", "ja": "、", "th": " "}[script] if run % {"zh": 6, "ja": 6, "th": 4}[script] == 0 else "")
        if script != prev:
            run = 0
        out.append(word)
        prev = script
    return "".join(out) + "。"


def script_pool(docs, rnd, vocab):
    """Rows of rendered docs, plus 240 near copies with 1-4 (or 20: no longer near) pieces swapped for others of their script."""
    rows = [{"instruction": render(d[:6]), "input": "", "output": render(d[6:])} for d in docs]
    planted = []
    for n in rnd.sample(range(len(docs)), 240):
        d = list(docs[n])
        for _ in range(rnd.choice([1, 2, 3, 4, 20])):
            i = rnd.randrange(6, len(d))
            d[i] = (rnd.choice(vocab[d[i][1]]), d[i][1])
        planted.append({"instruction": render(d[:6]), "input": "", "output": render(d[6:])})
    rows += planted
    batch = pa.table(sample_arrays([Ingest().parse(json.dumps(r, ensure_ascii=False), "x") for r in rows]))
    return rows, batch, reference_pairs(rows)


@pytest.fixture(scope="module")
def chinese_pool():
    rnd = random.Random(4)
    docs = [[(rnd.choice(ZH_WORDS), "zh") for _ in range(rnd.randint(70, 110))] for _ in range(1200)]
    return script_pool(docs, rnd, {"zh": ZH_WORDS})


@pytest.fixture(scope="module")
def mixed_pool(alpaca_rows):
    """English (Alpaca sentences), Chinese, Japanese and Thai in every row."""
    rnd = random.Random(5)
    english = [r["output"].split()[:30] for r in alpaca_rows if len(r["output"].split()) >= 30]
    docs = []
    for n in range(1200):
        doc = [(w, "en") for w in english[n % len(english)]]
        doc += [(rnd.choice(ZH_WORDS), "zh") for _ in range(rnd.randint(25, 40))]
        doc += [(rnd.choice(JA_WORDS), "ja") for _ in range(rnd.randint(10, 20))]
        doc += [(rnd.choice(TH_WORDS), "th") for _ in range(rnd.randint(8, 16))]
        docs.append(doc)
    return script_pool(docs, rnd, {"en": ["quite", "really", "also", "indeed"], "zh": ZH_WORDS, "ja": JA_WORDS, "th": TH_WORDS})


@pytest.mark.parametrize("pool", ["near_dup_pool", "chinese_pool", "mixed_pool"])
@pytest.mark.parametrize("threshold", [0.7, 0.8])
def test_near_dedup_agrees_with_brute_force_jaccard(request, pool, threshold):
    rows, batch, true = request.getfixturevalue(pool)
    above = {p for p, j in true.items() if j >= threshold}
    assert len(above) >= 80

    stage = NearDedup(threshold=threshold)
    sig = stage.hasher.signatures(dedup_text(batch, "conversation"), normalised=True)
    found = {tuple(p) for p in stage.candidate_pairs(sig).tolist()}
    recall = len(found & above) / len(above)
    assert recall >= 0.95, recall
    dropped = greedy_drops(list(range(len(rows))), np.array(sorted(found)) if found else np.zeros((0, 2), int))
    for j, reason in dropped:
        i = int(reason.split(":")[1])
        assert true.get((i, j), 0.0) >= threshold - 0.1, (i, j, true.get((i, j)))


def test_near_dedup_in_the_pipeline_drops_planted_copies(ray_local, tmp_path, alpaca_rows):
    rnd = random.Random(2)
    base = alpaca_rows[:1500]
    long_rows = [r for r in base if len(r["output"].split()) >= 80]
    originals = rnd.sample(long_rows, 30)
    planted = [dict(r, output=edit(r["output"], rnd, 2)) for r in originals]
    db, report = pipeline(tmp_path, base + planted, [{"near_dedup": {"threshold": 0.8, "num_perm": 128}}])
    got = drops(db, "near_dedup")
    for p, o in zip(planted, originals):
        assert got.get(sid(p)) == f"near_duplicate_of:{sid(o)}"
    assert len(got) - len(planted) <= 3, {k: v for k, v in got.items() if k not in {sid(p) for p in planted}}
    # The rerun skips the finished global step.
    again = run(load_config(None, input=[str(tmp_path / "pool.jsonl")], db=str(db), shard_size=400,
                            stages=[{"near_dedup": {"threshold": 0.8, "num_perm": 128}}]), progress="off")
    assert (again.kept, again.dropped) == (report.kept, report.dropped)
    assert q(db, "SELECT count(*) FROM global_steps") == [(1,)]


def test_minhash_signatures_estimate_jaccard():
    mh = MinHasher(shingle=2, num_perm=256, seed=3)
    a = " ".join(f"w{i}" for i in range(200))
    b = " ".join(f"w{i}" for i in range(100, 300))  # 99 of 199 + 199 - 99 bigrams shared: J = 99/299
    sig = mh.signatures(pa.array([a, b, ""]))
    est = (sig[0] == sig[1]).mean()
    assert abs(est - 99 / 299) < 0.08
    assert (sig[2] == np.iinfo(np.uint32).max).all()
    assert (mh.signatures(pa.array([a]))[0] == sig[0]).all()  # batch-independent


# ---------------------------------------------------------------------------- decontamination


def test_decontamination_catches_planted_benchmark_prompts(ray_local, tmp_path, alpaca_rows):
    rnd = random.Random(3)
    base = alpaca_rows[:1000]
    planted = {}
    for path in BENCHMARKS:
        name = path.rsplit("/", 1)[1].removesuffix(".jsonl")
        long_prompts = [t for t in benchmark_texts(path) if len(t.split()) >= 16]
        for k, text in enumerate(rnd.sample(long_prompts, 4)):
            words = text.split()
            if k == 1:  # case and punctuation changed
                text = text.upper().replace(",", "").replace("?", ".")
            elif k == 2:  # a word near the end replaced
                words[-2] = "banana"
                text = " ".join(words)
            elif k == 3:  # planted in the response, with a preamble
                planted[name + "/r"] = {"instruction": "Give me an example task.", "input": "", "output": "Here is one: " + text}
                continue
            planted[f"{name}/{k}"] = {"instruction": text, "input": "", "output": base[k]["output"]}
    db, _ = pipeline(tmp_path, base + list(planted.values()),
                     [{"decontaminate": {"benchmarks": [str(SHARED_DATA / "benchmarks" / "*.jsonl")]}}])
    got = drops(db, "decontaminate")
    for key, row in planted.items():
        turn = "turn 2 (assistant)" if key.endswith("/r") else "turn 1 (user)"
        assert got.get(sid(row)) == f"contaminated:{key.split('/')[0]} {turn}", key
    assert len(got) == len(planted)  # no clean Alpaca row is caught


def test_unknown_benchmark_file_is_a_clear_error(tmp_path):
    from curate.errors import CurateError
    from curate.stages.decontam import Decontaminate

    with pytest.raises(CurateError, match="no benchmark file matches"):
        Decontaminate(benchmarks=[str(tmp_path / "*.jsonl")])


def test_ngram_windows_of_a_batch_with_fewer_words_than_n():
    """A batch whose rows all hold fewer than n words (a later phase's shard may keep one short
    row) gives each row one window of all its words, and never fails."""
    from curate.stages.text import ngram_hashes, word_hashes

    hashes, offsets = word_hashes(pa.array(["Name three primary colors.", "Red, blue and yellow."]))
    grams, rows = ngram_hashes(hashes, offsets, 13)
    assert sorted(rows.tolist()) == [0, 1] and len(set(grams.tolist())) == 2


def test_the_bundled_benchmarks_are_found_from_any_directory(tmp_path, monkeypatch):
    """`benchmarks: [bundled]` (what full.yaml ships) names curate's own prompt files wherever
    the run starts; a bundled prompt is caught, a clean one is not, and the name mixes with paths."""
    import pyarrow as pa

    from curate.pipeline.preflight import PreflightError
    from curate.stages.decontam import Decontaminate, benchmark_texts, bundled_benchmarks

    monkeypatch.chdir(tmp_path)  # nothing named curate/data here
    files = bundled_benchmarks()
    assert len(files) >= 4 and all(os.path.isabs(f) and os.path.isfile(f) for f in files)
    Decontaminate.preflight({"benchmarks": ["bundled"]})
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"prompt": "Name every moon of a planet that nobody has discovered yet, in alphabetical order please."}) + "\n")
    stage = Decontaminate(benchmarks=["bundled", str(mine)])
    assert "mine" in stage.names and len(stage.names) == len(files) + 1
    with pytest.raises(PreflightError, match="no benchmark file matches"):
        Decontaminate.preflight({"benchmarks": ["bundled", str(tmp_path / "missing-*.jsonl")]})

    prompt = next(t for t in benchmark_texts(files[0]) if len(t.split()) >= 16)
    batch = pa.table({"id": ["a", "b"], "messages": [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": "ok"}],
        [{"role": "user", "content": "Write a haiku about the first snow falling on a quiet mountain village at dawn."},
         {"role": "assistant", "content": "ok"}]]})
    result = stage(batch)
    assert result.kept.column("id").to_pylist() == ["b"]
    assert result.reasons[0].startswith("contaminated:" + os.path.basename(files[0]).removesuffix(".jsonl"))
