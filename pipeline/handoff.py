"""The files one phase hands the next: one Parquet file of survivors per shard, and a gate.

A phase whose stream has actor stages (a model to load) starts its stream while the barrier
before it is still deciding, so the actors start and load during the barrier. Its read tasks
wait at the gate: `_READY` in the hand-off folder, written once every survivor file is in
place; `_ABORT` if the barrier failed. A phase started after its barrier finds the gate open.
"""

from __future__ import annotations

import os
import time

READY, ABORT = "_READY", "_ABORT"


class BarrierFailed(RuntimeError):
    """The barrier before a phase failed; its early-started read tasks stop with this."""


def handoff_file(folder: str, shard: str) -> str:
    """`<folder>/<shard>.parquet`: one shard's survivors (absent when the shard has none)."""
    return os.path.join(folder, f"{shard}.parquet")


def reset_gate(folder: str) -> None:
    """Close the gate (before a stream starts ahead of its hand-off files)."""
    os.makedirs(folder, exist_ok=True)
    for name in (READY, ABORT):
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass


def open_gate(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    try:
        os.remove(os.path.join(folder, ABORT))
    except FileNotFoundError:
        pass
    with open(os.path.join(folder, READY), "w"):
        pass


def abort_gate(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ABORT), "w"):
        pass


def wait_for_gate(folder: str, poll_s: float = 0.05) -> None:
    """Block until the hand-off in `folder` is complete; raise BarrierFailed if it never will be."""
    ready, abort = os.path.join(folder, READY), os.path.join(folder, ABORT)
    while not os.path.exists(ready):
        if os.path.exists(abort):
            raise BarrierFailed(f"the barrier before this phase failed (gate {folder})")
        time.sleep(poll_s)
