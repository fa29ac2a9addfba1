"""Real-world inputs that ingest once lost or merged (issue 17, items 1-6 and the ingest half of
8 and 9): byte-order marks, system prompts and history, content parts, NaN, DatasetDict splits,
inputs sharing a file stem, field mappings, and curate's own exports read back.

Each kind has a test on its case file (tests/data/cases/, copied from ../shared/cases) and one on
an input of the same kind written here; the last tests run the real pipeline on them."""

import hashlib
import json
import math
import runpy
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.errors import CurateError
from curate.pipeline.config import load_config
from curate.pipeline.dag import read_shard_table, stage_plans
from curate.stages.ingest import Ingest
from curate.stages.readers import input_fingerprint, plan_shards, resolve_inputs
from curate.storage.schema import sample_id, with_tool_fields
from checks import q
from conftest import write_jsonl

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"


def ingest(*inputs, shard_size=2, **ingest_kw):
    """Inputs → (kept samples in input order, {(source, row): quarantine reason}), through the
    pipeline's own read step and Ingest stage; every row read is one or the other."""
    stage = Ingest(**ingest_kw)
    kept, quarantined, read = [], {}, 0
    for spec in plan_shards(resolve_inputs([str(i) if isinstance(i, Path) else i for i in inputs]), shard_size):
        table = read_shard_table(spec)
        read += table.num_rows
        result = stage(table)
        for row in result.kept.to_pylist():
            row["meta"] = json.loads(row["meta"])
            kept.append(row)
        for row in result.quarantined.to_pylist():
            quarantined[(row["source"], row["_row"])] = row["error"]
    assert read == len(kept) + len(quarantined)
    return kept, quarantined


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


# ---------------------------------------------------------------------------- 1. byte-order mark


def test_bom_at_the_start_of_a_jsonl_file_is_ignored():
    assert (CASES / "bom.jsonl").read_bytes().startswith(b"\xef\xbb\xbf")
    kept, quarantined = ingest(CASES / "bom.jsonl")
    assert not quarantined
    assert [s["messages"][0]["content"] for s in kept] == [
        "Name three uses for a paper clip besides holding paper.",
        "Rewrite the sentence in the passive voice.\n\nThe committee approved the new budget on Monday.",
        "Give a one-line definition of photosynthesis.",
    ]


def test_bom_in_csv_json_list_json_lines_and_a_concatenated_jsonl(tmp_path):
    rows = [{"instruction": "Name a planet.", "output": "Mars."}, {"instruction": "Name a metal.", "output": "Iron."}]
    (tmp_path / "excel.csv").write_text("instruction,output\nName a planet.,Mars.\nName a metal.,Iron.\n", encoding="utf-8-sig")
    (tmp_path / "list.json").write_text(json.dumps(rows, indent=1), encoding="utf-8-sig")
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8-sig")
    # two files, each written with a BOM, joined by `cat`: the second BOM opens a line in the middle
    one_file = "\ufeff" + json.dumps(rows[0]) + "\n"
    (tmp_path / "cat.jsonl").write_text(one_file + one_file.replace("planet", "moon"), encoding="utf-8")
    for name in ("excel.csv", "list.json", "lines.json", "cat.jsonl"):
        kept, quarantined = ingest(tmp_path / name)
        assert not quarantined, (name, quarantined)
        assert len(kept) == 2 and all(s["meta"] == {} for s in kept), name  # no "\ufeffinstruction" column
        assert kept[0]["messages"] == [user("Name a planet."), assistant("Mars.")], name


# ---------------------------------------------------------------------------- 2. system prompts and history


def test_system_field_and_alpaca_history_become_turns_and_keep_rows_distinct():
    kept, quarantined = ingest(CASES / "system-field-and-history.jsonl")
    assert not quarantined and len(kept) == 4
    assert len({s["id"] for s in kept}) == 4  # same conversation, different system prompts: distinct rows
    greet = [user("How should I greet a customer who walks in?"),
             assistant("Smile, make eye contact and say: welcome in, let me know if I can help you find anything.")]
    assert kept[0]["messages"] == [system("You are a friendly shop assistant in a bookshop."), *greet]
    assert kept[1]["messages"] == [system("You are a terse assistant. Answer in at most ten words."), *greet]
    assert kept[2]["messages"] == greet
    assert kept[3]["messages"] == [system("You are a maths tutor for children."), user("What is 6 times 7?"),
                                   assistant("6 times 7 is 42."), user("And what is 7 times 8?"), assistant("7 times 8 is 56.")]
    assert all(s["meta"] == {} for s in kept)  # read into turns, not left in meta


