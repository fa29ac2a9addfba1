"""Readers and the Ingest stage, without Ray: formats in, messages out, bad rows quarantined."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.stages.ingest import Ingest, RowError
from curate.stages.readers import detect_format, plan_shards, read_shard, resolve_inputs
from curate.storage.schema import sample_id
from conftest import write_jsonl

ALPACA_ROW = {"instruction": "Name a colour.", "input": "", "output": "Blue."}


def parse(row, **kw):
    return Ingest(**kw).parse(json.dumps(row), "src")


def read_all(path, shard_size=2):
    inputs = resolve_inputs([str(path)])
    specs = plan_shards(inputs, shard_size)
    return specs, [rec for spec in specs for rec in read_shard(spec)]


def test_alpaca_with_input_becomes_two_turns():
    s = parse({"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "category": "x"})
    assert s["messages"] == [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    assert json.loads(s["meta"]) == {"category": "x"}
    assert s["origin"] == "seed" and s["source"] == "src"


def test_sharegpt_openai_and_prompt_response_normalise_to_the_same_messages():
    convs = [
        {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
        {"prompt": "Hi?", "response": "Hello."},
        {"instruction": "Hi?", "output": "Hello."},
    ]
    ids = {parse(c)["id"] for c in convs}
    assert len(ids) == 1
    assert ids == {sample_id([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}])}


def test_id_is_a_content_hash():
    a = parse(ALPACA_ROW)["id"]
    assert a == parse(dict(ALPACA_ROW, extra="ignored"))["id"]  # meta does not change identity
    assert a != parse(dict(ALPACA_ROW, output="Red."))["id"]
    assert len(a) == 32 and int(a, 16) >= 0


@pytest.mark.parametrize(
    "row, error",
    [
        ({"instruction": "Do it."}, "missing response"),
        ({"instruction": 3, "output": "x"}, "'instruction' must be a string"),
        ({"instruction": "  ", "output": "x"}, "empty text"),
        ({"messages": "hello"}, "'messages' must be a list"),
        ({"messages": [{"role": "user", "content": 5}]}, "must be a string"),
        ({"messages": [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}]}, "unknown role"),
        ({"conversations": [{"from": "gpt", "value": "only me"}]}, "no user turn"),
        ({"text": "free text"}, "unrecognised row"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_malformed_rows_raise_a_reason(row, error):
    with pytest.raises(RowError, match=error):
        parse(row)


def test_row_over_the_size_limit_is_rejected():
    with pytest.raises(RowError, match="over the limit of 100"):
        parse({"instruction": "x" * 200, "output": "y"}, max_row_bytes=100)


def test_instruction_only_rows_are_accepted_when_no_response_is_required():
    s = parse({"instruction": "Write a haiku."}, require_response=False)
    assert s["messages"] == [{"role": "user", "content": "Write a haiku."}]


def test_ingest_stage_splits_a_batch_into_kept_and_quarantined():
    raws = [json.dumps(ALPACA_ROW), "{not json", json.dumps({"instruction": "x"}), "ok?"]
    batch = pa.table({
        "_shard": ["s"] * 4, "_shard_rows": [4] * 4, "_row": [0, 1, 2, 3], "source": ["src"] * 4,
        "_raw": raws, "read_error": [None, None, None, "invalid UTF-8 at byte 2 of the line"],
        "_status": ["kept"] * 4, "_stage": pa.nulls(4, pa.string()), "_reason": pa.nulls(4, pa.string()),
    })
    result = Ingest()(batch)
    assert result.kept.num_rows == 1
    assert result.kept["messages"][0].as_py()[1]["content"] == "Blue."
    q = result.quarantined.to_pylist()
    assert [r["_row"] for r in q] == [1, 2, 3]
    assert q[0]["error"].startswith("invalid JSON") and q[0]["_raw"] == "{not json"
    assert "missing response" in q[1]["error"]
    assert q[2]["error"].startswith("invalid UTF-8")


def test_jsonl_reader_keeps_line_numbers_skips_blanks_and_flags_bad_utf8(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [ALPACA_ROW] * 3, [b"", b'{"instruction": "caf\xe9", "output": "x"}', b"[1"])
    specs, recs = read_all(p, shard_size=2)
    assert len(specs) == 3
    assert [r.row for r in recs] == [0, 1, 2, 4, 5]
    assert recs[3].error.startswith("invalid UTF-8") and "caf\\xe9" in recs[3].raw
    assert recs[4].error is None and recs[4].raw == "[1"


def test_json_list_reader_and_a_broken_list(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([ALPACA_ROW, dict(ALPACA_ROW, output="Red."), dict(ALPACA_ROW, output="Green.")], indent=2))
    specs, recs = read_all(good, shard_size=2)
    assert [json.loads(r.raw)["output"] for r in recs] == ["Blue.", "Red.", "Green."]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ]')
    _, recs = read_all(broken)
    assert recs[0].error is None
    assert "invalid JSON list" in recs[1].error and '"instruction": "c"' in recs[1].raw


def test_csv_reader_handles_quoted_newlines_and_short_rows(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('instruction,output\n"Line one\nline two",Answer\nonly one field\nQ,A\n')
    _, recs = read_all(p, shard_size=1)
    assert json.loads(recs[0].raw) == {"instruction": "Line one\nline two", "output": "Answer"}
    assert "1 fields, the header has 2" in recs[1].error
    assert json.loads(recs[2].raw) == {"instruction": "Q", "output": "A"}


def test_parquet_and_hf_dataset_readers(tmp_path):
    rows = [dict(ALPACA_ROW, output=f"Answer {i}.") for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=2)
    specs, recs = read_all(tmp_path / "a.parquet", shard_size=2)
    assert [json.loads(r.raw)["output"] for r in recs] == [r["output"] for r in rows]
    assert [r.row for r in recs] == list(range(5))
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])})
    dd.save_to_disk(str(tmp_path / "hf"))
    assert detect_format(str(tmp_path / "hf")) == "hf"
    specs = plan_shards(resolve_inputs([{"path": str(tmp_path / "hf"), "splits": ["train", "test"]}]), 2)
    recs = [rec for spec in specs for rec in read_shard(spec)]
    assert sorted(json.loads(r.raw)["output"] for r in recs) == sorted(r["output"] for r in rows)


def test_unknown_inputs_are_clear_errors(tmp_path):
    from curate.errors import CurateError

    with pytest.raises(CurateError, match="input not found"):
        resolve_inputs([str(tmp_path / "missing.jsonl")])
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(CurateError, match="cannot tell the format"):
        resolve_inputs([str(tmp_path / "a.txt")])
