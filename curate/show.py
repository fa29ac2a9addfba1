"""`curate show`: a run's rows as text, without SQL: filtered by the stage that dropped them, the
kind of reason, a selection and its clusters, origin, or one id (with its lineage).

`show(...)` returns the text the command prints; it reads the database read-only.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from dataclasses import dataclass

from curate.errors import CurateError
from curate.storage import schema as S
from curate.storage.store import Store, drops_relation, has_tool_fields, resolve_run_id

INDENT = "    "


@dataclass
class _Row:
    id: str
    origin: str | None
    source: str | None
    row: int | None
    kept: bool
    messages: list[dict]
    parent_ids: list[str] | None
    meta: str | None
    tool_fields: str | None  # samples.tool_fields: the turns' OpenAI tool calls, call ids and names
    drop: tuple | None  # (stage, reason, kind, value, source, row) of the drop this line lists, or None
    rank: int | None = None
    cluster: int | None = None


def show(db: str, *, run_id: str | None = None, stage: str | None = None, kind: str | None = None,
         cluster: int | None = None, selection: str | None = None, origin: str | None = None,
         id: str | None = None, limit: int = 10, width: int | None = None, max_chars: int = 600) -> str:
    """The rows of a run (default: the one the `curated` view shows: the latest finished run, else
    the latest) that match every filter given, as wrapped text, at most `limit` of them:

    - `stage`: rows that stage dropped (one line per drop; `store` lists repeats of kept rows);
    - `kind`: drops of that kind (`drops.kind`: `repeated_ngram_ratio`, `duplicate`, `language`,
      ...); a kind with a `:` matches the start of the reason (`code_exec:timeout`);
    - `selection`: the rows of that selection, best rank first; `cluster`: those drawn from that
      cluster (the run's one clustered selection, or `selection`'s);
    - `origin`: rows of that origin (`seed`, `response`, `selfinstruct`, ...);
    - `id`: one sample (a unique prefix will do), in full: its turns, meta, drops, scores,
      verdicts and selections, and its lineage: its ancestors through `samples.parent_ids`, up to
      the rows read from the input, and the rows made from it.

    Each turn is wrapped to `width` columns (default: the terminal's) and, in a list, cut after
    `max_chars` characters (0: whole). Raises CurateError for a missing database or run, and for
    a filter that matches nothing the run has, naming the values it has (the stages that dropped
    rows, the kinds, selections, clusters, origins)."""
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    with Store(db, read_only=True) as store:
        con = store.con
        run_id, run_line = _resolve_run(con, db, run_id)
        if id is not None:
            return run_line + "\n\n" + _one(con, run_id, id, width)
        query, params, what = _query(con, run_id, stage, kind, cluster, selection, origin)
        total = con.execute(f"SELECT count(*) FROM ({query})", params).fetchone()[0]
        rows = [_Row(*r) for r in con.execute(f"{query} LIMIT {int(max(0, limit))}", params).fetchall()]
        shown = f"; showing the first {len(rows)} (--limit N for more)" if len(rows) < total else ""
        out = [f"{run_line}\n{total} row{'' if total == 1 else 's'} {what}{shown}"]
        drops_of = _drops_of(con, run_id, [r.id for r in rows if r.drop is None and not r.kept])
        for n, r in enumerate(rows, 1):
            out.append(_render(r, n, total, width, max_chars, drops_of.get(r.id, [])))
        return "\n\n".join(out)


# ---------------------------------------------------------------------------- the run


def _resolve_run(con, db: str, run_id: str | None) -> tuple[str, str]:
    if run_id is None:
        row = con.execute("SELECT run_id FROM runs ORDER BY status = 'finished' DESC, last_attempt_at DESC LIMIT 1").fetchone()
        if row is None:
            raise CurateError(f"{db} holds no run yet: `curate run` first")
        run_id = row[0]
    run_id = resolve_run_id(con, db, run_id)
    info = con.execute("SELECT name, status FROM runs WHERE run_id = ?", [run_id]).fetchone()
    n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    others = f"; {n_runs - 1} other run{'s' if n_runs > 2 else ''} in {db}: --run ID" if n_runs > 1 else ""
    return run_id, f"run {run_id} ({info[0] or 'unnamed'}, {info[1]}{others})"


# ---------------------------------------------------------------------------- a list of rows

SAMPLE_COLS = 's.id, s.origin, s.source, s."row", s.kept, s.messages, s.parent_ids, s.meta, s.tool_fields'


def _sample_cols(con) -> str:
    """SAMPLE_COLS; a database made before tool fields (opened read-only: not migrated) gives NULL."""
    return SAMPLE_COLS if has_tool_fields(con) else SAMPLE_COLS.replace("s.tool_fields", "NULL")


def _query(con, run_id, stage, kind, cluster, selection, origin) -> tuple[str, list, str]:
    drops = drops_relation(con)
    params: list = []
    joins, where, what = [], ["s.run_id = ?"], []
    by_drop = stage is not None or kind is not None
    if by_drop:
        drop_cols = '(d.stage, d.reason, d.kind, d.value, d.source, d."row")'
        joins.append(f"JOIN {drops} d ON d.run_id = s.run_id AND d.id = s.id")
        if stage is not None:
            _known(con, f"SELECT stage, count(*) FROM {drops} WHERE run_id = ? GROUP BY 1 ORDER BY 2 DESC", [run_id],
                   stage, "no rows dropped at stage", "stages that dropped rows", run_id,
                   extra=_quarantine_hint(con, run_id, stage))
            where.append("d.stage = ?")
            what.append(f"dropped at {stage}")
        if kind is not None:
            if ":" in kind:
                where.append("starts_with(d.reason, ?)")
                what.append(f"with reasons starting {kind!r}")
            else:
                _known(con, f"SELECT kind, count(*) FROM {drops} WHERE run_id = ?"
                            + (" AND stage = ?" if stage is not None else "") + " GROUP BY 1 ORDER BY 2 DESC",
                       [run_id] + ([stage] if stage is not None else []), kind, "no drops of kind",
                       "kinds" + (f" at {stage}" if stage is not None else ""), run_id)
                where.append("d.kind = ?")
                what.append(f"of kind {kind}")
    else:
        drop_cols = "NULL"
        what.append("")
    if cluster is not None and selection is None:
        clustered = [r[0] for r in con.execute(
            "SELECT DISTINCT name FROM selections WHERE run_id = ? AND cluster IS NOT NULL ORDER BY 1", [run_id]).fetchall()]
        if not clustered:
            raise CurateError(f"run {run_id} has no clustered selection (a diversity selector such as "
                              "kmeans_diversity stores clusters)")
        if len(clustered) > 1:
            raise CurateError(f"--cluster: run {run_id} has {len(clustered)} clustered selections ({', '.join(clustered)}): "
                              "pass --selection NAME too")
        selection = clustered[0]
    sel_cols = "NULL, NULL"
    if selection is not None:
        _known(con, "SELECT name, count(*) FROM selections WHERE run_id = ? GROUP BY 1 ORDER BY 1", [run_id],
               selection, "no selection named", "selections", run_id)
        joins.append("JOIN selections sel ON sel.run_id = s.run_id AND sel.id = s.id AND sel.name = ?")
        sel_cols = "sel.rank, sel.cluster"
        what.append(f"in selection {selection}")
        if cluster is not None:
            _known(con, "SELECT cluster, count(*) FROM selections WHERE run_id = ? AND name = ? AND cluster IS NOT NULL "
                        "GROUP BY 1 ORDER BY 1", [run_id, selection], cluster, f"no rows of selection {selection} from cluster",
                   "clusters", run_id)
            where.append("sel.cluster = ?")
            what.append(f"from cluster {cluster}")
    if origin is not None:
        _known(con, "SELECT origin, count(*) FROM samples WHERE run_id = ? GROUP BY 1 ORDER BY 2 DESC", [run_id],
               origin, "no rows of origin", "origins", run_id)
        where.append("s.origin = ?")
        what.append(f"of origin {origin}")
    # Parameters in the order their placeholders appear: the joins' (the selection's name), then WHERE.
    if selection is not None:
        params.append(selection)
    params.append(run_id)
    if stage is not None:
        params.append(stage)
    if kind is not None:
        params.append(kind)
    if cluster is not None:
        params.append(cluster)
    if origin is not None:
        params.append(origin)
    order = ("sel.rank" if selection is not None else
             'd.stage, d.source, d."row", s.id' if by_drop else 's.shard, s."row", s.id')
    query = (f"SELECT {_sample_cols(con)}, {drop_cols}, {sel_cols} FROM samples s {' '.join(joins)} "
             f"WHERE {' AND '.join(where)} ORDER BY {order}")
    desc = " ".join(w for w in what if w) or "(kept, dropped and expanded)"
    return query, params, desc


def _known(con, sql: str, params: list, value, missing: str, listing: str, run_id: str, extra: str = "") -> None:
    """Raise when `value` is not among the first column of `sql`'s rows, listing them with counts."""
    have = con.execute(sql, params).fetchall()
    if any(str(v) == str(value) for v, _ in have):
        return
    listed = ", ".join(f"{v} ({n})" for v, n in have[:30]) or "none"
    raise CurateError(f"{missing} {value!r} in run {run_id}; {listing}: {listed}{extra}")


def _quarantine_hint(con, run_id: str, stage: str) -> str:
    n = con.execute("SELECT count(*) FROM quarantine WHERE run_id = ? AND stage = ?", [run_id, stage]).fetchone()[0]
    return (f". {stage} quarantined {n} unreadable row{'s' if n > 1 else ''}: `curate export --drops` writes them "
            "with their raw text") if n else ""


def _drops_of(con, run_id: str, ids: list[str]) -> dict[str, list[tuple]]:
    if not ids:
        return {}
    out: dict[str, list[tuple]] = {}
    for id_, *drop in con.execute(
            f'SELECT id, stage, reason, kind, value, source, "row" FROM {drops_relation(con)} WHERE run_id = ? '
            'AND list_contains(?, id) ORDER BY stage, "row"', [run_id, ids]).fetchall():
        out.setdefault(id_, []).append(tuple(drop))  # (stage, reason, kind, value, source, row)
    return out


def _render(r: _Row, n: int, total: int, width: int, max_chars: int, drops: list[tuple]) -> str:
    # A drop is numbered as its own occurrence (its source and row): a row stored once and read
    # twice has one `samples` row, whose number is the first (kept) copy's.
    source, row = (r.drop[4], r.drop[5]) if r.drop is not None else (r.source, r.row)
    head = f"── {n}/{total} · {r.id} · {r.origin} · {source}" + (f" row {row}" if row is not None else "")
    lines = [head, INDENT + _status(r, drops)]
    if r.rank is not None:
        lines.append(INDENT + f"rank {r.rank}" + (f", cluster {r.cluster}" if r.cluster is not None else ""))
    lines += _turns(S.with_tool_fields(r.messages, r.tool_fields), width, max_chars)
    return "\n".join(lines)


def _status(r: _Row, drops: list[tuple]) -> str:
    if r.drop is not None:
        stage, reason, kind, value, source, row = r.drop
        shown = f"dropped at {stage}: {reason}  [kind {kind}" + (f", value {value:g}" if value is not None else "") + "]"
        if not r.kept:
            return shown
        if r.row is not None and (source, row) != (r.source, r.row):
            return shown + f" (a repeat of the kept row: {r.source} row {r.row})"
        return shown + " (another copy of this row is kept)"
    if r.kept:
        return "kept"
    if drops:
        return "; ".join(f"dropped at {st}: {reason}" for st, reason, *_ in drops)
    return "expanded (a generator replaced it by new rows)"


def _turns(messages, width: int, max_chars: int) -> list[str]:
    """Each turn: its role (with a tool turn's `tool_call_id` and `name`), its text, and one
    `→ name(arguments)` line per tool call it makes."""
    lines = []
    for m in messages or []:
        text = m["content"] or ""
        if max_chars and len(text) > max_chars:
            text = text[:max_chars].rstrip() + f" … [{len(m['content']) - max_chars} more characters]"
        tags = ", ".join(f"{k} {m[k]}" for k in ("tool_call_id", "name") if m.get(k) is not None)
        lines.append(f"{INDENT}{m['role']}" + (f" ({tags})" if tags else "") + ":")
        calls = _calls(m)
        if text or not calls:
            lines += _wrap(text, width, INDENT * 2)
        for call in calls:
            if max_chars and len(call) > max_chars:
                call = call[:max_chars].rstrip() + f" … [{len(call) - max_chars} more characters]"
            lines += _wrap("→ " + call, width, INDENT * 2)
    return lines


def _calls(turn: dict) -> list[str]:
    """A turn's tool calls as text, `name(arguments)`, each with its call id."""
    calls = list(turn.get("tool_calls") or [])
    if turn.get("function_call") is not None:
        calls.append(turn["function_call"])
    out = []
    for c in calls:
        text = S.tool_text({"tool_calls": [c]})
        call_id = c.get("id") if isinstance(c, dict) else None
        out.append(text + (f"  [id {call_id}]" if isinstance(call_id, str) and call_id else ""))
    return out


def _wrap(text: str, width: int, indent: str) -> list[str]:
    out = []
    for para in text.splitlines() or [""]:
        out += textwrap.wrap(para, width=max(20, width), initial_indent=indent, subsequent_indent=indent,
                             replace_whitespace=False, drop_whitespace=True, break_long_words=True) or [indent.rstrip()]
    return out


# ---------------------------------------------------------------------------- one row


def _one(con, run_id: str, prefix: str, width: int) -> str:
    matches = [r[0] for r in con.execute(
        "SELECT id FROM samples WHERE run_id = ? AND starts_with(id, ?) ORDER BY id LIMIT 6", [run_id, prefix]).fetchall()]
    if not matches:
        elsewhere = con.execute("SELECT DISTINCT run_id FROM samples WHERE starts_with(id, ?) LIMIT 3", [prefix]).fetchall()
        hint = f" (it is in run {', '.join(r[0] for r in elsewhere)}: --run ID)" if elsewhere else ""
        raise CurateError(f"no sample with id {prefix!r} in run {run_id}{hint}")
    if len(matches) > 1:
        raise CurateError(f"id {prefix!r} starts {'more than 5' if len(matches) > 5 else len(matches)} samples' ids "
                          f"({', '.join(matches[:5])}): give more of it")
    id_ = matches[0]
    r = _Row(*con.execute(f"SELECT {_sample_cols(con)}, NULL, NULL, NULL FROM samples s WHERE s.run_id = ? AND s.id = ?",
                          [run_id, id_]).fetchone())
    drops = _drops_of(con, run_id, [id_]).get(id_, [])
    lines = [f"── {r.id} · {r.origin} · {r.source}" + (f" row {r.row}" if r.row is not None else ""),
             INDENT + ("kept" if r.kept else _status(r, [d for d in drops if d[0] != "store"]))]
    repeats = [d for d in drops if d[0] == "store"]
    if repeats:
        where = ", ".join(f"{d[4]} row {d[5]}" for d in repeats if d[5] is not None)
        lines.append(INDENT + f"{len(repeats)} repeat{'s' if len(repeats) > 1 else ''} of it dropped at store"
                     + (f" ({where})" if where else ""))
    lines += _turns(S.with_tool_fields(r.messages, r.tool_fields), width, 0)
    if r.meta and r.meta not in ("{}", "null"):
        try:
            meta = json.dumps(json.loads(r.meta), ensure_ascii=False, sort_keys=True)
        except ValueError:
            meta = r.meta
        lines.append(INDENT + "meta:")
        lines += _wrap(meta, width, INDENT * 2)
    scores = con.execute("SELECT name, value FROM scores WHERE run_id = ? AND id = ? ORDER BY name", [run_id, id_]).fetchall()
    if scores:
        lines.append(INDENT + "scores: " + ", ".join(f"{n} {v:.4g}" if v is not None else f"{n} null" for n, v in scores))
    for verifier, passed, strength, detail in con.execute(
            "SELECT verifier, passed, strength, detail FROM verdicts WHERE run_id = ? AND id = ? ORDER BY verifier",
            [run_id, id_]).fetchall():
        lines += _wrap(f"verdict {verifier}: {'passed' if passed else 'failed' if passed is False else 'no verdict'} ({strength}) {detail or ''}".rstrip(),
                       width, INDENT)
    for name, rank, cluster in con.execute(
            "SELECT name, rank, cluster FROM selections WHERE run_id = ? AND id = ? ORDER BY name", [run_id, id_]).fetchall():
        lines.append(INDENT + f"selection {name}: rank {rank}" + (f", cluster {cluster}" if cluster is not None else ""))
    lines.append("")
    lines += _lineage(con, run_id, r, width)
    return "\n".join(lines)


def _lineage(con, run_id: str, r: _Row, width: int) -> list[str]:
    lines = ["lineage (samples.parent_ids):"]
    if not r.parent_ids:
        lines.append(INDENT + "parents: none (read from the input)")
    else:
        lines.append(INDENT + "parents:")
        lines += _ancestors(con, run_id, list(r.parent_ids), 2, width, set())
    children = con.execute(
        "SELECT id, origin, kept, messages FROM samples WHERE run_id = ? AND list_contains(parent_ids, ?) ORDER BY shard, \"row\", id",
        [run_id, r.id]).fetchall()
    if not children:
        lines.append(INDENT + "children: none")
    else:
        lines.append(INDENT + f"children ({len(children)}):")
        for cid, corigin, ckept, cmsgs in children:
            lines.append(_brief(cid, corigin, ckept, cmsgs, INDENT * 2, width))
    return lines


def _ancestors(con, run_id: str, ids: list[str], depth: int, width: int, seen: set) -> list[str]:
    lines = []
    for pid in ids:
        indent = INDENT * depth
        if pid in seen or depth > 20:
            lines.append(f"{indent}{pid} (above)")
            continue
        seen.add(pid)
        row = con.execute("SELECT origin, kept, messages, parent_ids FROM samples WHERE run_id = ? AND id = ?",
                          [run_id, pid]).fetchone()
        if row is None:
            lines.append(f"{indent}{pid} (not stored in this run)")
            continue
        origin, kept, msgs, parents = row
        lines.append(_brief(pid, origin, kept, msgs, indent, width))
        if parents:
            lines += _ancestors(con, run_id, list(parents), depth + 1, width, seen)
    return lines


def _brief(id_: str, origin, kept, messages, indent: str, width: int) -> str:
    first = next((m["content"] for m in messages or [] if m["role"] == "user"), "") or ""
    head = f"{indent}{id_} · {origin} · {'kept' if kept else 'not kept'} · "
    room = max(10, width - len(head))
    first = " ".join(first.split())
    return head + (first if len(first) <= room else first[:room - 1] + "…")