def test_system_and_history_on_other_shapes(tmp_path):
    rows = [
        # query/response/history with a system prompt (ChatGLM, LLaMA-Factory)
        {"prompt": "And in French?", "response": "Bonjour.", "system": "You translate.",
         "history": [["Say hello in Spanish.", "Hola."]]},
        # ShareGPT with earlier exchanges in `history`
        {"conversations": [{"from": "human", "value": "And 3 + 3?"}, {"from": "gpt", "value": "6."}],
         "history": [["What is 2 + 2?", "4."]], "system": ""},
        # OpenAI messages that open with their own, different system turn: that one stays, the field goes to meta
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}], "system": "Be verbose."},
        # the same system prompt in both places: one system turn
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}], "system": "Be brief."},
        {"instruction": "x", "output": "y", "history": [["only a question"]]},
        {"instruction": "x", "output": "y", "history": "not a list"},
        {"instruction": "x", "output": "y", "system": ["a", "list"]},
    ]
    kept, quarantined = ingest(write_jsonl(tmp_path / "chat.jsonl", rows), shard_size=10)
    assert kept[0]["messages"] == [system("You translate."), user("Say hello in Spanish."), assistant("Hola."),
                                   user("And in French?"), assistant("Bonjour.")]
    assert kept[1]["messages"] == [user("What is 2 + 2?"), assistant("4."), user("And 3 + 3?"), assistant("6.")]
    assert kept[1]["meta"] == {}  # a blank system prompt is no prompt
    assert kept[2]["messages"][0] == system("Be brief.") and kept[2]["meta"] == {"system": "Be verbose."}
    assert kept[3]["messages"] == kept[2]["messages"] and kept[3]["meta"] == {}
    assert "history item 0 must be a [user, assistant] pair" in quarantined[("chat", 4)]
    assert "'history' must be a list of [user, assistant] pairs" in quarantined[("chat", 5)]
    assert "'system' must be a string" in quarantined[("chat", 6)]


# ---------------------------------------------------------------------------- 3. content parts


def test_text_content_parts_are_joined_and_an_image_part_quarantines_its_row():
    kept, quarantined = ingest(CASES / "content-parts.jsonl")
    assert len(kept) == 3 and list(quarantined) == [("content-parts", 2)]
    assert "image_url" in quarantined[("content-parts", 2)]
    assert kept[0]["messages"] == [user("Give me two tips for writing clear emails."),
                                   assistant("Put the request in the first sentence, and keep one topic per email.")]
    assert kept[1]["messages"] == [system("You are a concise assistant."),
                                   user("Translate to Spanish:\nGood morning, everyone."),
                                   assistant("Buenos d\u00edas a todos.")]
    # parts or a plain string: the same text gives the same id
    assert kept[0]["id"] == sample_id(kept[0]["messages"])


def test_audio_parts_responses_api_parts_and_bad_parts(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGR...", "format": "wav"}}]},
                      {"role": "assistant", "content": "A dog barking."}]},
        {"messages": [{"role": "user", "content": [{"type": "input_text", "text": "Summarise: "}, {"type": "input_text", "text": "cats sleep a lot."}]},
                      {"role": "assistant", "content": [{"type": "output_text", "text": "Cats sleep much."}]}]},
        {"conversations": [{"from": "human", "value": [{"type": "text", "text": "Hi?"}]}, {"from": "gpt", "value": "Hello."}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": [42]}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}, {"type": "text", "text": "Read it."}]},
                      {"role": "assistant", "content": "Done."}]},
    ]
    kept, quarantined = ingest(write_jsonl(tmp_path / "parts.jsonl", rows), shard_size=10)
    assert [s["messages"] for s in kept] == [
        [user("Summarise:\ncats sleep a lot."), assistant("Cats sleep much.")],
        [user("Hi?"), assistant("Hello.")],
    ]
    assert "'input_audio'" in quarantined[("parts", 0)] and "text pipeline" in quarantined[("parts", 0)]
    assert "part 0 (text) has no 'text' string" in quarantined[("parts", 3)]
    assert "part 0 must be an object" in quarantined[("parts", 4)]
    assert "'file'" in quarantined[("parts", 5)]


# ---------------------------------------------------------------------------- 4. NaN as missing


def test_nan_reads_as_absent_in_text_and_as_null_in_meta():
    assert "NaN" in (CASES / "nan-fields.jsonl").read_text()
    kept, quarantined = ingest(CASES / "nan-fields.jsonl")
    assert not quarantined and len(kept) == 4
    assert kept[0]["messages"][0] == user("Write a haiku about autumn rain.")  # input NaN: no input, not "NaN"
    assert kept[2]["messages"][0] == user("Give an antonym of 'generous'.")
    assert [s["meta"] for s in kept] == [{"quality": 4.5}, {"quality": None}, {"quality": None}, {"quality": 3.0}]


