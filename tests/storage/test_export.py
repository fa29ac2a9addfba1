"""`curate export`: shapes (messages, alpaca, sharegpt, a Jinja template), the round trip through
`curate run`, and a target that is never deleted unless curate wrote it (issue 17, items 7-9).

One real database, built by `curate run` on tests/data/cases/export-roundtrip*.jsonl: a row with
unit tests, one with a maths answer, one with a category (the issue's case), and our own rows: a
multi-turn conversation with a system prompt and constraints, a ShareGPT row with its own `id`,
an Alpaca row with `input` in Chinese, a conversation with a tool turn, nested `meta` with a null.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import datasets
import duckdb
import pytest

from curate.cli import main
from curate.errors import CurateError
from curate.pipeline.config import load_config
from curate.pipeline.runner import run
from curate.storage.export import export
from curate.storage.schema import with_tool_fields
from curate.storage.shapes import Unfit, to_alpaca, to_sharegpt
from conftest import curate_cmd, curate_sh

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"
INPUTS = [CASES / "export-roundtrip.jsonl", CASES / "export-roundtrip-conversations.jsonl"]
TOOL_ROW_CATEGORY = "tool_use"


def cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def curated_rows(db, columns: str) -> list[tuple]:
    """`columns` (SQL) of a database's curated rows, read through a read-only connection."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(f"SELECT {columns} FROM curated").fetchall()
    finally:
        con.close()


def curated(db) -> dict:
    """id → (messages, meta) of a database's curated rows."""
    rows = curated_rows(db, "id, to_json(messages)::VARCHAR, meta, source, origin")
    return {i: {"messages": json.loads(m), "meta": json.loads(meta), "source": s, "origin": o} for i, m, meta, s, o in rows}


