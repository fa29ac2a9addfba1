"""Progress display: per stage, rows in, generated, kept, dropped, quarantined and rows/s; per
vLLM engine, requests done and queued, tokens/s and an ETA for the queued requests.

Counts move as rows reach the driver, not only when shards commit: each output batch of the
stream is counted on arrival (`batch_arrived`; replaced by the exact counts once its shard
commits), and a thread polls the run's engine actors every few seconds (`engines`, a callable
the runner passes), so a long LLM stage shows its requests and tokens while it runs. In
`lines` mode that thread prints a line every `CURATE_PROGRESS_INTERVAL` seconds (10) while the
phase runs, besides a line per committed shard."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

STAGE_FIELDS = 6  # in, generated, kept, dropped, quarantined, expanded


def _interval() -> float:
    try:
        return max(0.2, float(os.environ.get("CURATE_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """mode: `table` (a live table, for terminals), `lines` (a line per committed shard and one
    every few seconds while the phase runs), `auto` (table on a terminal, else lines at most
    every 2 s at commits and every few seconds meanwhile) or `off`."""

    def __init__(self, steps: list, total_shards: int, skipped_shards: int, mode: str = "auto", phase: int | None = None,
                 engines: Callable[[], list[tuple[str, dict | None]]] | None = None, interval: float | None = None):
        """`steps`: the funnel steps of the phase shown (pipeline/phases.py `Step`s, or their
        names); `phase`: its number, shown when the run has more than one; `engines`: returns
        (label, EngineHost.live() answer or None) per engine of the run, polled from a thread."""
        self.steps = [(getattr(s, "name", s), getattr(s, "kind", "stream")) for s in steps]
        self.stages = [name for name, _ in self.steps]
        self.label = "" if phase is None else f" (phase {phase})"
        self.total = total_shards
        self.done = skipped_shards
        self.skipped = skipped_shards
        # committed counts per stage: in, generated, kept, dropped, quarantined, expanded; busy s
        self.rows = {s: [0] * STAGE_FIELDS + [0.0] for s in self.stages}
        self.flying: dict[str, dict[str, list[int]]] = {}  # shard → stage → counts of rows arrived, not committed
        self.engine_rows: list[tuple[str, dict | None]] = []
        self.history: dict[str, deque] = {}  # engine label → (time, finished, tokens) samples
        self.engines = engines
        self.start = time.monotonic()
        self.lock = threading.RLock()
        self.console = Console(stderr=True)
        if mode == "auto":
            mode = "table" if self.console.is_terminal else "throttled"
        self.mode = mode
        self.interval = interval if interval is not None else (_interval() if mode != "table" else 2.0)
        self.live = None
        self.last_line = time.monotonic()
        self.closed = False
        self.stop = threading.Event()
        self.ticker = None
        if mode == "table":
            self.live = Live(self.table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()
        if mode != "off":
            self.ticker = threading.Thread(target=self._tick, name="curate-progress", daemon=True)
            self.ticker.start()

    # ------------------------------------------------------------------ counts

    def batch_arrived(self, batch) -> None:
        """Count an output batch of the stream as it reaches the driver (before its shard
        commits): per stage, rows in, generated, kept, dropped, quarantined, expanded."""
        if self.mode == "off" or batch.num_rows == 0:
            return
        try:
            counts = _batch_counts(batch, self.steps)
        except Exception:  # counting is for display only; the commit counts exactly
            return
        with self.lock:
            for shard, stages in counts.items():
                acc = self.flying.setdefault(shard, {})
                for stage, values in stages.items():
                    prev = acc.setdefault(stage, [0] * STAGE_FIELDS)
                    for i, v in enumerate(values):
                        prev[i] += v

    def shard_committed(self, shard: str, stats: list[tuple]) -> None:
        with self.lock:
            self.done += 1
            self.flying.pop(shard, None)
            for _, _, _, stage, rows_in, kept, dropped, quarantined, expanded, generated, seconds in stats:
                acc = self.rows.setdefault(stage, [0] * STAGE_FIELDS + [0.0])
                for i, v in enumerate((rows_in, generated, kept, dropped, quarantined, expanded)):
                    acc[i] += v
                acc[STAGE_FIELDS] += seconds
        if self.live:
            self.live.update(self.table())
        elif self.mode == "lines":
            self._print(f"committed shard {shard}{self.label} | {self.line()}")
        elif self.mode == "throttled":
            now = time.monotonic()
            if now - self.last_line >= 2.0 or self.done == self.total:
                self._print(self.line())

    def counts(self, stage: str) -> list[int]:
        """in, generated, kept, dropped, quarantined, expanded: committed plus arrived."""
        with self.lock:
            out = list(self.rows.get(stage, [0] * STAGE_FIELDS)[:STAGE_FIELDS])
            for stages in self.flying.values():
                for i, v in enumerate(stages.get(stage, ())):
                    out[i] += v
        return out

    def global_step(self, name: str, dropped: int, seconds: float) -> None:
        if self.mode != "off":
            self._print(f"global step {name}: dropped {dropped:,} rows ({seconds:,.1f} s)")

    # ------------------------------------------------------------------ engines

    def poll(self) -> None:
        """Ask the engines for their progress (a cheap actor call each)."""
        if self.engines is None:
            return
        try:
            rows = list(self.engines())
        except Exception:
            return
        now = time.monotonic()
        with self.lock:
            for label, live in rows:
                if live and live.get("state") == "running":
                    h = self.history.setdefault(label, deque(maxlen=64))
                    h.append((now, live.get("finished", 0), live.get("tokens", 0)))
            self.engine_rows = rows

    def engine_text(self, label: str, live: dict | None) -> str:
        name = f"LLM ({label})" if label else "LLM"
        if not live:
            return f"{name}: no answer"
        if live.get("state") == "idle":
            return f"{name}: not started"
        if live.get("state") == "loading":
            since = live.get("loading_since")
            took = f" ({duration(time.time() - since)})" if since else ""
            return f"{name}: loading the model{took}"
        done, running, waiting = live.get("finished", 0), live.get("running", 0), live.get("waiting", 0)
        queued = running + waiting
        text = f"{name}: requests {done:,} done, {queued:,} queued ({running:,} running), {live.get('tokens', 0):,} tokens"
        req_rate, tok_rate = self._rates(label)
        if tok_rate is not None:
            text += f", {tok_rate:,.0f} tokens/s"
        if queued and req_rate:
            text += f", ETA {duration(queued / req_rate)}"
        elif queued and req_rate is not None:
            text += ", ETA ?"
        return text

    def _rates(self, label: str) -> tuple[float | None, float | None]:
        """Requests/s and tokens/s over the last minute of samples (None before two samples)."""
        h = self.history.get(label)
        if not h or len(h) < 2:
            return None, None
        t1, f1, k1 = h[-1]
        old = [s for s in h if t1 - s[0] <= 60.0] or [h[0]]
        t0, f0, k0 = old[0] if old[0] is not h[-1] else h[-2]
        span = t1 - t0
        if span <= 0:
            return None, None
        return (f1 - f0) / span, (k1 - k0) / span

    # ------------------------------------------------------------------ output

    def _tick(self) -> None:
        while not self.stop.wait(min(self.interval, 2.0)):
            self.poll()
            if self.stop.is_set():
                return
            if self.live:
                self.live.update(self.table())
            elif time.monotonic() - self.last_line >= self.interval:
                self._print(self.line())

    def _print(self, text: str) -> None:
        with self.lock:
            self.last_line = time.monotonic()
            self.last_body = text.split("] ", 1)[-1]  # without the clock
            print(text, file=sys.stderr, flush=True)

    def _eta(self, elapsed: float) -> str:
        done = self.done - self.skipped
        left = self.total - self.done
        if done <= 0 or left <= 0:
            return ""
        return f", ETA {duration(elapsed / done * left)}"

    def stage_text(self, stage: str, elapsed: float) -> str:
        rin, gen, kept, dropped, quar, exp = self.counts(stage)
        if not (rin or gen):
            return f"{stage}: 0 in"
        new = f" + {gen:,} generated" if gen else ""
        text = f"{stage}: {rin:,} in{new} → {kept:,} kept, {dropped:,} dropped"
        if quar:
            text += f", {quar:,} quarantined"
        if exp:
            text += f", {exp:,} expanded"
        return text + f", {rin / elapsed:,.0f} rows/s"

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.start)
        with self.lock:
            parts = [f"[{duration(elapsed)}] shards {self.done}/{self.total}{self.label}{self._eta(elapsed)}"]
            # The engines first: on a long config the line is long, and they are what moves.
            parts += [self.engine_text(label, live) for label, live in self.engine_rows]
            stages = [s for s, kind in self.steps if kind != "store"]
            # Global stages (dedup) report at the barrier, after the stream: not "waiting" then.
            waiting = [s for s in stages if not any(self.counts(s)) and self.done < self.total]
            parts += [self.stage_text(s, elapsed) for s in stages if s not in waiting]
            if waiting:  # no row has reached them yet: one word each, not "0 in" each
                parts.append(f"waiting: {', '.join(waiting)}")
        return " | ".join(parts)

    def table(self) -> Table:
        elapsed = max(1e-9, time.monotonic() - self.start)
        t = Table(title=f"curate{self.label}: shards {self.done}/{self.total}{self._eta(elapsed)}, {duration(elapsed)}",
                  title_justify="left")
        for col in ("stage", "rows in", "generated", "kept", "dropped", "quarantined", "rows/s", "busy s"):
            t.add_column(col, justify="left" if col == "stage" else "right")
        with self.lock:
            for s in self.stages:
                rin, gen, kept, dropped, quar, _exp = self.counts(s)
                busy = self.rows.get(s, [0.0] * (STAGE_FIELDS + 1))[STAGE_FIELDS]
                t.add_row(s, f"{rin:,}", f"{gen:,}", f"{kept:,}", f"{dropped:,}", f"{quar:,}", f"{rin / elapsed:,.0f}", f"{busy:,.2f}")
            if self.engine_rows:
                t.caption = "\n".join(self.engine_text(label, live) for label, live in self.engine_rows)
                t.caption_justify = "left"
        return t

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        if self.ticker is not None:
            self.ticker.join(timeout=10)
        if self.mode != "off":
            self.poll()  # the engines' final counts
        if self.live:
            self.live.update(self.table())
            self.live.stop()
            if not self.console.is_terminal:  # rich ends a non-terminal's last render without one
                self.console.file.write("\n")
        elif self.mode != "off":
            final = self.line()
            if final.split("] ", 1)[-1] != getattr(self, "last_body", None):  # not the last line again
                self._print(final)


def _batch_counts(batch, steps: list[tuple[str, str]]) -> dict[str, dict[str, list[int]]]:
    """Per shard and stream stage, the counts a commit would record for these rows (storage
    Store._stage_stats, less the `store` step's duplicates): rows read (those no stage
    generated) go in at the first stage; each stage's output is its input less what it
    dropped, quarantined or expanded, plus the rows it generated."""
    from curate.storage import schema as S

    names = set(batch.column_names)
    shards = batch[S.SHARD].to_pylist()
    status = batch[S.STATUS].to_pylist() if S.STATUS in names else [S.KEPT] * batch.num_rows
    stage = batch[S.STAGE].to_pylist() if S.STAGE in names else [None] * batch.num_rows
    born = batch[S.BORN].to_pylist() if S.BORN in names else [None] * batch.num_rows
    per_shard: dict[str, list] = {}  # shard → [rows read, {stage: [dropped, quarantined, expanded]}, {stage: generated}]
    for sh, st, sg, b in zip(shards, status, stage, born):
        entry = per_shard.setdefault(sh, [0, {}, {}])
        _, gone, made = entry
        if b is None:
            entry[0] += 1
        else:
            made[b] = made.get(b, 0) + 1
        if st != S.KEPT and sg is not None:
            g = gone.setdefault(sg, [0, 0, 0])
            g[{S.DROPPED: 0, S.QUARANTINED: 1, S.EXPANDED: 2}.get(st, 0)] += 1
    out: dict[str, dict[str, list[int]]] = {}
    for sh, (read, gone, made) in per_shard.items():
        alive, counts = read, {}
        for name, kind in steps:
            if kind != "stream":
                continue
            d, q, e = gone.get(name, (0, 0, 0))
            g = made.get(name, 0)
            kept = alive - d - q - e + g
            counts[name] = [alive, g, kept, d, q, e]
            alive = kept
        out[sh] = counts
    return out