def test_nan_in_parquet_columns_and_nan_where_text_is_required(tmp_path):
    nan = float("nan")
    table = pa.table({
        "instruction": ["Name a bird.", "Name a tree.", "Name a fish."],
        "input": pa.array([nan, nan, nan], pa.float64()),  # pandas' all-missing text column
        "output": ["A robin.", "An oak.", None],
        "score": pa.array([nan, 0.5, 1.0], pa.float64()),
    })
    pq.write_table(table, tmp_path / "frame.parquet")
    kept, quarantined = ingest(tmp_path / "frame.parquet")
    assert [s["messages"] for s in kept] == [[user("Name a bird."), assistant("A robin.")], [user("Name a tree."), assistant("An oak.")]]
    assert [s["meta"] for s in kept] == [{"score": None}, {"score": 0.5}]
    assert "missing response" in quarantined[("frame", 2)]
    raw_rows = [b'{"instruction": NaN, "output": "x"}', b'{"messages": [{"role": "user", "content": NaN}, {"role": "assistant", "content": "x"}]}',
                b'{"instruction": "Hi", "output": "Hello", "meta": {"scores": [NaN, 1.0]}}']
    kept, quarantined = ingest(write_jsonl(tmp_path / "nan.jsonl", [], raw_rows), shard_size=10)
    assert "'instruction' must be a string, got null (or NaN)" in quarantined[("nan", 0)]
    assert "got null (or NaN)" in quarantined[("nan", 1)]
    assert kept[0]["meta"] == {"scores": [None, 1.0]}


# ---------------------------------------------------------------------------- 5. DatasetDict


@pytest.fixture
def hf_dd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(CASES / "make_datasetdict.py"))
    return tmp_path / "hf_dd"


def test_datasetdict_default_reads_train_only_and_says_what_it_skipped(hf_dd, capsys):
    kept, _ = ingest(hf_dd)
    assert [s["messages"][0]["content"] for s in kept] == [
        "Name a fruit that is high in vitamin C.", "What is the opposite of 'ancient'?", "Give a synonym for 'rapid'."]
    assert all(s["meta"] == {"split": "train"} for s in kept)
    err = capsys.readouterr().err
    assert "warning:" in err and "'train' split only" in err and "skipping test" in err


def test_datasetdict_splits_are_chosen_and_recorded_per_row(hf_dd, tmp_path):
    kept, _ = ingest({"path": str(hf_dd), "splits": ["train", "test"]})
    assert [s["meta"]["split"] for s in kept] == ["train"] * 3 + ["test"] * 2
    kept, _ = ingest({"path": str(hf_dd), "splits": ["test"]})
    assert [s["messages"][0]["content"] for s in kept] == [
        "Name a vegetable that grows underground.", "What is the opposite of 'generous'?"]
    config = tmp_path / "c.yaml"
    config.write_text(f"input: {{path: {hf_dd}, splits: [test]}}\n")
    cfg = load_config(str(config))
    assert [i.splits for i in resolve_inputs(cfg.input)] == [("test",)]
    with pytest.raises(CurateError, match=r"no split 'validation'; its splits are train, test"):
        resolve_inputs([{"path": str(hf_dd), "splits": ["validation"]}])
    # a different choice of splits is a different run
    train, both = (input_fingerprint(resolve_inputs([{"path": str(hf_dd), "splits": s}])) for s in (["train"], ["train", "test"]))
    assert load_config(None).fingerprint(train) != load_config(None).fingerprint(both)


def test_datasetdict_without_train_needs_a_choice_and_a_single_dataset_has_no_splits(tmp_path):
    rows = [{"messages": [user("Hi?"), assistant("Hello.")]}]
    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)})
    dd.save_to_disk(str(tmp_path / "eval_only"))
    with pytest.raises(CurateError, match=r"splits validation, test and no 'train': choose"):
        resolve_inputs([str(tmp_path / "eval_only")])
    kept, _ = ingest({"path": str(tmp_path / "eval_only"), "splits": "validation"})
    assert kept[0]["messages"] == rows[0]["messages"] and kept[0]["meta"] == {"split": "validation"}
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert len(ingest(tmp_path / "single")[0]) == 1
    with pytest.raises(CurateError, match="single Dataset, not a DatasetDict"):
        resolve_inputs([{"path": str(tmp_path / "single"), "splits": ["train"]}])
    write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(CurateError, match="applies to a Hugging Face DatasetDict"):
        resolve_inputs([{"path": str(tmp_path / "a.jsonl"), "splits": ["train"]}])


# ---------------------------------------------------------------------------- 6. source names


def test_inputs_with_the_same_stem_keep_distinct_sources(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [{"instruction": "A?", "output": "a"}])
    (tmp_path / "data.csv").write_text("instruction,output\nB?,b\n")
    kept, _ = ingest(tmp_path / "data.jsonl", tmp_path / "data.csv")
    assert [s["source"] for s in kept] == ["data.jsonl", "data.csv"]
    for d in ("en", "fr"):
        (tmp_path / d).mkdir()
        write_jsonl(tmp_path / d / "train.jsonl", [{"instruction": f"{d}?", "output": d}])
    kept, _ = ingest(str(tmp_path / "*" / "train.jsonl"), tmp_path / "data.jsonl")
    assert [s["source"] for s in kept] == ["en/train.jsonl", "fr/train.jsonl", "data"]  # no clash: the stem as before


