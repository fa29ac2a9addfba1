"""One thread steps a vLLM engine; any number of caller threads add work to it.

`LLM.chat` runs the engine until *its* requests are done, so two stages sharing an engine took
turns, and each stage's batch ran alone: the engine held 64 sequences when it could hold 256 (a
CPU engine's `max_num_seqs`; 1,024 on an H100). Here every caller's requests join the running
batch at the next step (continuous batching across callers): a Self-Instruct batch, an Evol
round and a Respond batch generate together.

Only the loop thread touches the engine, and it also *builds* it. On CPU this matters: torch's
OpenMP runtime (libgomp) keeps a pool of worker threads per thread that runs parallel code, and
once there are more pool threads than cores its workers stop spin-waiting between kernels and
sleep instead. An engine built (and warmed up) in one thread and stepped in another left two
pools on 2 cores: 2,000 requests × 64 tokens took 10.4 s against 7.6 s built and stepped in one
thread.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class _Job:
    prompts: list[dict]  # vLLM TokensPrompt dicts: {"prompt_token_ids": [...]}
    params: list
    outputs: list = field(default_factory=list)
    remaining: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


@dataclass
class EngineStats:
    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    busy_seconds: float = 0.0  # time inside engine steps
    first_request_at: float | None = None  # time.time()
    last_output_at: float | None = None
    peak_in_flight: int = 0  # most requests in the engine at once, over all callers
    finished: int = 0  # requests answered
    generated_tokens: int = 0  # tokens generated so far, unfinished requests' included (see `live`)


class EngineLoop:
    def __init__(self, build: Callable[[], Any], torch_threads: int | None = None):
        """Start the loop thread, which calls `build()` for the `vllm.LLM` and then serves;
        returns once the engine is built, raising what `build` raised. `torch_threads` sets the
        loop thread's OpenMP thread count (a CPU engine); None leaves torch's default."""
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._fatal: BaseException | None = None
        self._torch_threads = torch_threads
        self._built = threading.Event()
        self._submitted = 0  # requests callers handed in (admitted or still in the inbox)
        self._submit_lock = threading.Lock()
        self._running = 0  # requests in the engine now
        self._token_counter = False  # whether engine outputs are counted per step (`_count_tokens`)
        self.llm = None
        self._thread = threading.Thread(target=self._run, args=(build,), name="vllm-engine-loop", daemon=True)
        self._thread.start()
        self._built.wait()
        if self.llm is None:
            raise self._fatal

    def generate(self, token_ids: list[list[int]], params: list) -> list:
        """The engine's RequestOutputs for these prompts (token ids, chat template applied), in
        order; blocks this caller only. The caller renders and tokenizes (VllmBackend does, in
        its own thread), which keeps that work out of the loop: `enqueue_chat` paused the engine
        0.24 s per 1,000 conversations, adding token ids 0.07 s."""
        if not token_ids:
            return []
        job = _Job([{"prompt_token_ids": ids} for ids in token_ids], params, outputs=[None] * len(token_ids))
        with self._submit_lock:
            self._submitted += len(token_ids)
        self._inbox.put(job)
        while not job.done.wait(timeout=5):
            if not self._thread.is_alive():  # a bug in the loop must not leave callers waiting forever
                raise RuntimeError(f"the vLLM engine loop stopped: {self._fatal!r}")
        if job.error is not None:
            raise job.error
        return job.outputs

    def live(self) -> dict:
        """The engine's progress now, cheap enough to poll every few seconds from another
        thread (the runner's progress display asks the engine actor): requests handed in,
        answered, in the engine and waiting to enter it; tokens generated so far (unfinished
        requests' tokens included where the engine's outputs can be counted per step, else
        those of answered requests); busy seconds."""
        st = self.stats
        submitted = self._submitted
        return {"submitted": submitted, "finished": st.finished, "running": self._running,
                "waiting": max(0, submitted - st.finished - self._running),
                "tokens": st.generated_tokens if self._token_counter else st.completion_tokens,
                "completion_tokens": st.completion_tokens, "prompt_tokens": st.prompt_tokens,
                "busy_seconds": st.busy_seconds, "time": time.time()}

    def _count_tokens(self, engine) -> None:
        """Count the tokens each engine step makes, as it makes them: the `LLM` asks its
        engine for final outputs only, so a long generation would show no tokens until its
        requests end. The engine core's per-step outputs carry each request's new token ids;
        wrap `get_output` to count them. Best effort: without it, tokens count at the end of
        each request."""
        core = getattr(engine, "engine_core", None)
        get_output = getattr(core, "get_output", None)
        if get_output is None:
            return
        stats = self.stats

        def counted():
            out = get_output()
            try:
                stats.generated_tokens += sum(len(o.new_token_ids or ()) for o in out.outputs)
            except Exception:  # another vLLM's output shape: count finished requests instead
                self._token_counter = False
            return out

        try:
            core.get_output = counted
            self._token_counter = True
        except Exception:
            pass

    def _run(self, build: Callable[[], Any]) -> None:
        try:
            if self._torch_threads:
                import torch

                # OpenMP settings are per thread. torch._C's own setter, since vLLM's CPU
                # worker replaces torch.set_num_threads with a no-op.
                torch._C.set_num_threads(self._torch_threads)
            self.llm = build()
        except BaseException as e:
            self._fatal = e
            return
        finally:
            self._built.set()
        try:
            self._serve()
        except BaseException as e:
            self._fatal = e
            raise

    def _serve(self) -> None:
        engine = self.llm.llm_engine
        self._count_tokens(engine)
        pending: dict[str, tuple[_Job, int]] = {}
        while True:
            self._admit(pending, wait=not pending)
            self._running = len(pending)
            if not pending:
                continue
            start = time.perf_counter()
            try:
                outputs = engine.step()
            except BaseException as e:  # the engine is broken: every waiting caller gets the error
                for job in {id(j): j for j, _ in pending.values()}.values():
                    job.fail(e)
                self.stats.finished += len(pending)
                pending.clear()
                self._running = 0
                continue
            self.stats.steps += 1
            self.stats.busy_seconds += time.perf_counter() - start
            for out in outputs:
                if not out.finished:
                    continue
                job, i = pending.pop(out.request_id)
                job.outputs[i] = out
                self.stats.prompt_tokens += len(out.prompt_token_ids or [])
                self.stats.completion_tokens += sum(len(c.token_ids) for c in out.outputs)
                self.stats.finished += 1
                job.remaining -= 1
                if job.remaining == 0:
                    self.stats.last_output_at = time.time()
                    job.done.set()
            self._running = len(pending)

    def _admit(self, pending: dict, wait: bool) -> None:
        """Move queued jobs into the engine; block for one when the engine is idle."""
        jobs: list[_Job] = []
        try:
            jobs.append(self._inbox.get(block=wait))
            while True:
                jobs.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        for job in jobs:
            try:
                ids = self.llm.enqueue(job.prompts, job.params, use_tqdm=False)
            except BaseException as e:  # a bad request fails its caller, not the others
                self.stats.finished += len(job.prompts)  # answered, with the error
                job.fail(e)
                continue
            if self.stats.first_request_at is None:
                self.stats.first_request_at = time.time()
            self.stats.calls += 1
            self.stats.requests += len(ids)
            job.remaining = len(ids)
            pending.update({_external_id(rid): (job, i) for i, rid in enumerate(ids)})
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, len(pending))


def _external_id(request_id: str) -> str:
    """The id outputs carry. `enqueue` returns vLLM's internal id, the LLM's counter value
    plus "-" and 8 random characters; outputs carry the counter value alone."""
    return request_id.split("-", 1)[0]
