"""Export a run's curated rows: Hugging Face dataset (with a dataset card), Parquet, or JSONL,
in one of the shapes of `curate.storage.shapes` (messages, alpaca, sharegpt, a Jinja template).

Rows stream out of DuckDB in record batches; nothing holds the whole set in memory except
`datasets` itself, which memory-maps the Arrow files it writes. The export is written next to
its target and renamed into place (`curate.storage.export_target`): it never deletes what curate
did not write, and a failed or killed export leaves the previous one intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from curate.errors import CurateError
from curate.storage import schema as S
from curate.storage.export_target import Staging
from curate.storage.shapes import Shape, Unfit, lift_definitions
from curate.storage.store import Store, drops_relation, has_tool_fields, resolve_run_id

FORMATS = ("hf", "parquet", "jsonl")
STDOUT = "-"  # --out - : JSONL on standard output
_SUFFIX_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def suffix_mismatch(out: str, format: str) -> str | None:
    """Why `out` is the wrong name for a `format` export (a Parquet file named `.jsonl`, an HF
    folder named `.parquet`: readers, `curate run` among them, go by the suffix), or None."""
    ext = os.path.splitext(str(out).rstrip("/"))[1].lower()
    named = _SUFFIX_FORMAT.get(ext)
    if named is None or named == format:
        return None
    what = "an HF dataset folder" if format == "hf" else f"a {format} file"
    return (f"--out {out} ends in {ext}, a {named} file's suffix, but --format {format} writes {what} there: "
            f"pass --format {named}, or an --out named for {format}")


def stdout_refusal(out: str, format: str) -> str | None:
    """Why `out` may not be `-` (standard output) for a `format` export, or None: only JSONL
    streams; a Parquet file is written whole (its footer last) and an HF export is a folder."""
    if out != STDOUT or format == "jsonl":
        return None
    what = "an HF dataset folder" if format == "hf" else "a Parquet file, whose footer is written last"
    return (f"--out - (standard output) takes JSONL only: --format {format} writes {what}, which cannot stream; "
            f"pass --format jsonl, or an --out path")


def _target(out: str, db: str, format: str, overwrite: bool):
    """Where the export goes: a Staging next to `out`, or standard output for `-` (rows stream
    out as they are read; a refusal after them, for unfit rows, comes with a non-zero exit)."""
    if out == STDOUT:
        return contextlib.nullcontext(_Stdout())
    return Staging(out, db, folder=format == "hf", overwrite=overwrite)


class _Stdout:
    path = STDOUT

    def commit(self) -> None:
        sys.stdout.buffer.flush()


BATCH_ROWS = 10_000
EXAMPLES = 5  # unfit rows named in messages and the card


@dataclass
class ExportResult:
    path: str
    rows: int
    run_id: str
    shape: str = "messages"
    skipped: int = 0  # rows the shape cannot express, left out with skip_unfit
    skip_reasons: dict = field(default_factory=dict)  # reason → rows
    skip_examples: list = field(default_factory=list)  # (id, reason) of the first few


def export(db: str, out: str, format: str = "hf", run_id: str | None = None, selection: str | None = None, *,
           shape: str | None = None, template: str | None = None, overwrite: bool = False,
           skip_unfit: bool = False, drops: bool = False) -> ExportResult:
    """Write the curated rows of a run (default: the latest finished one), or of one selection,
    to `out`: a folder (hf) or a file (parquet, jsonl), or `-` for JSONL on standard output
    (then a refusal for unfit rows comes after the rows written), rows shaped as `shape`
    (default messages) or rendered by the Jinja `template` file.

    Raises CurateError: unknown format or shape, `-` for hf or parquet, no such run or selection, a template that
    fails, rows the shape cannot express (unless `skip_unfit`: then they are counted in the
    result and the card, and left out); ExportTargetError: `out` is the database, the working
    directory or a folder holding either, or something curate did not write (unless
    `overwrite`). On any error the target is left as it was.

    With `drops`, the run's rejected rows instead (`export_drops`): no selection, shape or template.
    """
    if format not in FORMATS:
        raise CurateError(f"unknown export format {format!r}: use {', '.join(FORMATS)}")
    mismatch = suffix_mismatch(out, format) or stdout_refusal(out, format)
    if mismatch:
        raise CurateError(mismatch)
    if drops:
        given = [o for o, v in (("--selection", selection), ("--shape", shape), ("--template", template)) if v]
        if given:
            raise CurateError(f"--drops writes the rejected rows as they are: it takes no {', '.join(given)}")
        return export_drops(db, out, format, run_id, overwrite=overwrite)
    with Store(db, read_only=True) as store:
        run_id = _resolve_run(store, db, run_id)
        shaper = Shape(shape or ("template" if template else "messages"), template, tools=_has_tool_turns(store, run_id),
                       definitions=_tool_definitions(store, run_id))
        query, params = _rows_query(store, run_id, selection)
        reader = store.con.cursor().sql(query, params=params).to_arrow_reader(BATCH_ROWS)
        skips = _Skips()
        with _target(out, db, format, overwrite) as staging:
            if format == "jsonl":
                rows = _write_jsonl(_shaped_rows(reader, shaper, skips, parse_meta=True), staging.path)
            else:
                batches = _shaped_batches(reader, shaper, skips)
                meta = {b"curate.export": json.dumps({"run_id": run_id, "shape": shaper.name}).encode()}
                schema = shaper.schema.with_metadata(meta)
                if format == "parquet":
                    rows = _write_parquet(batches, schema, staging.path)
                else:
                    rows = _write_hf(batches, schema, staging.path, staging.work)
            if skips.count and not skip_unfit:
                raise CurateError(skips.refusal(shaper.name, rows + skips.count))
            if format == "hf":
                _write_card(store, run_id, selection, rows, staging.path, shaper, skips)
            staging.commit()
    return ExportResult(_shown(out), rows, run_id, shaper.name, skips.count, dict(skips.reasons), skips.examples)


DROP_SCHEMA = pa.schema([
    ("status", pa.string()),  # dropped | quarantined
    ("stage", pa.string()),
    ("reason", pa.string()),  # a drop's reason; a quarantined row's error
    ("kind", pa.string()),  # the reason's kind (drops.kind); null for quarantined rows
    ("value", pa.float64()),  # the value the reason names (drops.value), or null
    ("id", pa.string()),  # null for quarantined rows (never parsed into a sample)
    ("source", pa.string()),
    ("row", pa.int64()),  # position in its source file
    ("messages", S.SAMPLE_SCHEMA.field("messages").type),
    ("origin", pa.string()),
    ("parent_ids", pa.list_(pa.string())),
    ("meta", pa.string()),
    ("raw", pa.string()),  # a quarantined row's raw text
    ("tool_fields", pa.string()),  # the turns' tool fields (samples.tool_fields); JSONL puts them back into the turns
])


def export_drops(db: str, out: str, format: str = "hf", run_id: str | None = None, *,
                 overwrite: bool = False) -> ExportResult:
    """Write the rejected rows of a run (default: the latest finished one) to `out`, one row
    each (DROP_SCHEMA): every drop (status `dropped`) with its stage, reason, kind and value and
    the sample's messages, origin, source, parent_ids and meta, then every quarantined input row
    (status `quarantined`: stage, reason = the error, source, row, raw text), ordered by status,
    stage, source and row. `meta` is an object in JSONL, a JSON string in Parquet and HF; the
    turns' tool fields are in the turns in JSONL, the `tool_fields` JSON column in Parquet and HF.
    Written beside `out` and renamed into place, as `export`. Raises CurateError for an unknown
    format or run, ExportTargetError for a target curate may not replace."""
    if format not in FORMATS:
        raise CurateError(f"unknown export format {format!r}: use {', '.join(FORMATS)}")
    refusal = stdout_refusal(out, format)
    if refusal:
        raise CurateError(refusal)
    with Store(db, read_only=True) as store:
        run_id = _resolve_run(store, db, run_id)
        query = f"""
            SELECT 'dropped' AS status, d.stage, d.reason, d.kind, d.value, d.id, d.source, d."row",
                   s.messages, s.origin, s.parent_ids, s.meta, NULL AS raw,
                   {"s.tool_fields" if has_tool_fields(store.con) else "NULL"} AS tool_fields
            FROM {drops_relation(store.con)} d LEFT JOIN samples s ON s.run_id = d.run_id AND s.id = d.id
            WHERE d.run_id = $run
            UNION ALL
            SELECT 'quarantined', q.stage, q.error, NULL, NULL, NULL, q.source, q."row", NULL, NULL, NULL, NULL, q.raw, NULL
            FROM quarantine q WHERE q.run_id = $run
            ORDER BY status, stage, source, "row", id"""
        reader = store.con.cursor().sql(query, params={"run": run_id}).to_arrow_reader(BATCH_ROWS)
        batches = (b.cast(DROP_SCHEMA) for b in reader)
        with _target(out, db, format, overwrite) as staging:
            if format == "jsonl":
                rows = _write_jsonl(_drop_dicts(batches), staging.path)
            else:
                schema = DROP_SCHEMA.with_metadata({b"curate.export": json.dumps({"run_id": run_id, "rows": "drops"}).encode()})
                batches = (pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in batches)
                if format == "parquet":
                    rows = _write_parquet(batches, schema, staging.path)
                else:
                    rows = _write_hf(batches, schema, staging.path, staging.work)
                    _write_drops_card(store, run_id, rows, staging.path)
            staging.commit()
    return ExportResult(_shown(out), rows, run_id, "drops")


def _shown(out: str) -> str:
    return "standard output" if out == STDOUT else os.path.abspath(out)


def _drop_dicts(batches) -> Iterator[dict]:
    for batch in batches:
        for row in batch.to_pylist():
            if row["meta"] is not None:
                row["meta"] = json.loads(row["meta"]) if row["meta"] else {}
            tool_fields = row.pop("tool_fields")
            if row["messages"] is not None:
                row["messages"] = S.with_tool_fields(row["messages"], tool_fields)
            yield row


def _write_drops_card(store: Store, run_id: str, rows: int, out: str) -> None:
    name = store.con.execute("SELECT name FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]
    kinds = store.con.execute(f"""
        SELECT stage, kind, count(*) FROM {drops_relation(store.con)} WHERE run_id = ? GROUP BY ALL ORDER BY 3 DESC, 1, 2
    """, [run_id]).fetchall()
    quarantined = store.con.execute("SELECT count(*) FROM quarantine WHERE run_id = ?", [run_id]).fetchone()[0]
    lines = [f"# {name or 'curate'}: rejected rows", "",
             f"The rows run `{run_id}` dropped (with their stage, reason, kind and value) and the input rows it "
             f"quarantined: {rows} rows, {quarantined} of them quarantined.", "",
             "| stage | kind | rows |", "|---|---|---|", *[f"| {st} | {k} | {n} |" for st, k, n in kinds], ""]
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _resolve_run(store: Store, db: str, run_id: str | None) -> str:
    if run_id is None:
        run_id = store.latest_run(finished=True)
        if run_id is None:
            latest = store.latest_run()
            raise CurateError(f"{db} holds no finished run yet: `curate run` first" if latest is None else
                              f"{db} holds no finished run: rerun its command to finish run {latest}, or pass "
                              f"--run {latest} to export it as it stands (not every stage has seen its rows)")
    return resolve_run_id(store.con, db, run_id)


class _Skips:
    def __init__(self):
        self.count = 0
        self.reasons: Counter = Counter()
        self.examples: list[tuple[str, str]] = []

    def add(self, id_: str, reason: str) -> None:
        self.count += 1
        self.reasons[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append((id_, reason))

    def summary(self) -> str:
        return "; ".join(f"{n} × {r}" for r, n in self.reasons.most_common(EXAMPLES)) + \
            f" (e.g. id {', '.join(i for i, _ in self.examples)})"

    def refusal(self, shape: str, total: int) -> str:
        others = "messages" if shape == "sharegpt" else "messages or sharegpt"  # the shapes that hold more
        return (f"{self.count} of {total} rows cannot be exported as {shape}: {self.summary()}. Nothing was "
                f"written. Export them with --shape {others}, or pass --skip-unfit to leave them "
                "out (counted in the output and the dataset card)")


def _has_tool_turns(store: Store, run_id: str) -> bool:
    """Whether a kept row of the run has tool fields (then the messages shape's Arrow turns carry them)."""
    return has_tool_fields(store.con) and store.con.execute(
        "SELECT 1 FROM curated_all WHERE run_id = ? AND tool_fields IS NOT NULL LIMIT 1", [run_id]).fetchone() is not None


def _tool_definitions(store: Store, run_id: str) -> tuple[str, ...]:
    """The tool definitions (schema.TOOL_DEFINITIONS) some kept row of the run has in its meta."""
    found = store.con.execute(
        "SELECT " + ", ".join(f"bool_or(CASE WHEN json_valid(meta) THEN json_type(meta, '$.{k}') = 'ARRAY' END)" for k in S.TOOL_DEFINITIONS)
        + " FROM curated_all WHERE run_id = ?", [run_id]).fetchone()
    return tuple(k for k, has in zip(S.TOOL_DEFINITIONS, found) if has)


def _shaped_rows(reader: pa.RecordBatchReader, shape: Shape, skips: _Skips, parse_meta: bool) -> Iterator[dict]:
    for batch in reader:
        for sample in batch.to_pylist():
            if parse_meta:
                sample["meta"] = json.loads(sample["meta"]) if sample["meta"] else {}
            sample["messages"] = S.with_tool_fields(sample["messages"], sample.pop("tool_fields"))
            if shape.lifts:
                sample = lift_definitions(sample)
            try:
                yield shape.row(sample)
            except Unfit as e:
                skips.add(sample["id"], str(e))


def _shaped_batches(reader: pa.RecordBatchReader, shape: Shape, skips: _Skips) -> Iterator[pa.RecordBatch]:
    if shape.name == "messages" and not shape.tools and not shape.definitions:  # DuckDB's batches are the rows already
        for batch in reader:
            yield batch.select(shape.schema.names).cast(shape.schema)
        return
    rows: list[dict] = []
    for row in _shaped_rows(reader, shape, skips, parse_meta=shape.name == "template"):
        if shape.tools:  # one Arrow type per field: the call objects as JSON text
            row["messages"] = [{**m, **{k: json.dumps(m[k], ensure_ascii=False) for k in ("tool_calls", "function_call") if k in m}}
                               for m in row["messages"]]
        if shape.name == "messages":  # and the definitions
            row.update({k: json.dumps(row[k], ensure_ascii=False) for k in shape.definitions if k in row})
        rows.append(row)
        if len(rows) == BATCH_ROWS:
            yield pa.RecordBatch.from_pylist(rows, schema=shape.schema)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=shape.schema)