# ---------------------------------------------------------------------------- 8. field mapping


QA = {"question": "What is the capital of Peru?", "answer": "Lima.", "topic": "geography"}


def test_a_field_mapping_reads_other_column_names(tmp_path):
    src = write_jsonl(tmp_path / "qa.jsonl", [QA])
    _, quarantined = ingest(src)
    assert "unrecognised row" in quarantined[("qa", 0)] and "fields" in quarantined[("qa", 0)]
    config = tmp_path / "c.yaml"
    config.write_text(f"input: {src}\ningest: {{fields: {{instruction: question, response: answer}}}}\n")
    ingest_plan = stage_plans(load_config(str(config)))[0]
    assert ingest_plan.key == "ingest"
    kept, quarantined = ingest(src, **ingest_plan.params)
    assert not quarantined
    assert kept[0]["messages"] == [user("What is the capital of Peru?"), assistant("Lima.")]
    assert kept[0]["meta"] == {"topic": "geography"}
    config.write_text("ingest: {fields: {instructoin: question}}\n")
    with pytest.raises(CurateError, match=r"ingest\.fields: unknown field 'instructoin'"):
        load_config(str(config))


def test_field_mappings_on_other_shapes(tmp_path):
    rows = [
        {"instruction": "Summarise.", "context": "Cats sleep a lot.", "response": "Cats sleep much.", "category": "summarization"},  # Dolly
        {"dialog": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}], "persona": "Be kind."},
        {"question": "2 + 2?", "answer": "4.", "output": "an unrelated column"},
    ]
    fields = {"input": "context", "conversations": "dialog", "system": "persona", "instruction": "question", "response": "answer"}
    kept, quarantined = ingest(write_jsonl(tmp_path / "mixed.jsonl", rows), shard_size=10, fields=fields)
    assert not quarantined
    assert kept[0]["messages"] == [user("Summarise.\n\nCats sleep a lot."), assistant("Cats sleep much.")]
    assert kept[0]["meta"] == {"category": "summarization"}
    assert kept[1]["messages"] == [system("Be kind."), user("Hi?"), assistant("Hello.")] and kept[1]["meta"] == {}
    # the mapped answer wins over a column that happens to be called `output`, which stays in meta
    assert kept[2]["messages"] == [user("2 + 2?"), assistant("4.")] and kept[2]["meta"] == {"output": "an unrelated column"}


# ---------------------------------------------------------------------------- 9. exports read back


def _alpaca(sample):
    """A row as `curate export --shape alpaca` writes it (storage/shapes.py)."""
    turns = list(sample["messages"])
    sys_prompt = turns.pop(0)["content"] if turns[0]["role"] == "system" else None
    history = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    return {"id": sample["id"], "instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"],
            "system": sys_prompt, "history": history or None, "meta": sample["meta"]}


def _sharegpt(sample):
    turns = list(sample["messages"])
    row = {"id": sample["id"], "system": turns.pop(0)["content"] if turns[0]["role"] == "system" else None}
    names = {"user": "human", "assistant": "gpt", "tool": "observation"}
    return {**row, "conversations": [{"from": names[t["role"]], "value": t["content"]} for t in turns], "meta": sample["meta"]}


def test_export_shapes_read_back_with_the_same_messages_and_meta(tmp_path):
    original, _ = ingest(CASES / "export-roundtrip.jsonl", CASES / "system-field-and-history.jsonl")
    assert original[0]["meta"] == {"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"], "category": "coding"}
    messages_rows = [{k: s[k] for k in ("id", "messages", "origin", "source", "parent_ids", "meta")} for s in original]
    write_jsonl(tmp_path / "messages.jsonl", messages_rows)
    as_parquet = [dict(r, meta=json.dumps(r["meta"])) for r in messages_rows]  # Parquet and HF store meta as a JSON string
    pq.write_table(pa.Table.from_pylist(as_parquet), tmp_path / "messages.parquet")
    datasets.Dataset.from_list(as_parquet).save_to_disk(str(tmp_path / "hf_export"))
    write_jsonl(tmp_path / "alpaca.jsonl", [_alpaca(s) for s in original])
    pq.write_table(pa.Table.from_pylist([dict(_alpaca(s), meta=json.dumps(s["meta"])) for s in original]), tmp_path / "alpaca.parquet")
    write_jsonl(tmp_path / "sharegpt.jsonl", [_sharegpt(s) for s in original])
    want = [(s["id"], s["messages"], s["meta"]) for s in original]
    for name in ("messages.jsonl", "messages.parquet", "hf_export", "alpaca.jsonl", "alpaca.parquet", "sharegpt.jsonl"):
        back, quarantined = ingest(tmp_path / name)
        assert not quarantined, name
        assert [s["source"] for s in back] == [Path(name).stem] * len(want), name  # the file read, not the export's
        if name.startswith(("messages", "hf")):  # the export's own `source` column, kept in meta
            assert [s["meta"].pop("origin_source") for s in back] == [s["source"] for s in original], name
        assert [(s["id"], s["messages"], s["meta"]) for s in back] == want, name  # no meta.meta, no meta.id


