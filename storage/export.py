"""Export a run's curated rows: Hugging Face dataset (with a dataset card), Parquet, or JSONL.

Rows stream out of DuckDB in record batches; nothing holds the whole set in memory except
`datasets` itself, which memory-maps the Arrow files it writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from curate.errors import CurateError
from curate.storage import schema as S
from curate.storage.store import Store

FORMATS = ("hf", "parquet", "jsonl")
BATCH_ROWS = 10_000


@dataclass
class ExportResult:
    path: str
    rows: int
    run_id: str


def export(db: str, out: str, format: str = "hf", run_id: str | None = None, selection: str | None = None) -> ExportResult:
    if format not in FORMATS:
        raise CurateError(f"unknown export format {format!r}: use {', '.join(FORMATS)}")
    with Store(db, read_only=True) as store:
        if run_id is None:
            run_id = store.latest_run(finished=True)
            if run_id is None:
                latest = store.latest_run()
                raise CurateError(f"{db} holds no finished run yet: `curate run` first" if latest is None else
                                  f"{db} holds no finished run: rerun its command to finish run {latest}, or pass "
                                  f"--run {latest} to export it as it stands (not every stage has seen its rows)")
        if not store.con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone():
            raise CurateError(f"no run {run_id!r} in {db} (see `curate runs --db {db}`)")
        query, params = _rows_query(store, run_id, selection)
        reader = store.con.cursor().sql(query, params=params).to_arrow_reader(BATCH_ROWS)
        if format == "jsonl":
            rows = _write_jsonl(reader, out)
        elif format == "parquet":
            rows = _write_parquet(reader, out)
        else:
            rows = _write_hf(reader, out)
            _write_card(store, run_id, selection, rows, out)
    return ExportResult(out, rows, run_id)


def _rows_query(store: Store, run_id: str, selection: str | None) -> tuple[str, list]:
    cols = ", ".join(f'c."{c}"' for c in S.SAMPLE_COLUMNS)
    if selection is None:
        return f"SELECT {cols} FROM curated_all c WHERE c.run_id = ? ORDER BY c.id", [run_id]
    has_table = store.con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_name = 'selections'"
    ).fetchone()
    if not has_table or not store.con.execute("SELECT 1 FROM selections WHERE name = ? LIMIT 1", [selection]).fetchone():
        raise CurateError(f"no selection named {selection!r} in this database")
    return (
        f"SELECT {cols} FROM curated_all c JOIN selections s ON s.run_id = c.run_id AND s.id = c.id "
        "WHERE c.run_id = ? AND s.name = ? ORDER BY s.rank",
        [run_id, selection],
    )


def _write_jsonl(reader: pa.RecordBatchReader, out: str) -> int:
    _parent(out)
    rows = 0
    with open(out, "w", encoding="utf-8") as f:
        for batch in reader:
            for row in batch.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows += batch.num_rows
    return rows


def _write_parquet(reader: pa.RecordBatchReader, out: str) -> int:
    _parent(out)
    rows = 0
    with pq.ParquetWriter(out, reader.schema) as w:
        for batch in reader:
            w.write_batch(batch)
            rows += batch.num_rows
    return rows


def _write_hf(reader: pa.RecordBatchReader, out: str) -> int:
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="curate-export-") as tmp:
        parquet = os.path.join(tmp, "rows.parquet")
        rows = _write_parquet(reader, parquet)
        if os.path.exists(out):
            shutil.rmtree(out)
        if rows == 0:
            ds = datasets.Dataset(pa.Table.from_batches([], schema=reader.schema))
        else:
            ds = datasets.Dataset.from_parquet(parquet, cache_dir=os.path.join(tmp, "cache"), keep_in_memory=False)
        ds.save_to_disk(out)
    return rows


def _write_card(store: Store, run_id: str, selection: str | None, rows: int, out: str) -> None:
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
        "## Columns",
        "",
        "`id` (content hash of the messages), `messages` (list of {role, content}), `origin`, `source`,",
        "`parent_ids` (lineage), `meta` (JSON).",
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


def _parent(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
