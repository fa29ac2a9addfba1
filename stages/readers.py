"""Seed files → raw records, planned in shards that Ray tasks read independently.

Planning runs in the driver and touches each file once (byte offsets of shard boundaries, row
group sizes, dataset lengths); reading a shard runs in a Ray task and needs only its locator.
Every record comes out as raw text (a JSON object; CSV, Parquet and Hugging Face rows are
serialised to one), so that normalisation is uniform and a quarantined row keeps what was read.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from curate.errors import CurateError

DEMO = "demo"


@dataclass
class ShardSpec:
    shard: str  # "s<source>-<n>": stable across runs of the same input
    path: str
    format: str
    source: str  # data set name recorded on every sample
    locator: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RawRecord:
    row: int
    raw: str
    error: str | None = None  # set when the record could not even be read as text/JSON


def resolve_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """Input strings (paths, globs, `demo`, HF dataset folders) → [(path, format)]."""
    found: list[tuple[str, str]] = []
    for item in inputs:
        if item == DEMO:
            found.append((_bundled_demo(), "jsonl"))
            continue
        paths = sorted(glob.glob(os.path.expanduser(item))) if glob.has_magic(item) else [item]
        if not paths or not all(os.path.exists(p) for p in paths):
            raise CurateError(f"input not found: {item}")
        for p in paths:
            found.append((os.path.abspath(p), detect_format(p)))
    if not found:
        raise CurateError("no input given: pass --input PATH or set `input:` in the config")
    return found


def _bundled_demo() -> str:
    import curate

    for base in curate.__path__:
        p = os.path.join(base, "data", "demo_seeds.jsonl")
        if os.path.exists(p):
            return p
    raise CurateError("the bundled demo seeds are missing from this installation")


def detect_format(path: str) -> str:
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
            return "hf"
        raise CurateError(f"{path} is a folder but not a Hugging Face dataset saved with save_to_disk")
    lower = path.lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet"), (".csv", "csv")):
        if lower.endswith(ext):
            if fmt == "json" and _first_char(path) == "{":
                return "jsonl"  # JSON lines saved as .json
            return fmt
    raise CurateError(f"cannot tell the format of {path}: use .jsonl, .json, .parquet, .csv or an HF dataset folder")


def _first_char(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head[:1].decode("ascii", "replace")


# ---------------------------------------------------------------------------- planning


def plan_shards(inputs: list[tuple[str, str]], shard_size: int) -> list[ShardSpec]:
    specs: list[ShardSpec] = []
    for i, (path, fmt) in enumerate(inputs):
        planner = _PLANNERS[fmt]
        source = _source_name(path)
        for n, locator in enumerate(planner(path, shard_size)):
            specs.append(ShardSpec(f"s{i:03d}-{n:05d}", path, fmt, source, locator))
    return specs


def _source_name(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    for ext in (".jsonl", ".ndjson", ".json", ".parquet", ".csv"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _plan_jsonl(path: str, shard_size: int) -> Iterator[dict]:
    """Byte ranges of `shard_size` lines each, found by streaming the file once."""
    start, offset, lines, first_line = 0, 0, 0, 0
    with open(path, "rb") as f:
        for line in f:
            offset += len(line)
            lines += 1
            if lines - first_line == shard_size:
                yield {"start": start, "end": offset, "first_line": first_line}
                start, first_line = offset, lines
    if offset > start:
        yield {"start": start, "end": offset, "first_line": first_line}


def _plan_json_list(path: str, shard_size: int) -> Iterator[dict]:
    """Character ranges of `shard_size` list elements each; a syntax error ends the list in a
    final shard that holds the unparsed rest, to be quarantined."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if not text.startswith("[", i):
        yield {"start": i, "end": len(text), "first_row": 0, "broken": "a .json file must hold a JSON list of objects"}
        return
    i = _skip_ws(text, i + 1)
    start, row, first_row = i, 0, 0
    while i < len(text) and text[i] != "]":
        try:
            _, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            if row > first_row:
                yield {"start": start, "end": i, "first_row": first_row}
            yield {"start": i, "end": len(text), "first_row": row, "broken": f"invalid JSON list at char {e.pos}: {e.msg}; the rest of the file was not parsed"}
            return
        row += 1
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
        if row - first_row == shard_size:
            yield {"start": start, "end": i, "first_row": first_row}
            start, first_row = i, row
    if row > first_row:
        yield {"start": start, "end": i, "first_row": first_row}


def _plan_csv(path: str, shard_size: int) -> Iterator[dict]:
    """Byte ranges of whole CSV records (quoted newlines included), header parsed once."""
    with open(path, "rb") as f:
        consumed = [0]

        def lines():
            for raw in f:
                consumed[0] += len(raw)
                yield raw.decode("utf-8", "replace")

        reader = csv.reader(lines())
        try:
            header = next(reader)
        except StopIteration:
            return
        start, rows, first_row = consumed[0], 0, 0
        for _ in reader:
            rows += 1
            if rows - first_row == shard_size:
                yield {"start": start, "end": consumed[0], "first_row": first_row, "header": header}
                start, first_row = consumed[0], rows
        if rows > first_row:
            yield {"start": start, "end": consumed[0], "first_row": first_row, "header": header}


def _plan_parquet(path: str, shard_size: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    row = 0
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        for off in range(0, n, shard_size):
            yield {"row_group": rg, "offset": off, "length": min(shard_size, n - off), "first_row": row + off}
        row += n


def _plan_hf(path: str, shard_size: int) -> Iterator[dict]:
    for split, n in _hf_splits(path):
        for off in range(0, n, shard_size):
            yield {"split": split, "start": off, "stop": min(n, off + shard_size), "first_row": off}


def _hf_splits(path: str) -> list[tuple[str | None, int]]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        return [(name, len(split)) for name, split in ds.items()]
    return [(None, len(ds))]


_PLANNERS = {"jsonl": _plan_jsonl, "json": _plan_json_list, "csv": _plan_csv, "parquet": _plan_parquet, "hf": _plan_hf}


# ---------------------------------------------------------------------------- reading


def read_shard(spec: ShardSpec | dict) -> list[RawRecord]:
    if isinstance(spec, dict):
        spec = ShardSpec(**spec)
    return list(_READERS[spec.format](spec.path, spec.locator))


def _read_jsonl(path: str, loc: dict) -> Iterator[RawRecord]:
    with open(path, "rb") as f:
        f.seek(loc["start"])
        data = f.read(loc["end"] - loc["start"])
    for n, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue  # blank lines (and the end of the last line) are not rows
        row = loc["first_line"] + n
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            yield RawRecord(row, line.decode("utf-8", "backslashreplace"), f"invalid UTF-8 at byte {e.start} of the line")
            continue
        yield RawRecord(row, text)


def _read_json_list(path: str, loc: dict) -> Iterator[RawRecord]:
    text = _read_text(path)[loc["start"] : loc["end"]]
    if "broken" in loc:
        yield RawRecord(loc["first_row"], text, loc["broken"])
        return
    decoder = json.JSONDecoder()
    i, row = _skip_ws(text, 0), loc["first_row"]
    while i < len(text):
        _, end = decoder.raw_decode(text, i)  # the planner proved these parse
        yield RawRecord(row, text[i:end])
        row += 1
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)


def _read_csv(path: str, loc: dict) -> Iterator[RawRecord]:
    with open(path, "rb") as f:
        f.seek(loc["start"])
        data = f.read(loc["end"] - loc["start"])
    header = loc["header"]
    bad_utf8 = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text, bad_utf8 = data.decode("utf-8", "backslashreplace"), "invalid UTF-8"
    for n, fields in enumerate(csv.reader(io.StringIO(text, newline=""))):
        row = loc["first_row"] + n
        if len(fields) != len(header):
            yield RawRecord(row, _csv_line(fields), f"CSV row has {len(fields)} fields, the header has {len(header)}")
            continue
        raw = json.dumps(dict(zip(header, fields)), ensure_ascii=False)
        if bad_utf8 and "\\x" in raw:
            yield RawRecord(row, raw, bad_utf8)
            continue
        yield RawRecord(row, raw)


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(fields)
    return out.getvalue().rstrip("\r\n")


def _read_parquet(path: str, loc: dict) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read_row_group(loc["row_group"]).slice(loc["offset"], loc["length"])
    yield from _records_from_rows(table.to_pylist(), loc["first_row"])


def _read_hf(path: str, loc: dict) -> Iterator[RawRecord]:
    import datasets

    ds = datasets.load_from_disk(path)
    if loc["split"] is not None:
        ds = ds[loc["split"]]
    table = ds.with_format("arrow")[loc["start"] : loc["stop"]]
    yield from _records_from_rows(table.to_pylist(), loc["first_row"])


def _records_from_rows(rows: list[dict[str, Any]], first_row: int) -> Iterator[RawRecord]:
    for n, row in enumerate(rows):
        yield RawRecord(first_row + n, json.dumps(row, ensure_ascii=False, default=str))


_READERS = {"jsonl": _read_jsonl, "json": _read_json_list, "csv": _read_csv, "parquet": _read_parquet, "hf": _read_hf}


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "backslashreplace")


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i


def input_fingerprint(inputs: list[tuple[str, str]]) -> list[dict]:
    """What identifies the input of a run: a changed file makes a new run, an unchanged one resumes."""
    out = []
    for path, fmt in inputs:
        st = os.stat(path)
        out.append({"path": path, "format": fmt, "size": _tree_size(path) if os.path.isdir(path) else st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _tree_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
