"""`curate report`: one self-contained HTML page about a run, from its DuckDB tables.

Sections: the stage funnel with drop reasons, score distributions, cluster sizes, selection
composition (by origin and skill) and coverage (beside a random draw's), verifier pass rates,
LLM tokens and cache, time per stage.
Plots are drawn with matplotlib (Agg) and embedded as base64 PNG, so the page opens anywhere
without network access. A section with nothing to show says so rather than vanishing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass

import duckdb

from curate.errors import CurateError
from curate.storage.store import Store

SECTIONS = ("summary", "funnel", "drop-reasons", "scores", "clusters", "selections", "verifiers", "llm", "time")


@dataclass
class Section:
    id: str
    title: str
    body: str


def write_report(db: str, out: str, run_id: str | None = None) -> str:
    with Store(db, read_only=True) as store:
        con = store.con
        run_id = run_id or _latest_run(con)
        sections = [
            _summary(con, run_id), _funnel(con, run_id), _drop_reasons(con, run_id), _scores(con, run_id),
            _clusters(con, run_id), _selections(con, run_id), _verifiers(con, run_id), _llm(con, run_id, db), _time(con, run_id),
        ]
    page = _page(run_id, db, sections)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return out


def _latest_run(con) -> str:
    row = con.execute("SELECT run_id FROM runs ORDER BY last_attempt_at DESC LIMIT 1").fetchone()
    if row is None:
        raise CurateError("the database holds no run yet")
    return row[0]


# ---------------------------------------------------------------------------- sections


def _summary(con, run_id) -> Section:
    rows = _rows(con, "SELECT name, status, attempts, started_at, finished_at, rows_in, kept, dropped, quarantined, expanded, generated "
                      "FROM run_totals WHERE run_id = ?", [run_id])
    body = _table(["name", "status", "attempts", "started", "finished", "rows in", "kept", "dropped",
                   "quarantined", "expanded", "generated"], rows)
    error = con.execute("SELECT error FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if error and error[0]:
        body = f"<p><b>The last attempt stopped:</b> {html.escape(error[0])}</p>" + body
    return Section("summary", "Run", body)


def _funnel(con, run_id) -> Section:
    rows = _rows(con, "SELECT stage, rows_in, generated, kept, dropped, quarantined, expanded FROM stage_totals "
                      "WHERE run_id = ? ORDER BY position", [run_id])
    body = _table(["stage", "rows in", "generated", "kept", "dropped", "quarantined", "expanded"], rows)
    body += ("<p>Top to bottom in config order: each step reads what the step before it kept. A global stage "
             "(dedup) decides once its phase has streamed every row, and the stages after it see only the survivors; "
             "<code>store</code> drops rows whose id was already kept.</p>")
    if rows:
        body = _plot_bars([r[0] for r in rows], {"kept": [r[3] for r in rows], "dropped": [r[4] for r in rows],
                                                 "quarantined": [r[5] for r in rows]}, "rows", stacked=True) + body
    return Section("funnel", "Stage funnel", body)


def _drop_reasons(con, run_id) -> Section:
    # Reasons like duplicate_of:<id> or language:xx (0.93) are grouped by their kind.
    rows = _rows(con, """
        SELECT stage, regexp_replace(reason, '[:<(].*$', '') AS kind, count(*) AS n
        FROM drops WHERE run_id = ? GROUP BY ALL ORDER BY n DESC LIMIT 40""", [run_id])
    rows += _rows(con, """
        SELECT stage, 'quarantine: ' || regexp_replace(error, '[:(].*$', ''), count(*) FROM quarantine
        WHERE run_id = ? GROUP BY ALL ORDER BY 3 DESC LIMIT 20""", [run_id])
    body = _table(["stage", "reason", "rows"], rows)
    if rows:
        body = _plot_barh([f"{r[0]}: {r[1]}" for r in rows[:20]], [r[2] for r in rows[:20]], "rows") + body
    return Section("drop-reasons", "Drop reasons", body)


def _scores(con, run_id) -> Section:
    names = [r[0] for r in _rows(con, "SELECT DISTINCT name FROM scores WHERE run_id = ? ORDER BY 1", [run_id])]
    if not names:
        return Section("scores", "Score distributions", _empty("no scores in this run (scoring stages write the scores table)"))
    parts, stats = [], []
    for name in names[:8]:
        values = [r[0] for r in _rows(con, "SELECT value FROM scores WHERE run_id = ? AND name = ? AND isfinite(value)", [run_id, name])]
        parts.append(_plot_hist(values, name))
        stats.append(_rows(con, """SELECT name, count(*), min(value), quantile_cont(value, 0.5), avg(value), max(value)
                                   FROM scores WHERE run_id = ? AND name = ? AND isfinite(value) GROUP BY name""", [run_id, name])[0]
                     if values else (name, 0, None, None, None, None))
    return Section("scores", "Score distributions",
                   "".join(parts) + _table(["score", "rows", "min", "median", "mean", "max"], stats))


def _clusters(con, run_id) -> Section:
    rows = _rows(con, """SELECT name, cluster, count(*) FROM selections WHERE run_id = ? AND cluster IS NOT NULL
                         GROUP BY ALL ORDER BY name, 3 DESC""", [run_id])
    if not rows:
        return Section("clusters", "Cluster sizes", _empty("no clustered selection in this run"))
    parts = []
    for name in sorted({r[0] for r in rows}):
        sizes = [r[2] for r in rows if r[0] == name]
        parts.append(f"<h3>{_e(name)}: {len(sizes)} clusters</h3>" + _plot_hist(sizes, f"{name}: selected rows per cluster"))
    return Section("clusters", "Cluster sizes", "".join(parts))


def _selections(con, run_id) -> Section:
    info = _rows(con, "SELECT name, selector, pool, rows, round(seconds, 3), params::VARCHAR FROM selection_info WHERE run_id = ? ORDER BY name", [run_id])
    if not info:
        return Section("selections", "Selections", _empty("no selection in this run"))
    coverage = _coverage_table(con, run_id)
    by_origin = _rows(con, """
        SELECT sel.name, s.origin, count(*) FROM selections sel JOIN samples s ON s.run_id = sel.run_id AND s.id = sel.id
        WHERE sel.run_id = ? GROUP BY ALL ORDER BY 1, 3 DESC""", [run_id])
    by_skill = _rows(con, """
        SELECT name, skill, count(*) FROM (
            SELECT sel.name, unnest(CAST(json_extract(s.meta, '$.skills[*].name') AS VARCHAR[])) AS skill
            FROM selections sel JOIN samples s ON s.run_id = sel.run_id AND s.id = sel.id
            WHERE sel.run_id = ? AND s.meta LIKE '%"skills"%')
        GROUP BY ALL ORDER BY 1, 3 DESC LIMIT 30""", [run_id])
    body = _table(["selection", "selector", "pool", "rows", "seconds", "parameters"], info)
    body += "<h3>Coverage</h3>" + coverage
    body += "<h3>By origin</h3>" + _plot_bars(sorted({r[1] for r in by_origin}),
                                              {n: [next((r[2] for r in by_origin if r[0] == n and r[1] == o), 0)
                                                   for o in sorted({r[1] for r in by_origin})] for n in sorted({r[0] for r in by_origin})},
                                              "rows") + _table(["selection", "origin", "rows"], by_origin)
    body += "<h3>By skill</h3>" + (_table(["selection", "skill", "rows"], by_skill) if by_skill else _empty("no SkillMix rows selected"))
    return Section("selections", "Selection composition", body)


def _coverage_table(con, run_id) -> str:
    """Each selection's coverage distance beside a random draw's of the same size (lower covers
    better): mean and 90th percentile of the cosine distance from a pool row to its nearest pick."""
    columns = {r[0] for r in _rows(con, "SELECT column_name FROM information_schema.columns WHERE table_name = 'selection_info'", [])}
    if "coverage_mean" not in columns:
        return _empty("this database predates coverage figures: rerun the selectors to add them")
    rows = _rows(con, """
        SELECT name, coverage_mean, random_coverage_mean,
               round(100 * (coverage_mean - random_coverage_mean) / nullif(random_coverage_mean, 0), 1),
               coverage_p90, random_coverage_p90, coverage_vectors, coverage_rows, random_draws
        FROM selection_info WHERE run_id = ? ORDER BY name""", [run_id])
    measured = [r for r in rows if r[1] is not None]
    body = ""
    if measured:
        body += _plot_bars([r[0] for r in measured], {"selection": [r[1] for r in measured],
                                                      "random, same size": [r[2] for r in measured]},
                           "mean cosine distance to nearest pick")
    body += _table(["selection", "mean distance", "random: mean", "vs random %", "p90 distance", "random: p90",
                    "vectors", "pool rows measured", "random draws"],
                   [r if r[1] is not None else (r[0], None, None, None, None, None, "no vectors in this run", None, None)
                    for r in rows])
    body += ("<p>Coverage: the cosine distance from each pool row (or a sample of the pool) to its nearest selected row; "
             "lower covers the pool better. Random: draws of the same size ranked as the <code>random</code> selector "
             "ranks rows, measured on the same pool rows.</p>")
    return body


def _verifiers(con, run_id) -> Section:
    rows = _rows(con, """SELECT verifier, strength, count(*), count(*) FILTER (passed),
                                round(100.0 * count(*) FILTER (passed) / count(*), 1)
                         FROM verdicts WHERE run_id = ? GROUP BY ALL ORDER BY 1, 2""", [run_id])
    if not rows:
        return Section("verifiers", "Verifier pass rates", _empty("no verdicts in this run"))
    fails = _rows(con, """SELECT verifier, regexp_replace(coalesce(detail, ''), '[:(\n].*$', '') AS kind, count(*)
                          FROM verdicts WHERE run_id = ? AND NOT passed GROUP BY ALL ORDER BY 3 DESC LIMIT 20""", [run_id])
    body = _plot_barh([f"{r[0]} ({r[1]})" for r in rows], [r[4] for r in rows], "% passed")
    body += _table(["verifier", "strength", "verdicts", "passed", "% passed"], rows)
    body += "<h3>Failures</h3>" + _table(["verifier", "kind", "rows"], fails)
    return Section("verifiers", "Verifier pass rates", body)


def _llm(con, run_id, db) -> Section:
    tokens = _rows(con, """
        SELECT coalesce(meta->>'generator', origin), count(*),
               sum(TRY_CAST(meta->>'prompt_tokens' AS BIGINT)), sum(TRY_CAST(meta->>'completion_tokens' AS BIGINT))
        FROM samples WHERE run_id = ? AND origin != 'seed' AND meta LIKE '%"generator"%' GROUP BY ALL ORDER BY 1""", [run_id])
    body = _table(["generator", "rows", "prompt tokens", "completion tokens"], tokens) if tokens else _empty("no generated rows in this run")
    has_engines = _rows(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", ["llm_engines"])[0][0]
    engines = has_engines and _rows(con, """
        SELECT attempt, model, round(load_seconds, 1), requests, completion_tokens,
               round(completion_tokens / nullif(epoch(stream_end_at) - epoch(greatest(ready_at, first_request_at)), 0)),
               round(100 * busy_seconds / nullif(epoch(stream_end_at) - epoch(greatest(ready_at, first_request_at)), 0), 1),
               peak_in_flight
        FROM llm_engines WHERE run_id = ? ORDER BY attempt, model""", [run_id])
    if engines:
        body += "<h3>vLLM engines</h3>" + _table(
            ["attempt", "model", "start s", "requests", "completion tokens", "tokens/s while generating", "% busy", "peak in flight"], engines)
    from curate.generators.cache import cache_path_for

    cache = cache_path_for(db)
    if os.path.exists(cache):
        try:
            cc = duckdb.connect(cache, read_only=True)
            has_calls = any(r[0] == "calls" for r in cc.execute("DESCRIBE llm_cache").fetchall())
            calls = "sum(calls), count(*) FILTER (calls > 1)" if has_calls else "count(*), 0"
            stats = cc.execute(f"SELECT model, count(*), {calls}, min(created_at), max(created_at) FROM llm_cache GROUP BY 1 ORDER BY 1").fetchall()
            cc.close()
            body += "<h3>LLM-call cache</h3>" + _table(["model", "cached requests", "model calls paid", "requests paid twice", "first", "last"], stats)
        except duckdb.Error as e:
            body += _empty(f"cache {cache} unreadable: {e}")
    else:
        body += _empty("no LLM-call cache beside this database")
    return Section("llm", "LLM tokens and cache", body)


def _time(con, run_id) -> Section:
    rows = _rows(con, "SELECT stage, round(seconds, 3), rows_in, round(rows_in / nullif(seconds, 0))::BIGINT FROM stage_totals "
                      "WHERE run_id = ? ORDER BY position", [run_id])
    body = _table(["stage", "busy seconds", "rows in", "rows/s"], rows)
    if rows:
        body = _plot_barh([r[0] for r in rows], [r[1] or 0 for r in rows], "busy seconds (summed over workers)") + body
    return Section("time", "Time per stage", body)


# ---------------------------------------------------------------------------- rendering


def _rows(con, query, params):
    return con.execute(query, params).fetchall()


def _e(value) -> str:
    if isinstance(value, float):
        value = f"{value:,.4g}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return html.escape("" if value is None else str(value))


def _table(header, rows) -> str:
    if not rows:
        return _empty("nothing recorded")
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    plt = _figure()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plot_bars(labels, series: dict[str, list], ylabel: str, stacked: bool = False) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bottom = [0] * len(labels)
    width = 0.8 if stacked else 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = list(range(len(labels))) if stacked else [i + k * width for i in range(len(labels))]
        ax.bar(xs, values, width=width, label=name, bottom=bottom if stacked else None)
        if stacked:
            bottom = [b + (v or 0) for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _png(fig)


def _plot_barh(labels, values, xlabel: str) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(labels) + 1))
    ax.barh(range(len(labels)), values)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return _png(fig)


def _plot_hist(values, title: str) -> str:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.hist(values, bins=min(40, max(5, len(values) // 5)))
    ax.set_title(title, fontsize=9)
    return _png(fig)


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; } img { max-width: 100%; display: block; margin: .5em 0; }
.empty { color: #777; font-style: italic; } nav a { margin-right: 1em; }
"""


def _page(run_id: str, db: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{_e(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>{s.body}</section>' for s in sections)
    meta = json.dumps({"run_id": run_id, "sections": [s.id for s in sections]})
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>curate report: {_e(run_id)}</title>'
            f'<style>{CSS}</style><script type="application/json" id="report-meta">{meta}</script></head>'
            f'<body><h1>curate run {_e(run_id)}</h1><p>{_e(os.path.abspath(db))}</p><nav>{nav}</nav>{body}</body></html>')