def test_a_meta_that_is_not_an_object_and_a_foreign_id_are_kept(tmp_path):
    rows = [{"id": "alpaca-0001", "instruction": "Hi?", "output": "Hello.", "meta": "hand-checked"},
            {"instruction": "Hi?", "output": "Hey.", "meta": "[1, 2]", "lang": "en"},
            {"instruction": "Hi?", "output": "Yo.", "meta": {"lang": "fr"}, "lang": "en"}]
    kept, _ = ingest(write_jsonl(tmp_path / "m.jsonl", rows), shard_size=10)
    assert kept[0]["meta"] == {"id": "alpaca-0001", "meta": "hand-checked"}
    assert kept[1]["meta"] == {"meta": "[1, 2]", "lang": "en"}
    assert kept[2]["meta"] == {"lang": "en"}  # a top-level field wins over the same key in meta


# ---------------------------------------------------------------------------- 10. tool calls

WEATHER = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
    {"role": "assistant", "content": "It is 18C and sunny in Paris."}]}


def with_tools(sample):
    """A kept row's turns with their tool fields (the `tool_fields` column) put back."""
    return with_tool_fields(sample["messages"], sample["tool_fields"])


def test_openai_tool_calls_are_kept_and_a_tool_call_turn_may_have_no_text(tmp_path):
    null_content = json.loads(json.dumps(WEATHER))
    null_content["messages"][1]["content"] = None  # what the OpenAI API returns
    null_content["messages"][2]["content"] = "19C cloudy"
    kept, quarantined = ingest(write_jsonl(tmp_path / "tools.jsonl", [WEATHER, null_content]), shard_size=10)
    assert not quarantined
    assert with_tools(kept[0]) == WEATHER["messages"]  # nothing dropped, in the order read
    assert kept[0]["meta"] == {}
    assert with_tools(kept[1])[1] == {**WEATHER["messages"][1], "content": ""}
    # the tool fields are part of the content hash: other arguments, another sample
    other = json.loads(json.dumps(WEATHER))
    other["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{\"city\":\"Rome\"}"
    again, _ = ingest(write_jsonl(tmp_path / "rome.jsonl", [other]))
    assert again[0]["id"] != kept[0]["id"]
    assert kept[0]["id"] == sample_id(WEATHER["messages"])


def test_legacy_function_calls_sharegpt_function_call_and_malformed_tool_calls(tmp_path):
    legacy = {"messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": None, "function_call": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}},
        {"role": "function", "name": "add", "content": "4"},
        {"role": "assistant", "content": "2 + 2 = 4."}]}
    glaive = {"conversations": [
        {"from": "human", "value": "Convert 5 km to miles."},
        {"from": "function_call", "value": "{\"name\": \"convert\", \"arguments\": {\"km\": 5}}"},
        {"from": "observation", "value": "3.11"},
        {"from": "gpt", "value": "5 km is about 3.11 miles."}]}
    bad = [
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "", "tool_calls": "get_weather"}]},
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "", "tool_calls": [["get_weather"]]}]},
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "", "tool_calls": []}]},
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "tool", "content": "x", "tool_call_id": 7},
                      {"role": "assistant", "content": "Hello."}]},
    ]
    kept, quarantined = ingest(write_jsonl(tmp_path / "more.jsonl", [legacy, glaive, *bad]), shard_size=10)
    assert [m["role"] for m in with_tools(kept[0])] == ["user", "assistant", "tool", "assistant"]
    assert with_tools(kept[0])[1] == {"role": "assistant", "content": "", "function_call": legacy["messages"][1]["function_call"]}
    assert with_tools(kept[0])[2] == {"role": "tool", "content": "4", "name": "add"}
    # LLaMA-Factory's call turn is a call, not an answer written as JSON text (section 12)
    assert with_tools(kept[1])[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "convert", "arguments": "{\"km\": 5}"}}]}
    assert [m["role"] for m in kept[1]["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert quarantined == {
        ("more", 2): "turn 1 'tool_calls' must be a list of tool-call objects, got str \"get_weather\"",
        ("more", 3): "turn 1 'tool_calls' must be a list of tool-call objects, got list [[\"get_weather\"]]",
        ("more", 4): "turn 1 (assistant) has empty text",  # an empty list calls nothing
        ("more", 5): "turn 1 (assistant) has empty text",  # as before: no text, no call
        ("more", 6): "turn 1 'tool_call_id' must be a string, got int",
    }


def test_text_stages_read_a_tool_call_turn_as_its_calls(tmp_path):
    from curate.stages.dedup import dedup_text
    from curate.stages.filters import Filters
    from curate.stages.text import last_assistant_turn, text_messages

    ends_in_call = {"messages": WEATHER["messages"][:2]}
    other_city = json.loads(json.dumps(ends_in_call))
    other_city["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{\"city\":\"Rome\"}"
    table = Ingest(require_response=False)(read_shard_table(plan_shards(resolve_inputs(
        [str(write_jsonl(tmp_path / "calls.jsonl", [WEATHER, ends_in_call, other_city]))]), 10)[0])).kept
    assert last_assistant_turn(text_messages(table)).to_pylist() == [
        "It is 18C and sunny in Paris.", 'get_weather({"city":"Paris"})', 'get_weather({"city":"Rome"})']
    keys = dedup_text(table, "conversation").to_pylist()
    assert len(set(keys)) == 3  # the calls' arguments tell the rows apart
    result = Filters(min_response_words=1)(table)
    assert result.kept.num_rows == 3  # no empty_turn: the call is the turn's text


# ---------------------------------------------------------------------------- 12. tool definitions, LLaMA-Factory tool turns

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
FUNCTIONS = [{"name": "add", "description": "Add two numbers",
              "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]


def test_tools_and_legacy_functions_are_the_rows_tool_definitions_and_count_in_its_id(tmp_path):
    other_tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
    legacy = {"messages": [user("What is 2 + 2?"), {"role": "assistant", "content": None, "function_call":
                                                    {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}},
                           {"role": "function", "name": "add", "content": "4"}, assistant("2 + 2 = 4.")]}
    plain = [user("Hi?"), assistant("Hello.")]
    rows = [{**WEATHER, "tools": TOOLS},
            {**WEATHER, "tools": json.dumps(TOOLS)},  # JSON text, as LLaMA-Factory and a Parquet export hold it
            {**WEATHER, "tools": other_tools},  # the same turns offered another tool: another sample
            {**legacy, "functions": FUNCTIONS},
            {"messages": plain, "tools": None, "functions": []},  # none
            {"messages": plain, "tools": "", "meta": {"tools": TOOLS}},  # a top-level field wins over meta's
            {"messages": plain, "tools": {"name": "get_weather"}},
            {"messages": plain, "tools": ["get_weather"]},
            {"messages": plain, "functions": "get_weather(city)"}]
    kept, quarantined = ingest(write_jsonl(tmp_path / "defs.jsonl", rows), shard_size=10)
    assert [s["meta"] for s in kept] == [{"tools": TOOLS}, {"tools": TOOLS}, {"tools": other_tools}, {"functions": FUNCTIONS}, {}, {}]
    assert kept[0]["id"] == kept[1]["id"] == sample_id(WEATHER["messages"], {"tools": TOOLS}) != sample_id(WEATHER["messages"])
    assert kept[2]["id"] not in (kept[0]["id"], sample_id(WEATHER["messages"]))
    assert kept[3]["id"] == sample_id(with_tools(kept[3]), {"functions": FUNCTIONS})
    # a row without tool definitions keeps the id it always had: its turns' hash
    turns_hash = hashlib.blake2b(json.dumps([["user", "Hi?"], ["assistant", "Hello."]], separators=(",", ":")).encode(),
                                 digest_size=16).hexdigest()
    assert kept[4]["id"] == kept[5]["id"] == sample_id(plain) == turns_hash
    assert quarantined == {
        ("defs", 6): 'field \'tools\' must be a list of tool definitions (objects), got dict {"name": "get_weather"}',
        ("defs", 7): 'field \'tools\' must be a list of tool definitions (objects), got list ["get_weather"]',
        ("defs", 8): "field 'functions' must be a list of tool definitions or JSON text of one, got text that is not "
                     "JSON: 'get_weather(city)'",
    }


LF_WEATHER = {  # LLaMA-Factory's ShareGPT with tools (its data/README.md), parallel calls answered in order
    "conversations": [
        {"from": "human", "value": "Weather in Paris and in Oslo?"},
        {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                                                       {"name": "get_weather", "arguments": {"city": "Oslo"}}])},
        {"from": "observation", "value": "18C sunny"},
        {"from": "observation", "value": "4C snow"},
        {"from": "gpt", "value": "Paris: 18C and sunny. Oslo: 4C with snow."},
        {"from": "human", "value": "And in Rome?"},
        {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Roma\"}}"},
        {"from": "observation", "value": "21C clear"},
        {"from": "gpt", "value": "21C and clear in Rome."}],
    "system": "You can look up the weather.",
    "tools": json.dumps(TOOLS)}


def _call(n, city):
    return {"id": f"call_{n}", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}


def test_llamafactory_function_call_and_observation_turns_are_tool_calls_and_results(tmp_path):
    user_sg = {"from": "human", "value": "Weather in Lima?"}
    string_args = {"conversations": [  # arguments already JSON text: kept as it is
        user_sg,
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": "{\"city\":\"Lima\"}"})},
        {"from": "observation", "value": "16C fog"}, {"from": "gpt", "value": "16C and foggy."}], "tools": TOOLS}
    broken = [
        [user_sg, {"from": "function_call", "value": "get_weather(city='Lima')"}, {"from": "gpt", "value": "x"}],
        [user_sg, {"from": "function_call", "value": "{\"arguments\": {\"city\": \"Lima\"}}"}, {"from": "gpt", "value": "x"}],
        [user_sg, {"from": "function_call", "value": "[]"}, {"from": "gpt", "value": "x"}],
    ]
    rows = [LF_WEATHER, string_args, *({"conversations": c} for c in broken)]
    kept, quarantined = ingest(write_jsonl(tmp_path / "lf.jsonl", rows), shard_size=10)
    assert with_tools(kept[0]) == [
        system("You can look up the weather."), user("Weather in Paris and in Oslo?"),
        {"role": "assistant", "content": "", "tool_calls": [_call(0, "Paris"), _call(1, "Oslo")]},
        {"role": "tool", "content": "18C sunny", "tool_call_id": "call_0"},
        {"role": "tool", "content": "4C snow", "tool_call_id": "call_1"},
        assistant("Paris: 18C and sunny. Oslo: 4C with snow."), user("And in Rome?"),
        {"role": "assistant", "content": "", "tool_calls": [_call(2, "Roma")]},
        {"role": "tool", "content": "21C clear", "tool_call_id": "call_2"},
        assistant("21C and clear in Rome.")]
    assert kept[0]["meta"] == {"tools": TOOLS}
    assert kept[0]["id"] == sample_id(with_tools(kept[0]), {"tools": TOOLS})
    assert with_tools(kept[1])[1]["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lima\"}"}}]
    assert quarantined == {
        ("lf", 2): "turn 1 (function_call) is not JSON of a call {name, arguments}: \"get_weather(city='Lima')\"",
        ("lf", 3): 'turn 1 (function_call) is not a call {name, arguments}: {"arguments": {"city": "Lima"}}',
        ("lf", 4): "turn 1 (function_call) is an empty list of calls",
    }
    again, _ = ingest(write_jsonl(tmp_path / "lf_again.jsonl", [LF_WEATHER]))
    assert again[0]["id"] == kept[0]["id"]  # made-up ids are the same every time


