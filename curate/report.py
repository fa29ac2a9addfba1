"""`curate report`: one self-contained HTML page about a run, from its DuckDB tables.

Sections: the run with its wall-clock time; the stage funnel (a table of rates and a log-scale
chart, one line per step: a global stage's key half in the stream and its decision at the barrier
are one line); drop reasons by the drops table's `kind`, with example rows of each; score
distributions; clusters of each clustered selection (pool rows beside selected rows, example rows
of each); selection composition (by origin and skill) and coverage (beside a random draw's);
verifier pass rates and failures (the failure kind read from the verdict's JSON detail, beside the
drop it caused, with a full example detail); LLM judges (judge score distributions, checklist
pass rates per item kind, unparseable outputs, revisions made and how they scored); LLM tokens and cache; a wall-clock timeline and busy
time per stage.
Charts are drawn with matplotlib (Agg) and embedded as base64 PNG (curate/report_render.py), so
the page opens anywhere without network access. A chart with nothing to draw is replaced by a
sentence; a section with nothing to show says so rather than vanishing.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass

import duckdb

from curate.errors import CurateError
from curate.report_clusters import pool_cluster_sizes
from curate.report_render import bars, barh, clip, e, empty, example_table, hist, note, plural, table, timeline
from curate.storage.store import Store, drops_relation, resolve_run_id

SECTIONS = ("summary", "funnel", "drop-reasons", "scores", "clusters", "selections", "verifiers", "judges", "llm", "time")
EXAMPLES = 3  # example rows per drop kind and per cluster
EXAMPLE_KINDS = 24  # drop kinds given examples (the most frequent)
EXAMPLE_CLUSTERS = 12  # clusters given examples (the largest)
CHART_CLUSTERS = 60  # clusters drawn in a selection's chart (the largest)


@dataclass
class Section:
    id: str
    title: str
    body: str


def write_report(db: str, out: str, run_id: str | None = None) -> str:
    with Store(db, read_only=True) as store:
        con = store.con
        run_id = _latest_run(con) if run_id is None else resolve_run_id(con, db, run_id)
        steps = _steps(con, run_id)
        sections = [
            _summary(con, run_id), _funnel(steps), _drop_reasons(con, run_id), _scores(con, run_id),
            _clusters(con, run_id), _selections(con, run_id), _verifiers(con, run_id), _judges(con, run_id), _llm(con, run_id, db),
            _time(con, run_id, steps),
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


# ---------------------------------------------------------------------------- funnel steps


@dataclass
class Step:
    label: str
    kind: str  # stream | store | global
    rows_in: int
    generated: int
    kept: int
    dropped: int
    quarantined: int
    expanded: int
    stream_seconds: float  # summed over shards and workers (a global stage: computing its keys)
    barrier_seconds: float | None  # a global stage's decision after its phase; None for others


def _steps(con, run_id) -> list[Step]:
    """One Step per funnel line, in order. A global stage has stage_stats rows of two kinds under
    its name: per shard, the stream time of its key half (no counts); and one row, shard '*',
    with the decision's counts and time. They make one line here, whatever positions they have.
    `store` (one per phase) is labelled with its phase when there are several."""
    rows = _rows(con, """
        SELECT min(position), stage, bool_or(shard = '*'),
               sum(rows_in) FILTER (shard = '*' OR NOT has_star), sum(generated) FILTER (shard = '*' OR NOT has_star),
               sum(kept) FILTER (shard = '*' OR NOT has_star), sum(dropped) FILTER (shard = '*' OR NOT has_star),
               sum(quarantined) FILTER (shard = '*' OR NOT has_star), sum(expanded) FILTER (shard = '*' OR NOT has_star),
               coalesce(sum(seconds) FILTER (shard != '*'), 0), sum(seconds) FILTER (shard = '*')
        FROM (SELECT *, bool_or(shard = '*') OVER (PARTITION BY stage) AS has_star FROM stage_stats WHERE run_id = ?)
        GROUP BY stage, CASE WHEN stage = 'store' THEN position END
        ORDER BY CASE WHEN bool_or(shard = '*') THEN min(position) FILTER (shard = '*') ELSE min(position) END""", [run_id])
    globals_ = {r[0] for r in _rows(con, "SELECT stage FROM global_steps WHERE run_id = ?", [run_id])}
    stores = sum(r[1] == "store" for r in rows)
    steps, phase = [], 0
    for _, stage, star, rin, gen, kept, dropped, quar, exp, stream_s, barrier_s in rows:
        kind = "store" if stage == "store" else "global" if star or stage in globals_ else "stream"
        label = stage
        if stage == "store":
            phase += 1
            label = f"store (phase {phase})" if stores > 1 else stage
        steps.append(Step(label, kind, rin or 0, gen or 0, kept or 0, dropped or 0, quar or 0, exp or 0, stream_s or 0.0,
                          barrier_s if kind == "global" else None))
    return steps


def _pct(part, whole) -> float | None:
    return None if not whole else round(100.0 * part / whole, 2)


# ---------------------------------------------------------------------------- sections


def _summary(con, run_id) -> Section:
    rows = _rows(con, "SELECT name, status, attempts, started_at, finished_at, rows_in, kept, dropped, quarantined, expanded, generated "
                      "FROM run_totals WHERE run_id = ?", [run_id])
    wall = _wall_seconds(con, run_id)
    rows = [(*r[:5], _duration(wall), *r[5:]) for r in rows]
    body = table(["name", "status", "attempts", "started", "finished", "wall-clock", "rows in", "kept", "dropped",
                  "quarantined", "expanded", "generated"], rows, id="run-table")
    error = con.execute("SELECT error FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if error and error[0]:
        body = f"<p><b>The last attempt stopped:</b> {html.escape(error[0])}</p>" + body
    return Section("summary", "Run", body)


def _funnel(steps: list[Step]) -> Section:
    if not steps:
        return Section("funnel", "Stage funnel", empty("no stage statistics recorded for this run"))
    start = steps[0].rows_in or None
    kinds = {"stream": "stream", "store": "commit", "global": "global: keys in the stream, decided at the barrier"}
    rows = [(s.label, kinds[s.kind], s.rows_in, s.generated, s.kept, s.dropped, s.quarantined, s.expanded,
             _pct(s.dropped + s.quarantined, s.rows_in), _pct(s.kept, start)) for s in steps]
    body = table(["step", "kind", "rows in", "generated", "kept", "dropped", "quarantined", "expanded",
                  "% of its rows dropped", "% of input left"], rows, cls="rates", id="funnel-rates")
    body += note("Top to bottom in config order: each step reads what the step before it kept. A global stage "
                 "(exact_dedup, near_dedup, semdedup, best_of_n) computes its keys in the stream and decides once its phase has "
                 "streamed every row; it is one line here, and the stages after it see only the survivors. "
                 "<code>store</code> drops rows whose id was already kept (one per phase). "
                 "<i>% of its rows dropped</i> counts dropped and quarantined rows; <i>% of input left</i> is kept over "
                 "the first step's rows in (above 100 when generators add rows).")
    chart = barh([s.label for s in steps], {"kept (rows out)": [s.kept for s in steps],
                                            "dropped + quarantined": [s.dropped + s.quarantined for s in steps]},
                 "rows", "rows out and rows removed per step", "no rows went through any step", log=True)
    return Section("funnel", "Stage funnel", chart + body)


def _drop_reasons(con, run_id) -> Section:
    drops = drops_relation(con)
    rows = _rows(con, f"""
        SELECT stage, kind, count(*) AS n, count(DISTINCT reason), min(reason)
        FROM {drops} WHERE run_id = ? GROUP BY ALL ORDER BY n DESC, stage, kind LIMIT 40""", [run_id])
    quarantined = _rows(con, """
        SELECT stage, 'quarantine: ' || regexp_replace(error, '[:(].*$', ''), count(*) AS n, count(DISTINCT error), min(error)
        FROM quarantine WHERE run_id = ? GROUP BY ALL ORDER BY n DESC LIMIT 20""", [run_id])
    everything = rows + quarantined
    if not everything:
        return Section("drop-reasons", "Drop reasons", empty("no row was dropped or quarantined in this run"))
    body = barh([f"{r[0]}: {r[1]}" for r in everything[:24]], {"rows": [r[2] for r in everything[:24]]}, "rows",
                "rows dropped per stage and kind", "no drops", log="auto")
    body += table(["stage", "kind", "rows", "distinct reasons", "first reason"], everything, id="drop-kinds")
    body += note("A reason's kind is the drops table's <code>kind</code> column: the reason up to its first "
                 "<code>:</code>, <code>&lt;</code>, <code>&gt;</code>, <code>=</code>, <code>(</code> or space, less a "
                 "trailing <code>_of</code> (<code>duplicate_of:&lt;id&gt;</code> is <code>duplicate</code>).")
    body += '<div id="drop-examples"><h3>Example rows per kind</h3>' + _drop_examples(con, run_id, drops, rows)
    body += _quarantine_examples(con, run_id, quarantined) + "</div>"
    return Section("drop-reasons", "Drop reasons", body)


def _drop_examples(con, run_id, drops: str, kinds) -> str:
    if not kinds:
        return ""
    found = _rows(con, f"""
        SELECT stage, kind, id, reason, messages FROM (
            SELECT d.stage, d.kind, d.id, d.reason, s.messages,
                   row_number() OVER (PARTITION BY d.stage, d.kind ORDER BY d.shard, d."row", d.id) AS nth
            FROM {drops} d LEFT JOIN samples s ON s.run_id = d.run_id AND s.id = d.id
            WHERE d.run_id = ?) WHERE nth <= {EXAMPLES}
        ORDER BY stage, kind, nth""", [run_id])
    parts = []
    for stage, kind, n, *_ in kinds[:EXAMPLE_KINDS]:
        ex = [(r[2], r[3], r[4]) for r in found if r[0] == stage and r[1] == kind]
        parts.append(f'<h4 class="example-kind">{e(stage)}: {e(kind)} <span class="count">({plural(n, "row")}; '
                     f'{min(n, EXAMPLES)} shown)</span></h4>' + example_table(ex, extra=("reason",)))
    more = len(kinds) - EXAMPLE_KINDS
    tail = f" {more} rarer kinds are not shown." if more > 0 else ""
    return "".join(parts) + note("Texts are cut; <code>curate show --id ID</code> shows a row in full, "
                                 f"<code>curate show --stage STAGE --kind KIND</code> lists more.{tail}")


def _quarantine_examples(con, run_id, quarantined) -> str:
    if not quarantined:
        return ""
    found = _rows(con, f"""
        SELECT source, "row", error, raw FROM (
            SELECT *, row_number() OVER (PARTITION BY regexp_replace(error, '[:(].*$', '') ORDER BY shard, "row") AS nth
            FROM quarantine WHERE run_id = ?) WHERE nth <= {EXAMPLES} ORDER BY error, "row" """, [run_id])
    rows = [(e(os.path.basename(s or "")), e(r), e(err), clip(raw)) for s, r, err, raw in found]
    return "<h4>quarantined rows</h4>" + table(["source", "row", "error", "raw input"], rows, cls="examples", raw=(0, 1, 2, 3))


def _scores(con, run_id) -> Section:
    names = [r[0] for r in _rows(con, "SELECT DISTINCT name FROM scores WHERE run_id = ? ORDER BY 1", [run_id])]
    if not names:
        return Section("scores", "Score distributions", empty("no scores in this run (scoring stages write the scores table)"))
    parts, stats = [], []
    for name in names[:8]:
        values = [r[0] for r in _rows(con, "SELECT value FROM scores WHERE run_id = ? AND name = ? AND isfinite(value)", [run_id, name])]
        parts.append(hist(values, name, name, f"{name}: no finite values"))
        stats.append(_rows(con, """SELECT name, count(*), min(value), quantile_cont(value, 0.5), avg(value), max(value)
                                   FROM scores WHERE run_id = ? AND name = ? AND isfinite(value) GROUP BY name""", [run_id, name])[0]
                     if values else (name, 0, None, None, None, None))
    return Section("scores", "Score distributions",
                   "".join(parts) + table(["score", "rows", "min", "median", "mean", "max"], stats))


def _clusters(con, run_id) -> Section:
    title = "Clusters: pool and selected rows"
    names = [r[0] for r in _rows(con, "SELECT DISTINCT name FROM selections WHERE run_id = ? AND cluster IS NOT NULL ORDER BY 1", [run_id])]
    if not names:
        return Section("clusters", title, empty("no clustered selection in this run (kmeans_diversity stores each pick's cluster)"))
    parts = []
    for name in names:
        picked = dict(_rows(con, "SELECT id, cluster FROM selections WHERE run_id = ? AND name = ? AND cluster IS NOT NULL",
                            [run_id, name]))
        info = _rows(con, "SELECT selector, params::VARCHAR, pool FROM selection_info WHERE run_id = ? AND name = ?", [run_id, name])
        selector, params, pool = info[0] if info else ("unknown", "{}", None)
        found = pool_cluster_sizes(con, run_id, selector, params, picked)
        chosen: dict[int, int] = {}
        for c in picked.values():
            chosen[c] = chosen.get(c, 0) + 1
        sizes = found.sizes
        clusters = sorted(set(chosen) | set(sizes or {}), key=lambda c: (-(sizes or chosen).get(c, 0), c))
        if sizes:
            rows = [(c, sizes.get(c, 0), chosen.get(c, 0), _pct(chosen.get(c, 0), sizes.get(c, 0))) for c in clusters]
            header = ["cluster", "pool rows", "selected rows", "% of cluster selected"]
        else:
            rows, header = [(c, chosen.get(c, 0)) for c in clusters], ["cluster", "selected rows"]
        head = (f"<h3>{e(name)} ({e(selector)}): {len(clusters):,} clusters, {len(picked):,} rows selected"
                + (f" of a pool of {pool:,}" if pool is not None else "") + "</h3>")
        shown = clusters[:CHART_CLUSTERS]
        series = {"selected rows": [chosen.get(c, 0) for c in shown]}
        if sizes:
            series = {"pool rows": [sizes.get(c, 0) for c in shown], **series}
        what = "pool rows and selected rows per cluster" if sizes else "selected rows per cluster (pool sizes unknown)"
        chart = bars([str(c) for c in shown], series, "rows", f"{name}: {what}" +
                     (f", the {CHART_CLUSTERS} largest of {len(clusters)}" if len(clusters) > CHART_CLUSTERS else ""),
                     "no rows in any cluster", xlabel="cluster id, " + ("largest cluster first" if sizes else "most selected first"))
        parts.append(head + chart + note(html.escape(found.why[:1].upper() + found.why[1:]) + ".")
                     + table(header, rows, cls="clusters"))
        parts.append(_cluster_examples(con, run_id, name, clusters, chosen, sizes))
    return Section("clusters", title, "".join(parts))


def _cluster_examples(con, run_id, name, clusters, chosen, sizes) -> str:
    shown = [c for c in clusters if chosen.get(c)][:EXAMPLE_CLUSTERS]
    found = _rows(con, f"""
        SELECT cluster, id, rank, messages FROM (
            SELECT sel.cluster, sel.id, sel.rank, s.messages,
                   row_number() OVER (PARTITION BY sel.cluster ORDER BY sel.rank) AS nth
            FROM selections sel LEFT JOIN samples s ON s.run_id = sel.run_id AND s.id = sel.id
            WHERE sel.run_id = ? AND sel.name = ? AND sel.cluster IS NOT NULL) WHERE nth <= {EXAMPLES}
        ORDER BY cluster, rank""", [run_id, name])
    parts = []
    for c in shown:
        of = f" of {sizes.get(c, 0):,} pool rows" if sizes else ""
        parts.append(f'<h4 class="example-cluster">{e(name)}: cluster {c} <span class="count">({chosen[c]:,} selected{of}; '
                     f'the first {min(chosen[c], EXAMPLES)} by rank)</span></h4>'
                     + example_table([(r[1], r[2], r[3]) for r in found if r[0] == c], extra=("rank",)))
    more = len([c for c in clusters if chosen.get(c)]) - len(shown)
    tail = f" {more} smaller clusters are not shown." if more > 0 else ""
    return (f'<div class="cluster-examples" id="cluster-examples-{e(name)}"><h3>{e(name)}: example rows per cluster</h3>'
            + "".join(parts) + note(f"<code>curate show --selection {e(name)} --cluster N</code> lists a cluster's rows.{tail}")
            + "</div>")


def _selections(con, run_id) -> Section:
    info = _rows(con, "SELECT name, selector, pool, rows, round(seconds, 3), params::VARCHAR FROM selection_info WHERE run_id = ? ORDER BY name", [run_id])
    if not info:
        return Section("selections", "Selection composition", empty("no selection in this run"))
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
    body = table(["selection", "selector", "pool", "rows", "seconds", "parameters"], info)
    body += "<h3>Coverage</h3>" + coverage
    origins = sorted({r[1] for r in by_origin})
    body += "<h3>By origin</h3>" + bars(origins, {n: [next((r[2] for r in by_origin if r[0] == n and r[1] == o), 0) for o in origins]
                                                  for n in sorted({r[0] for r in by_origin})},
                                        "rows", "selected rows by origin", "no selected row found among the run's samples")
    body += table(["selection", "origin", "rows"], by_origin)
    body += "<h3>By skill</h3>" + (table(["selection", "skill", "rows"], by_skill) if by_skill else empty("no SkillMix rows selected"))
    return Section("selections", "Selection composition", body)


def _coverage_table(con, run_id) -> str:
    """Each selection's coverage distance beside a random draw's of the same size (lower covers
    better): mean and 90th percentile of the cosine distance from a pool row to its nearest pick."""
    columns = {r[0] for r in _rows(con, "SELECT column_name FROM information_schema.columns WHERE table_name = 'selection_info'", [])}
    if "coverage_mean" not in columns:
        return empty("this database predates coverage figures: rerun the selectors to add them")
    rows = _rows(con, """
        SELECT name, coverage_mean, random_coverage_mean,
               round(100 * (coverage_mean - random_coverage_mean) / nullif(random_coverage_mean, 0), 1),
               coverage_p90, random_coverage_p90, coverage_vectors, coverage_rows, random_draws
        FROM selection_info WHERE run_id = ? ORDER BY name""", [run_id])
    measured = [r for r in rows if r[1] is not None]
    body = bars([r[0] for r in measured], {"selection": [r[1] for r in measured], "random, same size": [r[2] for r in measured]},
                "mean cosine distance", "coverage (lower is better)",
                "no coverage measured: the run stored no vectors")
    body += table(["selection", "mean distance", "random: mean", "vs random %", "p90 distance", "random: p90",
                   "vectors", "pool rows measured", "random draws"],
                  [r if r[1] is not None else (r[0], None, None, None, None, None, "no vectors in this run", None, None)
                   for r in rows])
    body += note("Coverage: the cosine distance from each pool row (or a sample of the pool) to its nearest selected row; "
                 "lower covers the pool better. Random: draws of the same size ranked as the <code>random</code> selector "
                 "ranks rows, measured on the same pool rows.")
    return body


def _verifiers(con, run_id) -> Section:
    rows = _rows(con, """SELECT verifier, strength, count(*), count(*) FILTER (passed),
                                round(100.0 * count(*) FILTER (passed) / count(*), 1)
                         FROM verdicts WHERE run_id = ? GROUP BY ALL ORDER BY 1, 2""", [run_id])
    if not rows:
        return Section("verifiers", "Verifier pass rates", empty("no verdicts in this run"))
    drops = drops_relation(con)
    # The failure's kind is the `kind` field of the verdict's JSON detail (a detail that is not
    # JSON: its text up to the first `:`); beside it, the drop the row got (drops.stage, .kind).
    fails = _rows(con, f"""
        WITH f AS (
            SELECT v.verifier, v.id, v.detail,
                   CASE WHEN json_valid(v.detail) THEN coalesce(json_extract_string(v.detail, '$.kind'), '?')
                        ELSE regexp_replace(coalesce(v.detail, ''), '[:(\n].*$', '') END AS failure,
                   coalesce(d.stage || ': ' || d.kind, 'kept (not dropped)') AS dropped_as
            FROM verdicts v
            LEFT JOIN (SELECT DISTINCT ON (id) id, stage, kind FROM {drops} WHERE run_id = $run ORDER BY id, stage) d ON d.id = v.id
            WHERE v.run_id = $run AND NOT v.passed)
        SELECT verifier, failure, dropped_as, count(*) AS n, min(id), arg_min(detail, id)
        FROM f GROUP BY verifier, failure, dropped_as ORDER BY n DESC, verifier, failure LIMIT 30""", {"run": run_id})
    body = barh([f"{r[0]} ({r[1]})" for r in rows], {"% passed": [r[4] for r in rows]}, "% of verdicts passed",
                "verifier pass rates", "no verifier passed any row")
    body += table(["verifier", "strength", "verdicts", "passed", "% passed"], rows, id="verifier-rates")
    failed = [(e(v), e(k), e(d), e(n), f"<code>{e(i)}</code>", f'<pre class="detail">{html.escape(_pretty(detail), quote=False)}</pre>')
              for v, k, d, n, i, detail in fails]
    body += "<h3>Failures</h3>" + (table(["verifier", "failure kind", "dropped as (stage: kind)", "rows", "example id",
                                          "example detail"], failed, id="verifier-failures", raw=(0, 1, 2, 3, 4, 5))
                                    if failed else empty("no verdict failed"))
    return Section("verifiers", "Verifier pass rates", body)


# Verifiers that are LLM judges (stages/judge/), each with its default score's name.
JUDGE_SCORES = {"tick": "tick", "decrim": "decrim", "meta_rank": "meta_rank", "contrastive": "contrastive_gap"}
JUDGES = "(" + ", ".join(f"'{v}'" for v in JUDGE_SCORES) + ")"
REVISERS = "('stick', 'decrim', 'revise')"  # meta `generator` of rows a judge or reviser rewrote

# A checklist question's kind, from its words (first match wins): a coarse grouping so pass rates
# can be compared across prompts whose checklists differ.
ITEM_KINDS = (
    ("correctness", r"correct|accurate|right answer|valid|true|error"),
    ("format", r"format|list|bullet|line|word|sentence|paragraph|title|length|short|brief|json|table|code block|heading"),
    ("style", r"tone|polite|formal|friendly|concise|clear|voice|style|language"),
    ("reasoning", r"step|explain|reason|justif|show"),
    ("content", r"mention|include|about|describe|provide|give|address|cover|contain|ask|refrain|avoid"),
)


def _item_kind_sql() -> str:
    cases = " ".join(f"WHEN regexp_matches(lower(question), '{pattern}') THEN '{kind}'" for kind, pattern in ITEM_KINDS)
    return f"CASE {cases} ELSE 'other' END"


def _judges(con, run_id) -> Section:
    title = "LLM judges"
    judged = _rows(con, f"""SELECT verifier, count(DISTINCT id) FROM verdicts WHERE run_id = ? AND verifier IN {JUDGES}
                            GROUP BY 1 ORDER BY 1""", [run_id])
    revised = _rows(con, f"""SELECT meta->>'generator', origin, count(*), count(*) FILTER (kept) FROM samples
                            WHERE run_id = ? AND meta->>'generator' IN {REVISERS} GROUP BY ALL ORDER BY 1""", [run_id])
    if not judged and not revised:
        return Section("judges", title, empty("no LLM judge in this run (tick, decrim, meta_rank, contrastive_filter, revise write verdicts and rows)"))
    parts = []
    for verifier, rows in judged:
        name = JUDGE_SCORES[verifier]
        values = [r[0] for r in _rows(con, "SELECT value FROM scores WHERE run_id = ? AND name = ? AND isfinite(value)", [run_id, name])]
        parts.append(hist(values, f"{name} score", name, f"no score named {name} (the judge's default score name)"))
        unparseable, outputs = _rows(con, """SELECT count(*) FILTER (strength = 'unparseable'), count(*)
                                             FROM verdicts WHERE run_id = ? AND verifier = ?""", [run_id, verifier])[0]
        parts.append(note(f"{e(verifier)}: {rows} rows judged; {unparseable} of {outputs} judge outputs unparseable "
                          "(raw outputs in <code>verdicts.detail</code>)."))
    kinds = _rows(con, f"""
        WITH items AS (SELECT detail->>'question' AS question, passed FROM verdicts
                       WHERE run_id = ? AND verifier IN ('tick', 'decrim') AND detail->>'kind' = 'item')
        SELECT {_item_kind_sql()} AS kind, count(*), count(*) FILTER (passed), count(*) FILTER (NOT passed),
               round(100.0 * count(*) FILTER (passed) / nullif(count(*) FILTER (passed IS NOT NULL), 0), 1)
        FROM items GROUP BY 1 ORDER BY 2 DESC""", [run_id])
    if kinds:
        parts.append("<h3>Checklist pass rates per item kind</h3>" +
                     barh([r[0] for r in kinds], {"% YES": [r[4] or 0 for r in kinds]}, "% of answered questions YES",
                          "checklist pass rates", "no checklist question was answered YES") +
                     table(["item kind", "answers", "YES", "NO", "% YES"], kinds, id="checklist-kinds") +
                     note("The kind is read from the question's words (report.py ITEM_KINDS); "
                          "<code>SELECT * FROM checklists</code> lists every question with its answers."))
    if revised:
        delta = _rows(con, f"""
            SELECT c.meta->>'generator', cs.name, count(*), round(avg(cs.value - ps.value), 3), count(*) FILTER (cs.value > ps.value)
            FROM samples c JOIN scores cs ON cs.run_id = c.run_id AND cs.id = c.id
            JOIN scores ps ON ps.run_id = c.run_id AND ps.id = c.parent_ids[1] AND ps.name = cs.name
            WHERE c.run_id = ? AND c.meta->>'generator' IN {REVISERS}
              AND cs.name IN ({", ".join(f"'{n}'" for n in JUDGE_SCORES.values())})
            GROUP BY 1, 2 ORDER BY 1, 2""", [run_id])
        parts.append("<h3>Revisions</h3>" + table(["generator", "origin", "rows made", "still kept"], revised, id="revisions") +
                     (table(["generator", "score", "scored beside their original", "mean score change", "scored higher"], delta)
                      if delta else ""))
    return Section("judges", title, "".join(parts))


def _pretty(detail: str | None) -> str:
    if not detail:
        return ""
    try:
        return json.dumps(json.loads(detail), indent=1, ensure_ascii=False, sort_keys=True)
    except ValueError:
        return detail


def _llm(con, run_id, db) -> Section:
    tokens = _rows(con, """
        SELECT coalesce(meta->>'generator', origin), count(*),
               sum(TRY_CAST(meta->>'prompt_tokens' AS BIGINT)), sum(TRY_CAST(meta->>'completion_tokens' AS BIGINT))
        FROM samples WHERE run_id = ? AND origin != 'seed' AND meta LIKE '%"generator"%' GROUP BY ALL ORDER BY 1""", [run_id])
    body = table(["generator", "rows", "prompt tokens", "completion tokens"], tokens) if tokens else empty("no generated rows in this run")
    has_engines = _rows(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", ["llm_engines"])[0][0]
    engines = has_engines and _rows(con, """
        SELECT attempt, model, round(load_seconds, 1), requests, completion_tokens,
               round(completion_tokens / nullif(epoch(stream_end_at) - epoch(greatest(ready_at, first_request_at)), 0)),
               round(100 * busy_seconds / nullif(epoch(stream_end_at) - epoch(greatest(ready_at, first_request_at)), 0), 1),
               peak_in_flight
        FROM llm_engines WHERE run_id = ? ORDER BY attempt, model""", [run_id])
    if engines:
        body += "<h3>vLLM engines</h3>" + table(
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
            body += "<h3>LLM-call cache</h3>" + table(["model", "cached requests", "model calls paid", "requests paid twice", "first", "last"], stats)
        except duckdb.Error as err:
            body += empty(f"cache {cache} unreadable: {err}")
    else:
        body += empty("no LLM-call cache beside this database")
    return Section("llm", "LLM tokens and cache", body)


def _time(con, run_id, steps: list[Step]) -> Section:
    body = "<h3>Wall-clock</h3>" + _timeline(con, run_id)
    body += "<h3>Busy time per step</h3>"
    rows = [(s.label, round(s.stream_seconds, 3), None if s.barrier_seconds is None else round(s.barrier_seconds, 3),
             round(s.stream_seconds + (s.barrier_seconds or 0), 3), s.rows_in,
             round(s.rows_in / (s.stream_seconds + (s.barrier_seconds or 0)))
             if s.stream_seconds + (s.barrier_seconds or 0) > 0 else None) for s in steps if s.kind != "store"]
    body += barh([r[0] for r in rows], {"busy seconds": [r[3] for r in rows]}, "busy seconds (summed over workers)",
                 "busy seconds per step", "no step recorded any busy time")
    body += table(["step", "stream s (summed over workers)", "barrier s (global decision)", "total s", "rows in", "rows/s"],
                  rows, id="stage-time")
    body += note("Busy time is what each stage's workers spent on their batches, summed over workers, so it can exceed the "
                 "wall-clock time; a global stage's stream time is computing its keys, its barrier time the decision.")
    return Section("time", "Time", body)


def _timeline(con, run_id) -> str:
    run = _rows(con, "SELECT started_at, last_attempt_at, finished_at, attempts, status FROM runs WHERE run_id = ?", [run_id])
    if not run:
        return empty("no such run")
    started, last_attempt, finished, attempts, status = run[0]
    wall = _wall_seconds(con, run_id)
    events = []  # (label, end seconds since start, own seconds or None)
    for phase, end, n in _rows(con, """SELECT phase, epoch(max(committed_at)) - epoch(?::TIMESTAMP), count(*) FROM shards
                                       WHERE run_id = ? GROUP BY phase ORDER BY phase""", [started, run_id]):
        events.append((f"phase {phase}: stream ({n:,} shards committed)", end, None))
    for stage, end, secs in _rows(con, """SELECT stage, epoch(done_at) - epoch(?::TIMESTAMP), seconds FROM global_steps
                                          WHERE run_id = ?""", [started, run_id]):
        events.append((f"{stage}: global decision", end, secs))
    for name, end, secs in _rows(con, """SELECT name, epoch(created_at) - epoch(?::TIMESTAMP), seconds FROM selection_info
                                         WHERE run_id = ?""", [started, run_id]):
        events.append((f"selection {name}", end, secs))
    if wall is not None:
        events.append(("finish (export and run end)", wall, None))
    events.sort(key=lambda ev: ev[1])
    spans, rows, before = [], [], 0.0
    for label, end, secs in events:
        spans.append((label, before, end))
        rows.append((label, round(before, 2), round(end, 2), round(end - before, 2), None if secs is None else round(secs, 3)))
        before = end
    head = table(["started", "finished", "wall-clock", "attempts", "status"],
                 [(started, finished, _duration(wall) if wall is not None else f"not finished ({status})", attempts, status)],
                 id="wall-clock")
    text = ("Each line runs from the end of the line before it to its own end (last shard committed, decision or "
            "selection written), so a phase's stream includes starting Ray and loading its models; <i>of which "
            "computing</i> is the time the step itself recorded (<code>global_steps</code>, <code>selection_info</code>).")
    if attempts and attempts > 1:
        text += f" This run took {attempts} attempts (the last began {e(last_attempt)}): its times span them, gaps included."
    return (head + timeline(spans, "wall-clock timeline", "no timed step recorded for this run")
            + table(["step", "from s", "to s", "took s", "of which computing s"], rows, id="timeline") + note(text))


def _wall_seconds(con, run_id) -> float | None:
    row = con.execute("SELECT epoch(finished_at) - epoch(started_at) FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d} ({seconds:,.0f} s)" if minutes >= 60 else f"{minutes}:{s:02d} ({seconds:,.0f} s)"


# ---------------------------------------------------------------------------- page


def _rows(con, query, params):
    return con.execute(query, params).fetchall()


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { font-size: 1.05em; margin-top: 1.4em; }
h4 { font-size: .95em; margin: 1em 0 .3em; } .count { font-weight: normal; color: #666; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; } th { background: #f4f4f4; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } img { max-width: 100%; display: block; margin: .5em 0; }
table.examples { width: 100%; } table.examples td { overflow-wrap: anywhere; }
table.examples th:nth-last-child(-n+2) { width: 34%; } table.examples th:first-child { width: 11em; } table.examples code { font-size: 11px; }
pre.detail { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 11px; max-width: 480px; }
.cut, .none { color: #888; font-style: italic; } .note { color: #555; font-size: 13px; }
.empty { color: #777; font-style: italic; } nav a { margin-right: 1em; }
"""


def _page(run_id: str, db: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{e(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{e(s.title)}</h2>{s.body}</section>' for s in sections)
    meta = json.dumps({"run_id": run_id, "sections": [s.id for s in sections]})
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>curate report: {e(run_id)}</title>'
            f'<style>{CSS}</style><script type="application/json" id="report-meta">{meta}</script></head>'
            f'<body><h1>curate run {e(run_id)}</h1><p>{e(os.path.abspath(db))}</p><nav>{nav}</nav>{body}</body></html>')
