"""Language ID reads the prose (issue 17, item 14): an English row whose answer is code, an
equation or data is not another language; a row in another language still is, whatever its
answer; a row with too little prose to judge is kept and scored `language:undetermined`."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.stages.filters import UNDETERMINED, Filters
from curate.stages.ingest import Ingest
from curate.stages.prose import foreign_share, prose, prose_letters, scripts_of
from curate.storage.schema import sample_arrays
from conftest import write_jsonl
from checks import assert_counts_add_up, q

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"
CASE = CASES / "language-filter-code-math.jsonl"  # copied from ../shared/cases
MORE = CASES / "language-filter-more.jsonl"  # written for this test: meta.case, meta.expect, meta.language


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def samples(rows: list[dict]) -> list[dict]:
    return [Ingest().parse(json.dumps(r, ensure_ascii=False), "x") for r in rows]


_STAGES: dict[str, Filters] = {}


def filtered(rows: list[dict], **params) -> dict[str, tuple[str | None, float | None]]:
    """Per input row (in order): (drop reason or None, language:undetermined score or None)."""
    got = samples(rows)
    key = json.dumps(params, sort_keys=True)  # one stage per setting: its model loads once
    stage = _STAGES.setdefault(key, Filters(**params))
    result = stage(pa.table(sample_arrays(got)))
    out = {}
    undetermined = result.scores[UNDETERMINED]
    for table, reasons, scores in ((result.kept, [None] * result.kept.num_rows, undetermined.kept),
                                   (result.dropped, result.reasons, undetermined.dropped)):
        for id_, reason, score in zip(table["id"].to_pylist(), reasons, scores.to_pylist()):
            out[id_] = (reason, score)
    assert len(out) == len(got)
    return {i: out[s["id"]] for i, s in enumerate(got)}


# The case: what a correct filter does with each of its rows (the file carries no meta).
CASE_EXPECT = [
    ("regex answer", "keep"),
    ("arithmetic, too little prose anywhere", "undetermined"),
    ("derivative, too little prose anywhere", "undetermined"),
    ("C loop", "keep"),
    ("sorted list", "keep"),
    ("JSON object", "keep"),
    ("English prose", "keep"),
    ("German prose", "de"),
]


def test_case_english_code_maths_and_json_are_kept_german_is_dropped():
    rows = read(CASE)
    assert len(rows) == len(CASE_EXPECT)
    got = filtered(rows, languages=["en"])
    for i, (what, expect) in enumerate(CASE_EXPECT):
        reason, score = got[i]
        if expect in ("keep", "undetermined"):
            assert reason is None, (what, reason)
            assert score == (1.0 if expect == "undetermined" else None), (what, score)
        else:
            assert reason is not None and reason.startswith(f"language:{expect} ("), (what, reason)
            assert float(reason.split("(")[1].rstrip(")")) >= 0.5


@pytest.mark.parametrize("row", read(MORE), ids=lambda r: r["meta"]["case"])
def test_other_code_maths_and_data_rows(row):
    """Same kind, other inputs: Go, Rust, Java, Lisp, SQL, shell sessions, Dockerfile, tables,
    equations, LaTeX, YAML, CSV, TSV, INI, JSON, XML; French, German, Spanish, Portuguese,
    Italian, Dutch, Turkish, Chinese, Japanese, Korean, Russian, Hindi and Arabic rows whose
    answers are code, maths or data."""
    meta = row["meta"]
    reason, score = filtered([row], languages=["en"])[0]
    if meta["expect"] == "keep":
        assert reason is None
        assert score == (1.0 if meta.get("undetermined") else None)
    else:
        assert reason is not None and reason.startswith(f"language:{meta['language']} (")
        assert score is None


def test_other_wanted_languages():
    """`languages` other than English: the French row with a code answer is kept, the English
    one with a code answer is dropped naming English; with Chinese wanted too, a short Chinese
    row is no longer in a foreign script: too little to judge, so kept and scored."""
    fr = {"instruction": "Écris une fonction Python qui inverse une chaîne de caractères.", "output": "def inverse(s):\n    return s[::-1]"}
    en = {"instruction": "Write a Python function that reverses a string of characters.", "output": "def reverse(s):\n    return s[::-1]"}
    zh = {"instruction": "求解方程 2x + 3 = 7。", "output": "x = 2"}
    got = filtered([fr, en, zh], languages=["fr"])
    assert got[0] == (None, None)
    assert got[1][0].startswith("language:en (")
    assert got[2][0].startswith("language:zh (")
    got = filtered([fr, en, zh], languages=["en", "zh"])
    assert got[0][0].startswith("language:fr (") and got[1] == (None, None) and got[2] == (None, 1.0)


def test_a_foreign_script_is_another_language_however_short():
    rows = [{"instruction": "Решите: x + 1 = 2", "output": "x = 1"},  # Cyrillic, 6 letters
            {"instruction": "x + 1 = 2 ?", "output": "x = 1"}]  # no letters at all
    got = filtered(rows, languages=["en"])
    assert got[0][0].split(" ")[0] in {f"language:{c}" for c in ("ru", "bg", "uk", "mk", "sr", "be", "kk", "ky", "mn", "tg", "tt", "ba")}
    assert got[1] == (None, 1.0)
    assert scripts_of(["en", "ru"]) == {"LATIN", "CYRILLIC"}
    assert foreign_share("Решите the", scripts_of(["en"])) == 6 / 9


def test_language_is_not_checked_on_rows_another_check_drops():
    rows = [{"instruction": "What is 2 + 2?", "output": "Four"}, {"instruction": "What is 2 + 2?", "output": "4"}]
    got = filtered(rows, languages=["en"], min_response_chars=3)
    assert got[0] == (None, 1.0)  # judged: too little prose
    assert got[1] == ("response_chars<3 (1)", None)  # not judged: dropped already


def test_a_translation_asked_in_english_is_not_dropped_for_its_answer():
    """The answer reads as French, but the row's prose together does not: not confirmed."""
    row = {"instruction": "Translate the following sentence into French: I would like a cup of coffee and a croissant, please.",
           "output": "Je voudrais une tasse de café et un croissant, s'il vous plaît."}
    assert filtered([row], languages=["en"])[0][0] is None