# ---------------------------------------------------------------------------- 11. an export's source


def test_the_file_read_is_the_source_and_an_exports_own_source_goes_to_meta(tmp_path):
    rows = [{"messages": [user("Hi?"), assistant("Hello.")], "origin": "response", "source": "alpaca_seeds", "parent_ids": []},
            {"messages": [user("Bye?"), assistant("Bye.")], "source": "again", "meta": {"origin_source": "first_set"}},
            {"instruction": "Yo?", "output": "Yo.", "source": "export_b"}]
    kept, _ = ingest(write_jsonl(tmp_path / "export_b.jsonl", rows), shard_size=10)
    assert [s["source"] for s in kept] == ["export_b"] * 3
    assert kept[0]["origin"] == "response" and kept[0]["meta"] == {"origin_source": "alpaca_seeds"}
    assert kept[1]["meta"] == {"origin_source": "first_set"}  # the first source it had
    assert kept[2]["meta"] == {}  # the same name: nothing to keep


# ---------------------------------------------------------------------------- the real pipeline


def assert_counts_add_up(db, run_id):
    (rows_in, kept, dropped, quarantined), = q(db, "SELECT rows_in, kept, dropped, quarantined FROM run_totals WHERE run_id = ?", run_id)
    assert rows_in == kept + dropped + quarantined
    assert q(db, "SELECT count(*) FROM quarantine WHERE run_id = ?", run_id) == [(quarantined,)]
    assert q(db, "SELECT count(*) FROM drops WHERE run_id = ?", run_id) == [(dropped,)]