def tree(path: Path) -> dict:
    """Every file under a path (hidden ones too) with its bytes; a file: itself."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def staging_dirs(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.curate-tmp-*"))


@pytest.fixture(scope="module")
def base(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    db = tmp / "base.duckdb"
    report = run(load_config(None, input=[str(p) for p in INPUTS], db=str(db)), progress="off")
    assert (report.rows_in, report.kept, report.quarantined) == (8, 8, 0)
    return db


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("fmt,shape", [("jsonl", "messages"), ("parquet", "messages"), ("hf", "messages"),
                                       ("jsonl", "alpaca"), ("hf", "alpaca"), ("jsonl", "sharegpt"),
                                       ("parquet", "sharegpt")])
def test_export_then_run_gives_back_the_same_messages_and_meta(base, tmp_path, capsys, fmt, shape):
    out = tmp_path / {"jsonl": "set.jsonl", "parquet": "set.parquet", "hf": "set"}[fmt]
    code, said, err = cli(capsys, "export", "--db", base, "--format", fmt, "--out", out, "--shape", shape, "--skip-unfit")
    assert code == 0, err
    before = curated(base)
    db = tmp_path / "again.duckdb"
    report = run(load_config(None, input=[str(out)], db=str(db)), progress="off")
    after = curated(db)
    if shape == "alpaca":  # the tool conversation cannot be an Alpaca row: left out, and said so
        tool_id, = [i for i, r in before.items() if r["meta"].get("category") == TOOL_ROW_CATEGORY]
        assert "left out 1 row the alpaca shape cannot express: 1 × a tool turn" in said and tool_id in said
        del before[tool_id]
    assert (report.rows_in, report.kept, report.quarantined) == (len(before), len(before), 0)
    assert set(after) == set(before)  # ids are content hashes: the same messages
    for i, row in before.items():
        assert after[i]["messages"] == row["messages"]
        assert after[i]["source"] == out.stem  # the file read is the source (lineage, drops)
        if shape == "messages":  # the export's own source is kept in meta
            assert after[i]["meta"].pop("origin_source") == row["source"]
            assert after[i]["origin"] == row["origin"]
        assert after[i]["meta"] == row["meta"], f"meta of {i} changed on the way back"
    by_category = {r["meta"].get("category"): r["meta"] for r in after.values()}
    assert by_category["coding"]["tests"] == ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]
    assert by_category["math"]["answer"] in ("144", "63")


def test_messages_jsonl_rows_are_id_messages_and_a_meta_object(base, tmp_path):
    out = tmp_path / "m.jsonl"
    export(str(base), str(out), "jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8
    assert all(isinstance(r["meta"], dict) and r["messages"] and r["id"] for r in rows)
    haiku, = [r for r in rows if "haiku" in r["messages"][0]["content"]]
    assert haiku["meta"] == {"reviewer": None, "rubric": {"syllables": [5, 7, 5]}}


# ---------------------------------------------------------------------------- shapes


def test_alpaca_and_sharegpt_rows(base, tmp_path):
    export(str(base), str(tmp_path / "a.jsonl"), "jsonl", shape="alpaca", skip_unfit=True)
    alpaca = {r["output"]: r for r in map(json.loads, (tmp_path / "a.jsonl").read_text().splitlines())}
    assert alpaca["63"]["system"] == "You are a terse maths tutor."
    assert alpaca["63"]["history"] == [["What is 7 * 8?", "56"]]
    assert (alpaca["63"]["instruction"], alpaca["63"]["input"]) == ("And 7 * 9?", "")
    assert "system" not in alpaca["Bonjour"] and "history" not in alpaca["Bonjour"]

    ds = datasets.load_from_disk(str(_export_hf(base, tmp_path / "sg", shape="sharegpt")))
    rows = {r["conversations"][-1]["value"]: r for r in ds}
    assert rows["63"]["system"] == "You are a terse maths tutor."
    assert [t["from"] for t in rows["63"]["conversations"]] == ["human", "gpt", "human", "gpt"]
    tool = rows["It is 18 °C in Paris <now>."]
    assert tool["system"] is None and [t["from"] for t in tool["conversations"]] == ["human", "gpt", "observation", "gpt"]
    assert json.loads(tool["meta"]) == {"category": "tool_use"}


def test_a_conversation_alpaca_cannot_hold_is_named_not_dropped():
    u, a = {"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}
    sys_ = {"role": "system", "content": "s"}
    for messages, reason in [([u, u, a], "do not alternate"), ([u, a, sys_, u, a], "system turn after the first"),
                             ([u, a, u], "last turn is not an assistant answer"),
                             ([u, {"role": "tool", "content": "t"}, a], "tool turn")]:
        with pytest.raises(Unfit, match=reason):
            to_alpaca(messages)
    # Two system turns: ShareGPT keeps both in the conversation (a reader would put `system` first).
    assert to_sharegpt([sys_, sys_, u, a]) == {"conversations": [{"from": "system", "value": "s"}] * 2
                                               + [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]}


def test_rows_a_shape_cannot_express_stop_the_export_unless_skipped(base, tmp_path, capsys):
    out = tmp_path / "set"
    _export_hf(base, out)
    before = tree(out)
    code, _, err = cli(capsys, "export", "--db", base, "--out", out, "--shape", "alpaca")
    assert code == 2
    assert "1 of 8 rows cannot be exported as alpaca: 1 × a tool turn" in err and "--skip-unfit" in err
    assert tree(out) == before and not staging_dirs(out)
    code, said, _ = cli(capsys, "export", "--db", base, "--out", out, "--shape", "alpaca", "--skip-unfit")
    assert code == 0 and "exported 7 rows (hf, alpaca)" in said and "left out 1 row" in said
    card = (out / "README.md").read_text()
    assert "Left out: 1 row the alpaca shape cannot express" in card and "| 1 |" in card and "Shape `alpaca`" in card


def test_template_renders_rows_skips_on_request_and_names_errors(base, tmp_path, capsys):
    template = tmp_path / "chat.j2"
    template.write_text("{% if meta.category is defined and meta.category == 'writing' %}"
                        "{{ raise_exception('no poems in this set') }}{% endif %}"
                        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{{ meta | tojson }}")
    out = tmp_path / "t.jsonl"
    code, said, _ = cli(capsys, "export", "--db", base, "--format", "jsonl", "--out", out, "--template", template, "--skip-unfit")
    assert code == 0 and "exported 7 rows (jsonl, template)" in said and "1 × no poems in this set" in said
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) == {"id", "text"} for r in rows)
    tool, = [r["text"] for r in rows if "Paris" in r["text"]]
    assert tool.startswith("<|user|>What's the weather in Paris?\n<|assistant|>Let me check.\n<|tool|>")
    assert "<now>" in tool and tool.endswith('{"category": "tool_use"}')  # no HTML escaping

    code, _, err = cli(capsys, "export", "--db", base, "--format", "jsonl", "--out", out, "--template", template)
    assert code == 2 and "1 of 8 rows cannot be exported as template" in err
    template.write_text("{{ messages[0].content }")
    code, _, err = cli(capsys, "export", "--db", base, "--format", "jsonl", "--out", out, "--template", template)
    assert code == 2 and f"template {template}, line 1" in err
    code, _, err = cli(capsys, "export", "--db", base, "--format", "jsonl", "--out", out, "--template", template, "--shape", "alpaca")
    assert code == 2 and "leave out --shape alpaca" in err


# ---------------------------------------------------------------------------- the target


def test_a_foreign_folder_or_file_is_refused_and_left_as_it_was(base, tmp_path, capsys):
    out = tmp_path / "out"
    _export_hf(base, out / "earlier")  # an earlier export inside, and a file of the user's
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    code, _, err = cli(capsys, "export", "--db", base, "--format", "hf", "--out", out)
    assert code == 2 and f"--out {out} is a folder that curate did not write" in err and "--overwrite" in err
    assert tree(out) == before and not staging_dirs(out)

    for fmt in ("jsonl", "parquet"):  # a user's data file where an export would go (named for its format)
        seeds = tmp_path / f"seeds.{fmt}"
        seeds.write_bytes(INPUTS[0].read_bytes())
        code, _, err = cli(capsys, "export", "--db", base, "--format", fmt, "--out", seeds)
        assert code == 2 and "is a file that is not an earlier curate export" in err
        assert seeds.read_bytes() == INPUTS[0].read_bytes()

    code, said, _ = cli(capsys, "export", "--db", base, "--format", "hf", "--out", out, "--overwrite")
    assert code == 0 and datasets.load_from_disk(str(out)).num_rows == 8 and not (out / "notes.txt").exists()


def test_the_working_directory_and_the_database_are_never_replaced(base, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for target in (".", "..", str(work)):
        for extra in ([], ["--overwrite"]):
            code, _, err = cli(capsys, "export", "--db", base, "--format", "hf", "--out", target, *extra)
            assert code == 2 and "the working directory" in err and "not even with --overwrite" in err, err
    assert tree(work) == {"keep.txt": b"x"}
    db_before = curated(base)
    for fmt, target in (("hf", base.parent), ("jsonl", base), ("parquet", str(base) + ".wal")):
        code, _, err = cli(capsys, "export", "--db", base, "--format", fmt, "--out", target, "--overwrite")
        assert code == 2 and "the database" in err and "not even with --overwrite" in err, err
    assert curated(base) == db_before


def test_an_earlier_export_is_replaced_but_not_files_added_to_it(base, tmp_path, capsys):
    out = tmp_path / "set"
    out.mkdir()  # an empty folder is fine
    _export_hf(base, out, shape="sharegpt")
    ds = datasets.load_from_disk(str(out))
    ds.map(lambda r: {"n": len(r["conversations"])})  # `datasets` caches next to the data set: allowed
    assert list(out.glob("cache-*.arrow"))
    _export_hf(base, out)
    assert "messages" in datasets.load_from_disk(str(out)).column_names
    (out / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "export", "--db", base, "--out", out)
    assert code == 2 and "earlier curate export, but holds files curate did not write (notes.txt)" in err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / ".curate-export.json").unlink()  # an export made before the marker: known by its card
    _export_hf(base, out, shape="alpaca", skip_unfit=True)
    # File exports are known by their rows (ids are content hashes) or, Parquet, their metadata.
    for fmt, name in (("jsonl", "x.jsonl"), ("parquet", "x.parquet")):
        for shape in ("alpaca", "sharegpt", "messages"):
            export(str(base), str(tmp_path / name), fmt, shape=shape, skip_unfit=True)
    legacy = tmp_path / "legacy.jsonl"  # rows as curate wrote them before: meta a JSON string
    legacy.write_text("".join(json.dumps({**r, "meta": json.dumps(r["meta"])}) + "\n"
                              for r in map(json.loads, (tmp_path / "x.jsonl").read_text().splitlines())))
    export(str(base), str(legacy), "jsonl")


def test_an_earlier_export_of_another_format_is_named_as_such(base, tmp_path, capsys):
    """An HF export folder as the --out of a file export (and a file export as the --out of an HF
    one) is an earlier curate export, of the other kind: the refusal says that, not 'not ours'."""
    folder = _export_hf(base, tmp_path / "set")
    before = tree(folder)
    for fmt in ("jsonl", "parquet"):
        code, _, err = cli(capsys, "export", "--db", base, "-f", fmt, "--out", folder)
        assert code == 2 and f"--out {folder} is a Hugging Face dataset folder from an earlier curate export" in err
        assert "pass another --out" in err and "-f hf to replace it" in err and "not an earlier" not in err
    assert tree(folder) == before
    for fmt in ("jsonl", "parquet"):  # no suffix: known by its rows or its Parquet metadata
        earlier = tmp_path / f"earlier_{fmt}"
        export(str(base), str(earlier), fmt)
        code, _, err = cli(capsys, "export", "--db", base, "-f", "hf", "--out", earlier)
        assert code == 2 and f"--out {earlier} is a {fmt} file from an earlier curate export" in err
        assert f"-f {fmt} to replace it" in err and earlier.is_file()


def test_a_failing_export_leaves_the_previous_one_intact(base, tmp_path, capsys):
    out = tmp_path / "set.jsonl"
    export(str(base), str(out), "jsonl")
    before = tree(out)
    bad = tmp_path / "bad.j2"
    bad.write_text("{{ meta.tests[0] }}")  # rows without tests fail halfway through the set
    code, _, err = cli(capsys, "export", "--db", base, "--format", "jsonl", "--out", out, "--template", bad)
    assert code == 2 and "failed on row" in err and "has no attribute 'tests'" in err
    assert tree(out) == before and not staging_dirs(out)


@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_an_export_killed_midway_leaves_the_previous_one_intact(base, tmp_path, fmt):
    out = tmp_path / ("set.jsonl" if fmt == "jsonl" else "set")
    export(str(base), str(out), fmt)
    before = tree(out)
    slow = tmp_path / "slow.j2"  # a real template that takes about a second a row
    slow.write_text("{% for i in range(4000000) %}{% endfor %}{{ messages[-1].content }}")
    cmd = [*curate_cmd(), "export", "--db", str(base), "--format", fmt, "--out", str(out), "--template", str(slow)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.is_file() for d in staging_dirs(out) for p in d.rglob("*")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.5)  # the writer has opened its file beside the target: inside the rows now
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert tree(out) == before
    assert len(staging_dirs(out)) == 1  # what the killed export had written, beside the target
    export(str(base), str(out), fmt, shape="sharegpt")  # the next export clears it away
    assert not staging_dirs(out) and tree(out) != before


def test_out_dash_writes_jsonl_to_standard_output_and_nothing_else(base, tmp_path):
    """`--out -` with -f jsonl: the rows on stdout, byte for byte those of a file export, and
    the summary on stderr; no file named `-`."""
    proc = curate_sh(tmp_path, "export", "--db", base, "-f", "jsonl", "--out", "-", "--shape", "alpaca", "--skip-unfit")
    export(str(base), str(tmp_path / "set.jsonl"), "jsonl", shape="alpaca", skip_unfit=True)
    assert proc.stdout == (tmp_path / "set.jsonl").read_text(encoding="utf-8") and proc.stdout.count("\n") >= 1
    assert "rows (jsonl, alpaca)" in proc.stderr and "→ standard output" in proc.stderr
    drops = curate_sh(tmp_path, "export", "--db", base, "-f", "jsonl", "--out", "-", "--drops")
    assert drops.stdout == "" and "exported 0 rejected rows" in drops.stderr  # this run rejected none
    assert not (tmp_path / "-").exists()
    # a reader that stops early (`| head`): no traceback, the exit status a shell gives SIGPIPE
    proc = subprocess.Popen([*curate_cmd(), "export", "--db", str(base), "-f", "jsonl", "--out", "-"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    assert proc.wait(timeout=300) == 141 and proc.stderr.read() == ""


@pytest.mark.parametrize("fmt", ["hf", "parquet"])
@pytest.mark.parametrize("drops", [[], ["--drops"]])
def test_out_dash_is_refused_for_formats_that_cannot_stream(base, tmp_path, capsys, monkeypatch, fmt, drops):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "export", "--db", base, "-f", fmt, "--out", "-", *drops)
    assert code != 0 and out == ""
    assert f"--out - (standard output) takes JSONL only: --format {fmt} writes" in err and "pass --format jsonl" in err
    assert not list(tmp_path.iterdir())


def test_a_run_config_cannot_export_to_standard_output(tmp_path):
    with pytest.raises(CurateError, match=r"out '-' \(standard output\) is for `curate export -f jsonl --out -`"):
        load_config(None, input=["demo"], db=str(tmp_path / "x.duckdb"), export={"out": "-", "format": "jsonl"})


def test_unknown_shape_and_format_are_clear_errors(base, tmp_path):
    with pytest.raises(CurateError, match="unknown export shape 'chatml'"):
        export(str(base), str(tmp_path / "x"), "hf", shape="chatml")
    with pytest.raises(CurateError, match="needs --template FILE"):
        export(str(base), str(tmp_path / "x"), "hf", shape="template")
    with pytest.raises(CurateError, match="cannot read template"):
        export(str(base), str(tmp_path / "x"), "hf", template=str(tmp_path / "missing.j2"))
    assert not os.path.exists(tmp_path / "x")


def _export_hf(base, out: Path, **kw) -> Path:
    result = export(str(base), str(out), "hf", **kw)
    assert result.path == str(out)
    return out


def test_a_run_config_exports_in_the_shape_it_names(ray_local, tmp_path, capsys):
    """`export:` in a config takes the export command's options (shape, skip_unfit...)."""
    out = tmp_path / "set.jsonl"
    code, said, err = cli(capsys, "run", "--db", tmp_path / "c.duckdb", "--input", INPUTS[1], "--progress", "off",
                          "--set", f"export={{format: jsonl, out: {out}, shape: sharegpt, skip_unfit: true}}")
    assert code in (0, None), err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all("conversations" in r and "messages" not in r for r in rows)
    assert {t["from"] for r in rows for t in r["conversations"]} >= {"human", "gpt"}


