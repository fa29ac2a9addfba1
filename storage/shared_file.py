"""A DuckDB file that several processes share by taking turns (the LLM-call cache, the
model-output cache): each opens it for one batch's lookups or writes and closes it, so
DuckDB's file lock lasts a moment, and a process that finds it locked waits its turn."""

from __future__ import annotations

import random
import time
from contextlib import contextmanager

import duckdb

CREATION_WAIT_S = 10.0  # how long a file that is not (yet) a DuckDB file may stay so before it is an error


@contextmanager
def connect_in_turn(path: str, wait_s: float, read_only: bool = False):
    """A connection to `path`, retrying every 50-150 ms while another process holds the file's
    lock, for up to `wait_s` seconds. Raises duckdb.IOException after that, or at once for any
    other I/O error. Closed on exit."""
    start = time.monotonic()
    while True:
        try:
            con = duckdb.connect(path, read_only=read_only)
            break
        except duckdb.IOException as e:
            text, waited = str(e).lower(), time.monotonic() - start
            locked = "lock" in text and waited < wait_s
            # Another process is creating the file this moment: its header is not written yet.
            being_created = "not a valid duckdb database file" in text and waited < min(wait_s, CREATION_WAIT_S)
            if not (locked or being_created):
                raise
            time.sleep(0.05 + random.random() * 0.1)
    try:
        yield con
    finally:
        con.close()