def test_the_pipeline_on_every_ingest_case(ray_local, hf_dd, tmp_path):
    from curate.pipeline.runner import run

    write_jsonl(tmp_path / "data.jsonl", [{"instruction": "A?", "output": "a"}])
    (tmp_path / "data.csv").write_text("instruction,output\nB?,b\n", encoding="utf-8-sig")
    write_jsonl(tmp_path / "qa.jsonl", [QA])
    names = ["bom", "system-field-and-history", "content-parts", "nan-fields", "export-roundtrip"]
    inputs = [str(CASES / f"{n}.jsonl") for n in names] + [
        str(tmp_path / "data.jsonl"), str(tmp_path / "data.csv"), str(tmp_path / "qa.jsonl"), {"path": str(hf_dd), "splits": ["train", "test"]}]
    db = tmp_path / "cases.duckdb"
    cfg = load_config(None, input=inputs, db=str(db), shard_size=2,
                      ingest={"fields": {"instruction": "question", "response": "answer"}})
    report = run(cfg, progress="off")
    assert (report.rows_in, report.kept, report.dropped, report.quarantined) == (3 + 4 + 4 + 4 + 3 + 1 + 1 + 1 + 5, 25, 0, 1)
    assert_counts_add_up(db, report.run_id)
    assert q(db, "SELECT source, row, error FROM quarantine") == [
        ("content-parts", 2, "turn 0 has a content part of type 'image_url', which a text pipeline cannot keep")]
    by_source = dict(q(db, "SELECT source, count(*) FROM curated GROUP BY source"))
    assert by_source == {"bom": 3, "system-field-and-history": 4, "content-parts": 3, "nan-fields": 4,
                         "export-roundtrip": 3, "data.jsonl": 1, "data.csv": 1, "qa": 1, "hf_dd": 5}
    # NaN is SQL NULL: it never sorts first
    scores = q(db, "SELECT CAST(meta->>'$.quality' AS DOUBLE) AS s FROM curated WHERE source = 'nan-fields' ORDER BY s DESC")
    assert scores[0] == (4.5,) and sum(s is None for s, in scores) == 2
    assert q(db, "SELECT meta->>'$.split', count(*) FROM curated WHERE source = 'hf_dd' GROUP BY 1 ORDER BY 1") == [("test", 2), ("train", 3)]


