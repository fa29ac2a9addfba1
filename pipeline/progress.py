"""Progress display: rows and rows/s per stage, updated as shards commit."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table


class Progress:
    """mode: `table` (a live table, for terminals), `lines` (a line per committed shard),
    `auto` (table on a terminal, else a line every few seconds) or `off`."""

    def __init__(self, steps: list[str], total_shards: int, skipped_shards: int, mode: str = "auto", phase: int | None = None):
        """`steps`: the funnel step names of the phase shown (pipeline/phases.py); `phase`: its
        number, shown when the run has more than one."""
        self.stages = list(steps)
        self.label = "" if phase is None else f" (phase {phase})"
        self.total = total_shards
        self.done = skipped_shards
        self.rows = {s: [0, 0, 0, 0, 0.0] for s in self.stages}  # in, kept, dropped, quarantined, busy s
        self.start = time.monotonic()
        self.console = Console(stderr=True)
        if mode == "auto":
            mode = "table" if self.console.is_terminal else "throttled"
        self.mode = mode
        self.live = None
        self.last_line = 0.0
        self.closed = False
        if mode == "table":
            self.live = Live(self.table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def shard_committed(self, shard: str, stats: list[tuple]) -> None:
        self.done += 1
        for _, _, _, stage, rows_in, kept, dropped, quarantined, _expanded, _generated, seconds in stats:
            acc = self.rows.setdefault(stage, [0, 0, 0, 0, 0.0])
            acc[0] += rows_in
            acc[1] += kept
            acc[2] += dropped
            acc[3] += quarantined
            acc[4] += seconds
        if self.live:
            self.live.update(self.table())
        elif self.mode == "lines":
            print(f"committed shard {shard}{self.label} | {self.line()}", file=sys.stderr, flush=True)
        elif self.mode == "throttled":
            now = time.monotonic()
            if now - self.last_line >= 2.0 or self.done == self.total:
                self.last_line = now
                print(self.line(), file=sys.stderr, flush=True)

    def global_step(self, name: str, dropped: int, seconds: float) -> None:
        if self.mode != "off":
            print(f"global step {name}: dropped {dropped:,} rows ({seconds:,.1f} s)", file=sys.stderr, flush=True)

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.start)
        parts = [f"shards {self.done}/{self.total}{self.label}"]
        for s in self.stages:
            rin = self.rows[s][0]
            parts.append(f"{s}: {rin} in, {self.rows[s][1]} kept, {rin / elapsed:,.0f} rows/s")
        return " | ".join(parts)

    def table(self) -> Table:
        elapsed = max(1e-9, time.monotonic() - self.start)
        t = Table(title=f"curate{self.label}: shards {self.done}/{self.total}, {elapsed:,.1f} s", title_justify="left")
        for col in ("stage", "rows in", "kept", "dropped", "quarantined", "rows/s", "busy s"):
            t.add_column(col, justify="left" if col == "stage" else "right")
        for s in self.stages:
            rin, kept, dropped, quar, busy = self.rows[s]
            t.add_row(s, f"{rin:,}", f"{kept:,}", f"{dropped:,}", f"{quar:,}", f"{rin / elapsed:,.0f}", f"{busy:,.2f}")
        return t

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.live:
            self.live.update(self.table())
            self.live.stop()
        elif self.mode != "off":
            print(self.line(), file=sys.stderr, flush=True)
