"""Helpers shared by bench scripts: pools built from the shared Alpaca data, memory sampling."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    for c in (os.environ.get("CURATE_SHARED_DATA"), ROOT.parent / "shared" / "data", "/work/shared/data"):
        if c and (Path(c) / "alpaca_ifd_5pct.json").exists():
            return Path(c)
    raise SystemExit("shared data not found: set CURATE_SHARED_DATA")


def alpaca_pool(rows: int, path: Path) -> Path:
    """`rows` Alpaca-style rows: the 3,111 real ones, then variants of them (distinct text)."""
    base = json.loads((shared_data() / "alpaca_ifd_5pct.json").read_text())
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = dict(base[i % len(base)])
            if i >= len(base):
                row["instruction"] = f"{row['instruction']} (variant {i // len(base)})"
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


class PeakRSS:
    """Peak resident memory of this process and all its descendants (Ray workers included)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)
