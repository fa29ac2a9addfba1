"""Configs that cannot work are rejected as the config is read, naming the parameters, not found
out after Ray starts (or never): a filter bound whose minimum is above its maximum (every row
dropped), near_dedup `bands` of 0 (ZeroDivisionError in the workers) or above `num_perm` (bands of
no signature rows), and an empty `db` (DuckDB's in-memory database: the run's rows lost)."""

import subprocess

import pytest
import yaml

from curate.errors import CurateError
from curate.pipeline.config import load_config
from conftest import curate_cmd, write_jsonl


def config(tmp_path, stages, **top):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "input": str(tmp_path / "in.jsonl"), "stages": stages, **top}))
    return str(path)


@pytest.mark.parametrize("stage, message", [
    ({"filters": {"min_response_words": 5, "max_response_words": 2}},
     r"stages\.0\.filters: min_response_words \(5\) is above max_response_words \(2\): no row could pass"),
    ({"filters": {"max_instruction_chars": 0}},  # the default min_instruction_chars is 1
     r"stages\.0\.filters: min_instruction_chars \(1\) is above max_instruction_chars \(0\)"),
    ({"near_dedup": {"bands": 0}}, r"stages\.0\.near_dedup: bands: Input should be greater than or equal to 1"),
    ({"near_dedup": {"bands": 200}}, r"stages\.0\.near_dedup: bands \(200\) is above num_perm \(128\)"),
    ({"near_dedup": {"bands": 20, "num_perm": 16}}, r"bands \(20\) is above num_perm \(16\)"),
])
def test_parameters_that_contradict_each_other_are_config_errors(tmp_path, stage, message):
    with pytest.raises(CurateError, match=message):
        load_config(config(tmp_path, [stage]))


def test_bounds_that_agree_still_load(tmp_path):
    cfg = load_config(config(tmp_path, [{"filters": {"min_response_words": 3, "max_response_words": 3}},
                                        {"near_dedup": {"bands": 128}}]))
    assert cfg.stages[0].params["max_response_words"] == 3 and cfg.stages[1].params["bands"] == 128


@pytest.mark.parametrize("override", ["filters.max_response_words=1", "db=", "db='  '"])
def test_the_cli_refuses_before_any_run(tmp_path, alpaca_rows, override):
    """Through `curate run` as a user types it: exit 2 with one line, and no database written
    (an empty `db` used to run the whole pipeline into memory and exit 0)."""
    write_jsonl(tmp_path / "in.jsonl", alpaca_rows[:5])
    cfg = config(tmp_path, [{"filters": {"min_response_words": 3}}], db=str(tmp_path / "c.duckdb"))
    proc = subprocess.run([*curate_cmd(), "run", cfg, "--progress", "off", "--set", override], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: config error:"), proc.stderr
    assert ("db: an empty path" in proc.stderr) if override.startswith("db") else ("min_response_words (3) is above" in proc.stderr)
    assert not list(tmp_path.glob("*.duckdb"))
