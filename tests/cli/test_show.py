"""Seeing rows without SQL (issue 21, item 3): `drops.kind` and `drops.value` derived from each
reason as drops are inserted (and added to databases made before them), `curate show` (filters,
wrapped text, one id with its lineage) and `curate export --drops`, on a real `curate run`."""

import json
import re

import duckdb
import pyarrow.parquet as pq
import pytest

from curate.storage.store import Store
from checks import q
from conftest import curate_sh, write_jsonl

REPEATED = "the cat sat on the mat and " * 12


sh = curate_sh


@pytest.fixture(scope="module")
def run_db(tmp_path_factory, alpaca_rows):
    """One run through the CLI: filters (length, repetition), exact dedup on the instruction, two
    generator steps (a seed → a child → a grandchild), embeddings and a k-means selection."""
    tmp = tmp_path_factory.mktemp("show")
    rows = [dict(r) for r in alpaca_rows[:24]]
    rows.append({"instruction": "Describe a cat on a mat.", "input": "", "output": REPEATED})
    rows.append({"instruction": "Is water wet?", "input": "", "output": "Yes."})
    rows.append({**alpaca_rows[5], "output": alpaca_rows[5]["output"] + " Another answer."})  # same instruction
    rows += [dict(r) for r in alpaca_rows[:2]]  # exact copies: stored once, repeats dropped at `store`
    write_jsonl(tmp / "seeds.jsonl", rows, extra_lines=[b"{not json"])
    (tmp / "c.yaml").write_text(json.dumps({
        "name": "show", "input": "seeds.jsonl", "db": "show.duckdb", "shard_size": 10,
        "stages": [{"filters": {"min_response_words": 3, "max_repeated_ngram_ratio": 0.3}},
                   {"exact_dedup": {"text": "instruction"}},
                   {"add_constraints": {"seed": 1}}, {"add_constraints": {"seed": 2}},
                   {"embed": {"text": "instruction"}}],
        "selectors": [{"kmeans_diversity": {"budget": 12, "k": 3, "seed": 0, "name": "diverse"}}],
    }))
    sh(tmp, "run", "c.yaml", "--progress", "off", "--no-export")
    return tmp, tmp / "show.duckdb"


def test_every_drop_has_a_kind_and_the_value_its_reason_names(run_db):
    _, db = run_db
    drops = q(db, "SELECT stage, reason, kind, value FROM drops")
    kinds = {(stage, kind) for stage, _, kind, _ in drops}
    assert {("filters", "repeated_ngram_ratio"), ("filters", "response_words"), ("exact_dedup", "duplicate"),
            ("store", "duplicate")} <= kinds
    for stage, reason, kind, value in drops:
        assert reason.startswith(kind if kind != "duplicate" else "duplicate_of:")
        shown = re.search(r"\(([0-9.]+)\)$", reason)
        assert value == (float(shown.group(1)) if shown else None), reason
    (ratio,), = q(db, "SELECT value FROM drops WHERE kind = 'repeated_ngram_ratio'")
    assert 0.3 < ratio <= 1
    assert q(db, "SELECT value FROM drops WHERE kind = 'response_words'") == [(1.0,)]
    # 5 groups of reasons, however many distinct values they name
    assert q(db, "SELECT count(DISTINCT kind) FROM drops") == [(len({k for _, k in kinds}),)]


OLD_DROPS = """CREATE TABLE drops (run_id VARCHAR, stage VARCHAR, id VARCHAR, reason VARCHAR,
                                    shard VARCHAR, source VARCHAR, "row" BIGINT)"""
OLD_REASONS = [("filters", "a", "repeated_ngram_ratio>0.3 (0.305)"), ("filters", "b", "language:de (0.97)"),
               ("exact_dedup", "c", "duplicate_of:x"), ("near_dedup", "d", "near_duplicate_of:y"),
               ("verify_code", "e", "code_exec:timeout"), ("filters", "f", "response_words<3 (1)")]
EXPECTED = {"a": ("repeated_ngram_ratio", 0.305), "b": ("language", 0.97), "c": ("duplicate", None),
            "d": ("near_duplicate", None), "e": ("code_exec", None), "f": ("response_words", 1.0)}