# ---------------------------------------------------------------------------- an export's source


def test_two_exports_of_one_run_read_together_keep_their_own_sources(ray_local, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Name a colour, {n}.", "output": c}) + "\n"
                             for n, c in (("please", "Red."), ("now", "Blue."))))
    first = tmp_path / "first.duckdb"
    run(load_config(None, input=[str(seeds)], db=str(first)), progress="off")
    for name in ("a.jsonl", "b.jsonl"):
        export(str(first), str(tmp_path / name), "jsonl")
    db = tmp_path / "both.duckdb"
    report = run(load_config(None, input=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], db=str(db)), progress="off")
    assert (report.kept, report.dropped) == (2, 2)
    rows = curated(db)
    assert {r["source"] for r in rows.values()} == {"a"}
    assert all(r["meta"] == {"origin_source": "seeds"} for r in rows.values())
    con = duckdb.connect(str(db), read_only=True)
    drops = con.execute("SELECT stage, source, \"row\" FROM drops ORDER BY \"row\"").fetchall()
    con.close()
    assert drops == [("store", "b", 0), ("store", "b", 1)]  # the repeats, in the file they were read from


# ---------------------------------------------------------------------------- tool calls

WEATHER = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
    {"role": "assistant", "content": "It is 18C and sunny in Paris."},
]
LEGACY = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "", "function_call": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}},
    {"role": "tool", "name": "add", "content": "4"},
    {"role": "assistant", "content": "Two plus two is four."},
]
CALL_ONLY = [{"role": "user", "content": "And the weather in Oslo?"}, {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}]


