"""Seed files compressed with gzip, bz2 or xz read as the same rows as the file uncompressed:
same shards, row numbers, raw text and ids; a truncated file is a clear error, never fewer rows."""

import bz2
import gzip
import json
import lzma

import pytest

from curate.errors import CurateError
from curate.stages.readers import detect_format, plan_shards, read_shard, resolve_inputs, source_names
from checks import q
from conftest import curate_sh, write_jsonl

COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}
ROWS = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(7)]


def read_all(path, shard_size=2):
    specs = plan_shards(resolve_inputs([str(path)]), shard_size)
    return specs, [(r.row, r.raw, r.error) for spec in specs for r in read_shard(spec)]


def compressed(path, ext):
    out = path.with_name(path.name + ext)
    out.write_bytes(COMPRESSORS[ext](path.read_bytes()))
    return out


def plain_inputs(tmp_path):
    """A JSONL file with a blank line, bad UTF-8 and a non-object line; a JSON list; a CSV with a
    quoted newline and a short row: what the plain readers already number and flag."""
    jsonl = write_jsonl(tmp_path / "data.jsonl", ROWS[:3], [b"", b'{"instruction": "caf\xe9", "output": "x"}', b"[1"])
    with open(jsonl, "ab") as f:
        f.write(json.dumps(ROWS[3]).encode())  # no newline at the end
    (tmp_path / "list.json").write_text(json.dumps(ROWS, indent=1))
    (tmp_path / "table.csv").write_text('instruction,output\n"Line one\nline two",Answer\nonly one field\nQ,A\n'
                                        + "".join(f"{r['instruction']},{r['output']}\n" for r in ROWS))
    return [jsonl, tmp_path / "list.json", tmp_path / "table.csv"]


@pytest.mark.parametrize("ext", COMPRESSORS)
def test_compressed_jsonl_json_and_csv_read_as_the_same_shards_and_rows(tmp_path, ext):
    for plain in plain_inputs(tmp_path):
        packed = compressed(plain, ext)
        assert detect_format(str(packed)) == detect_format(str(plain))
        plain_specs, plain_rows = read_all(plain)
        packed_specs, packed_rows = read_all(packed)
        assert len(plain_rows) >= 4 and packed_rows == plain_rows, plain.name
        assert [s.locator for s in packed_specs] == [s.locator for s in plain_specs]
        assert {s.source for s in packed_specs} == {plain.name.split(".")[0]}


def test_format_and_source_come_from_the_name_under_the_compression_suffix(tmp_path):
    (tmp_path / "lines.json.gz").write_bytes(gzip.compress(b'{"instruction": "a", "output": "b"}\n'))
    assert detect_format(str(tmp_path / "lines.json.gz")) == "jsonl"  # JSON lines saved as .json
    (tmp_path / "x.NDJSON.XZ").write_bytes(lzma.compress(b""))
    assert detect_format(str(tmp_path / "x.NDJSON.XZ")) == "jsonl"
    assert source_names(["/d/data.jsonl.gz", "/d/b.csv.bz2", "/d/c.ndjson.xz"]) == ["data", "b", "c"]
    # the same stem compressed and not: told apart by the full file name
    assert source_names(["/d/data.jsonl", "/d/data.jsonl.gz"]) == ["data.jsonl", "data.jsonl.gz"]
    (tmp_path / "a.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(CurateError, match="Parquet compresses itself"):
        resolve_inputs([str(tmp_path / "a.parquet.gz")])
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"hi"))
    with pytest.raises(CurateError, match=r"cannot tell the format.*\.gz, \.bz2, \.xz"):
        resolve_inputs([str(tmp_path / "a.txt.gz")])


@pytest.mark.parametrize("ext", COMPRESSORS)
def test_a_truncated_compressed_file_is_an_error_naming_it(tmp_path, ext):
    plain = write_jsonl(tmp_path / "seeds.jsonl", ROWS * 50)
    packed = compressed(plain, ext)
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size * 2 // 3])
    with pytest.raises(CurateError, match=rf"input .*seeds\.jsonl{ext} is not a whole .* file .*truncated or corrupt"):
        read_all(packed)


def test_the_pipeline_reads_a_jsonl_gz_as_the_same_rows(ray_local, tmp_path):
    """The same ids, sources and row numbers (and the same quarantined line) from seeds.jsonl and
    seeds.jsonl.gz, in two folders so that both are `seeds`."""
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run

    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    plain = write_jsonl(tmp_path / "plain" / "seeds.jsonl", ROWS, [b"not json"])
    packed = compressed(plain, ".gz").rename(tmp_path / "packed" / "seeds.jsonl.gz")
    got = {}
    for name, path in (("plain", plain), ("packed", packed)):
        db = tmp_path / f"{name}.duckdb"
        report = run(load_config(None, input=[str(path)], db=str(db), shard_size=3), progress="off")
        got[name] = (q(db, 'SELECT id, source, "row" FROM samples WHERE run_id = ? ORDER BY "row"', report.run_id),
                     q(db, 'SELECT source, "row" FROM quarantine WHERE run_id = ?', report.run_id))
    assert len(got["plain"][0]) == len(ROWS) and got["plain"][1] == [("seeds", len(ROWS))]
    assert got["packed"] == got["plain"]


def test_curate_run_on_a_truncated_gz_says_so_in_one_line(tmp_path):
    """Planning reads the whole stream, so the run stops before Ray starts or a row is written."""
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS * 20))[:-40])
    proc = curate_sh(tmp_path, "run", "--input", str(truncated), "--db", str(tmp_path / "cut.duckdb"), check=False)
    assert proc.returncode != 0
    assert "cut.jsonl.gz is not a whole gzip file" in proc.stderr and "truncated or corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout.strip()
