"""HTML and chart helpers of `curate report` (curate/report.py): escaped tables, example rows,
and matplotlib charts embedded as base64 PNG.

A chart with nothing to draw (no values, or every value zero) is not drawn: the helpers return a
sentence saying so instead, so the page never shows empty axes. Counts that span orders of
magnitude (the funnel, drop reasons) are drawn on a log scale with each bar's count written
beside it, so a stage that drops 73 of 3,111 rows is a visible bar, not one pixel.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime

TEXT_CHARS = 220  # example rows: instruction and response cut to this many characters


def e(value) -> str:
    """A value as escaped HTML text: integers with thousands separators, floats to 4 digits."""
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, datetime):
        value = value.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, float):
        value = "" if math.isnan(value) else f"{value:,.4g}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return html.escape("" if value is None else str(value))


def table(header, rows, cls: str = "", id: str = "", raw: tuple[int, ...] = ()) -> str:
    """A table; columns whose index is in `raw` hold HTML already escaped by the caller."""
    if not rows:
        return empty("nothing recorded")
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{id}"' if id else "")
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v, i in raw) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value, raw: bool) -> str:
    """A cell: numbers right-aligned (class n), text left."""
    if raw:
        return f"<td>{value}</td>"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="n">{e(value)}</td>' if number else f"<td>{e(value)}</td>"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def empty(text: str) -> str:
    return f'<p class="empty">{e(text)}</p>'


def note(text_html: str) -> str:
    return f'<p class="note">{text_html}</p>'


def clip(text: str | None, chars: int = TEXT_CHARS) -> str:
    """Escaped text cut to `chars` characters (… and the full length when cut); whitespace runs
    folded, so an example stays a few lines."""
    if text is None:
        return '<span class="none">none</span>'
    flat = " ".join(str(text).split())
    if len(flat) <= chars:
        return html.escape(flat)
    return f'{html.escape(flat[:chars].rstrip())}<span class="cut">… ({len(flat):,} chars)</span>'


def turns(messages) -> tuple[str | None, str | None]:
    """(first user turn, last assistant turn) of a stored conversation."""
    if not messages:
        return None, None
    user = next((m["content"] for m in messages if m["role"] == "user"), None)
    answer = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), None)
    return user, answer


def example_table(rows, extra: tuple[str, ...] = ()) -> str:
    """Example rows: (id, *extra values, messages) → id, the extra columns, instruction, response,
    both cut (clip)."""
    out = []
    for r in rows:
        instruction, response = turns(r[-1])
        out.append((f"<code>{e(r[0])}</code>", *(e(v) for v in r[1:-1]), clip(instruction), clip(response)))
    n = 1 + len(extra)
    return table(["id", *extra, "instruction", "response"], out, cls="examples", raw=tuple(range(n + 2)))


# ---------------------------------------------------------------------------- charts


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, alt: str) -> str:
    plt = _figure()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f'<img class="chart" alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _nothing(values) -> bool:
    return not any(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)))


def bars(labels, series: dict[str, list], ylabel: str, title: str, nothing: str, xlabel: str = "") -> str:
    """Grouped vertical bars, one group per label; `nothing` is said instead of a chart when every
    value is zero or missing."""
    if not labels or _nothing([v for vs in series.values() for v in vs]):
        return empty(nothing)
    plt = _figure()
    fig, ax = plt.subplots(figsize=(min(12, max(6, 0.35 * len(labels) * len(series) + 2)), 3.2))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))], [v or 0 for v in values],
               width=width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig, title)


def barh(labels, series: dict[str, list], xlabel: str, title: str, nothing: str, log: bool | str = False) -> str:
    """Horizontal bars, one row per label (several series side by side), each bar's value written
    at its end. With `log`, a log x axis: zero values get no bar, only their written 0; "auto":
    log when the largest positive value is over 20 times the smallest."""
    values = [v for vs in series.values() for v in vs]
    if not labels or _nothing(values):
        return empty(nothing)
    if log == "auto":
        positive = [v for v in values if v and v > 0]
        log = max(positive) > 20 * min(positive)
    plt = _figure()
    n = len(series)
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(labels) * max(1, n) + 1.2))
    height = 0.8 / n
    top = max(v or 0 for v in values)
    for k, (name, vals) in enumerate(series.items()):
        ys = [i + (k - (n - 1) / 2) * height for i in range(len(labels))]
        drawn = [(v if v else math.nan) if log else (v or 0) for v in vals]
        ax.barh(ys, drawn, height=height, label=name)
        for y, v in zip(ys, vals):
            at = (v * 1.08 if v else 1.0) if log else (v or 0) + top * 0.01
            ax.text(at, y, f"{v:,.0f}" if isinstance(v, int) or float(v or 0).is_integer() else f"{v:,.3g}",
                    va="center", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
        ax.set_xlim(0.8, top * 3)
        xlabel += " (log scale)"
    else:
        ax.set_xlim(0, top * 1.12)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    if n > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig, title)


def hist(values, title: str, xlabel: str, nothing: str) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return empty(nothing)
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.hist(values, bins=min(40, max(5, len(values) // 5)))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("rows", fontsize=8)
    return _png(fig, title)


def timeline(spans: list[tuple[str, float, float]], title: str, nothing: str) -> str:
    """(label, start s, end s) spans as a Gantt chart in seconds since the run started."""
    spans = [s for s in spans if s[2] is not None and s[1] is not None]
    if not spans or max(s[2] for s in spans) <= 0:
        return empty(nothing)
    plt = _figure()
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(spans) + 1.2))
    end = max(s[2] for s in spans)
    for i, (_, start, stop) in enumerate(spans):
        took = stop - start
        ax.barh(i, max(took, end * 0.003), left=start, height=0.6, color="C0")
        ax.text(stop + end * 0.01, i, f"{took:,.1f} s" if took >= 1 else f"{took:.2f} s", va="center", fontsize=7)
    ax.set_yticks(range(len(spans)), [s[0] for s in spans], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.15)
    ax.set_xlabel("seconds since the run started")
    ax.set_title(title, fontsize=9)
    return _png(fig, title)
