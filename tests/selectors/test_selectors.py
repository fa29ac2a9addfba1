import json

import duckdb
import pytest

from curate.errors import CurateError
from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.selectors.base import budget_rows
from conftest import write_jsonl


def test_budget_is_a_row_count_or_a_fraction():
    assert budget_rows(100, 1000) == 100
    assert budget_rows(5000, 1000) == 1000
    assert budget_rows(0.1, 1000) == 100
    assert budget_rows(1.0, 1000) == 1000
    for bad in (0, -3, 0.0, 1.5):
        with pytest.raises(ValueError):
            budget_rows(bad, 1000)


def test_random_selection_is_deterministic_nested_and_exportable(ray_local, tmp_path, alpaca_rows, capsys):
    src = write_jsonl(tmp_path / "s.jsonl", alpaca_rows[:500])
    db = str(tmp_path / "sel.duckdb")
    selectors = [{"random": {"budget": 50, "seed": 1, "name": "small"}},
                 {"random": {"budget": 0.2, "seed": 1, "name": "large"}},
                 {"random": {"budget": 50, "seed": 2, "name": "other_seed"}},
                 {"random": {"budget": 5000, "name": "beyond"}}]
    report = run(load_config(None, input=[str(src)], db=db, selectors=selectors), progress="off")
    assert [(s["name"], s["rows"]) for s in report.selections] == [("small", 50), ("large", round(0.2 * report.kept)), ("other_seed", 50),
                                                                    ("beyond", report.kept)]
    summary = report.summary()
    assert f"selection beyond: {report.kept} of {report.kept} rows (its budget, 5,000 rows, is above the pool" in summary
    assert "selection small: 50 of" in summary and "small: 50 of " + str(report.kept) + " rows\n" in summary + "\n"
    con = duckdb.connect(db, read_only=True)
    ranked = lambda name: [r[0] for r in con.execute("SELECT id FROM selections WHERE name = ? ORDER BY rank", [name]).fetchall()]  # noqa: E731
    small, large, other = ranked("small"), ranked("large"), ranked("other_seed")
    kept = {r[0] for r in con.execute("SELECT id FROM curated").fetchall()}
    con.close()
    assert set(small) <= kept and len(set(small)) == 50
    assert large[:50] == small  # a larger budget extends a smaller one
    assert len(set(small) & set(other)) < 25  # another seed draws another sample

    again = run(load_config(None, input=[str(src)], db=db, selectors=selectors), progress="off")
    assert again.selections == []  # unchanged selectors are not recomputed

    from curate.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export", "--db", db, "--format", "jsonl", "--out", str(tmp_path / "small.jsonl"), "--selection", "small"])
    assert e.value.code == 0
    exported = [json.loads(line)["id"] for line in (tmp_path / "small.jsonl").read_text().splitlines()]
    assert exported == small
    with pytest.raises(CurateError, match="no selection named 'nope'"):
        from curate.storage.export import export

        export(db, str(tmp_path / "x.jsonl"), "jsonl", selection="nope")


def test_curated_view_shows_the_latest_run(ray_local, tmp_path, alpaca_rows):
    src = write_jsonl(tmp_path / "s.jsonl", alpaca_rows[:100])
    db = str(tmp_path / "two.duckdb")
    a = run(load_config(None, input=[str(src)], db=db), progress="off")
    b = run(load_config(None, input=[str(src)], db=db, stages=[{"filters": {"min_response_words": 40}}]), progress="off")
    assert a.run_id != b.run_id and b.kept < a.kept
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT count(*) FROM curated").fetchone()[0] == b.kept
    assert con.execute("SELECT count(*) FROM curated_all").fetchone()[0] == a.kept + b.kept
    con.close()


def test_coverage_selectors_are_registered_and_checked_by_the_config():
    from curate.pipeline.registry import selector_class

    assert selector_class("facility_location").name == "facility_location"
    assert selector_class("k_center").name == "k_center"
    config = load_config(None, input=["demo"], stages=[{"embed": {}}, {"ifd": {"model": "m"}}],
                         selectors=[{"facility_location": {"budget": 0.05, "weight_by": "ifd", "name": "fl"}},
                                                          {"k_center": {"budget": 100}}])
    assert [(s.key, s.name) for s in config.selectors] == [("facility_location", "fl"), ("k_center", "k_center")]
    assert config.selectors[0].params["neighbors"] == 32 and config.selectors[1].params["exact_rows"] == 10_000
    with pytest.raises(CurateError, match="kmeans_diversity: within"):
        load_config(None, input=["demo"], selectors=[{"kmeans_diversity": {"within": "nearest"}}])
    with pytest.raises(ValueError, match="neighbors"):
        selector_class("facility_location")(neighbors=0)
