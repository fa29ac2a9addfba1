"""A DuckDB file that several processes share by taking turns (the LLM-call cache, the
model-output cache): each opens it for one batch's lookups or writes and closes it, so
DuckDB's file lock lasts a moment, and a process that finds it locked waits its turn."""

from __future__ import annotations

import random
import time
from contextlib import contextmanager

import duckdb


@contextmanager
def connect_in_turn(path: str, wait_s: float, read_only: bool = False):
    """A connection to `path`, retrying every 50-150 ms while another process holds the file's
    lock, for up to `wait_s` seconds. Raises duckdb.IOException after that, or at once for any
    other I/O error. Closed on exit."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(path, read_only=read_only)
            break
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05 + random.random() * 0.1)
    try:
        yield con
    finally:
        con.close()
