"""`curate report` on a real run: every section is in the page, the plots are embedded, and
headless Chromium renders it."""

import json
import shutil
import subprocess

import duckdb
import pytest

from conftest import curate_cmd, write_jsonl
from curate.report import SECTIONS


def _run(tmp_path, alpaca_rows):
    rows = alpaca_rows[:60] + alpaca_rows[:5]  # five exact duplicates
    src = write_jsonl(tmp_path / "seeds.jsonl", rows, extra_lines=[b"{not json"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "input": [str(src)], "db": str(tmp_path / "r.duckdb"), "shard_size": 20,
        "stages": [{"filters": {"min_response_words": 2}}, {"exact_dedup": {"on": "instruction"}}],
        "selectors": [{"random": {"budget": 0.5, "name": "half"}}],
    }))
    subprocess.run([*curate_cmd(), "run", str(cfg), "--progress", "off", "--no-export"], check=True, capture_output=True)
    return str(tmp_path / "r.duckdb")


def _add_stage_results(db):
    """Scores, verdicts and a clustered selection as scoring, verifier and k-means steps write them."""
    con = duckdb.connect(db)
    run_id, = con.execute("SELECT run_id FROM runs").fetchone()
    ids = [r[0] for r in con.execute("SELECT id FROM samples WHERE kept ORDER BY id").fetchall()]
    con.executemany("INSERT INTO scores VALUES (?, ?, 'ifd', ?)", [(run_id, i, k / len(ids)) for k, i in enumerate(ids)])
    con.executemany("INSERT INTO verdicts VALUES (?, ?, 'math', ?, 'exact', ?)",
                    [(run_id, i, k % 3 != 0, "" if k % 3 else "wrong_answer: 4 != 5") for k, i in enumerate(ids)])
    con.executemany("INSERT INTO selections VALUES (?, 'diverse', ?, ?, NULL, ?)", [(run_id, i, k + 1, k % 4) for k, i in enumerate(ids[:20])])
    con.execute("INSERT INTO selection_info (run_id, name, selector, params, pool, rows, seconds, created_at) "
                "VALUES (?, 'diverse', 'kmeans_diversity', '{}', ?, 20, 0.1, now())", [run_id, len(ids)])
    con.close()


def test_report_has_every_section_and_renders_in_chromium(tmp_path, alpaca_rows):
    db = _run(tmp_path, alpaca_rows)
    _add_stage_results(db)
    out = tmp_path / "report.html"
    done = subprocess.run([*curate_cmd(), "report", "--db", db, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 6  # funnel, drop reasons, scores, clusters, selections, verifiers, time
    assert "<td>duplicate_of</td><td>5</td>" in page  # drop reasons grouped by kind, not one line per id
    assert "<td>quarantine: invalid JSON</td><td>1</td>" in page
    assert "66.7" in page or "66.6" in page  # math pass rate: two of every three verdicts pass

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (install.sh installs it with apt)")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run([*common, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTIONS:
        assert f'id="{section}"' in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1100,3000", out.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # tables and plots drawn, not a blank page


def test_report_on_a_missing_database_is_a_clear_error(tmp_path):
    done = subprocess.run([*curate_cmd(), "report", "--db", str(tmp_path / "none.duckdb")], capture_output=True, text=True)
    assert done.returncode != 0 and "database not found" in done.stderr
