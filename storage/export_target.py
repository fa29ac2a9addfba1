"""Where an export lands, without ever deleting what curate did not write.

`Staging(out, db, folder=..., overwrite=...)` checks the target, then gives a place to write the
new export: a temporary folder next to the target (same file system), renamed into place by
`commit()` (an atomic exchange on Linux). An export that fails or is killed midway leaves the
previous one as it was; a killed export's temporary folder is removed by the next export to the
same target.

The target may be: missing, an empty file or folder, or a previous curate export of the same
kind (a folder: with its marker file and no files curate did not write; a file: see
`is_export_file`). Anything else raises `ExportTargetError` unless `overwrite`. Never, even with
`overwrite`: the database (or its .wal), a folder holding it, the working directory or a folder
holding it.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import json
import os
import secrets
import shutil
import sys

from curate.errors import CurateError

MARKER = ".curate-export.json"  # in every folder export: what curate wrote there
_TMP = ".curate-tmp-"
# Files that a folder export may hold besides those its marker lists: caches `datasets` writes
# next to a loaded data set (`.map` on `load_from_disk`).
_DERIVED = ("cache-*.arrow",)


class ExportTargetError(CurateError):
    """The export's --out is not a place curate may write to (as it stands)."""


class Staging:
    def __init__(self, out: str, db: str, folder: bool, overwrite: bool = False):
        self.target = os.path.abspath(out)
        self.folder = folder
        self.overwrite = overwrite
        self.db = db
        self.root: str | None = None

    def __enter__(self) -> "Staging":
        check_target(self.target, self.db, self.folder, self.overwrite)
        parent = os.path.dirname(self.target)
        os.makedirs(parent, exist_ok=True)
        _remove_stale(parent, os.path.basename(self.target))
        self.root = os.path.join(parent, f".{os.path.basename(self.target)}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(self.root)
        return self

    @property
    def path(self) -> str:
        """Where to write the new export (a file or a folder, as the target will be)."""
        return os.path.join(self.root, os.path.basename(self.target))

    @property
    def work(self) -> str:
        """A scratch folder, removed with the staging folder."""
        path = os.path.join(self.root, "work")
        os.makedirs(path, exist_ok=True)
        return path

    def commit(self) -> None:
        """Put the new export in place of the target in one rename (the old one is removed after)."""
        if self.folder:
            write_marker(self.path)
        if not os.path.lexists(self.target):
            os.rename(self.path, self.target)
        elif not _exchange(self.path, self.target):
            if not os.path.isdir(self.target) and not os.path.isdir(self.path):
                os.replace(self.path, self.target)
            else:  # no atomic exchange here: a short moment with no export at the target
                os.rename(self.target, os.path.join(self.root, "previous"))
                os.rename(self.path, self.target)

    def __exit__(self, *exc) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


def check_target(target: str, db: str, folder: bool, overwrite: bool) -> None:
    real = os.path.realpath(target)
    for path, what in ((db, "the database"), (db + ".wal", "the database's write-ahead log"),
                       (os.getcwd(), "the working directory")):
        path = os.path.realpath(path)
        if path == real or path.startswith(real.rstrip(os.sep) + os.sep):
            held = "is" if path == real else "holds"
            raise ExportTargetError(f"--out {target} {held} {what}: an export replaces its target, and curate never "
                                    "deletes that (not even with --overwrite); pass a new path such as ./out/curated")
    if overwrite or not os.path.lexists(target) or _is_empty(target):
        return
    kind = "folder" if folder else "file"
    if folder and os.path.isdir(target):
        foreign = foreign_files(target)
        if foreign is None:
            raise ExportTargetError(f"--out {target} is a folder that curate did not write (no {MARKER} in it): curate will "
                                    "not replace it; pass a new or empty folder, or --overwrite to replace it all")
        if foreign:
            raise ExportTargetError(f"--out {target} is an earlier curate export, but holds files curate did not write "
                                    f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): move them out, "
                                    "or pass --overwrite to replace it all")
        return
    if not folder and os.path.isfile(target) and is_export_file(target):
        return
    other_kind = _other_kind_of_export(target, folder)
    if other_kind:
        raise ExportTargetError(other_kind)
    found = "folder" if os.path.isdir(target) else "file"
    raise ExportTargetError(f"--out {target} is a {found} that is not an earlier curate export {kind}: curate will not "
                            f"replace it; pass a new path, or --overwrite to replace it")


def _other_kind_of_export(target: str, folder: bool) -> str | None:
    """Why `target` cannot take this export when it is an earlier curate export of the other kind
    (an HF folder for a file format, a JSONL or Parquet file for hf), or None."""
    if not folder and os.path.isdir(target) and foreign_files(target) is not None:
        return (f"--out {target} is a Hugging Face dataset folder from an earlier curate export (-f hf), and this "
                "format writes a file: pass another --out (such as a .jsonl or .parquet file), or -f hf to replace it")
    if folder and os.path.isfile(target) and is_export_file(target):
        fmt = "parquet" if target.lower().endswith(".parquet") or _starts_with(target, b"PAR1") else "jsonl"
        return (f"--out {target} is a {fmt} file from an earlier curate export (-f {fmt}), and -f hf writes a "
                f"folder: pass another --out (a folder), or -f {fmt} to replace it")
    return None


def foreign_files(folder: str) -> list[str] | None:
    """The files in a folder export that curate did not write; None when the folder is not one."""
    listed = _listed_files(folder)
    if listed is None:
        return None
    found = [os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files]
    return sorted(f for f in found if f not in listed and f != MARKER
                  and not any(fnmatch.fnmatch(f, p) for p in _DERIVED))


def write_marker(folder: str) -> None:
    files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump({"written_by": "curate export", "files": files}, f, indent=1)


def is_export_file(path: str) -> bool:
    """A JSONL or Parquet file curate exported: Parquet carries a `curate.export` key in its
    metadata; otherwise the first row's `id` must be the content hash of its conversation."""
    from curate.storage.shapes import is_export_row

    try:
        if path.lower().endswith(".parquet") or _starts_with(path, b"PAR1"):
            import pyarrow.parquet as pq

            f = pq.ParquetFile(path)
            if b"curate.export" in (f.schema_arrow.metadata or {}):
                return True
            first = next(f.iter_batches(batch_size=1), None)
            return first is not None and first.num_rows == 1 and is_export_row(first.to_pylist()[0])
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    return is_export_row(json.loads(line.decode("utf-8-sig")))
    except Exception:  # unreadable, not JSON, not Parquet: not ours
        return False
    return False


def _listed_files(folder: str) -> set[str] | None:
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            return set(json.load(f)["files"])
    except FileNotFoundError:
        return _legacy_files(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _legacy_files(folder: str) -> set[str] | None:
    """A folder exported before the marker existed: curate's dataset card and a saved data set."""
    try:
        with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
            if "Made by curate, run `" not in f.read(100_000):
                return None
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
            data_files = [d["filename"] for d in json.load(f)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"README.md", "state.json", "dataset_info.json", *data_files}


def _is_empty(path: str) -> bool:
    if os.path.isdir(path) and not os.path.islink(path):
        return not os.listdir(path)
    return os.path.isfile(path) and os.path.getsize(path) == 0


def _starts_with(path: str, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _remove_stale(parent: str, base: str) -> None:
    """Staging folders of earlier exports to this target whose process is gone (killed)."""
    from curate.storage.store import pid_alive

    prefix = f".{base}{_TMP}"
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)




def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)