def _arrow_turns(turns):
    """Turns as a Parquet or HF export of tool rows holds them: every tool field, calls as JSON text."""
    return [{"role": t["role"], "content": t["content"], "tool_calls": json.dumps(t["tool_calls"]) if "tool_calls" in t else None,
             "tool_call_id": t.get("tool_call_id"), "name": t.get("name"),
             "function_call": json.dumps(t["function_call"]) if "function_call" in t else None} for t in turns]


def test_tool_calls_survive_the_stages_and_every_export(ray_local, tmp_path):
    seeds = tmp_path / "tools.jsonl"
    rows = [{"messages": WEATHER, "category": "weather"}, {"messages": LEGACY}, {"messages": CALL_ONLY}]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"prompt": "Name the largest moon of Saturn and say what its atmosphere is made of."}) + "\n")
    stages = [{"filters": {"min_response_words": 1, "min_instruction_words": 2}}, "exact_dedup", "near_dedup",
              {"decontaminate": {"benchmarks": [str(bench)]}}]
    db = tmp_path / "tools.duckdb"
    report = run(load_config(None, input=[str(seeds)], db=str(db), stages=stages), progress="off")
    assert (report.rows_in, report.kept, report.dropped, report.quarantined) == (3, 3, 0, 0)

    export(str(db), str(tmp_path / "out.jsonl"), "jsonl")
    exported = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted((r["messages"] for r in exported), key=json.dumps) == sorted([WEATHER, LEGACY, CALL_ONLY], key=json.dumps)
    assert {r["source"] for r in exported} == {"tools"}

    export(str(db), str(tmp_path / "out_hf"), "hf")
    ds = datasets.load_from_disk(str(tmp_path / "out_hf"))
    assert sorted((r["messages"] for r in ds), key=json.dumps) == sorted(map(_arrow_turns, [WEATHER, LEGACY, CALL_ONLY]), key=json.dumps)
    assert "tool_fields" not in ds.column_names

    # each export reads back as the same samples, tool fields and all
    want = curated(db)
    for out in ("out.jsonl", "out_hf"):
        again = tmp_path / f"again_{out}.duckdb"
        back = run(load_config(None, input=[str(tmp_path / out)], db=str(again)), progress="off")
        assert (back.kept, back.quarantined) == (3, 0), out
        assert {i: r["messages"] for i, r in curated(again).items()} == {i: r["messages"] for i, r in want.items()}, out
        con = duckdb.connect(str(again), read_only=True)
        fields = dict(con.execute("SELECT id, tool_fields FROM curated").fetchall())
        con.close()
        assert all(f is not None for f in fields.values()) and len(fields) == 3, out


