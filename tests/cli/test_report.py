"""`curate report` on a real run: every section is in the page, the plots are embedded, and
headless Chromium renders it (tests/cli/test_report_browser.py checks the rendered page in detail)."""

import json
import re
import subprocess

import duckdb
import pytest

from conftest import curate_cmd, headless_chromium, write_jsonl
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
    assert not re.search(r'\b(src|href)="(?!data:|#)', page)  # self-contained (example texts may quote URLs)
    assert page.count("data:image/png;base64,") >= 6  # funnel, drop reasons, scores, clusters, selections, verifiers, time
    assert '<td>duplicate</td><td class="n">5</td>' in page  # drop reasons grouped by the drops table's kind
    assert '<td>quarantine: invalid JSON</td><td class="n">1</td>' in page
    assert "66.7" in page or "66.6" in page  # math pass rate: two of every three verdicts pass
    assert "<td>wrong_answer</td>" in page  # a detail that is not JSON: its text up to the first `:`
    # exact_dedup (a global stage) is one funnel line; pool sizes of a selection without vectors are
    # not invented: the chart says it shows selected rows only, and why.
    funnel = page[page.index('id="funnel-rates"'):page.index("</table>", page.index('id="funnel-rates"'))]
    assert funnel.count("<td>exact_dedup</td>") == 1 and "<td>store</td>" in funnel
    assert "selected rows per cluster (pool sizes unknown)" in page and "could not be recomputed" in page
    assert page.count('class="example-cluster"') == 4 and 'id="drop-examples"' in page

    common = headless_chromium(tmp_path / "chrome")
    dom = subprocess.run([*common, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in SECTIONS:
        assert f'id="{section}"' in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1100,3000", out.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # tables and plots drawn, not a blank page


def test_a_chart_with_nothing_to_draw_is_a_sentence():
    """Empty or all-zero data draws no axes: the helpers return the sentence instead."""
    from curate.report_render import bars, barh, hist, timeline

    assert bars([], {}, "rows", "t", "nothing here") == '<p class="empty">nothing here</p>'
    assert bars(["a", "b"], {"x": [0, 0]}, "rows", "t", "all zero") == '<p class="empty">all zero</p>'
    assert barh(["a"], {"x": [0], "y": [None]}, "rows", "t", "none", log=True) == '<p class="empty">none</p>'
    assert hist([float("nan")], "t", "x", "no finite values") == '<p class="empty">no finite values</p>'
    assert timeline([("a", 0.0, 0.0)], "t", "no time") == '<p class="empty">no time</p>'
    assert barh(["a", "b"], {"x": [3_111, 0]}, "rows", "t", "none", log=True).startswith('<img class="chart"')


def test_a_global_stage_is_one_funnel_line(tmp_path):
    """A global stage's stage_stats rows (per shard: its key half's stream time; shard '*': the
    decision's counts) make one line, even at two positions (as older runs stored them); the two
    phases' `store` steps are told apart."""
    from curate.report import _steps
    from curate.storage.store import Store

    with Store(str(tmp_path / "s.duckdb")) as store:
        rows = [("r", "a", 0, "ingest", 10, 10, 0, 0, 0, 0, 0.1), ("r", "b", 0, "ingest", 10, 10, 0, 0, 0, 0, 0.1),
                ("r", "a", 1, "store", 10, 10, 0, 0, 0, 0, 0.0), ("r", "b", 1, "store", 10, 9, 1, 0, 0, 0, 0.0),
                ("r", "a", 2, "near_dedup", 0, 0, 0, 0, 0, 0, 0.5), ("r", "b", 2, "near_dedup", 0, 0, 0, 0, 0, 0, 0.5),
                ("r", "*", 3, "near_dedup", 19, 15, 4, 0, 0, 0, 0.25),
                ("r", "a", 4, "embed", 15, 15, 0, 0, 0, 0, 2.0), ("r", "a", 5, "store", 15, 15, 0, 0, 0, 0, 0.0)]
        store.con.executemany("INSERT INTO stage_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        steps = _steps(store.con, "r")
    assert [s.label for s in steps] == ["ingest", "store (phase 1)", "near_dedup", "embed", "store (phase 2)"]
    near = steps[2]
    assert (near.kind, near.rows_in, near.kept, near.dropped, near.stream_seconds, near.barrier_seconds) == \
        ("global", 19, 15, 4, 1.0, 0.25)


def test_report_on_a_missing_database_is_a_clear_error(tmp_path):
    done = subprocess.run([*curate_cmd(), "report", "--db", str(tmp_path / "none.duckdb")], capture_output=True, text=True)
    assert done.returncode != 0 and "database not found" in done.stderr