# ---------------------------------------------------------------------------- prose


@pytest.mark.parametrize("text, words", [
    ("Use this:\n\n```python\nprint('bonjour tout le monde')\n```\n\nThen run it.", "Use this Then run it"),
    ("~~~\nSELECT nom FROM clients\n~~~\nDone", "Done"),
    ("Intro line\n\n    indented code here\n    more code\n\nOutro line", "Intro line Outro line"),
    ("Call `numpy.mean(values)` to average them.", "Call to average them"),
    ("The roots are $x = 1$ and $$x = -4$$ by \\(b^2 - 4ac\\) and \\[ \\frac{1}{2} \\].", "The roots are and by and"),
    ("It costs $5 and $10 at the shop.", "It costs and at the shop"),
    ("See https://example.com/a?b=c or write to ada@example.org today.", "See or write to today"),
    ("<p>Hello <b>there</b></p>", "Hello there"),
    ('{"name": "Ada", "city": "London"}', ""),
    ('Result:\n{\n  "name": "Ada",\n  "city": "London"\n}', "Result"),
    ("$ ls -la\ntotal 8\nreadme notes\n\nThose are the files.", "Those are the files"),
    (">>> sorted(['pera', 'manzana'])\n['manzana', 'pera']", ""),
    ("| Land | Hauptstadt |\n|---|---|\n| Frankreich | Paris |", ""),
    ("titre: Les Misérables\nauteur: Victor Hugo", ""),
    ("nom,âge,ville\nAda,36,Londres\nAlan,41,Wilmslow", ""),
    ("Ada, 36, London\nAlan, 41, Manchester", ""),
    ("SELECT name\nFROM users\nWHERE age > 30", ""),
    ("for (int i = 0; i < n; i++) {\n    total += v[i];\n}", ""),
    ("import numpy as np\nvalues = np.arange(10)", ""),
    ("pip install requests\nnpm install --save express", ""),
    ("x^2 - 5x + 6 = 0\nx = 2 or x = 3", ""),
    ("f'(x) = 3x^2 + 2", ""),
    ("求 x 的值，使得 2x + 3 = 7。", "求 x 的值 使得"),
    # prose is kept: lists, poems, emphasis, sentences around an equation, other scripts
    ("1. First item\n2. Second item, with a comma\n3. Third", "First item Second item with a comma Third"),
    ("Roses are red, violets are blue\nSugar is sweet, and so are you", "Roses are red violets are blue Sugar is sweet and so are you"),
    ("**Note:** keep it *short*.", "Note keep it short"),
    ("Einstein wrote E = mc^2 in 1905, and it changed physics.", "Einstein wrote E in and it changed physics"),
    ("print the result to the screen when you are done.", "print the result to the screen when you are done"),
    ("हिन्दी भाषा बहुत सुंदर है", "हिन्दी भाषा बहुत सुंदर है"),
])
def test_prose(text, words):
    assert prose(text) == words


