"""`curate export --selection NAME` exports the selection of the run it exports: a selection that
only another run in the database wrote is an error naming that run. It used to pass the check
(which looked for the name in any run) and export 0 rows, exit 0: the trap of a rerun with a
changed filter and no selectors, whose `curated` run is then the new one."""

import json

import pytest

from curate.cli import main
from curate.errors import CurateError
from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.storage.export import export
from conftest import write_jsonl


def test_a_selection_another_run_wrote_is_not_exported_empty(ray_local, tmp_path, alpaca_rows):
    src = write_jsonl(tmp_path / "s.jsonl", alpaca_rows[:40])
    db = str(tmp_path / "two.duckdb")
    first = run(load_config(None, input=[str(src)], db=db, selectors=[{"random": {"budget": 10, "name": "half"}}]),
                progress="off")
    second = run(load_config(None, input=[str(src)], db=db, stages=[{"filters": {"min_response_words": 40}}]),
                 progress="off")
    assert first.run_id != second.run_id

    with pytest.raises(CurateError, match=rf"run {second.run_id} has no selection named 'half' \(it has no selections\); "
                                          rf"run {first.run_id} wrote one: --run ID"):
        export(db, str(tmp_path / "latest.jsonl"), "jsonl", selection="half")  # the latest finished run: the second
    assert not (tmp_path / "latest.jsonl").exists()

    with pytest.raises(SystemExit) as e:  # the first run's selection, named by --run
        main(["export", "--db", db, "-f", "jsonl", "--out", str(tmp_path / "half.jsonl"), "--selection", "half",
              "--run", first.run_id])
    assert e.value.code == 0
    assert len((tmp_path / "half.jsonl").read_text().splitlines()) == 10

    with pytest.raises(CurateError, match=rf"run {first.run_id} has no selection named 'nope' \(its selections: half\)$"):
        export(db, str(tmp_path / "nope.jsonl"), "jsonl", run_id=first.run_id, selection="nope")
