"""Near dedup's MinHash (rensa) and its short path to the words: the same words as the
normalised text, signatures whose agreement tracks brute-force Jaccard, planted copies found in
word and character (CJK) shingle modes."""

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curate.stages.dedup import MinHasher, NearDedup, _rows_as_binary, _signature_matrix, dedup_text, near_dedup_words
from curate.stages.ingest import Ingest
from curate.stages.text import normalise, token_hashes, tokens, word_spaced
from curate.storage.schema import sample_arrays

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"


def batch_of(rows: list[dict]) -> pa.Table:
    samples = [Ingest().parse(json.dumps(r, ensure_ascii=False), "x") for r in rows]
    for s in samples:
        s.update(origin="seed", source="x", parent_ids=[], meta="{}")
    return pa.table(sample_arrays(samples))


def shingle_set(text: str, k: int = 5) -> set[tuple[str, ...]]:
    words = normalise(pa.array([text])).to_pylist()[0].split()
    return {tuple(words[i: i + k]) for i in range(max(1, len(words) - k + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


# Characters that take every branch of `word_spaced`: ASCII, KEEP (é ж 中 ア ก), SPACE (’ “ – •
# → …), and the Unicode path (upper case É Ж, ½ ™ ﬁ, ß ς, marks, ignorables, Hangul jamo, emoji,
# full-width, beyond the BMP).
PALETTE = (list("abcXYZ019 ,.-!\n\t") + list("éñжβ中文字アカがกขไ") + list("’“”–—•→…°·")
           + list("ÉÑЖΣ½™ﬁßςＡｂ１") + ["\u0301", "\u0e49", "\u200d", "\u00ad", "\ufe0f", "\u1100\u1161", "\u1161", "\u11a8"]
           + ["👍", "🇫🇷", "😂", "𠀀", "\U0001d400"])


def random_texts(rnd: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        style = rnd.random()
        if style < 0.3:  # mostly ASCII words with a few other characters
            out.append(" ".join(rnd.choice(["word", "Other", "café", "naïve", "don’t", "中文", "ＡＢＣ", "x½"]) for _ in range(rnd.randint(0, 12))))
        elif style < 0.6:  # any character of the BMP and beyond, among ASCII
            points = [rnd.randrange(0x80, 0x30000) if rnd.random() < 0.6 else ord(rnd.choice("ab9 .")) for _ in range(rnd.randint(0, 25))]
            out.append("".join(chr(c) for c in points if not 0xD800 <= c <= 0xDFFF))
        else:
            out.append("".join(rnd.choice(PALETTE) for _ in range(rnd.randint(0, 30))))
    return out


def test_short_path_gives_the_words_of_the_normalised_text():
    """`near_dedup_words` (what the stage hashes) equals the tokens of `dedup_text` (the
    normalised text exact dedup compares), on random text over every branch of `word_spaced`
    and on the text cases, in both text modes; so does `word_spaced` against `key_text`."""
    rnd = random.Random(7)
    texts = random_texts(rnd, 3000)
    assert token_hashes(word_spaced(pa.array(texts)))[0].size > 0
    for a, b in zip(token_hashes(word_spaced(pa.array(texts))), token_hashes(tokens(dedup_text(
            pa.table({"messages": [[{"role": "user", "content": t}] for t in texts]}), "instruction")))):
        assert np.array_equal(a, b)
    rows = [{"messages": [{"role": "user", "content": rnd.choice(texts)}, {"role": "assistant", "content": rnd.choice(texts)}]}
            for _ in range(500)]
    rows = [r for r in rows if all(m["content"].strip() for m in r["messages"])]  # ingest refuses blank turns
    for name in ("emoji-only-turns.jsonl", "combining-marks.jsonl", "cjk-near-duplicates.jsonl"):
        rows += [json.loads(line) for line in (CASES / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    batch = batch_of(rows)
    for on in ("instruction", "conversation"):
        fast = near_dedup_words(batch, on)
        slow = token_hashes(tokens(dedup_text(batch, on)))
        assert np.array_equal(fast[1], slow[1]) and np.array_equal(fast[0], slow[0]), on


def test_signatures_are_per_row_and_the_same_either_way():
    """A row's signature does not depend on its batch, and the raw and normalised entry points
    agree; keys round-trip through their binary form."""
    mh = MinHasher(shingle=5, num_perm=128, seed=0)
    texts = ["The quick brown fox jumps over the lazy dog near the river bank.", "Short one", "", "中文字符测试文本"]
    sig = mh.signatures(pa.array(texts))
    assert sig.shape == (4, 128) and sig.dtype == np.uint32
    for i, t in enumerate(texts):
        assert np.array_equal(mh.signatures(pa.array([t]))[0], sig[i])
    assert np.array_equal(mh.signatures(normalise(pa.array(texts)), normalised=True), sig)
    assert (sig[2] == np.iinfo(np.uint32).max).all() and not (sig[[0, 1, 3]] == np.iinfo(np.uint32).max).all(axis=1).any()
    assert not np.array_equal(MinHasher(seed=1).signatures(pa.array(texts[:1])), sig[:1])  # the seed matters
    assert np.array_equal(_signature_matrix(_rows_as_binary(sig), 128), sig)


def test_jaccard_estimate_tracks_brute_force():
    """Pairs of texts sharing anything from nothing to everything: the share of equal
    signature entries estimates the shingle sets' Jaccard (σ ≈ 0.04 at 128 permutations)."""
    rnd = random.Random(11)
    vocab = [f"w{i}" for i in range(5000)]
    a_texts, b_texts, truth = [], [], []
    for k in range(80):
        base = [rnd.choice(vocab) for _ in range(rnd.randint(60, 200))]
        other = list(base)
        edits = int(len(base) * k / 80 / 2)  # up to half the words: J from 1 down to ~0
        for _ in range(edits):
            other[rnd.randrange(len(other))] = rnd.choice(vocab)
        a_texts.append(" ".join(base))
        b_texts.append(" ".join(other))
        truth.append(jaccard(shingle_set(a_texts[-1]), shingle_set(b_texts[-1])))
    mh = MinHasher(shingle=5, num_perm=128)
    est = (mh.signatures(pa.array(a_texts)) == mh.signatures(pa.array(b_texts))).mean(axis=1)
    truth = np.array(truth)
    assert truth.min() < 0.1 and truth.max() == 1.0 and ((truth > 0.3) & (truth < 0.9)).sum() >= 20
    errors = np.abs(est - truth)
    assert errors.mean() < 0.05, errors.mean()
    assert errors.max() < 0.2, (errors.max(), truth[errors.argmax()])


def near_pairs(rows: list[dict], threshold: float = 0.8) -> dict[int, int]:
    """Drops (row → the earlier row it duplicates) of NearDedup's two halves on one batch."""
    stage = NearDedup(threshold=threshold)
    batch = batch_of(rows)
    keys = pa.table({"id": pa.array([str(i) for i in range(len(rows))]), "key": stage(batch).keys})
    return {int(j): int(reason.split(":")[1]) for j, reason in stage.decide(keys.to_batches())}


def test_planted_near_duplicates_are_found(alpaca_rows):
    """Long Alpaca answers with one word edited (J ≈ 0.9, where banding misses a pair with
    probability ~1e-4) after 400 unrelated rows: every copy goes, naming its original, and
    nothing else goes."""
    rnd = random.Random(4)
    base = [r for r in alpaca_rows if len(r["output"].split()) >= 100][:400]
    originals = rnd.sample(range(len(base)), 25)
    planted = []
    for i in originals:
        words = base[i]["output"].split()
        words[rnd.randrange(len(words))] = rnd.choice(["quite", "really", "indeed"])
        planted.append(dict(base[i], output=" ".join(words)))
    rows = base + planted
    for k, i in enumerate(originals):
        text = lambda r: f"user: {r['instruction']} {r.get('input', '')}\nassistant: {r['output']}"  # noqa: E731
        assert 0.85 <= jaccard(shingle_set(text(rows[i])), shingle_set(text(planted[k]))) < 1
    got = near_pairs(rows)
    assert got == {len(base) + k: i for k, i in enumerate(originals)}


ZH = "我们今天明天学习工作时间问题朋友学校老师学生城市国家世界经济发展社会文化历史科学技术音乐电影"


def test_character_shingles_in_chinese():
    """Chinese is shingled by characters: spacing does not change a signature, and a copy
    with a few characters changed is found while unrelated texts are not paired."""
    rnd = random.Random(9)
    mh = MinHasher()
    text = "".join(rnd.choice(ZH) for _ in range(120))
    assert np.array_equal(mh.signatures(pa.array([text])), mh.signatures(pa.array([" ".join(text)])))
    docs = ["".join(rnd.choice(ZH) for _ in range(rnd.randint(80, 140))) for _ in range(60)]
    originals = rnd.sample(range(len(docs)), 10)
    copies = []
    for i in originals:
        chars = list(docs[i])
        for _ in range(2):
            chars[rnd.randrange(len(chars))] = rnd.choice(ZH)
        copies.append("".join(chars))
    rows = [{"instruction": d, "output": "好"} for d in docs + copies]
    got = near_pairs(rows)
    assert got == {len(docs) + k: i for k, i in enumerate(originals)}


@pytest.mark.parametrize("on", ["instruction", "conversation"])
def test_turns_without_words_keep_their_own_text(on):
    """Emoji-only instructions: `key_text`'s fallback on the short path too, so 👍 and 😂 stay
    apart while a copy of the same emoji conversation is still a duplicate."""
    rows = [{"instruction": "👍", "output": "Glad it helped, thanks for the kind words today."},
            {"instruction": "😂", "output": "Glad it helped, thanks for the kind words today."},
            {"instruction": "👍", "output": "Glad it helped, thanks for the kind words today!"}]
    words = near_dedup_words(batch_of(rows), on)
    first = [words[0][words[1][i]: words[1][i + 1]].tolist() for i in range(3)]
    assert first[0] != first[1] and first[0] == first[2]