def _rows_query(store: Store, run_id: str, selection: str | None) -> tuple[str, list]:
    tools = has_tool_fields(store.con)  # a database made before tool fields (read-only: not migrated) has none
    cols = ", ".join(f'c."{c}"' if c != "tool_fields" or tools else "NULL AS tool_fields" for c in S.SAMPLE_COLUMNS)
    if selection is None:
        return f"SELECT {cols} FROM curated_all c WHERE c.run_id = ? ORDER BY c.id", [run_id]
    has_table = store.con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_name = 'selections'"
    ).fetchone()
    if not has_table or not store.con.execute("SELECT 1 FROM selections WHERE run_id = ? AND name = ? LIMIT 1",
                                              [run_id, selection]).fetchone():
        # the run's own selections: one another run wrote would export no row of this run
        have = [r[0] for r in store.con.execute(
            "SELECT DISTINCT name FROM selections WHERE run_id = ? ORDER BY 1", [run_id]).fetchall()] if has_table else []
        elsewhere = [r[0] for r in store.con.execute(
            "SELECT DISTINCT run_id FROM selections WHERE name = ? ORDER BY 1", [selection]).fetchall()] if has_table else []
        raise CurateError(f"run {run_id} has no selection named {selection!r} "
                          f"({'its selections: ' + ', '.join(have) if have else 'it has no selections'})"
                          + (f"; run{'s' if len(elsewhere) > 1 else ''} {', '.join(elsewhere)} wrote one: --run ID"
                             if elsewhere else ""))
    return (
        f"SELECT {cols} FROM curated_all c JOIN selections s ON s.run_id = c.run_id AND s.id = c.id "
        "WHERE c.run_id = ? AND s.name = ? ORDER BY s.rank",
        [run_id, selection],
    )


