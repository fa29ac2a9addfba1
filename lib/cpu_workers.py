"""Data parallelism for a model on a CPU: single-threaded workers, each running whole batches,
in place of torch's intra-op threads.

Why: intra-op threads split every matrix product and meet at its end, so CPU time that another
process takes from any core stalls them all. Under Ray (an idle local instance takes ~8-10% of one
core on its own) a 2-thread sentence-transformers `encode` ran 12-20% slower than on a quiet
machine, while two 1-thread encoders lost nothing (bench/README.md, embed). And Ray sets
OMP_NUM_THREADS to an actor's `num_cpus`, so a model stage's actor otherwise runs torch on one
thread however many cores the machine has.

Used by the embed stage (stages/embed.py `MiniBatchEncoders`) and, through `BatchRunner`, the
causal-LM scorers: IFD (stages/score/ifd.py), DEITA (stages/score/deita.py) and RDS+ (lib/rds.py).
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


class BatchRunner:
    """How a model runs its length batches on `device`: on a CPU with `cpu_parallel: batches`,
    on `threads` single-threaded BatchWorkers sharing the model (one per core by default);
    with `intra_op`, one batch at a time on `threads` torch threads; on a GPU, one at a time as
    torch is set. `map(fn, batches)` returns fn's results in input order, and the numbers are the
    same in every mode (a batch's rows never depend on which worker runs it)."""

    def __init__(self, device, threads: int | None = None, cpu_parallel: CpuParallel = "batches", name: str = "model"):
        if cpu_parallel not in ("batches", "intra_op"):
            raise ValueError(f"cpu_parallel must be 'batches' or 'intra_op', got {cpu_parallel!r}")
        on_cpu = str(device).startswith("cpu")
        n = cpu_threads(threads)
        self.workers = BatchWorkers(n, name) if on_cpu and cpu_parallel == "batches" and n > 1 else None
        self.intra_op = n if on_cpu and self.workers is None else None

    def map(self, fn: Callable[[T], R], batches: Iterable[T]) -> list[R]:
        if self.workers is not None:
            return self.workers.map(fn, batches)
        with intra_op_threads(self.intra_op):
            return [fn(b) for b in batches]
