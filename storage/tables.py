"""Printing query results: a rich table for people, CSV and JSON lines for programs."""

from __future__ import annotations

import csv
import json
import sys

import pyarrow as pa


def print_table(table: pa.Table, fmt: str, limit: int = 50) -> None:
    rows = table.to_pylist()
    if fmt == "json":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(table.column_names)
        for row in rows:
            w.writerow([_cell(v) for v in row.values()])
    elif fmt == "table":
        from rich.console import Console
        from rich.table import Table

        t = Table(show_lines=False)
        for name in table.column_names:
            t.add_column(name, overflow="ellipsis", no_wrap=True, max_width=60)
        for row in rows[:limit]:
            t.add_row(*(_cell(v, 200) for v in row.values()))
        console = Console() if sys.stdout.isatty() else Console(width=240)
        console.print(t)
        if len(rows) > limit:
            console.print(f"({len(rows)} rows, {limit} shown; --limit N or --format csv for more)")
    else:
        from curate.errors import CurateError

        raise CurateError(f"unknown format {fmt!r}: use table, csv or json")


def _cell(v, width: int | None = None) -> str:
    if v is None:
        return ""
    s = json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, (list, dict)) else str(v)
    return s if width is None or len(s) <= width else s[: width - 1] + "…"