@pytest.fixture(scope="module")
def tool_db(ray_local, tmp_path_factory):
    """A run over tool-call rows: WEATHER, LEGACY, and WEATHER but for its call's id, which
    exact_dedup (whole conversations) drops, so the run has kept and dropped tool rows."""
    tmp = tmp_path_factory.mktemp("tools")
    twin = json.loads(json.dumps(WEATHER).replace("call_1", "call_7"))
    seeds = tmp / "tools.jsonl"
    seeds.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (WEATHER, LEGACY, twin)))
    db = tmp / "tools.duckdb"
    report = run(load_config(None, input=[str(seeds)], db=str(db), stages=[{"exact_dedup": {"text": "conversation"}}]),
                 progress="off")
    assert (report.rows_in, report.kept, report.dropped, report.quarantined) == (3, 2, 1, 0)
    return db


def test_show_prints_a_turns_tool_calls_and_a_tool_turns_call_id(tool_db):
    from curate.show import show

    listing = show(str(tool_db), width=200)
    assert '→ get_weather({"city":"Paris"})  [id call_1]' in listing
    assert "tool (tool_call_id call_1):" in listing
    assert '→ add({"a": 2, "b": 2})' in listing and "tool (name add):" in listing
    one = show(str(tool_db), id=next(i for i, r in curated(tool_db).items() if r["messages"][0]["content"] == "Weather in Paris?"),
               width=200)
    assert '→ get_weather({"city":"Paris"})  [id call_1]' in one and "tool (tool_call_id call_1):" in one
    dropped = show(str(tool_db), stage="exact_dedup", width=200)
    assert '→ get_weather({"city":"Paris"})  [id call_7]' in dropped
    assert '→ get_weather({"ci … [' in show(str(tool_db), width=200, max_chars=16)  # a list cuts calls as it cuts text


