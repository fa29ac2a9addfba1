"""`curate run` prints curate's own lines; Ray's and other libraries' output goes to the run
log beside the database, whose path the run prints; `-v` shows it in the terminal too."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT, curate_cmd

pytestmark = [pytest.mark.slow]

NOISE = ("core_worker", "Token authentication", "WARNING", " INFO ", "Progress bars disabled", "(EngineHost", "pid=")


def _run(tmp_path, *extra):
    db = tmp_path / "demo.duckdb"
    proc = subprocess.run([*curate_cmd(), "run", "jobs/configs/demo.yaml", "--db", str(db), "--no-export",
                           "--progress", "lines", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    logs = list((tmp_path / "demo.duckdb.logs").glob("*.log"))
    assert len(logs) == 1, logs
    assert f"log: {logs[0]}" in proc.stdout  # the summary names the log
    return out, logs[0].read_text()


def test_default_output_is_curates_own_lines_and_the_log_holds_the_rest(tmp_path):
    out, log = _run(tmp_path)
    noisy = [line for line in out.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy
    assert re.search(r"^run \w+ \(attempt 1\): 44 rows in", out, re.MULTILINE)
    assert "committed shard" in out
    # The log holds what the terminal did not show (Ray's warnings, at least), and curate's lines.
    assert any(n in log for n in ("Token authentication", "Progress bars disabled", "core_worker")), log[:2000]
    assert "committed shard" in log and "44 rows in" in log


def test_verbose_shows_the_libraries_output(tmp_path):
    out, log = _run(tmp_path, "-v")
    shown = [n for n in ("Token authentication", "Progress bars disabled", "core_worker") if n in out]
    assert shown, out[-3000:]
    assert all(n in log for n in shown)
    assert "committed shard" in out


def test_router_sends_curate_writes_to_the_terminal_and_others_to_the_log(tmp_path):
    """In one process: a print from curate's code reaches the terminal; a library's logging
    and a write to file descriptor 2 (C code's way) reach only the log."""
    script = f"""
import logging, os, sys
from curate.logs import RunLog
from curate.pipeline import progress  # curate code that prints
with RunLog({str(tmp_path / 'x.log')!r}):
    progress.Progress([], 1, 0, mode="lines").global_step("near_dedup", 3, 0.5)
    logging.getLogger("vllm.fake").warning("vllm start-up noise")
    os.write(2, b"[E core_worker.cc:1] noise from C\\n")
    print("a library print", file=sys.stderr)
print("after the run", file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "global step near_dedup: dropped 3 rows" in proc.stderr and "after the run" in proc.stderr
    assert "noise" not in proc.stderr and "a library print" not in proc.stderr
    log = (tmp_path / "x.log").read_text()
    assert "vllm start-up noise" in log and "core_worker.cc" in log and "global step near_dedup" in log
    assert "a library print" in log  # `-c` code is not curate's: a library's print
