"""One vLLM engine per distinct backend spec for a whole run, shared by every LLM stage.

Each LLM stage used to start its own engine inside its actor: five stages meant five copies of
the weights (on one GPU, an out-of-memory error) and five start-up waits. The runner now starts
one `EngineHost` actor per distinct `{kind: vllm, ...}` spec, named after the spec, before the
stream; the stages find it by name and send it their batches. The host builds the engine on
its first call, so a rerun answered from the cache never starts one (`preload: true` in the
spec loads it at once instead, overlapping the load with the stream's start). An engine the runner did
not start (a stage used outside the runner) is built inside the calling process instead.

Engines are per run: the plan puts the run into each vLLM spec (`engine_scope`, set by
pipeline/dag.py `stage_plans`), and the name hashes it, so two runs of the same model on one
Ray cluster each start their own engine and neither finds, nor kills, the other's. The scope is
no backend argument (`make_backend` drops it) and no part of the LLM cache key (model and
request: generators/cache.py), so another run still replays the calls a first one paid for.
"""

from __future__ import annotations

import hashlib
import json

from curate.generators.backends.base import ChatRequest, Completion

NAMESPACE = "curate"
MAX_CALLERS = 64  # stage calls served at once by one engine actor (threads that wait on the engine loop)
SCOPE = "engine_scope"  # spec key: the run the engine belongs to (names it; not a backend argument)
ACTOR_OPTIONS = ("preload", SCOPE)  # spec keys for the engine actor, not for the backend


def engine_name(spec: dict) -> str:
    """The engine actor's name: a hash of the whole spec, its `engine_scope` (the run) included."""
    body = json.dumps(spec, sort_keys=True, default=str)
    return "curate-engine-" + hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


def scoped(spec: dict, scope: str | None) -> dict:
    """The spec with the run's scope (a copy); a vLLM spec only: the others start no engine."""
    if scope is None or not isinstance(spec, dict) or spec.get("kind", "vllm") != "vllm":
        return spec
    return {**spec, SCOPE: scope}


def backend_keys(params: dict) -> list[str]:
    """The parameters of a stage that are backend specs: `backend`, and any `<role>_backend`
    mapping (contrastive_filter's `target_backend` and `judge_backend`)."""
    return [k for k, v in params.items() if (k == "backend" or k.endswith("_backend")) and isinstance(v, dict)]


def vllm_specs(stage_params: list[dict]) -> list[dict]:
    """The distinct vLLM backend specs the stages name (every `backend_keys` parameter), in order."""
    seen, out = set(), []
    for params in stage_params:
        for key in backend_keys(params):
            spec = params[key]
            if spec.get("kind", "vllm") == "vllm":
                name = engine_name(spec)
                if name not in seen:
                    seen.add(name)
                    out.append(dict(spec))
    return out


class EngineHost:
    """Ray actor body: holds one engine; requests from every stage arrive here. A threaded
    actor: calls from several stages run at once and their requests share the engine's batch
    (generators/backends/engine_loop.py)."""

    def __init__(self, spec: dict):
        import threading

        self.spec = {k: v for k, v in spec.items() if k not in ACTOR_OPTIONS}
        self.backend = None
        self._loading = threading.Lock()
        self._load_started: float | None = None

    def load(self) -> None:
        import time

        with self._loading:
            if self.backend is None:
                self._load_started = time.time()
                from curate.generators.backends import make_backend

                self.backend = make_backend(self.spec)

    def generate(self, requests: list[ChatRequest]) -> list[list[Completion]]:
        self.load()
        return self.backend.generate(requests)

    def started(self) -> bool:
        return self.backend is not None

    def live(self) -> dict:
        """The engine's progress now, for the driver's progress display (a cheap call, polled
        every few seconds): `state` idle (not started), loading (since `loading_since`) or
        running, with the engine loop's counters (engine_loop.py `EngineLoop.live`)."""
        model = self.spec.get("model")
        backend = self.backend
        loop = getattr(backend, "loop", None)
        if backend is None or loop is None:
            state = "loading" if self._load_started is not None and backend is None else "idle"
            return {"state": state, "model": model, "loading_since": self._load_started}
        return {"state": "running", "model": model, "load_seconds": getattr(backend, "load_seconds", None), **loop.live()}

    def stats(self) -> dict | None:
        """Load time and use of the engine (None if it never started): the runner stores them."""
        return self.backend.stats() if self.backend is not None else None