def _old_database(path, run_db):
    """A database as curate wrote it before drops had kind and value: the run's tables copied, and
    `drops` in its old shape, made by hand."""
    _, db = run_db
    con = duckdb.connect(str(path))
    con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
    for table in ("runs", "samples", "quarantine", "shards", "stage_stats", "selections", "selection_info"):
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table}")
    (run_id,), = con.execute("SELECT run_id FROM runs").fetchall()
    ids = [r[0] for r in con.execute("SELECT id FROM samples ORDER BY id LIMIT 6").fetchall()]
    con.execute(OLD_DROPS)
    for (stage, key, reason), id_ in zip(OLD_REASONS, ids):
        con.execute("INSERT INTO drops VALUES (?, ?, ?, ?, 's000-00000', 'seeds', 0)", [run_id, stage, id_, reason])
    con.execute("DETACH src")
    con.close()
    return {id_: EXPECTED[key] for (_, key, _), id_ in zip(OLD_REASONS, ids)}


def test_an_old_database_gains_kind_and_value(run_db, tmp_path):
    old = tmp_path / "old.duckdb"
    expected = _old_database(old, run_db)
    # read-only (curate show, export): derived on the fly, the file untouched
    out = sh(tmp_path, "show", "--db", str(old), "--kind", "language").stdout
    assert "1 row of kind language" in out and "value 0.97" in out
    assert "kind" not in {r[0] for r in q(old, "SELECT column_name FROM information_schema.columns WHERE table_name = 'drops'")}
    # opened for writing (the next curate run): migrated, every reason classified
    Store(str(old)).close()
    got = {id_: (kind, value) for id_, kind, value in q(old, "SELECT id, kind, value FROM drops")}
    assert got == expected
    Store(str(old)).close()  # a second open changes nothing
    assert {id_: (k, v) for id_, k, v in q(old, "SELECT id, kind, value FROM drops")} == expected


def test_show_filters_by_stage_kind_origin_selection_and_cluster(run_db):
    cwd, db = run_db
    out = sh(cwd, "show", "--db", "show.duckdb", "--stage", "filters", "--kind", "repeated_ngram_ratio").stdout
    assert out.startswith("run ") and "(show, finished)" in out
    assert "1 row dropped at filters of kind repeated_ngram_ratio" in out
    assert re.search(r"dropped at filters: repeated_ngram_ratio>0\.3 \(0\.\d+\)  \[kind repeated_ngram_ratio, value 0\.\d+\]", out)
    assert "Describe a cat on a mat." in out

    out = sh(cwd, "show", "--db", "show.duckdb", "--kind", "duplicate").stdout
    n = q(db, "SELECT count(*) FROM drops WHERE kind = 'duplicate'")[0][0]
    assert f"{n} rows of kind duplicate" in out and "dropped at exact_dedup: duplicate_of:" in out
    assert "dropped at store: duplicate_of:" in out  # the repeats of stored rows

    total = q(db, "SELECT count(*) FROM samples WHERE origin = 'constrained'")[0][0]
    out = sh(cwd, "show", "--db", "show.duckdb", "--origin", "constrained", "--limit", "3").stdout
    assert f"{total} rows of origin constrained; showing the first 3 (--limit N for more)" in out
    assert len(re.findall(r"^── \d+/", out, re.M)) == 3

    picked = [r[0] for r in q(db, "SELECT id FROM selections WHERE name = 'diverse' ORDER BY rank")]
    out = sh(cwd, "show", "--db", "show.duckdb", "--selection", "diverse", "--limit", "50").stdout
    assert re.findall(r"^── \d+/\d+ · (\w+)", out, re.M) == picked  # in rank order
    cluster, size = q(db, "SELECT cluster, count(*) FROM selections WHERE name = 'diverse' GROUP BY 1 ORDER BY 2 DESC LIMIT 1")[0]
    in_cluster = {r[0] for r in q(db, "SELECT id FROM selections WHERE name = 'diverse' AND cluster = ?", cluster)}
    out = sh(cwd, "show", "--db", "show.duckdb", "--cluster", str(cluster), "--limit", "50").stdout  # the one clustered selection
    assert f"{size} row{'s' if size > 1 else ''} in selection diverse from cluster {cluster}" in out
    assert set(re.findall(r"^── \d+/\d+ · (\w+)", out, re.M)) == in_cluster
    assert f"cluster {cluster}" in out