def test_prose_letters_weighs_ideographs_as_words():
    assert prose_letters("") == 0
    assert prose_letters("Sort the list") == 11
    assert prose_letters("求解方程") == 12


# ---------------------------------------------------------------------------- pipeline


def test_pipeline_language_filter_on_the_cases(ray_local, tmp_path):
    """The real pipeline on the case and the other inputs: rows kept, reasons, scores, counts."""
    rows = read(CASE) + read(MORE)
    src = write_jsonl(tmp_path / "lang.jsonl", rows)
    db = tmp_path / "lang.duckdb"
    cfg = load_config(None, input=[str(src)], db=str(db), shard_size=16, stages=[{"filters": {"languages": ["en"]}}])
    report = run(cfg, progress="off")
    rows_in, kept, dropped, quarantined = assert_counts_add_up(db, report.run_id)
    ids = [s["id"] for s in samples(rows)]
    assert rows_in == len(rows) and quarantined == 0 and len(set(ids)) == len(ids)

    want_drop, want_undetermined = {}, set()
    for i, (what, expect) in enumerate(CASE_EXPECT):
        if expect == "undetermined":
            want_undetermined.add(ids[i])
        elif expect != "keep":
            want_drop[ids[i]] = expect
    for row, id_ in zip(rows[len(CASE_EXPECT):], ids[len(CASE_EXPECT):]):
        meta = row["meta"]
        if meta["expect"] == "drop":
            want_drop[id_] = meta["language"]
        elif meta.get("undetermined"):
            want_undetermined.add(id_)

    drops = dict(q(db, "SELECT id, reason FROM drops WHERE run_id = ? AND stage = 'filters'", report.run_id))
    assert set(drops) == set(want_drop)
    for id_, lang in want_drop.items():
        assert drops[id_].startswith(f"language:{lang} ("), (lang, drops[id_])
    curated = {r[0] for r in q(db, "SELECT id FROM curated")}
    assert curated == set(ids) - set(want_drop)
    assert kept == len(curated) and dropped == len(want_drop)
    scored = dict(q(db, "SELECT id, value FROM scores WHERE run_id = ? AND name = ?", report.run_id, UNDETERMINED))
    assert scored == {i: 1.0 for i in want_undetermined}


def test_word_counts_and_symbol_ratio_hold_for_scripts_without_spaces_and_combining_marks():
    """A Chinese or Thai answer is many words, not one; Hindi vowel signs are letters, not symbols."""
    import pyarrow as pa

    from curate.stages.filters import _word_count, non_alnum_ratio

    texts = ["光合作用是植物利用阳光把二氧化碳和水转化为葡萄糖的过程",
             "การสังเคราะห์ด้วยแสงเป็นกระบวนการของพืช",
             "प्रकाश संश्लेषण पौधों की एक प्रक्रिया है",
             "three plain words", ""]
    counts = _word_count(pa.array(texts)).to_pylist()
    assert counts[0] >= 20 and counts[1] >= 10, counts
    assert counts[2:] == [7, 3, 0]
    ratios = non_alnum_ratio(pa.array(texts[:3])).to_pylist()
    assert max(ratios) < 0.05, ratios