def start_engines(specs: list[dict], gpus_available: float) -> list:
    """Start (lazily loading) one named engine actor per spec; the caller kills them after the
    stream. On GPUs an engine takes `tensor_parallel_size` GPUs; on CPU it takes no logical CPU,
    since the stages that wait on it already hold theirs and vLLM's CPU backend uses its own
    threads."""
    import ray

    prepare_models(specs)
    actors = []
    for spec in specs:
        gpus = float(spec.get("tensor_parallel_size", 1)) if gpus_available >= 1 else 0.0
        actor_cls = ray.remote(EngineHost).options(
            name=engine_name(spec), namespace=NAMESPACE, get_if_exists=True,
            num_cpus=1 if gpus else 0, num_gpus=gpus, max_concurrency=MAX_CALLERS)
        actor = actor_cls.remote(spec)
        if spec.get("preload"):
            # Load now, while Ray Data plans and starts the stages; the first batch then finds
            # the engine ready. Off by default: a rerun answered from the cache needs no engine.
            actor.load.remote()
        actors.append(actor)
    return actors


def prepare_models(specs: list[dict]) -> None:
    """Before the engine actors start: build curate's built-in model (`model: default`,
    curate/models.py) here in the driver when a spec names it and the Ray cluster is this
    machine alone, so that it is built once, with its progress bar in the driver's terminal, and
    every actor finds it (on a cluster each node builds its own copy, under the same lock). A
    no-op when it is built already (after a checksum check, ~0.5 s). Raises CurateError when it
    cannot be built."""
    from curate.models import ensure_default_model, is_default

    if not any(isinstance(s, dict) and is_default(s.get("model")) for s in specs):
        return
    import ray

    if ray.is_initialized() and len(ray.nodes()) > 1:
        return
    ensure_default_model(progress=True)


def engine_stats(actors: list) -> list[dict]:
    """Each started engine's load time and use (generators/backends/engine_loop.py)."""
    import ray

    return [st for st in ray.get([a.stats.remote() for a in actors], timeout=60) if st is not None]


def engine_labels(specs: list[dict], stages: list[tuple[str, dict]]) -> list[str]:
    """For each engine spec, the names of the stages that send it their batches, joined
    (`self_instruct, respond`): what the progress display calls the engine."""
    users: dict[str, list[str]] = {}
    for name, params in stages:
        for key in backend_keys(params):
            spec = params[key]
            if spec.get("kind", "vllm") == "vllm" and name not in users.get(engine_name(spec), []):
                users.setdefault(engine_name(spec), []).append(name)
    return [", ".join(users.get(engine_name(spec), [])) or engine_name(spec) for spec in specs]


def engine_live(actors: list, timeout: float = 2.0) -> list[dict | None]:
    """Each engine actor's `live()` answer, None for one that did not answer within `timeout`
    seconds (busy starting up, or gone): the progress display must never wait on an engine."""
    import ray

    refs = [a.live.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    ready = set(ready)
    out = []
    for ref in refs:
        try:
            out.append(ray.get(ref) if ref in ready else None)
        except Exception:  # a dead actor: the stream will say why
            out.append(None)
    return out


def find_engine(spec: dict):
    """The run's engine actor for this spec, or None outside a runner-started run."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return ray.get_actor(engine_name(spec), namespace=NAMESPACE)
    except (ValueError, ImportError):
        return None