def test_show_wraps_text_to_the_width(run_db):
    cwd, _ = run_db
    out = sh(cwd, "show", "--db", "show.duckdb", "--origin", "seed", "--limit", "5", "--width", "50", "--max-chars", "0").stdout
    turn_lines = [line for line in out.splitlines() if line.startswith("        ")]
    assert len(turn_lines) > 20 and all(len(line) <= 50 for line in turn_lines)
    cut = sh(cwd, "show", "--db", "show.duckdb", "--origin", "seed", "--limit", "5", "--max-chars", "40").stdout
    assert "more characters]" in cut


def test_show_says_what_a_run_has_when_a_filter_matches_nothing(run_db):
    cwd, _ = run_db
    for args, expected in [(["--stage", "filterz"], r"no rows dropped at stage 'filterz' in run \w+; stages that dropped rows: .*filters \(2\)"),
                           (["--kind", "langauge"], r"no drops of kind 'langauge' .*kinds: .*repeated_ngram_ratio \(1\)"),
                           (["--selection", "nope"], r"no selection named 'nope' .*selections: diverse \(12\)"),
                           (["--origin", "evol"], r"no rows of origin 'evol' .*origins: .*constrained"),
                           (["--stage", "ingest"], r"ingest quarantined 1 unreadable row: `curate export --drops`"),
                           (["--id", "zzzz"], r"no sample with id 'zzzz'"),
                           (["--run", "nosuchrun"], r"no run 'nosuchrun'")]:
        proc = sh(cwd, "show", "--db", "show.duckdb", *args, check=False)
        assert proc.returncode == 2, (args, proc.stdout[-500:])  # a CurateError
        assert re.search(expected, proc.stderr), (args, proc.stderr)


def test_show_one_id_with_its_lineage(run_db):
    cwd, db = run_db
    # a grandchild: made by add_constraints_2 from a child add_constraints made from a seed
    grandchild, child = q(db, """SELECT g.id, c.id FROM samples g JOIN samples c ON c.run_id = g.run_id AND c.id = g.parent_ids[1]
                                 WHERE c.origin = 'constrained' AND g.kept ORDER BY g.id LIMIT 1""")[0]
    (seed,), = q(db, "SELECT parent_ids[1] FROM samples WHERE id = ?", child)
    out = sh(cwd, "show", "--db", "show.duckdb", "--id", grandchild[:10]).stdout
    assert f"── {grandchild} · constrained" in out and "meta:" in out and '"constraints"' in out
    lineage = out[out.index("lineage (samples.parent_ids):"):]
    assert lineage.index(child) < lineage.index(seed)  # parent, then its parent
    assert re.search(rf"^        {child} · constrained · not kept · ", lineage, re.M)
    assert re.search(rf"^            {seed} · seed · not kept · ", lineage, re.M)
    assert "children: none" in lineage
    if q(db, "SELECT 1 FROM selections WHERE id = ?", grandchild):
        assert "selection diverse: rank" in out

    out = sh(cwd, "show", "--db", "show.duckdb", "--id", seed).stdout
    lineage = out[out.index("lineage (samples.parent_ids):"):]
    assert "parents: none (read from the input)" in lineage and "children (1):" in lineage
    assert re.search(rf"^        {child} · constrained · not kept · ", lineage, re.M)
    assert "expanded (a generator replaced it by new rows)" in out

    ids = [r[0] for r in q(db, "SELECT id FROM samples")]
    prefix = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)
    proc = sh(cwd, "show", "--db", "show.duckdb", "--id", prefix, check=False)
    assert proc.returncode == 2 and "give more of it" in proc.stderr