@pytest.mark.parametrize("fmt", ["parquet", "hf", "jsonl"])
def test_a_drops_export_of_tool_rows_reads_back_with_their_tool_fields(tool_db, tmp_path, fmt):
    """Parquet and HF drops exports hold the tool fields in a `tool_fields` column beside
    {role, content} turns; ingest puts them back into the turns, as JSONL has them."""
    from curate.storage.export import export_drops

    out = tmp_path / {"parquet": "drops.parquet", "hf": "drops_hf", "jsonl": "drops.jsonl"}[fmt]
    export_drops(str(tool_db), str(out), fmt)
    again = tmp_path / "again.duckdb"
    back = run(load_config(None, input=[str(out)], db=str(again)), progress="off")
    assert (back.kept, back.quarantined) == (1, 0)
    con = duckdb.connect(str(again), read_only=True)
    (messages, fields, meta), = con.execute("SELECT to_json(messages)::VARCHAR, tool_fields, meta FROM curated").fetchall()
    con.close()
    twin = json.loads(json.dumps(WEATHER).replace("call_1", "call_7"))
    assert with_tool_fields(json.loads(messages), fields) == twin
    assert "tool_fields" not in json.loads(meta)


def test_a_turns_name_or_tool_call_id_makes_a_row_unfit_for_alpaca_and_sharegpt(ray_local, tmp_path):
    """Alpaca and ShareGPT have no field for a turn's `name` (a participant's, a tool turn's) or
    `tool_call_id`; writing the row without it would lose it under an id that counts it (the row
    read back got another id, and the export was no longer seen as curate's own)."""
    named = [{"role": "user", "name": "alice", "content": "Hello bot, how are you today?"},
             {"role": "assistant", "content": "Fine, thanks for asking."}]
    answered = [{"role": "user", "content": "What did the lookup say?"}, {"role": "tool", "tool_call_id": "call_3", "content": "shipped"},
                {"role": "assistant", "content": "Your order has shipped."}]
    plain = [{"role": "user", "content": "Name a colour of the sky."}, {"role": "assistant", "content": "Blue, on a clear day."}]
    seeds = tmp_path / "named.jsonl"
    seeds.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (named, answered, plain)))
    db = tmp_path / "named.duckdb"
    assert run(load_config(None, input=[str(seeds)], db=str(db)), progress="off").kept == 3
    with pytest.raises(Unfit, match="user turn with name"):
        to_sharegpt(named)
    with pytest.raises(Unfit, match="tool turn with tool_call_id"):
        to_sharegpt(answered)
    for shape in ("sharegpt", "alpaca"):
        out = tmp_path / f"{shape}.jsonl"
        export(str(db), str(out), "jsonl", shape=shape, skip_unfit=True)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 1, shape
        export(str(db), str(out), "jsonl", shape=shape, skip_unfit=True)  # seen as an earlier export: replaced
        again = tmp_path / f"again_{shape}.duckdb"
        run(load_config(None, input=[str(out)], db=str(again)), progress="off")
        assert list(curated(again)) == [rows[0]["id"]], shape  # the same id: nothing lost


def test_a_sharegpt_refusal_does_not_suggest_sharegpt(tool_db, tmp_path):
    with pytest.raises(CurateError) as e:
        export(str(tool_db), str(tmp_path / "sg.jsonl"), "jsonl", shape="sharegpt")
    assert "cannot be exported as sharegpt" in str(e.value) and "Export them with --shape messages," in str(e.value)
    with pytest.raises(CurateError) as e:
        export(str(tool_db), str(tmp_path / "al.jsonl"), "jsonl", shape="alpaca")
    assert "Export them with --shape messages or sharegpt," in str(e.value)


