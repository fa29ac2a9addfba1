"""The model-output cache: per row, what a model computed from (model, text) alone (an
embedding, IFD's three losses, an RDS vector), content-addressed in a DuckDB table, so a
changed config (a threshold, a filter, a selector) reuses them instead of running the model.

Key: a hash of (kind, the model's identity, every parameter that changes the output, the exact
text fed to the model). The model's identity is its folder's absolute path and a fingerprint of
its files: small files (config.json, tokenizer files, the chat template) by content, large
ones (weights) by size and mtime, so a model rebuilt or replaced in place misses. A Hugging
Face id is fingerprinted through its local snapshot folder when there is one.

Like the LLM-call cache (generators/cache.py) it lives in its own file beside the database,
`<db>.model_cache.duckdb`, opened per batch and not held: DuckDB's lock lasts a moment, so
several actors (one per GPU) share the file, waiting their turn. One lookup per batch, one
insert per batch of misses; memory is one batch's values. Table `model_cache_log` keeps one
row per batch looked up: hits, misses, model, process, time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone

import pyarrow as pa

from curate.storage.shared_file import connect_in_turn

DDL = """
CREATE TABLE IF NOT EXISTS model_cache (
    key VARCHAR PRIMARY KEY,
    kind VARCHAR,          -- embed | ifd | rds
    model VARCHAR,         -- as configured (a folder, a name)
    value BLOB,            -- the row's result: float32 vector or float64 losses, raw bytes
    note VARCHAR,          -- e.g. IFD's skip reason (value then holds NaNs)
    created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS model_cache_log (
    logged_at TIMESTAMP,
    kind VARCHAR,
    model VARCHAR,
    pid INTEGER,
    hits INTEGER,          -- rows answered without the model (stored, or a repeat within the batch)
    misses INTEGER         -- rows computed
);
"""

SMALL_FILE = 1 << 20  # files up to 1 MiB are fingerprinted by content, larger ones by size and mtime


def model_cache_path_for(db: str) -> str:
    root, _ = os.path.splitext(db)
    return root + ".model_cache.duckdb"


def model_fingerprint(model: str) -> str:
    """The identity of a model folder (or a Hugging Face id): its absolute path plus, per file,
    its content hash (small files) or size and mtime (weights). An id without a local snapshot
    is identified by its name alone."""
    folder = model if os.path.isdir(model) else _snapshot_folder(model)
    if folder is None:
        return json.dumps({"name": model})
    folder = os.path.abspath(folder)
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_size <= SMALL_FILE:
                with open(path, "rb") as f:
                    sig = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
            else:
                sig = f"{st.st_size}:{st.st_mtime_ns}"
            files.append((os.path.relpath(path, folder), sig))
    return json.dumps({"path": folder, "files": files})


def _snapshot_folder(name: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - not a hub id, or not in the local cache
        return None


class KeyMaker:
    """Per row, the cache key: hash(hash(kind, model identity, parameters), text)."""

    def __init__(self, kind: str, fingerprint: str, params: dict):
        body = json.dumps([kind, fingerprint, params], sort_keys=True, default=str)
        self.prefix = hashlib.blake2b(body.encode(), digest_size=32).digest()

    def __call__(self, texts: Sequence[str]) -> list[str]:
        prefix = self.prefix
        return [hashlib.blake2b(prefix + t.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest() for t in texts]


class ModelCache:
    def __init__(self, path: str, lock_wait_s: float = 120.0):
        self.path = path
        self.lock_wait_s = lock_wait_s
        self._in_process = threading.Lock()
        with self._connect() as con:
            con.execute(DDL)

    @contextmanager
    def _connect(self):
        with self._in_process, connect_in_turn(self.path, self.lock_wait_s) as con:
            yield con

    def lookup(self, keys: list[str], kind: str, model: str) -> dict[str, tuple[bytes, str | None]]:
        """The stored (value, note) of each key found; one query. Logs the batch: misses are
        the distinct keys not found (each computed once), hits the other rows."""
        if not keys:
            return {}
        distinct = sorted(set(keys))
        with self._connect() as con:
            rows = con.execute("SELECT key, value, note FROM model_cache WHERE key IN (SELECT unnest(?))", [distinct]).fetchall()
            found = {k: (bytes(v), n) for k, v, n in rows}
            missed = len(distinct) - len(found)
            con.execute("INSERT INTO model_cache_log VALUES (?, ?, ?, ?, ?, ?)",
                        [_now(), kind, model, os.getpid(), len(keys) - missed, missed])
        return found

    def store(self, kind: str, model: str, keys: list[str], values: list[bytes], notes: list[str | None]) -> None:
        if not keys:
            return
        new = pa.table({"key": pa.array(keys, pa.string()), "value": pa.array(values, pa.binary()),
                        "note": pa.array(notes, pa.string())})
        with self._connect() as con:
            con.register("new_entries", new)
            con.execute("INSERT INTO model_cache SELECT key, ?, ?, value, note, ? FROM new_entries ON CONFLICT (key) DO NOTHING",
                        [kind, model, _now()])

    def stats(self) -> dict[str, int]:
        with self._connect() as con:
            hits, misses = con.execute("SELECT coalesce(sum(hits), 0), coalesce(sum(misses), 0) FROM model_cache_log").fetchone()
            entries = con.execute("SELECT count(*) FROM model_cache").fetchone()[0]
        return {"hits": int(hits), "misses": int(misses), "entries": int(entries)}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class CachedRows:
    """A stage's cache: per batch, look the rows' keys up, compute only the distinct misses,
    store them, and return every row's (value, note) in order. `hits` and `misses` count rows
    over the stage's life (with no cache every row is a miss)."""

    def __init__(self, cache: bool | str | None, kind: str, model: str):
        self.path = cache if isinstance(cache, str) and cache else None  # True without a path (no database): off
        self.default = cache is True  # the cache beside the run's database, once the run gives its path (`at_default`)
        self.kind, self.model = kind, model
        self.hits = self.misses = 0
        self._cache: ModelCache | None = None
        self._keys: KeyMaker | None = None

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def at_default(self, path: str | None) -> None:
        """`cache: true` means the run's model cache: `path`, from the stage's setup context
        (StageContext.model_cache); a path given or `false` stays as it was."""
        if self.default and path and self._cache is None:
            self.path = path

    def rows(self, texts: Sequence[str], key_params: Callable[[], tuple[str, dict]],
             compute: Callable[[list[int]], list[tuple[bytes, str | None]]]) -> list[tuple[bytes, str | None]]:
        """`texts`: what the model reads, per row. `key_params()`: (model fingerprint, output
        parameters), asked once. `compute(indices)`: (value, note) of those rows, in order."""
        if not self.enabled:
            self.misses += len(texts)
            return compute(list(range(len(texts))))
        if self._cache is None:
            self._cache = ModelCache(self.path)
            fingerprint, params = key_params()
            self._keys = KeyMaker(self.kind, fingerprint, params)
        keys = self._keys(texts)
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        found = self._cache.lookup(keys, self.kind, self.model)
        todo_keys = [k for k in first if k not in found]
        self.misses += len(todo_keys)
        self.hits += len(keys) - len(todo_keys)
        if todo_keys:
            computed = compute([first[k] for k in todo_keys])
            self._cache.store(self.kind, self.model, todo_keys, [v for v, _ in computed], [n for _, n in computed])
            found.update(zip(todo_keys, computed))
        return [found[k] for k in keys]
