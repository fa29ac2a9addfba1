"""LLM backends behind one interface (base.Backend); `make_backend` builds one from a config."""

from __future__ import annotations


def make_backend(spec: dict):
    """spec: {"kind": "vllm" | "openai", "model": ..., other constructor arguments}."""
    spec = dict(spec)
    kind = spec.pop("kind", "vllm")
    for option in ("preload", "engine_scope"):  # engine-actor options (generators/engines.py), not the backend's
        spec.pop(option, None)
    if kind == "vllm":
        from curate.generators.backends.vllm_engine import VllmBackend

        return VllmBackend(**spec)
    if kind == "openai":
        from curate.generators.backends.openai_http import OpenAIBackend

        return OpenAIBackend(**spec)
    from curate.errors import CurateError

    raise CurateError(f"unknown backend kind {kind!r}: use vllm or openai")
