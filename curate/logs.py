"""The run log: `curate run` shows curate's own lines; Ray's, vLLM's, transformers' and every
other library's output goes to a log file beside the database (`<db>.logs/<name>-<time>.log`),
whose path the run summary prints. With `-v` the libraries' output shows in the terminal too,
as it did before; the file gets everything either way.

How output is told apart, inside the driver process:

* file descriptors 1 and 2 point at the log file (with `-v`: at a pipe whose reader thread
  writes to the terminal and the file), so what C++ code (Ray's core worker, glog), a
  subprocess or a library writing to the descriptor prints lands there;
* `sys.stdout` and `sys.stderr` become routers on copies of the terminal's descriptors: a write
  whose nearest caller is curate's code (a `print`, `typer.echo`, the progress display, a
  logger named `curate...`) goes to the terminal (and the file); any other caller (Ray's
  forwarding of its workers' output, which carries the engine actor's vLLM start-up lines and
  weight-loading bars; Python logging and warnings of other packages; their progress bars)
  goes to the file only, unless verbose.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

_CURATE_ROOTS: tuple[str, ...] = ()
# Frames skipped when deciding who writes: output helpers that curate's code calls.
_HELPERS = ("/rich/", "/click/", "/typer/", "/tqdm/", "/colorama/", "/threading.py", "/contextlib.py",
            "/tqdm_ray.py")  # Ray Data wraps `print` (ray.experimental.tqdm_ray.safe_print)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Cursor moves, line erases and cursor hiding: a live display redrawing itself (rich's Live).
_CURSOR = re.compile(r"\x1b\[(?:\d*[ABCDEFGHJK]|\?25[lh]|\d*;\d*[Hf])|\r(?!\n)")


def _curate_roots() -> tuple[str, ...]:
    """Folders of curate's packages (curate, curate.pipeline, ...: pyproject maps them)."""
    global _CURATE_ROOTS
    if not _CURATE_ROOTS:
        import curate

        roots = {os.path.dirname(os.path.abspath(curate.__file__))}
        for sub in ("pipeline", "stages", "selectors", "generators", "storage"):
            spec = None
            with suppress(Exception):
                import importlib.util

                spec = importlib.util.find_spec(f"curate.{sub}")
            if spec is not None and spec.submodule_search_locations:
                roots.update(os.path.abspath(p) for p in spec.submodule_search_locations)
        _CURATE_ROOTS = tuple(r.rstrip("/") + "/" for r in roots)
    return _CURATE_ROOTS


def _from_curate(frame) -> bool:
    """Whether the nearest caller that is not an output helper is curate's code. A logging
    handler decides by the record's logger name."""
    roots = _curate_roots()
    here = __file__
    while frame is not None:
        name = frame.f_code.co_filename
        if name == here or any(h in name for h in _HELPERS):
            frame = frame.f_back
            continue
        if name.endswith(("logging/__init__.py", "logging\\__init__.py")):
            record = frame.f_locals.get("record")
            if record is not None:
                return str(getattr(record, "name", "")).startswith("curate")
            frame = frame.f_back
            continue
        return name.startswith(roots)
    return True  # only helpers: a progress bar's or live display's own thread


class _Router(io.TextIOBase):
    """sys.stdout / sys.stderr during a run: curate's writes to the terminal, others' to the log."""

    def __init__(self, terminal, log: RunLog, verbose: bool, original):
        self.terminal, self.log, self.verbose = terminal, log, verbose
        self.original = original  # the stream before the run: used by whoever kept this one after it
        self.active = True

    def write(self, text) -> int:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        if not text:
            return 0
        if not self.active:
            return self.original.write(text)
        if _from_curate(sys._getframe(1)):
            self.terminal.write(text)
            if "\x1b[" not in text:
                self.log.write(text, own=True)
            elif not _CURSOR.search(text):  # colours only: the text, plain; a live display's redraws stay out
                self.log.write(_ANSI.sub("", text), own=True)
        else:
            if self.verbose:
                self.terminal.write(text)
            self.log.write(_ANSI.sub("", text) if "\x1b[" in text else text)
        return len(text)

    def _stream(self):
        return self.terminal if self.active else self.original

    def flush(self) -> None:
        with suppress(Exception):
            self._stream().flush()
        if self.active:
            self.log.flush()

    def isatty(self) -> bool:
        try:
            return self._stream().isatty()
        except (ValueError, OSError):
            return False

    def fileno(self) -> int:
        return self._stream().fileno()

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False

    @property
    def encoding(self):
        return self._stream().encoding

    @property
    def errors(self):
        return self._stream().errors

    @property
    def buffer(self):
        return self._stream().buffer


