"""The `curate` command: run, sql, export, report, runs. Errors are one line, not a traceback."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from curate.errors import one_line, show_traceback

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build and curate instruction-tuning data sets.")

DB_HELP = "DuckDB file"


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="YAML config (jobs/configs/demo.yaml); optional with --input"),
    input: Optional[List[str]] = typer.Option(None, "--input", "-i", help="seed file, glob or HF dataset folder (repeatable); `demo` for the bundled seeds"),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a config value: key.path=value (repeatable)"),
    progress: str = typer.Option("auto", "--progress", help="auto | table | lines | off"),
    export: bool = typer.Option(True, "--export/--no-export", help="run the config's export: step at the end"),
):
    """Run a pipeline: ingest → stages → DuckDB. Reruns of the same config resume."""
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import run as run_pipeline

    cfg = load_config(config, set_, input=list(input) if input else None, db=db)
    try:
        report = run_pipeline(cfg, progress=progress)
    except KeyboardInterrupt:  # the runner said how to resume; typer would exit 130 anyway
        raise typer.Exit(130) from None
    typer.echo(report.summary())
    if export and cfg.export:
        from curate.storage.export import export as do_export

        out = do_export(cfg.db, run_id=report.run_id, **cfg.export.model_dump())
        typer.echo(f"exported {out.rows} rows ({cfg.export.format}) → {out.path}")


@app.command()
def sql(
    query: str = typer.Argument(..., help="a SQL query over samples, curated, drops, quarantine, runs, stage_stats, ..."),
    db: str = typer.Option("curated.duckdb", "--db", help=DB_HELP),
    format: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    limit: int = typer.Option(50, "--limit", help="rows shown in table format (csv and json print all)"),
):
    """Query a curate database (read-only)."""
    from curate.storage.store import Store
    from curate.storage.tables import print_table

    with Store(db, read_only=True) as store:
        table = store.sql(query)
    print_table(table, format, limit)


@app.command()
def export(
    db: str = typer.Option("curated.duckdb", "--db", help=DB_HELP),
    format: str = typer.Option("hf", "--format", "-f", help="hf | parquet | jsonl"),
    out: str = typer.Option(..., "--out", "-o", help="output folder (hf) or file (parquet, jsonl)"),
    run_id: Optional[str] = typer.Option(None, "--run", help="run id (default: the latest finished run)"),
    selection: Optional[str] = typer.Option(None, "--selection", help="export only this selection"),
    shape: Optional[str] = typer.Option(None, "--shape", help="messages (default) | alpaca | sharegpt"),
    template: Optional[str] = typer.Option(None, "--template", help="Jinja template file rendered per row (with messages, meta, id) into a `text` column"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an --out that is not an earlier curate export (never the database or the working directory)"),
    skip_unfit: bool = typer.Option(False, "--skip-unfit", help="leave out, and count, rows the shape cannot express (default: refuse to export)"),
):
    """Export the curated rows of a run as a Hugging Face dataset, Parquet or JSONL.

    Written next to --out and renamed into place: a failed export leaves the previous one intact. --out may be new, empty or an earlier curate export; anything else needs --overwrite."""
    from curate.storage.export import export as do_export

    result = do_export(db, out, format, run_id=run_id, selection=selection, shape=shape, template=template,
                       overwrite=overwrite, skip_unfit=skip_unfit)
    typer.echo(f"exported {result.rows} rows ({format}, {result.shape}) from run {result.run_id} → {result.path}")
    if result.skipped:
        reasons = "; ".join(f"{n} × {r}" for r, n in sorted(result.skip_reasons.items(), key=lambda x: -x[1])[:5])
        typer.echo(f"left out {result.skipped} row{'s' if result.skipped > 1 else ''} the {result.shape} shape cannot express: {reasons}"
                   f" (e.g. id {', '.join(i for i, _ in result.skip_examples)})")


@app.command()
def report(
    db: str = typer.Option("curated.duckdb", "--db", help=DB_HELP),
    out: str = typer.Option("report.html", "--out", "-o", help="HTML file to write"),
    run_id: Optional[str] = typer.Option(None, "--run", help="run id (default: the latest run)"),
):
    """Write a self-contained HTML report of a run: funnel, drop reasons, scores, clusters,
    selections, verifier pass rates, LLM tokens and cache, time per stage."""
    from curate.report import write_report

    typer.echo(f"report → {write_report(db, out, run_id)}")


@app.command()
def runs(
    db: str = typer.Option("curated.duckdb", "--db", help=DB_HELP),
    format: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
):
    """List the runs in a database with their counts."""
    from curate.storage.store import Store
    from curate.storage.tables import print_table

    with Store(db, read_only=True) as store:
        table = store.sql(
            "SELECT run_id, name, status, attempts, rows_in, kept, dropped, quarantined, generated, expanded, "
            "started_at, finished_at, error FROM run_totals"
        )
    print_table(table, format, limit=1000)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # one line: a CurateError's message, else the root cause out of Ray's wrappers (errors.py)
        if show_traceback(e):
            raise
        text, code = one_line(e)
        typer.echo(text, err=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
