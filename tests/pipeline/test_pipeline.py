"""The whole path on real parts: Ray Data plan → DuckDB → SQL → Hugging Face export."""

import json

import datasets
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.cli import main
from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.stages.ingest import Ingest
from checks import assert_counts_add_up, q
from conftest import ALPACA, write_jsonl


def cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def expected_messages(row):
    return Ingest().parse(json.dumps(row), "x")["messages"]


def test_alpaca_through_the_whole_path(ray_local, alpaca_rows, tmp_path, capsys):
    db = tmp_path / "alpaca.duckdb"
    report = run(load_config(None, input=[str(ALPACA)], db=str(db), shard_size=500), progress="off")
    assert report.rows_in == len(alpaca_rows) == 3111
    assert_counts_add_up(db, report.run_id)

    # Identical rows in the source are stored once; the repeats are drops that name the kept id.
    distinct = {json.dumps(expected_messages(r)) for r in alpaca_rows}
    assert report.kept == len(distinct)
    assert report.dropped == len(alpaca_rows) - len(distinct)
    for (reason, id_) in q(db, "SELECT reason, id FROM drops"):
        assert reason == f"duplicate_of:{id_}"

    code, out, _ = cli(capsys, "sql", "SELECT origin, count(*) AS n FROM curated GROUP BY 1", "--db", str(db), "--format", "json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [{"origin": "seed", "n": len(distinct)}]

    out_dir = tmp_path / "hf"
    code, out, _ = cli(capsys, "export", "--db", str(db), "--format", "hf", "--out", str(out_dir))
    assert code == 0 and f"exported {len(distinct)} rows" in out
    ds = datasets.load_from_disk(str(out_dir))
    assert ds.num_rows == len(distinct)
    assert {json.dumps(m) for m in ds["messages"]} == distinct
    stored = dict(q(db, "SELECT id, to_json(messages)::VARCHAR FROM curated"))
    for row in ds.select(range(0, ds.num_rows, 97)):
        assert json.loads(stored[row["id"]]) == row["messages"]
    card = (out_dir / "README.md").read_text()
    assert "| 3111 |" in card and "alpaca_ifd_5pct" in card and "shard_size: 500" in card


def test_parquet_and_jsonl_exports_match_the_curated_view(ray_local, tmp_path, alpaca_rows, capsys):
    src = write_jsonl(tmp_path / "seeds.jsonl", alpaca_rows[:200])
    db = tmp_path / "x.duckdb"
    run(load_config(None, input=[str(src)], db=str(db)), progress="off")
    ids = {r[0] for r in q(db, "SELECT id FROM curated")}
    assert cli(capsys, "export", "--db", str(db), "--format", "parquet", "--out", str(tmp_path / "x.parquet"))[0] == 0
    assert set(pq.read_table(tmp_path / "x.parquet")["id"].to_pylist()) == ids
    assert cli(capsys, "export", "--db", str(db), "--format", "jsonl", "--out", str(tmp_path / "x.jsonl"))[0] == 0
    rows = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == ids and all(r["messages"][0]["role"] == "user" for r in rows)


def test_malformed_lines_are_quarantined_and_counts_add_up(ray_local, tmp_path, alpaca_rows):
    bad = [b"{broken json", b'{"instruction": "caf\xe9", "output": "x"}', b'{"instruction": "no output"}',
           b'{"instruction": 7, "output": "x"}', b'{"instruction": "", "output": "x"}', b'"a string"']
    src = write_jsonl(tmp_path / "seeds.jsonl", alpaca_rows[:300], bad)
    db = tmp_path / "q.duckdb"
    report = run(load_config(None, input=[str(src)], db=str(db), shard_size=64), progress="off")
    assert report.rows_in == 306 and report.quarantined == len(bad)
    assert_counts_add_up(db, report.run_id)
    errors = dict(q(db, 'SELECT "row", error FROM quarantine'))
    assert errors[300].startswith("invalid JSON")
    assert errors[301].startswith("invalid UTF-8")
    assert "missing response" in errors[302]
    assert "must be a string" in errors[303]
    assert "empty text" in errors[304]
    assert "must be a JSON object" in errors[305]
    raws = dict(q(db, 'SELECT "row", raw FROM quarantine'))
    assert raws[300] == "{broken json" and raws[305] == '"a string"'
    # The summary names the most frequent reasons (3 of 6 distinct here) and where the rest are.
    summary = report.summary().splitlines()
    named = [line for line in summary if line.startswith("quarantined by ingest: 1 × ")]
    assert len(named) == 3 and all(line.split(" × ", 1)[1] in errors.values() for line in named), summary
    assert any(line.startswith("(all of them: curate export --drops") for line in summary), summary


def test_a_run_that_quarantines_every_row_says_why_and_how_to_fix_it(ray_local, tmp_path):
    src = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Name {n} colours of the sea."} for n in range(2, 9)])
    report = run(load_config(None, input=[str(src)], db=str(tmp_path / "p.duckdb")), progress="off")
    assert (report.rows_in, report.kept, report.quarantined) == (7, 0, 7)
    line = next(line for line in report.summary().splitlines() if line.startswith("quarantined by ingest: 7 × missing response"))
    assert "ingest.require_response: false" in line


def test_filters_stage_drops_with_reasons(ray_local, tmp_path):
    rows = [{"instruction": f"Question {i}?", "output": "Yes." if i % 3 == 0 else f"A longer answer number {i}."} for i in range(60)]
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    db = tmp_path / "f.duckdb"
    cfg = load_config(None, input=[str(src)], db=str(db), shard_size=16, stages=[{"filters": {"min_response_words": 3}}])
    report = run(cfg, progress="off")
    assert report.dropped == 20 and report.kept == 40
    reasons = {r[0] for r in q(db, "SELECT DISTINCT reason FROM drops WHERE stage = 'filters'")}
    assert reasons == {"response_words<3 (1)"}
    assert "dropped: 20 × response_words (filters)" in report.summary().splitlines()  # the kind, not 20 lines of reasons
    dropped_ids = {r[0] for r in q(db, "SELECT id FROM drops")}
    assert all(m[-1]["content"] == "Yes." for (m,) in q(db, "SELECT messages FROM samples WHERE NOT kept"))
    assert dropped_ids == {r[0] for r in q(db, "SELECT id FROM samples WHERE NOT kept")}
    assert_counts_add_up(db, report.run_id)


def test_every_input_format_gives_the_same_samples(ray_local, tmp_path, alpaca_rows):
    rows = alpaca_rows[:120]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=50)
    import csv

    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerows(rows)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    results = {}
    for name in ("a.jsonl", "a.json", "a.parquet", "a.csv", "hf"):
        db = tmp_path / f"{name}.duckdb"
        report = run(load_config(None, input=[str(tmp_path / name)], db=str(db), shard_size=40), progress="off")
        assert report.quarantined == 0, q(db, "SELECT error FROM quarantine")
        results[name] = {r[0] for r in q(db, "SELECT id FROM curated")}
    assert len({frozenset(v) for v in results.values()}) == 1
    assert len(results["a.jsonl"]) == len({json.dumps(expected_messages(r)) for r in rows})