def test_export_drops_writes_the_rejected_rows_with_their_reasons(run_db, tmp_path):
    cwd, db = run_db
    n_drops = q(db, "SELECT count(*) FROM drops")[0][0]
    out = sh(cwd, "export", "--db", "show.duckdb", "--drops", "-f", "jsonl", "--out", str(tmp_path / "rejected.jsonl")).stdout
    assert f"exported {n_drops + 1} rejected rows (jsonl)" in out
    rows = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    dropped = [r for r in rows if r["status"] == "dropped"]
    assert len(dropped) == n_drops
    by_kind = {r["kind"]: r for r in dropped}
    ngram = by_kind["repeated_ngram_ratio"]
    assert ngram["stage"] == "filters" and ngram["reason"].startswith("repeated_ngram_ratio>0.3 (")
    assert ngram["value"] == q(db, "SELECT value FROM drops WHERE kind = 'repeated_ngram_ratio'")[0][0]
    assert ngram["messages"][0] == {"role": "user", "content": "Describe a cat on a mat."}
    assert ngram["source"] == "seeds" and isinstance(ngram["row"], int) and isinstance(ngram["meta"], dict)
    assert by_kind["duplicate"]["reason"].startswith("duplicate_of:")
    quarantined, = [r for r in rows if r["status"] == "quarantined"]
    assert quarantined["stage"] == "ingest" and quarantined["raw"] == "{not json" and quarantined["messages"] is None

    # Parquet keeps the same columns; an HF export gets a card; a rerun replaces its own export
    target = tmp_path / "rejected.parquet"
    for _ in range(2):
        sh(cwd, "export", "--db", "show.duckdb", "--drops", "-f", "parquet", "--out", str(target))
    table = pq.read_table(target)
    assert table.column_names[:5] == ["status", "stage", "reason", "kind", "value"] and table.num_rows == n_drops + 1
    sh(cwd, "export", "--db", "show.duckdb", "--drops", "--out", str(tmp_path / "hf"))
    assert "| filters | repeated_ngram_ratio | 1 |" in (tmp_path / "hf" / "README.md").read_text()

    proc = sh(cwd, "export", "--db", "show.duckdb", "--drops", "--selection", "diverse", "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2 and "--drops writes the rejected rows as they are: it takes no --selection" in proc.stderr
    (tmp_path / "foreign.jsonl").write_text("mine\n")
    proc = sh(cwd, "export", "--db", "show.duckdb", "--drops", "-f", "jsonl", "--out", str(tmp_path / "foreign.jsonl"), check=False)
    assert proc.returncode == 2 and (tmp_path / "foreign.jsonl").read_text() == "mine\n"  # the safe-write rules hold


def test_export_drops_reads_an_old_database(run_db, tmp_path):
    old = tmp_path / "old.duckdb"
    expected = _old_database(old, run_db)
    sh(tmp_path, "export", "--db", str(old), "--drops", "-f", "jsonl", "--out", str(tmp_path / "d.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert {r["id"]: (r["kind"], r["value"]) for r in rows if r["status"] == "dropped"} == expected


def test_a_repeat_dropped_at_store_shows_its_own_row_and_names_the_kept_one(tmp_path):
    """A row read twice is stored once (its id is its content's hash), numbered as its first,
    kept copy; the repeat dropped at `store` is listed with its own row number and points to the
    kept row, labelled as such; `--id` lists where the repeats were."""
    rows = [{"instruction": f"Give me fact number {i} about owls.", "output": f"Owls have fact {i} going for them."}
            for i in range(4)]
    write_jsonl(tmp_path / "seeds.jsonl", [rows[0], rows[1], rows[2], rows[1], rows[3], rows[1]])
    stages = '[{exact_dedup: {text: instruction}}]'
    sh(tmp_path, "run", "--input", "seeds.jsonl", "--db", "twin.duckdb", "--progress", "off", "--set", f"stages={stages}")
    (stored_row,), = q(tmp_path / "twin.duckdb", "SELECT \"row\" FROM samples WHERE messages[1].content = ?", rows[1]["instruction"])
    twins = [r[0] for r in q(tmp_path / "twin.duckdb", "SELECT \"row\" FROM drops WHERE stage = 'store' ORDER BY 1")]
    assert stored_row == 1 and twins == [3, 5]
    out = sh(tmp_path, "show", "--db", "twin.duckdb", "--stage", "store").stdout
    heads = re.findall(r"^── \d+/\d+ · \w+ · \w+ · seeds row (\d+)$", out, re.M)
    assert heads == ["3", "5"], out
    assert out.count("(a repeat of the kept row: seeds row 1)") == 2, out
    (id_,), = q(tmp_path / "twin.duckdb", "SELECT id FROM samples WHERE \"row\" = 1")
    out = sh(tmp_path, "show", "--db", "twin.duckdb", "--id", id_).stdout
    assert "seeds row 1\n" in out and "2 repeats of it dropped at store (seeds row 3, seeds row 5)" in out, out
