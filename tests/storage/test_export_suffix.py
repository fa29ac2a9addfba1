"""An export whose `--out` carries another format's suffix is refused before anything is written:
`curate export -f parquet --out set.jsonl` wrote a Parquet file named `.jsonl` (and the default
`hf` an Arrow folder named `sft.jsonl`), which `curate run`, `datasets` and pandas then read by
the suffix, and fail on. The config's `export` is checked as it is read, not after the run."""

import pytest

from curate.errors import CurateError
from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.storage.export import export
from conftest import write_jsonl


@pytest.fixture(scope="module")
def db(ray_local, tmp_path_factory, alpaca_rows):
    tmp = tmp_path_factory.mktemp("suffix")
    src = write_jsonl(tmp / "s.jsonl", alpaca_rows[:6])
    db = str(tmp / "s.duckdb")
    run(load_config(None, input=[str(src)], db=db), progress="off")
    return db


@pytest.mark.parametrize("fmt, name, named", [("parquet", "set.jsonl", "jsonl"), ("hf", "sft.jsonl", "jsonl"),
                                              ("jsonl", "set.parquet", "parquet"), ("hf", "set.parquet", "parquet")])
@pytest.mark.parametrize("drops", [False, True])
def test_an_out_named_for_another_format_is_refused(db, tmp_path, fmt, name, named, drops):
    with pytest.raises(CurateError, match=rf"--out .*{name} ends in \.{named}, a {named} file's suffix, but --format "
                                          rf"{fmt} writes .* there: pass --format {named}"):
        export(db, str(tmp_path / name), fmt, drops=drops)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt, name", [("jsonl", "set.jsonl"), ("jsonl", "set.json"), ("parquet", "set.parquet"),
                                       ("hf", "set"), ("jsonl", "set.txt")])
def test_an_out_named_for_its_format_or_unnamed_is_written(db, tmp_path, fmt, name):
    assert export(db, str(tmp_path / name), fmt).rows == 6


def test_the_config_export_is_checked_before_the_run(tmp_path):
    with pytest.raises(CurateError, match=r"export: out out/set\.parquet ends in \.parquet, .* but format hf writes an HF "
                                          r"dataset folder there"):
        load_config(None, input=["demo"], db=str(tmp_path / "x.duckdb"), export={"out": "out/set.parquet"})
