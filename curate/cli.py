"""The `curate` command: run, plan, sql, show, export, report, runs. Errors are one line, not a traceback."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from curate.errors import one_line, show_traceback

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build and curate instruction-tuning data sets.")

DB_HELP = "DuckDB file"
DEFAULT_DB = "curated.duckdb"


def _db(db: str) -> str:
    """The database to read; a missing default names the databases that are here (a config
    without `db` writes `<its name>.duckdb`)."""
    if db == DEFAULT_DB and not os.path.exists(db):
        import glob

        from curate.errors import CurateError

        here = sorted(f for f in glob.glob("*.duckdb") if not f.endswith((".llm_cache.duckdb", ".model_cache.duckdb")))
        if here:
            raise CurateError(f"database not found: {db} (a config without `db` writes <its name>.duckdb); "
                              f"here: {', '.join(here[:8])}: pass --db FILE")
    return db


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="YAML config (jobs/configs/demo.yaml); optional with --input"),
    input: Optional[List[str]] = typer.Option(None, "--input", "-i", help="seed file, glob or HF dataset folder (repeatable); `demo` for the bundled seeds"),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a config value: key.path=value (repeatable)"),
    progress: str = typer.Option("auto", "--progress", help="auto | table | lines | off"),
    export: bool = typer.Option(True, "--export/--no-export", help="run the config's export: step at the end"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Ray's, vLLM's and other libraries' output in the terminal too (it always goes to the run log)"),
):
    """Run a pipeline: ingest → stages → DuckDB. Reruns of the same config resume.

    SIGTERM and Ctrl-C mark the run interrupted in the database before the process ends (exit
    143 and 130); a rerun resumes it.

    The terminal shows curate's own lines; the libraries' output (Ray, vLLM, ...) goes to a run
    log beside the database, `<db>.logs/<name>-<time>.log`, whose path the summary prints."""
    from curate.logs import RunLog, log_path
    from curate.pipeline.config import load_config
    from curate.pipeline.runner import Terminated
    from curate.pipeline.runner import run as run_pipeline

    cfg = load_config(config, set_, input=list(input) if input else None, db=db)
    path = log_path(cfg.db, cfg.name)
    log = RunLog(path, verbose=verbose)
    failed = None
    with log:
        try:
            report = run_pipeline(cfg, progress=progress)
            typer.echo(report.summary())
            if export and cfg.export:
                from curate.storage.export import export as do_export

                out = export_after_run(do_export, cfg, report.run_id)
                typer.echo(f"exported {out.rows} rows ({cfg.export.format}) → {out.path}")
        except KeyboardInterrupt:  # the runner said how to resume; typer would exit 130 anyway
            failed = 130
        except Terminated:  # SIGTERM: the runner's handler marked the run interrupted and said how to resume
            failed = 143
        except Exception as e:  # the error line, then where the libraries' output went (if any)
            if show_traceback(e):
                raise
            text, failed = one_line(e)
            typer.echo(text, err=True)
    if failed is not None:
        if not log.discard_if_empty():  # an error before Ray started leaves no log worth naming
            typer.echo(f"log: {path}", err=True)
        raise typer.Exit(failed)
    typer.echo(f"log: {path}")


@app.command()
def plan(
    config: Optional[str] = typer.Argument(None, help="YAML config (jobs/configs/demo.yaml); optional with --input"),
    input: Optional[List[str]] = typer.Option(None, "--input", "-i", help="seed file, glob or HF dataset folder (repeatable)"),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a config value: key.path=value (repeatable)"),
):
    """Print what `curate run` would do, and run its preflight checks, without starting Ray.

    Inputs and shards, the database and the run's state there, the phases, each stage's resources
    and what it reads and writes, selectors, export; then every preflight check (files, models,
    servers, sandbox). Exits 1 when a check fails."""
    from curate.plan import plan as make_plan

    result = make_plan(config, set_, input=list(input) if input else None, db=db)
    typer.echo(result.text)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def show(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    run_id: Optional[str] = typer.Option(None, "--run", help="run id (default: the run the `curated` view shows)"),
    stage: Optional[str] = typer.Option(None, "--stage", help="rows this stage dropped (`store`: repeats of kept rows)"),
    kind: Optional[str] = typer.Option(None, "--kind", help="drops of this kind (drops.kind: duplicate, language, ...); with a colon, a reason prefix (code_exec:timeout)"),
    cluster: Optional[int] = typer.Option(None, "--cluster", help="rows a diversity selection drew from this cluster"),
    selection: Optional[str] = typer.Option(None, "--selection", help="rows of this selection, best rank first"),
    origin: Optional[str] = typer.Option(None, "--origin", help="rows of this origin (seed, response, evol, ...)"),
    id: Optional[str] = typer.Option(None, "--id", help="one row in full (an id or a unique prefix), with its parents and children"),
    limit: int = typer.Option(10, "--limit", help="rows shown"),
    width: Optional[int] = typer.Option(None, "--width", help="wrap text at this many columns (default: the terminal's)"),
    max_chars: int = typer.Option(600, "--max-chars", help="characters shown per turn in a list (0: all)"),
):
    """Show a run's rows as wrapped text: by the stage that dropped them, reason kind, selection,
    cluster or origin; or one row with its lineage (--id)."""
    from curate.show import show as show_rows

    typer.echo(show_rows(_db(db), run_id=run_id, stage=stage, kind=kind, cluster=cluster, selection=selection,
                         origin=origin, id=id, limit=limit, width=width, max_chars=max_chars))


@app.command()
def sql(
    query: str = typer.Argument(..., help="a SQL query over samples, curated, drops, quarantine, runs, stage_stats, ..."),
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    format: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    limit: int = typer.Option(50, "--limit", help="rows shown in table format (csv and json print all)"),
):
    """Query a curate database (read-only). A query of the `curated` view says on stderr which run it shows."""
    import re

    from curate.storage.store import Store
    from curate.storage.tables import print_table

    with Store(_db(db), read_only=True) as store:
        table = store.sql(query)
        note = _curated_note(store) if re.search(r"\bcurated\b(?!_)", query, re.IGNORECASE) else None
    print_table(table, format, limit)
    if note:
        typer.echo(note, err=True)


def _curated_note(store) -> str | None:
    """Which run the `curated` view shows (the latest finished run, else the latest run)."""
    runs = store.con.execute("SELECT run_id, name, status FROM runs "
                             "ORDER BY status = 'finished' DESC, last_attempt_at DESC").fetchall()
    if not runs:
        return None
    run_id, name, status = runs[0]
    why = "the latest finished run" if status == "finished" else f"the latest run ({status}: none has finished)"
    others = (f"; {len(runs) - 1} other run{'s' if len(runs) > 2 else ''} here: curated_all holds every run's rows, "
              "`curate runs` lists them") if len(runs) > 1 else ""
    return f"curated = run {run_id} ({name or 'unnamed'}), {why}{others}"


def export_after_run(do_export, cfg, run_id: str):
    """The config's export, after its run: a target it may not write is said in the config's
    terms (`export.out`, `export.overwrite`), with the run's rows safe in the database."""
    from curate.storage.export_target import ExportTargetError

    try:
        return do_export(cfg.db, run_id=run_id, **cfg.export.model_dump())
    except ExportTargetError as e:
        text = str(e).replace("--out ", "export.out ").replace("--overwrite", "export.overwrite: true")
        raise ExportTargetError(f"{text} (the run finished: its rows are in {cfg.db}; `curate export` exports them)") from None