# ---------------------------------------------------------------------------- tool definitions

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
OTHER_TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
FUNCTIONS = [{"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]
PLAIN = [{"role": "user", "content": "Name a colour of the sky."}, {"role": "assistant", "content": "Blue, on a clear day."}]


def samples(db) -> dict:
    """id → (turns with their tool fields, meta but the export's source) of a database's curated rows."""
    out = {}
    for i, m, fields, meta in curated_rows(db, "id, to_json(messages)::VARCHAR, tool_fields, meta"):
        meta = json.loads(meta)
        meta.pop("origin_source", None)
        out[i] = (with_tool_fields(json.loads(m), fields), meta)
    return out


def _run(tmp_path, name, rows):
    seeds = tmp_path / f"{name}.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / f"{name}.duckdb"
    report = run(load_config(None, input=[str(seeds)], db=str(db)), progress="off")
    assert (report.rows_in, report.kept) == (len(rows), len(rows))
    return db


def test_tool_definitions_are_top_level_in_every_messages_export_and_read_back(ray_local, tmp_path):
    """An OpenAI fine-tuning row is {"messages", "tools"} (legacy: "functions"): the export writes
    the definitions there, lists in JSONL and JSON text in Parquet and HF, and reads them back."""
    rows = [{"messages": WEATHER, "tools": TOOLS}, {"messages": WEATHER, "tools": OTHER_TOOLS},
            {"messages": CALL_ONLY, "tools": TOOLS, "category": "weather"}, {"messages": LEGACY, "functions": FUNCTIONS},
            {"messages": PLAIN}]
    db = _run(tmp_path, "defs", rows)  # the same turns with other tools: two samples
    want = samples(db)
    as_text = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731
    assert sorted(as_text(m.get("tools") or m.get("functions")) for _, m in want.values()) == sorted(
        map(as_text, [TOOLS, OTHER_TOOLS, TOOLS, FUNCTIONS, None]))

    export(str(db), str(tmp_path / "out.jsonl"), "jsonl")
    exported = {r["messages"][0]["content"] + json.dumps(r.get("tools")): r
                for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    weather = exported["Weather in Paris?" + json.dumps(TOOLS)]
    assert list(weather) == ["id", "messages", "tools", "origin", "source", "parent_ids", "meta"]
    assert weather["messages"] == WEATHER and weather["meta"] == {}
    assert exported["Weather in Paris?" + json.dumps(OTHER_TOOLS)]["id"] != weather["id"]
    assert exported["And the weather in Oslo?" + json.dumps(TOOLS)]["meta"] == {"category": "weather"}
    legacy = exported["What is 2 + 2?null"]
    assert legacy["functions"] == FUNCTIONS and "tools" not in legacy and legacy["meta"] == {}
    plain = exported["Name a colour of the sky.null"]
    assert "tools" not in plain and "functions" not in plain

    for fmt, out in (("parquet", "out.parquet"), ("hf", "out_hf")):
        export(str(db), str(tmp_path / out), fmt)
    table = datasets.load_from_disk(str(tmp_path / "out_hf"))
    assert table.column_names[:4] == ["id", "messages", "tools", "functions"]
    by_id = {r["id"]: r for r in table}
    assert json.loads(by_id[weather["id"]]["tools"]) == TOOLS and by_id[plain["id"]]["tools"] is None
    assert json.loads(by_id[legacy["id"]]["functions"]) == FUNCTIONS and by_id[legacy["id"]]["tools"] is None
    assert json.loads(by_id[weather["id"]]["meta"]) == {}

    for out in ("out.jsonl", "out.parquet", "out_hf"):
        again = tmp_path / f"again_{out}.duckdb"
        back = run(load_config(None, input=[str(tmp_path / out)], db=str(again)), progress="off")
        assert (back.kept, back.quarantined) == (5, 0), out
        assert samples(again) == want, out  # same ids, turns, tool fields and definitions
    for fmt, out in (("jsonl", "out.jsonl"), ("parquet", "out.parquet")):
        export(str(db), str(tmp_path / out), fmt)  # an earlier export: replaced without --overwrite


def test_a_template_gets_the_rows_tools(ray_local, tmp_path):
    db = _run(tmp_path, "tpl", [{"messages": WEATHER, "tools": TOOLS}, {"messages": LEGACY, "functions": FUNCTIONS},
                                {"messages": PLAIN, "category": "sky"}])
    template = tmp_path / "chat.j2"
    template.write_text("{% for t in tools or [] %}{{ t.function.name if t.function is defined else t.name }}{% else %}none"
                        "{% endfor %}|{{ meta | tojson }}")
    export(str(db), str(tmp_path / "t.jsonl"), "jsonl", template=str(template))
    texts = sorted(json.loads(line)["text"] for line in (tmp_path / "t.jsonl").read_text().splitlines())
    assert texts == ["add|{}", "get_weather|{}", 'none|{"category": "sky"}']  # legacy functions as tools; meta without them


LF_WEATHER = {  # LLaMA-Factory's ShareGPT with tools: parallel calls, each answered in order
    "conversations": [
        {"from": "human", "value": "Weather in Paris and in Oslo?"},
        {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                       {"name": "get_weather", "arguments": {"city": "Oslo"}}])},
        {"from": "observation", "value": "18C sunny"},
        {"from": "observation", "value": "4C snow"},
        {"from": "gpt", "value": "Paris: 18C and sunny. Oslo: 4C with snow."},
        {"from": "human", "value": "And in Zürich?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Zürich"}}, ensure_ascii=False)},
        {"from": "observation", "value": "9C rain"},
        {"from": "gpt", "value": "9C and raining in Zürich."}],
    "system": "You can look up the weather.",
    "tools": json.dumps(TOOLS)}