def _write_jsonl(rows: Iterator[dict], out: str) -> int:
    """Rows → UTF-8 JSON lines in the file `out`, or on standard output for `-`; the row count."""
    if out == STDOUT:
        sys.stdout.flush()  # what was printed before goes first
        return _write_lines(rows, sys.stdout.buffer)
    with open(out, "wb") as f:
        return _write_lines(rows, f)


def _write_lines(rows: Iterator[dict], f) -> int:
    n = 0
    for row in rows:
        f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        n += 1
    return n


def _write_parquet(batches: Iterator[pa.RecordBatch], schema: pa.Schema, out: str) -> int:
    rows = 0
    with pq.ParquetWriter(out, schema) as w:
        for batch in batches:
            w.write_batch(batch)
            rows += batch.num_rows
    return rows


def _write_hf(batches: Iterator[pa.RecordBatch], schema: pa.Schema, out: str, work: str) -> int:
    import datasets

    datasets.disable_progress_bars()
    parquet = os.path.join(work, "rows.parquet")
    rows = _write_parquet(batches, schema, parquet)
    if rows == 0:
        ds = datasets.Dataset(pa.Table.from_batches([], schema=schema))
    else:
        ds = datasets.Dataset.from_parquet(parquet, cache_dir=os.path.join(work, "cache"), keep_in_memory=False)
    ds.save_to_disk(out)
    return rows


