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
    """Peak memory of this process and all its descendants (Ray workers included), two ways:
    the sum of resident sets (`mib`, as the bench has always reported; pages shared between
    processes, such as libraries and Ray's object store, count once per process) and the sum of
    proportional set sizes (`pss_mib`, /proc/<pid>/smaps_rollup: a shared page is split among
    the processes that map it, so the sum is the memory the run really takes). `at_peak`: the
    processes at the summed-RSS peak, (RSS MiB, PSS MiB, name), largest first."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.at_peak: list[tuple[int, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            rss = pss = 0
            parts = []
            for p in [me, *me.children(recursive=True)]:
                try:
                    r, q = p.memory_info().rss, _pss_bytes(p.pid)
                    parts.append((r >> 20, q >> 20, _process_name(p)))
                    rss += r
                    pss += q
                except (psutil.Error, OSError):
                    pass
            if rss > self.peak:
                self.peak, self.at_peak = rss, sorted(parts, reverse=True)
            self.peak_pss = max(self.peak_pss, pss)
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

    @property
    def pss_mib(self) -> float | None:
        return round(self.peak_pss / 2**20, 1) if self.peak_pss else None

    def breakdown(self, top: int = 6) -> str:
        """The largest processes at the peak, one line: `name RSS/PSS MiB, ...`."""
        return ", ".join(f"{name} {r:,}/{q:,}" for r, q, name in self.at_peak[:top])


def _process_name(p: psutil.Process) -> str:
    """A Ray worker's title (`ray::MapWorker(...)`, `ray::_StatsActor`), else the program's name."""
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0].split(".")[0][:60]
    return " ".join(Path(c).name for c in cmd[:3])[:60] if cmd else p.name()


def _pss_bytes(pid: int) -> int:
    """Proportional set size of a process (0 where the kernel has no smaps_rollup)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def synthetic_pool(rows: int, path: Path, exact_dup_rate: float = 0.05, near_dup_rate: float = 0.05, seed: int = 0) -> dict:
    """`rows` Alpaca-style rows whose texts are recombined from real Alpaca sentences (so rows
    are distinct, as a real pool's are), with planted exact duplicates (case and spacing
    changed) and near duplicates (a few words edited). Returns what was planted."""
    import random
    import re

    rnd = random.Random(seed)
    base = json.loads((shared_data() / "alpaca_ifd_5pct.json").read_text())
    sentences = [s.strip() for r in base for s in re.split(r"(?<=[.!?])\s+", r["output"]) if len(s.split()) >= 4]
    instructions = [r["instruction"] for r in base]
    planted = {"exact": 0, "near": 0}
    made: list[dict] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            roll = rnd.random()
            if made and roll < exact_dup_rate:
                src = rnd.choice(made)
                row = {"instruction": src["instruction"].upper(), "input": "", "output": "  " + src["output"] + " "}
                planted["exact"] += 1
            elif made and roll < exact_dup_rate + near_dup_rate:
                src = rnd.choice(made)
                words = src["output"].split()
                for _ in range(max(1, len(words) // 40)):
                    words[rnd.randrange(len(words))] = rnd.choice(["also", "quite", "indeed"])
                row = {"instruction": src["instruction"], "input": "", "output": " ".join(words)}
                planted["near"] += 1
            else:
                row = {"instruction": f"{rnd.choice(instructions)} (case {i})", "input": "",
                       "output": " ".join(rnd.sample(sentences, rnd.randint(3, 7)))}
                if len(made) < 50_000:
                    made.append(row)
                else:
                    made[rnd.randrange(len(made))] = row
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return planted
