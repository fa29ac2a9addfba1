"""The `curate` command: run, sql, export, report, runs. Errors are one line, not a traceback."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from curate.errors import CurateError

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

        out = do_export(cfg.db, cfg.export.out, cfg.export.format, run_id=report.run_id, selection=cfg.export.selection)
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
):
    """Export the curated rows of a run as a Hugging Face dataset, Parquet or JSONL."""
    from curate.storage.export import export as do_export

    result = do_export(db, out, format, run_id=run_id, selection=selection)
    typer.echo(f"exported {result.rows} rows ({format}) from run {result.run_id} → {result.path}")


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
    except CurateError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug or a failing stage: one line, the traceback on request
        if os.environ.get("CURATE_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        typer.echo(f"error: {type(e).__name__}: {first} (set CURATE_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
