"""Every field case (tests/data/cases, from ../shared/cases) through one run of the CPU stages:
the counts add up, and every row that leaves says why."""

from pathlib import Path

import pytest

from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from checks import assert_counts_add_up, q

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"


def _case_files() -> list[Path]:
    benchmark = {"decontam-benchmark.jsonl"}  # a benchmark, not seed rows
    return sorted(p for p in CASES.glob("*.jsonl") if p.name not in benchmark)


@pytest.mark.parametrize("dedup", [False, True], ids=["verifiers", "dedup"])
def test_every_case_file_accounts_for_every_row(ray_local, tmp_path, dedup):
    stages = [{"filters": {"languages": ["en", "zh", "hi", "th", "ja", "ar"], "min_response_words": 1}},
              {"verify_math": {}}, {"verify_constraints": {}}]
    if dedup:
        stages = [{"exact_dedup": {}}, {"near_dedup": {}}, *stages]
        if (CASES / "decontam-benchmark.jsonl").exists():
            stages.append({"decontaminate": {"benchmarks": [str(CASES / "decontam-benchmark.jsonl")]}})
    db = tmp_path / "cases.duckdb"
    files = _case_files()
    assert len(files) >= 12
    report = run(load_config(None, input=[str(p) for p in files], db=str(db), shard_size=16, stages=stages), progress="off")
    rows_in, kept, dropped, quarantined = assert_counts_add_up(db, report.run_id)
    lines = sum(1 for p in files for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    assert rows_in == lines, "every non-blank line of every file is a row"
    assert kept > 0 and rows_in == kept + dropped + quarantined
    assert q(db, "SELECT count(*) FROM drops WHERE reason IS NULL OR reason = '' OR stage IS NULL") == [(0,)]
    assert q(db, "SELECT count(*) FROM quarantine WHERE error IS NULL OR error = ''") == [(0,)]
    assert q(db, "SELECT count(*) FROM quarantine") == [(quarantined,)]
    sources = {s for s, in q(db, "SELECT source FROM samples UNION SELECT source FROM quarantine")}
    assert len(sources) == len(files), "each input keeps a source of its own"
