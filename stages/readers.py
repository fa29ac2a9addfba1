"""Seed files → raw records, planned in shards that Ray tasks read independently.

Planning runs in the driver and touches each file once (byte offsets of shard boundaries, row
group sizes, dataset lengths); reading a shard runs in a Ray task and needs only its locator.
Every record comes out as raw text (a JSON object; CSV, Parquet and Hugging Face rows are
serialised to one), so that normalisation is uniform and a quarantined row keeps what was read.
Text inputs (JSONL, JSON list, CSV) are UTF-8; a byte-order mark at the start is ignored.
They may be gzip, bz2 or xz compressed (`data.jsonl.gz`): offsets are then planned in the
decompressed stream, and a shard's reader decompresses the file again from its start and skips
to the shard (a forward seek). That keeps one reading path for plain and compressed files, with
the same shards and row numbers; the price is that each shard decompresses the file up to its
end, so a large compressed input wants a larger `shard_size` (or to be decompressed first).
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import glob
import gzip
import io
import json
import lzma
import os
import sys
import zlib
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


@dataclass(frozen=True)
class InputFile:
    """One resolved input. `splits`: for a DatasetDict folder, the splits to read, in order;
    None for every other input (a file, or an HF folder holding a single Dataset)."""

    path: str
    format: str
    splits: tuple[str, ...] | None = None


def resolve_inputs(inputs: list) -> list[InputFile]:
    """Input items → [InputFile]. An item is a string (a path, a glob, `demo`, an HF dataset
    folder) or a mapping / object with `path` and `splits` (the DatasetDict splits to read).

    A DatasetDict read without `splits` gives its `train` split only, and says on stderr which
    splits it skipped, so that a `test` split never mixes into training data unasked; one with no
    `train` split needs `splits`. A file named twice (by two items, a glob and a path, or a
    repeated item) is read once, with a warning on stderr. Raises CurateError for a missing input, an unknown format, an
    unknown split, or `splits` on an input that has none."""
    found: list[InputFile] = []
    seen: dict[tuple, str] = {}  # (real path, splits) → the item that named it first

    def add(inp: InputFile, item: str) -> None:
        key = (os.path.realpath(inp.path), inp.splits)
        if key in seen:  # read once: the same rows twice are not more data
            named = f"as {item!r} and {seen[key]!r}" if item != seen[key] else f"as {item!r}"
            print(f"warning: input {inp.path} is given more than once ({named}); reading it once",
                  file=sys.stderr, flush=True)
            return
        seen[key] = item
        found.append(inp)

    for entry in inputs:
        item, splits = _path_and_splits(entry)
        if item == DEMO:
            add(InputFile(_bundled_demo(), "jsonl"), item)
            continue
        paths = sorted(glob.glob(os.path.expanduser(item))) if glob.has_magic(item) else [item]
        if not paths or not all(os.path.exists(p) for p in paths):
            raise CurateError(f"input not found: {item}")
        for p in paths:
            fmt = detect_format(p)
            chosen = _choose_splits(p, splits) if fmt == "hf" else None
            if splits is not None and fmt != "hf":
                raise CurateError(f"input {p}: `splits` applies to a Hugging Face DatasetDict folder, not a {fmt} file")
            add(InputFile(os.path.abspath(p), fmt, chosen), item)
    if not found:
        raise CurateError("no input given: pass --input PATH or set `input:` in the config")
    return found


def _path_and_splits(entry) -> tuple[str, list[str] | None]:
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, dict):
        path, splits = entry.get("path"), entry.get("splits")
    else:  # the config's InputConfig
        path, splits = entry.path, entry.splits
    if not isinstance(path, str):
        raise CurateError(f"an input needs a `path`, got {entry!r}")
    return path, [splits] if isinstance(splits, str) else (list(splits) if splits is not None else None)


def _choose_splits(path: str, requested: list[str] | None) -> tuple[str, ...] | None:
    """The splits of a DatasetDict to read (None for a single Dataset), see resolve_inputs."""
    available = _hf_split_names(path)
    if available is None:
        if requested is not None:
            raise CurateError(f"input {path} is a single Dataset, not a DatasetDict: it has no splits to choose")
        return None
    if requested is not None:
        unknown = [s for s in requested if s not in available]
        if unknown or not requested:
            raise CurateError(f"input {path}: no split {', '.join(map(repr, unknown)) or '(empty list)'}; "
                              f"its splits are {', '.join(available)}")
        return tuple(dict.fromkeys(requested))
    if "train" not in available:
        raise CurateError(f"input {path} is a DatasetDict with splits {', '.join(available)} and no 'train': "
                          f"choose the splits to read, e.g. input: {{path: {path}, splits: [{available[0]}]}}")
    skipped = [s for s in available if s != "train"]
    if skipped:
        print(f"warning: {path} is a DatasetDict; reading its 'train' split only, skipping "
              f"{', '.join(skipped)} (choose with input: {{path: ..., splits: [train, {skipped[0]}]}})",
              file=sys.stderr, flush=True)
    return ("train",)


def _hf_split_names(path: str) -> list[str] | None:
    import datasets

    ds = datasets.load_from_disk(path)
    return list(ds.keys()) if isinstance(ds, datasets.DatasetDict) else None


def _bundled_demo() -> str:
    import curate

    for base in curate.__path__:
        p = os.path.join(base, "data", "demo_seeds.jsonl")
        if os.path.exists(p):
            return p
    raise CurateError("the bundled demo seeds are missing from this installation")


_FORMAT_SUFFIXES = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet"), (".csv", "csv"))
_COMPRESSIONS = {".gz": ("gzip", gzip.open), ".bz2": ("bz2", bz2.open), ".xz": ("xz", lzma.open)}
ACCEPTED = (".jsonl, .ndjson, .json or .csv (each also compressed: .gz, .bz2, .xz), .parquet, "
            "or an HF dataset folder")


def detect_format(path: str) -> str:
    """`path` → "jsonl" | "json" | "csv" | "parquet" | "hf", by its suffix under any compression
    suffix (`data.jsonl.gz` → "jsonl"); a `.json` file whose first value is an object is JSON
    lines. Raises CurateError for an unknown suffix, a compressed Parquet file, or a folder that
    is not a saved HF dataset."""
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
            return "hf"
        raise CurateError(f"{path} is a folder but not a Hugging Face dataset saved with save_to_disk")
    compression, lower = _split_compression(path)
    for ext, fmt in _FORMAT_SUFFIXES:
        if lower.endswith(ext):
            if fmt == "parquet" and compression:
                raise CurateError(f"cannot read {path}: Parquet compresses itself; decompress the file to .parquet")
            if fmt == "json" and _first_char(path) == "{":
                return "jsonl"  # JSON lines saved as .json
            return fmt
    raise CurateError(f"cannot tell the format of {path}: use {ACCEPTED}")


def _split_compression(path: str) -> tuple[str | None, str]:
    """(compression suffix or None, the lower-case name without it)."""
    lower = path.lower()
    for ext in _COMPRESSIONS:
        if lower.endswith(ext):
            return ext, lower[: -len(ext)]
    return None, lower


@contextlib.contextmanager
def _open_binary(path: str):
    """`path` opened for reading bytes, decompressed when its suffix says so. A compressed file
    that ends early or is corrupt raises CurateError naming it (while opening or reading)."""
    ext, _ = _split_compression(path)
    if ext is None:
        with open(path, "rb") as f:
            yield f
        return
    kind, opener = _COMPRESSIONS[ext]
    try:
        with opener(path, "rb") as f:
            yield f
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise CurateError(f"input {path} is not a whole {kind} file ({e}): it is truncated or corrupt, "
                          "and none of its rows were read; give the complete file") from None


def _first_char(path: str) -> str:
    with _open_binary(path) as f:
        head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
    return head[:1].decode("ascii", "replace")


# ---------------------------------------------------------------------------- planning


def plan_shards(inputs: list[InputFile], shard_size: int) -> list[ShardSpec]:
    """Resolved inputs → shards of at most `shard_size` rows, named by input and position."""
    specs: list[ShardSpec] = []
    sources = source_names([inp.path for inp in inputs])
    for i, (inp, source) in enumerate(zip(inputs, sources)):
        if inp.format == "hf":
            locators = _plan_hf(inp.path, shard_size, inp.splits)
        else:
            locators = _PLANNERS[inp.format](inp.path, shard_size)
        for n, locator in enumerate(locators):
            specs.append(ShardSpec(f"s{i:03d}-{n:05d}", inp.path, inp.format, source, locator))
    return specs


def source_names(paths: list[str]) -> list[str]:
    """The `source` of each input: its file name without the extension, unless two different
    paths share it (`data.jsonl`, `data.csv`); those take the file name with its extension,
    then as many parent folders as it takes to tell them apart (`a/data.jsonl`, `b/data.jsonl`)."""
    names = [_source_name(p) for p in paths]
    depth = 0
    while True:
        owners: dict[str, set[str]] = {}
        for p, n in zip(paths, names):
            owners.setdefault(n, set()).add(os.path.normpath(p))
        clashing = {n for n, ps in owners.items() if len(ps) > 1}
        if not clashing:
            return names
        depth += 1
        names = [_path_tail(p, depth) if n in clashing else n for p, n in zip(paths, names)]


def _source_name(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    ext, _ = _split_compression(base)
    if ext:
        base = base[: -len(ext)]
    for ext, _ in _FORMAT_SUFFIXES:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _path_tail(path: str, depth: int) -> str:
    parts = os.path.normpath(path).strip(os.sep).split(os.sep)
    return "/".join(parts[-depth:]) if depth < len(parts) else os.path.normpath(path)


def _plan_jsonl(path: str, shard_size: int) -> Iterator[dict]:
    """Byte ranges of `shard_size` lines each, found by streaming the file once."""
    start, offset, lines, first_line = 0, 0, 0, 0
    with _open_binary(path) as f:
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
    with _open_binary(path) as f:
        consumed = [0]

        def lines():
            for n, raw in enumerate(f):
                consumed[0] += len(raw)
                yield raw.decode("utf-8-sig" if n == 0 else "utf-8", "replace")  # no BOM in the header

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


def _plan_hf(path: str, shard_size: int, splits: tuple[str, ...] | None) -> Iterator[dict]:
    """Row ranges per split (`splits`: those chosen by resolve_inputs; None: a single Dataset)."""
    import datasets

    ds = datasets.load_from_disk(path)
    parts = [(None, ds)] if splits is None else [(name, ds[name]) for name in splits]
    for split, part in parts:
        n = len(part)
        for off in range(0, n, shard_size):
            yield {"split": split, "start": off, "stop": min(n, off + shard_size), "first_row": off}


_PLANNERS = {"jsonl": _plan_jsonl, "json": _plan_json_list, "csv": _plan_csv, "parquet": _plan_parquet}


# ---------------------------------------------------------------------------- reading


def read_shard(spec: ShardSpec | dict) -> list[RawRecord]:
    if isinstance(spec, dict):
        spec = ShardSpec(**spec)
    return list(_READERS[spec.format](spec.path, spec.locator))


def _read_jsonl(path: str, loc: dict) -> Iterator[RawRecord]:
    with _open_binary(path) as f:
        f.seek(loc["start"])
        data = f.read(loc["end"] - loc["start"])
    for n, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue  # blank lines (and the end of the last line) are not rows
        row = loc["first_line"] + n
        try:  # utf-8-sig: a BOM opens the file (or a file concatenated into it); no JSON line starts with one
            text = line.decode("utf-8-sig").rstrip("\r")
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
    with _open_binary(path) as f:
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
        # An empty cell is a missing value, as pandas reads it (NaN) and as Parquet stores it (null).
        raw = json.dumps(dict(zip(header, (f if f != "" else None for f in fields))), ensure_ascii=False)
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
    split = loc["split"]
    if split is not None:
        ds = ds[split]
    rows = ds.with_format("arrow")[loc["start"] : loc["stop"]].to_pylist()
    if split is not None:  # the split each row came from, in its meta (a row's own `split` field wins)
        rows = [row if "split" in row else {**row, "split": split} for row in rows]
    yield from _records_from_rows(rows, loc["first_row"])


def _records_from_rows(rows: list[dict[str, Any]], first_row: int) -> Iterator[RawRecord]:
    for n, row in enumerate(rows):
        yield RawRecord(first_row + n, json.dumps(row, ensure_ascii=False, default=str))


_READERS = {"jsonl": _read_jsonl, "json": _read_json_list, "csv": _read_csv, "parquet": _read_parquet, "hf": _read_hf}


def _read_text(path: str) -> str:
    with _open_binary(path) as f:
        return f.read().decode("utf-8-sig", "backslashreplace")


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i


def input_fingerprint(inputs: list[InputFile]) -> list[dict]:
    """What identifies the input of a run: a changed file makes a new run, an unchanged one resumes."""
    out = []
    for inp in inputs:
        st = os.stat(inp.path)
        size = _tree_size(inp.path) if os.path.isdir(inp.path) else st.st_size
        entry = {"path": inp.path, "format": inp.format, "size": size, "mtime_ns": st.st_mtime_ns}
        if inp.splits is not None:  # other splits of a DatasetDict are other rows
            entry["splits"] = list(inp.splits)
        out.append(entry)
    return out


def _tree_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