def test_the_pipeline_reads_its_own_exports_back(ray_local, tmp_path):
    from curate.pipeline.runner import run
    from curate.storage.export import export

    def curated(db):
        return {i: (json.loads(m), json.loads(meta)) for i, m, meta in q(db, "SELECT id, to_json(messages)::VARCHAR, meta FROM curated")}

    first = tmp_path / "first.duckdb"
    report = run(load_config(None, input=[str(CASES / "export-roundtrip.jsonl"), str(CASES / "system-field-and-history.jsonl")],
                             db=str(first)), progress="off")
    assert report.kept == 7
    want = curated(first)
    metas = sorted((v[1] for v in want.values() if v[1]), key=lambda m: m["category"])
    assert metas == [{"category": "coding", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]},
                     {"answer": "144", "category": "math"}, {"category": "writing"}]
    for fmt, out in (("jsonl", "x.jsonl"), ("parquet", "x.parquet"), ("hf", "x_hf")):
        export(str(first), str(tmp_path / out), fmt)
        db = tmp_path / f"back_{fmt}.duckdb"
        again = run(load_config(None, input=[str(tmp_path / out)], db=str(db)), progress="off")
        assert (again.kept, again.quarantined) == (7, 0), fmt
        assert_counts_add_up(db, again.run_id)
        # the export's `source` column gives way to the file read, and is kept in meta
        assert {s for s, in q(db, "SELECT DISTINCT source FROM curated")} == {Path(out).stem}, fmt
        first_sources = dict(q(first, "SELECT id, source FROM curated"))
        back = curated(db)
        assert {i: meta.pop("origin_source") for i, (_, meta) in back.items()} == first_sources, fmt
        assert back == want, fmt


def test_an_empty_csv_cell_is_missing_like_nan_in_parquet(tmp_path):
    """pandas writes NaN as an empty CSV cell: it must read as null, as the Parquet copy does."""
    import pandas as pd

    from curate.stages.ingest import Ingest
    from curate.stages.readers import plan_shards, read_shard, resolve_inputs

    frame = pd.DataFrame({"instruction": ["a", "b"], "input": ["", "x"], "output": ["one two", "three four"],
                          "difficulty": [1.5, float("nan")]})
    frame.to_csv(tmp_path / "qa.csv", index=False)
    frame.to_parquet(tmp_path / "qa.parquet")
    metas = {}
    for name in ("qa.csv", "qa.parquet"):
        spec, = plan_shards(resolve_inputs([str(tmp_path / name)]), 100)
        rows = [Ingest().parse(r.raw, "s") for r in read_shard(spec)]
        metas[name] = [json.loads(r["meta"]) for r in rows]
        assert [m[1]["content"] for m in (r["messages"] for r in rows)] == ["one two", "three four"]
    assert metas["qa.csv"][1].get("difficulty") is None and "difficulty" in metas["qa.csv"][1]
    assert metas["qa.parquet"][1].get("difficulty") is None