class RunLog:
    """Route the process's output for the length of a run (a context manager)."""

    def __init__(self, path: str | Path, verbose: bool = False):
        self.path = str(path)
        self.verbose = verbose
        self.lock = threading.Lock()
        self.file = None
        self.saved: dict[int, int] = {}
        self.streams = None
        self.pipe_thread = None
        self.own_bytes = 0  # what curate's own lines (and the header) take in the file

    def write(self, text: str, own: bool = False) -> None:
        with self.lock:
            if self.file is not None:
                self.file.write(text)
                if own:
                    self.own_bytes += len(text.encode("utf-8", errors="replace"))

    def holds_library_output(self) -> bool:
        """Whether the file holds more than curate's own lines: something a library, Ray or a
        worker wrote (an error before Ray started leaves nothing worth pointing at)."""
        self.flush()
        try:
            return os.path.getsize(self.path) > self.own_bytes
        except OSError:
            return False

    def discard_if_empty(self) -> bool:
        """After the run: remove the file (and its folder, if empty) when it holds only curate's
        own lines. Returns whether it was removed."""
        if self.file is not None or self.holds_library_output():
            return False
        with suppress(OSError):
            os.remove(self.path)
            os.rmdir(os.path.dirname(os.path.abspath(self.path)))
        return not os.path.exists(self.path)

    def flush(self) -> None:
        with self.lock:
            if self.file is not None:
                with suppress(Exception):
                    self.file.flush()

    def __enter__(self) -> RunLog:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        existed = os.path.exists(self.path)
        self.file = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        self.own_bytes = os.path.getsize(self.path) if existed else 0
        self.write(f"== curate run log, {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n", own=True)
        if not self.verbose:
            # Ray's worker logs reach the driver once each (not "[repeated 5x across cluster]"):
            # read when Ray is imported, which the run does later.
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        self.streams = (sys.stdout, sys.stderr)
        terminals = []
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            self.saved[fd] = os.dup(fd)
            terminals.append(open(os.dup(self.saved[fd]), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                                  errors="replace", closefd=True))
        self.terminals = terminals
        if self.verbose:
            read_end, write_end = os.pipe()
            self.pipe_thread = threading.Thread(target=self._pump, args=(read_end,), name="curate-log-tee", daemon=True)
            self.pipe_thread.start()
            target = write_end
        else:
            target = self.file.fileno()
        for fd in (1, 2):
            os.dup2(target, fd)
        if self.verbose:
            os.close(target)
        self.routers = (_Router(terminals[0], self, self.verbose, self.streams[0]),
                        _Router(terminals[1], self, self.verbose, self.streams[1]))
        sys.stdout, sys.stderr = self.routers
        return self

    def _pump(self, read_end: int) -> None:
        """-v: what is written to descriptors 1 and 2 goes to the terminal and the file."""
        with open(read_end, "rb", buffering=0) as pipe:
            while True:
                data = pipe.read(65536)
                if not data:
                    return
                with suppress(OSError):
                    os.write(self.saved[2], data)
                self.write(data.decode("utf-8", errors="replace"))

    def __exit__(self, *exc) -> None:
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = self.streams
        for router in self.routers:  # kept by a logging handler, colorama, ...: the old streams from now on
            router.active = False
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)  # closes the pipe's write ends (-v): the tee thread ends
            os.close(saved)
        if self.pipe_thread is not None:
            self.pipe_thread.join(timeout=5)
        for t in self.terminals:
            with suppress(Exception):
                t.close()
        with self.lock:
            self.file.close()
            self.file = None


def log_path(db: str, name: str | None) -> str:
    """`<db>.logs/<name>-<YYYYmmdd-HHMMSS>.log`: one file per `curate run`."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or "run")
    return os.path.join(f"{db}.logs", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.log")
