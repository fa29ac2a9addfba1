"""`--run` in `curate show`, `export` and `report`: the id or a prefix of one (as `show --id`
takes a row's), and a run the database does not hold is an error in all three. `curate report
--run` used to write an empty page, exit 0, for a run id that matched nothing; `export` and
`show` refused a prefix of the id they print."""

import json
import shutil

import duckdb
import pytest

from curate.errors import CurateError
from curate.storage.store import Store, resolve_run_id
from conftest import curate_sh, write_jsonl


sh = curate_sh


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, alpaca_rows):
    """Two runs in one database: the same input, filters with two word bounds."""
    tmp = tmp_path_factory.mktemp("runs")
    write_jsonl(tmp / "seeds.jsonl", alpaca_rows[:12])
    (tmp / "c.yaml").write_text(json.dumps({"name": "r", "input": "seeds.jsonl", "db": "r.duckdb",
                                            "stages": [{"filters": {"min_response_words": 3}}]}))
    sh(tmp, "run", "c.yaml", "--progress", "off")
    sh(tmp, "run", "c.yaml", "--progress", "off", "--set", "filters.min_response_words=60")
    with Store(str(tmp / "r.duckdb"), read_only=True) as store:
        ids = [r[0] for r in store.con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()]
    assert len(ids) == 2
    return tmp, ids


def test_a_prefix_of_the_run_id_names_the_run(two_runs):
    tmp, (first, second) = two_runs
    out = sh(tmp, "export", "--db", "r.duckdb", "--run", first[:6], "-f", "jsonl", "--out", "first.jsonl").stdout
    assert f"from run {first}" in out
    with Store(str(tmp / "r.duckdb"), read_only=True) as store:
        kept = store.con.execute("SELECT count(*) FROM samples WHERE run_id = ? AND kept", [first]).fetchone()[0]
    assert sum(1 for _ in open(tmp / "first.jsonl")) == kept
    assert sh(tmp, "show", "--db", "r.duckdb", "--run", first[:6], "--limit", "1").stdout.startswith(f"run {first} ")
    sh(tmp, "report", "--db", "r.duckdb", "--run", second[:6], "--out", "second.html")
    assert second in (tmp / "second.html").read_text()


@pytest.mark.parametrize("command", [["report", "--out", "nosuch.html"], ["show"], ["export", "-f", "jsonl", "--out", "nosuch.jsonl"]])
def test_a_run_the_database_does_not_hold_is_an_error(two_runs, command):
    tmp, _ = two_runs
    proc = sh(tmp, command[0], "--db", "r.duckdb", "--run", "nosuch", *command[1:], check=False)
    assert proc.returncode != 0 and "error: no run 'nosuch' in r.duckdb (see `curate runs --db r.duckdb`)" in proc.stderr, proc.stderr
    assert not list(tmp.glob("nosuch*"))  # no empty report, no export


def test_a_prefix_two_runs_share_is_refused(two_runs, tmp_path):
    tmp, (first, second) = two_runs
    db = tmp_path / "r.duckdb"
    shutil.copy(tmp / "r.duckdb", db)
    con = duckdb.connect(str(db))
    twin = first[:4] + ("0" if second[4] != "0" else "1") + second[5:]  # shares first's first 4 characters
    con.execute("UPDATE runs SET run_id = ? WHERE run_id = ?", [twin, second])
    with pytest.raises(CurateError, match=rf"--run {first[:4]} matches 2 runs in x\.duckdb .*: give more of the id"):
        resolve_run_id(con, "x.duckdb", first[:4])
    assert resolve_run_id(con, "x.duckdb", first) == first and resolve_run_id(con, "x.duckdb", twin) == twin
    con.close()