def test_sharegpt_and_openai_rows_land_with_lineage_fields(ray_local, tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Hi there."}], "id": "x1"},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}], "origin": "evol", "parent_ids": ["abc"]},
    ]
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    db = tmp_path / "c.duckdb"
    run(load_config(None, input=[str(src)], db=str(db)), progress="off")
    got = q(db, "SELECT origin, parent_ids, meta, len(messages) FROM curated ORDER BY len(messages)")
    assert got[0] == ("seed", [], json.dumps({"id": "x1"}), 2)
    assert got[1] == ("evol", ["abc"], "{}", 3)


def test_a_file_of_blank_lines_is_a_finished_run_with_no_rows(ray_local, tmp_path):
    src = tmp_path / "blank.jsonl"
    src.write_text("\n\n   \n")
    db = tmp_path / "blank.duckdb"
    report = run(load_config(None, input=[str(src)], db=str(db)), progress="off")
    assert (report.rows_in, report.kept, report.shards) == (0, 0, 1)
    assert q(db, "SELECT shard, rows_in FROM shards") == [("s000-00000", 0)]
    again = run(load_config(None, input=[str(src)], db=str(db)), progress="off")
    assert again.shards_skipped == 1


def test_an_empty_input_and_a_file_given_twice_are_named_in_warnings(ray_local, tmp_path, capsys):
    """An empty file and a file of blank lines: 0 rows read, each named in a warning; a file given
    twice (the same path again, and matched by a glob as well) is read once, with a warning."""
    rows = [{"instruction": f"Name the colour number {i}.", "output": f"Colour {i} is a shade of blue."} for i in range(3)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.csv"
    blank.write_text("instruction,output\n")  # a header alone
    db = tmp_path / "w.duckdb"
    capsys.readouterr()
    report = run(load_config(None, input=[str(data), str(empty), str(data), str(tmp_path / "d*.jsonl"), str(blank)],
                             db=str(db)), progress="off")
    err = capsys.readouterr().err
    assert report.rows_in == 3 and report.kept == 3  # data.jsonl once
    assert err.count(f"warning: input {data} is given more than once") == 2, err
    assert f"as {str(tmp_path / 'd*.jsonl')!r} and {str(data)!r}" in err
    assert report.warnings == [f"input {empty} is empty: 0 rows read", f"input {blank} is empty: 0 rows read"]
    assert f"warning: input {empty} is empty: 0 rows read" in err and f"warning: input {empty} is empty" in report.summary()
    assert f"warning: input {blank} is empty: 0 rows read" in report.summary()


def test_actor_stages_that_cannot_fit_are_a_clear_error(ray_local, tmp_path, alpaca_rows):
    from curate.errors import CurateError

    src = write_jsonl(tmp_path / "s.jsonl", alpaca_rows[:10])
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # up: preflight's probe passes
    threading.Thread(target=server.serve_forever, daemon=True).start()
    respond = {"respond": {"backend": {"kind": "openai", "model": "m", "base_url": f"http://127.0.0.1:{server.server_port}/v1"},
                           "resources": {"num_cpus": 1, "concurrency": 2}}}
    cfg = load_config(None, input=[str(src)], db=str(tmp_path / "x.duckdb"), stages=[respond])
    try:
        with pytest.raises(CurateError, match=r"actor stages need 2 CPU \(respond: 2\).*cluster has 2"):
            run(cfg, progress="off")
    finally:
        server.shutdown()
        server.server_close()