def _write_card(store: Store, run_id: str, selection: str | None, rows: int, out: str, shape: Shape, skips: _Skips) -> None:
    q = lambda sql: store.con.execute(sql, [run_id]).fetchall()  # noqa: E731
    run = q("SELECT name, config, started_at, finished_at FROM runs WHERE run_id = ?")[0]
    totals = store.totals(run_id)
    sources = q("SELECT source, origin, count(*) FROM curated_all WHERE run_id = ? GROUP BY ALL ORDER BY 3 DESC")
    reasons = q("SELECT stage, reason, count(*) FROM drops WHERE run_id = ? GROUP BY ALL ORDER BY 3 DESC LIMIT 20")
    quarantine = q("SELECT error, count(*) FROM quarantine WHERE run_id = ? GROUP BY ALL ORDER BY 2 DESC LIMIT 10")
    config = json.loads(run[1])
    lines = [
        "---",
        yaml.safe_dump({"tags": ["sft", "curate"], "task_categories": ["text-generation"],
                        "size_categories": [_size_category(rows)]}, sort_keys=False).strip(),
        "---",
        f"# {run[0] or 'curate'}: curated SFT data",
        "",
        f"Made by curate, run `{run_id}` ({run[2]} → {run[3]}).",
        f"Selection: `{selection}`." if selection else "All curated rows of the run.",
        "",
        "## Counts",
        "",
        f"| rows in | kept | dropped | quarantined | exported |",
        f"|---|---|---|---|---|",
        f"| {totals['rows_in']} | {totals['kept']} | {totals['dropped']} | {totals['quarantined']} | {rows} |",
        "",
        "## Sources",
        "",
        "| source | origin | rows |",
        "|---|---|---|",
        *[f"| {s} | {o} | {n} |" for s, o, n in sources],
        "",
        "## Drop reasons (top 20)",
        "",
        "| stage | reason | rows |",
        "|---|---|---|",
        *[f"| {st} | {r} | {n} |" for st, r, n in reasons],
        "",
        "## Quarantine (top 10 errors)",
        "",
        "| error | rows |",
        "|---|---|",
        *[f"| {e} | {n} |" for e, n in quarantine],
        "",
        *([f"## Left out: {skips.count} row{'s' if skips.count > 1 else ''} the {shape.name} shape cannot express", "",
           "| reason | rows |", "|---|---|", *[f"| {r} | {n} |" for r, n in skips.reasons.most_common(20)], ""]
          if skips.count else []),
        "## Columns",
        "",
        f"Shape `{shape.name}`" + (f" (template `{os.path.basename(shape.template_path)}`)" if shape.template_path else "")
        + f": {shape.columns}.",
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).strip(),
        "```",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"

