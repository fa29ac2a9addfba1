"""Math answers compared in a child process with a deadline per answer.

SymPy (under Math-Verify) can run for ever on some inputs (`10^{10^{10}}`, huge simplifications),
often inside one C-level big-integer operation that no signal or thread interrupts. Math-Verify's
own timeout is a SIGALRM handler, which works only in a process's main thread (a Ray actor's
batches may run on another thread), so curate turns it off (`parsing_timeout=None`,
`timeout_seconds=None`) and bounds time itself: `MathChecker` keeps one child Python process
(`python -m curate.stages.verify.math_worker`) that runs `math_equiv.compare` on one (answer,
reference) at a time, and kills and replaces it when an answer overruns its deadline. Only
strings cross the pipe (JSON lines), so nothing the child computes is trusted as an object.

The child: an address-space limit (`memory_mb`), SIGKILL when the thread that started it dies
(PR_SET_PDEATHSIG), and an exit when its parent is gone or its stdin closes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

READY = "ready"


@dataclass(frozen=True)
class Checked:
    equal: bool
    rule: str  # the rule that decided (see math_equiv); "timeout" or "error" when none could
    steps: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str = ""


class MathWorkerError(RuntimeError):
    """The child process cannot be started (a broken install): no answer can be checked."""


class MathChecker:
    """`check(answer, reference)` → `Checked`, each call bounded by `timeout_s` seconds of wall time.

    A call that overruns gets `rule="timeout"` and the child is killed (the next call starts a
    new one, about a second); a child that dies on an answer (memory limit) gets `rule="error"`.
    Thread-safe (one call at a time). `close()` ends the child; so does the garbage collector.
    Raises `MathWorkerError` when a fresh child cannot start within `start_timeout_s`.
    """

    def __init__(self, timeout_s: float = 5.0, memory_mb: int | None = 2048, float_rounding: int = 6,
                 start_timeout_s: float = 120.0):
        self.timeout_s, self.memory_mb, self.float_rounding = timeout_s, memory_mb, float_rounding
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.buffer = b""
        self.lock = threading.Lock()
        self.restarts = 0

    # -- child lifecycle -----------------------------------------------------------------------
    def _preexec(self):
        import ctypes
        import resource

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        limits = [(resource.RLIMIT_CORE, (0, 0))]
        if self.memory_mb:
            limits.append((resource.RLIMIT_AS, (self.memory_mb * 2**20,) * 2))

        def preexec():  # in the forked child before exec: no imports, no locks
            prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
            for which, value in limits:
                resource.setrlimit(which, value)
        return preexec

    def _start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        errors = tempfile.TemporaryFile()  # the child's stderr: read back only when it fails to start
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "curate.stages.verify.math_worker", str(os.getpid())],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                         env=env, preexec_fn=self._preexec(), close_fds=True)
        except OSError as exc:
            errors.close()
            raise MathWorkerError(f"cannot start the math answer checker ({sys.executable}): {exc}") from exc
        self.buffer = b""
        line = self._read_line(time.monotonic() + self.start_timeout_s)
        ready = False
        try:
            ready = line is not None and json.loads(line).get(READY) is True
        except ValueError:
            pass
        if not ready:
            self._kill()
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            errors.close()
            raise MathWorkerError(f"the math answer checker did not start ({tail[0][:300]}); is math-verify "
                                  "installed (`pip install -e .` installs it)?")
        errors.close()  # the child keeps its own handle

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.kill()
        except OSError:
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        with self.lock:
            self._kill()

    def __del__(self):
        try:
            self._kill()
        except Exception:
            pass

    # -- one request ---------------------------------------------------------------------------
    def _read_line(self, deadline: float) -> str | None:
        """One line from the child by `deadline`; None on timeout or when the child is gone."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def check(self, answer: str, reference: str) -> Checked:
        request = (json.dumps({"answer": answer, "reference": reference, "float_rounding": self.float_rounding})
                   + "\n").encode()
        with self.lock:
            for attempt in (0, 1):
                if self.proc is None:
                    self._start()
                start = time.monotonic()
                try:
                    self.proc.stdin.write(request)
                    self.proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    self._kill()  # died while idle (its thread ended, say): once more on a fresh child
                    continue
                line = self._read_line(start + self.timeout_s)
                took = time.monotonic() - start
                if line is not None:
                    reply = json.loads(line)
                    if "error" in reply:
                        return Checked(False, "error", (), took, reply["error"][:200])
                    return Checked(bool(reply["equal"]), reply["rule"], tuple(reply["steps"]), took)
                timed_out = took >= self.timeout_s
                self._kill()
                self.restarts += 1
                if timed_out:
                    return Checked(False, "timeout", (), took, f"no verdict within {self.timeout_s:g}s")
                if attempt == 1:
                    return Checked(False, "error", (), took, "the checker process died on this answer")
            return Checked(False, "error", (), 0.0, "the checker process died on this answer")


# -- the child ----------------------------------------------------------------------------------
def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this ends
    out = os.fdopen(os.dup(1), "w", buffering=1)  # replies only; anything a library prints goes to stderr
    os.dup2(2, 1)
    if argv:
        threading.Thread(target=_watch_parent, args=(int(argv[0]),), daemon=True).start()
    from curate.stages.verify.math_equiv import compare

    compare("\\frac{1}{2}", "0.5")  # load the parser and SymPy before saying ready
    out.write(json.dumps({READY: True}) + "\n")
    devnull = os.open(os.devnull, os.O_WRONLY)  # started: nothing more to say on stderr (the parent closed it)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    for line in sys.stdin:
        try:
            req = json.loads(line)
            m = compare(req["answer"], req["reference"], req.get("float_rounding", 6))
            reply = m.as_dict()
        except MemoryError:
            reply = {"error": "MemoryError"}
        except Exception as exc:  # noqa: BLE001 - any failure is this answer's, not the worker's
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
