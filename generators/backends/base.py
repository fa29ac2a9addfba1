"""One interface for every LLM backend: chat requests with sampling parameters in, completions
(text, finish reason, token counts) out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class ChatRequest:
    messages: list[dict]
    sampling: Sampling = field(default_factory=Sampling)


@dataclass
class Completion:
    text: str
    finish_reason: str | None  # "stop", "length", ...
    prompt_tokens: int
    completion_tokens: int


class Backend:
    """`generate` returns, per request, its `sampling.n` completions, in request order."""

    model: str

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:  # pragma: no cover - interface
        raise NotImplementedError


def request_key(model: str, request: ChatRequest) -> str:
    """The cache key of a call: a hash of (model, messages, sampling parameters, seed)."""
    body = {"model": model, "messages": request.messages, "sampling": asdict(request.sampling)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
