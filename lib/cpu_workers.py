"""Data parallelism for a model on a CPU: single-threaded workers, each running whole batches,
in place of torch's intra-op threads.

Why: intra-op threads split every matrix product and meet at its end, so CPU time that another
process takes from any core stalls them all. Under Ray (an idle local instance takes ~8-10% of one
core on its own) a 2-thread sentence-transformers `encode` ran 12-20% slower than on a quiet
machine, while two 1-thread encoders lost nothing (bench/README.md, embed). And Ray sets
OMP_NUM_THREADS to an actor's `num_cpus`, so a model stage's actor otherwise runs torch on one
thread however many cores the machine has.

Used by the embed stage (stages/embed.py `MiniBatchEncoders`) and the IFD scorer
(stages/score/ifd.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

CpuParallel = Literal["batches", "intra_op"]

T = TypeVar("T")
R = TypeVar("R")


def cpu_threads(threads: int | None) -> int:
    """Threads for CPU model work: `threads`, or every core this process may run on (not Ray's
    OMP_NUM_THREADS: an actor reserves `num_cpus` to be scheduled beside other stages, but when
    its model runs it is mostly the only busy stage of its phase)."""
    return threads or len(os.sched_getaffinity(0))


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


class BatchWorkers:
    """`workers` threads whose torch ops run single-threaded; `map(fn, items)` runs fn on each
    item (a whole batch) in whichever worker is free and returns the results in input order.
    torch releases the GIL inside its kernels, so the workers use one core each. fn must be safe
    to run concurrently (a model in inference mode is; a fast tokenizer is not: give each worker
    its own). The calling thread's torch thread count is restored after each map."""

    def __init__(self, workers: int, name: str = "cpu-worker"):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=_one_torch_thread)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a worker's first torch call takes the count in force then
        try:
            return list(self.pool.map(fn, items))
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@contextmanager
def intra_op_threads(threads: int | None):
    """torch's intra-op thread count set to `threads` inside the block (unchanged with None), the
    caller's restored after."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