LF_PLAIN = {"conversations": [{"from": "human", "value": "Hi there, who are you?"}, {"from": "gpt", "value": "A weather bot."}],
            "tools": json.dumps(TOOLS, indent=2)}


def test_llamafactory_sharegpt_tool_rows_round_trip(ray_local, tmp_path):
    """sharegpt → curate → sharegpt gives the rows back: function_call and observation turns,
    `tools` as JSON text; read again, the same samples."""
    db = _run(tmp_path, "lf", [LF_WEATHER, LF_PLAIN, {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Yo."}]}])
    want = samples(db)
    for fmt, out in (("jsonl", "lf_out.jsonl"), ("parquet", "lf_out.parquet")):
        export(str(db), str(tmp_path / out), fmt, shape="sharegpt")
        again = tmp_path / f"again_{out}.duckdb"
        back = run(load_config(None, input=[str(tmp_path / out)], db=str(again)), progress="off")
        assert (back.kept, back.quarantined) == (3, 0), out
        assert samples(again) == want, out
    rows = {r["conversations"][0]["value"]: r for r in map(json.loads, (tmp_path / "lf_out.jsonl").read_text().splitlines())}
    weather = rows["Weather in Paris and in Oslo?"]
    assert weather["conversations"] == LF_WEATHER["conversations"] and weather["system"] == LF_WEATHER["system"]
    assert json.loads(weather["tools"]) == TOOLS and weather["meta"] == {}
    assert json.loads(rows["Hi there, who are you?"]["tools"]) == TOOLS and "tools" not in rows["Hi?"]
    # Alpaca rows carry `tools` as LLaMA-Factory's do (a row with tool turns is unfit there)
    assert export(str(db), str(tmp_path / "al.jsonl"), "jsonl", shape="alpaca", skip_unfit=True).skipped == 1
    alpaca = {r["instruction"]: r for r in map(json.loads, (tmp_path / "al.jsonl").read_text().splitlines())}
    assert json.loads(alpaca["Hi there, who are you?"]["tools"]) == TOOLS and "tools" not in alpaca["Hi?"]
    back = run(load_config(None, input=[str(tmp_path / "al.jsonl")], db=str(tmp_path / "al.duckdb")), progress="off")
    assert back.kept == 2 and samples(tmp_path / "al.duckdb") == {r["id"]: want[r["id"]] for r in alpaca.values()}
    # as messages: an OpenAI row, the made-up call ids linking calls and results
    export(str(db), str(tmp_path / "openai.jsonl"), "jsonl")
    openai = {r["id"]: r for r in map(json.loads, (tmp_path / "openai.jsonl").read_text().splitlines())}[weather["id"]]
    assert openai["tools"] == TOOLS and openai["messages"][2]["tool_calls"][1]["id"] == "call_1"
    assert [m.get("tool_call_id") for m in openai["messages"]] == [None, None, None, "call_0", "call_1", None, None, None, "call_2", None]


def test_openai_tool_rows_as_sharegpt(ray_local, tmp_path):
    """An OpenAI row's calls are written as LLaMA-Factory writes them (arguments as JSON values, no
    ids); a legacy function_call, a turn with text and calls, or results out of order are unfit."""
    db = _run(tmp_path, "oa", [{"messages": WEATHER, "tools": TOOLS}, {"messages": LEGACY, "functions": FUNCTIONS}])
    result = export(str(db), str(tmp_path / "sg.jsonl"), "jsonl", shape="sharegpt", skip_unfit=True)
    assert result.skip_reasons == {"an assistant turn with a legacy function_call (ShareGPT writes tool_calls: export as messages)": 1}
    row, = map(json.loads, (tmp_path / "sg.jsonl").read_text().splitlines())
    assert row["conversations"] == [{"from": "human", "value": "Weather in Paris?"},
                                    {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                                    {"from": "observation", "value": "18C sunny"},
                                    {"from": "gpt", "value": "It is 18C and sunny in Paris."}]
    assert json.loads(row["tools"]) == TOOLS
    call = WEATHER[1]
    with pytest.raises(Unfit, match="both text and tool calls"):
        to_sharegpt([WEATHER[0], {**call, "content": "Let me check."}, *WEATHER[2:]])
    two = {**call, "tool_calls": [call["tool_calls"][0], {**call["tool_calls"][0], "id": "call_2"}]}
    swapped = [WEATHER[0], two, {"role": "tool", "tool_call_id": "call_2", "content": "a"}, {"role": "tool", "tool_call_id": "call_1", "content": "b"}]
    with pytest.raises(Unfit, match="tool turn with tool_call_id call_2 that does not answer the calls before it in order"):
        to_sharegpt(swapped)
    assert [t["from"] for t in to_sharegpt(swapped[:2] + swapped[3:] + swapped[2:3])["conversations"]] == [
        "human", "function_call", "observation", "observation"]