@app.command()
def export(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    format: str = typer.Option("hf", "--format", "-f", help="hf | parquet | jsonl"),
    out: str = typer.Option(..., "--out", "-o", help="output folder (hf) or file (parquet, jsonl); - : JSONL on standard output"),
    run_id: Optional[str] = typer.Option(None, "--run", help="run id (default: the latest finished run)"),
    selection: Optional[str] = typer.Option(None, "--selection", help="export only this selection"),
    shape: Optional[str] = typer.Option(None, "--shape", help="messages (default) | alpaca | sharegpt"),
    template: Optional[str] = typer.Option(None, "--template", help="Jinja template file rendered per row (with messages, tools, meta, id) into a `text` column"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an --out that is not an earlier curate export (never the database or the working directory)"),
    skip_unfit: bool = typer.Option(False, "--skip-unfit", help="leave out, and count, rows the shape cannot express (default: refuse to export)"),
    drops: bool = typer.Option(False, "--drops", help="write the rejected rows instead: each drop with its stage, reason, kind and value, and each quarantined row with its error and raw text"),
):
    """Export the curated rows of a run as a Hugging Face dataset, Parquet or JSONL (--drops: the rows it rejected);
    --out - writes JSONL to standard output.

    Written next to --out and renamed into place: a failed export leaves the previous one intact. --out may be new, empty or an earlier curate export; anything else needs --overwrite."""
    from curate.storage.export import export as do_export

    try:
        result = do_export(_db(db), out, format, run_id=run_id, selection=selection, shape=shape, template=template,
                           overwrite=overwrite, skip_unfit=skip_unfit, drops=drops)
    except BrokenPipeError:  # --out - read by a reader that stopped early (| head): no error of ours to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # as a shell reports a process ended by SIGPIPE
    to_stderr = out == "-"  # standard output holds the rows alone
    if drops:
        typer.echo(f"exported {result.rows} rejected rows ({format}) from run {result.run_id} → {result.path}", err=to_stderr)
        return
    typer.echo(f"exported {result.rows} rows ({format}, {result.shape}) from run {result.run_id} → {result.path}", err=to_stderr)
    if result.skipped:
        reasons = "; ".join(f"{n} × {r}" for r, n in sorted(result.skip_reasons.items(), key=lambda x: -x[1])[:5])
        typer.echo(f"left out {result.skipped} row{'s' if result.skipped > 1 else ''} the {result.shape} shape cannot express: {reasons}"
                   f" (e.g. id {', '.join(i for i, _ in result.skip_examples)})", err=to_stderr)


@app.command()
def report(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    out: str = typer.Option("report.html", "--out", "-o", help="HTML file to write"),
    run_id: Optional[str] = typer.Option(None, "--run", help="run id (default: the latest run)"),
):
    """Write a self-contained HTML report of a run: funnel, drop reasons, scores, clusters,
    selections, verifier pass rates, LLM tokens and cache, time per stage."""
    from curate.report import write_report

    typer.echo(f"report → {write_report(_db(db), out, run_id)}")


@app.command()
def runs(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    format: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
):
    """List the runs in a database with their counts."""
    from curate.storage.store import Store
    from curate.storage.tables import print_table

    with Store(_db(db), read_only=True) as store:
        # a run left `running` by a process that is gone shows as such (the next `curate run` records it)
        stale = [r for r, _, _ in store.stale_runs()]
        table = store.sql(
            "SELECT run_id, name, CASE WHEN list_contains($stale, run_id) THEN 'interrupted (stale)' ELSE status END "
            "AS status, attempts, rows_in, kept, dropped, quarantined, generated, expanded, started_at, finished_at, "
            "CASE WHEN list_contains($stale, run_id) THEN 'its process ended without recording it (killed or crashed)' "
            "ELSE error END AS error FROM run_totals", {"stale": stale}
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
