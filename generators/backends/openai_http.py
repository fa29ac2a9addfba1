"""Any OpenAI-compatible server (`vllm serve`, or a hosted API) over /v1/chat/completions.

Bounded concurrency (a thread pool), a timeout per call, retries with exponential backoff and
jitter on 429, 5xx and connection errors, and a clear error when the server is absent. The API
key is read from an environment variable and never logged or stored. A server whose chat
template has no system role (a 400 saying so) gets the system text in the first user turn, from
that request on (chat_template.py).
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from curate.errors import CurateError
from curate.generators.backends.base import Backend, ChatRequest, Completion
from curate.generators.backends.chat_template import fold_system, refuses_system_role

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def normalise_base_url(base_url: str) -> str:
    """A server's API root as the backend calls it: `http://host:8000` and `http://host:8000/`
    become `http://host:8000/v1` (OpenAI-compatible servers, `vllm serve` included, answer
    under /v1); a URL with a path (`.../v1`, `https://api.example.com/openai/v1`) is kept as
    given, less a trailing `/`."""
    from urllib.parse import urlsplit

    url = base_url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme in ("http", "https") and parts.netloc and parts.path in ("", "/") and not parts.query:
        return url.rstrip("/") + "/v1"
    return url.rstrip("/")


class OpenAIBackend(Backend):
    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0):
        self.model = model
        self.url = normalise_base_url(base_url) + "/chat/completions"
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.calls = 0  # HTTP attempts made, retries included
        # The server's chat template has no system role (it answered 400 to one): from then on
        # system text goes into the first user turn (chat_template.py).
        self.fold_system = False

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(requests)))) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: ChatRequest) -> list[Completion]:
        s = request.sampling
        has_system = any(m.get("role") == "system" for m in request.messages)
        body = {"model": self.model, "messages": fold_system(request.messages) if self.fold_system and has_system else request.messages,
                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "n": s.n}
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        try:
            data = self._post(json.dumps(body).encode())
        except _Refused as e:
            if not (has_system and refuses_system_role(e.detail)) or self.fold_system and body["messages"] is not request.messages:
                raise CurateError(str(e)) from None
            self.fold_system = True
            data = self._post(json.dumps({**body, "messages": fold_system(request.messages)}).encode())
        usage = data.get("usage") or {}
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != s.n:
            raise CurateError(f"{self.url} returned {len(choices)} choices for n={s.n}")
        per_choice = (usage.get("completion_tokens") or 0) // max(1, s.n)
        return [Completion(c["message"].get("content") or "", c.get("finish_reason"), usage.get("prompt_tokens") or 0,
                           per_choice) for c in choices]

    def _post(self, payload: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            self.calls += 1
            req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200].decode('utf-8', 'replace')}"
                if e.code not in RETRY_STATUS:
                    raise _Refused(f"{self.url} refused the request ({last})", last) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
        raise CurateError(f"no answer from {self.url} after {self.max_retries + 1} attempts (last: {last}); "
                          "is the server running?")


class _Refused(CurateError):
    """A 4xx answer, not retried; `detail` is the server's text."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail
