"""The parent's side of a slot's warm jail: one jail per slot kept running between executions,
with a fork server (the zygote, `inside.serve`) as pid 1 of its namespaces that forks a fresh
child per execution (the design of Android's zygote and of CPython's forkserver start method).

What it saves per execution: starting bwrap (or unshare), the uid drop, joining the cgroups,
starting Python and importing the runner: about 30 of the 36 ms an execution cost before. What
stays per execution: a fork of the warm interpreter, its own pipes for stdout, stderr and the
channel (the parent still caps and reads them), and the zygote's clean-up after the child.

Protocol (SOCK_SEQPACKET, one message each way per execution): the parent sends b"run" with four
fds (payload memfd, stdout, stderr, channel); the zygote answers b"<wait status> <clean 0|1>"
once the child has exited, every other process of the namespace is dead and the scratch dirs are
empty. An end of file instead means the zygote died. Whenever anything is not as expected (no
answer before the deadline, an output cap hit, unclean, more processes left in the slot's pids
cgroup than at start) the parent kills the whole jail, which takes the namespace down, and the
next execution in the slot starts a new one.
"""

from __future__ import annotations

import json
import marshal
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

READY_TIMEOUT_S = 30.0


class JailStartError(RuntimeError):
    """The jail did not come up (the message is its stderr): an infrastructure failure, retried."""


class Jail:
    """A running jail: the launcher process (bwrap or unshare), the control socket and the zygote's
    host pid (held as a pidfd, so a kill never hits a reused pid)."""

    def __init__(self, proc: subprocess.Popen, control: socket.socket, zygote_pid: int, stderr_fd: int):
        self.proc, self.control, self.zygote_pid, self.stderr_fd = proc, control, zygote_pid, stderr_fd
        self.pidfd = os.pidfd_open(zygote_pid)
        self.pids_baseline: int | None = None  # tasks in the slot's pids cgroup when idle

    @property
    def pids(self) -> set[int]:
        return {self.proc.pid, self.zygote_pid}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, fds: list[int]) -> None:
        socket.send_fds(self.control, [b"run"], fds)

    def answer(self) -> tuple[int, bool] | None:
        """The zygote's answer (wait status, clean), or None if it died."""
        try:
            msg = self.control.recv(64)
        except OSError:
            return None
        try:
            status, clean = msg.split()
            return int(status), clean == b"1"
        except ValueError:
            return None

    def kill(self) -> None:
        """SIGKILL the zygote (pid 1: the kernel kills the rest of its namespace) and the launcher,
        and reap them (the zygote is ours to reap when we are the subreaper and bwrap went first)."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        try:
            os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        except ChildProcessError:  # bwrap reaped it, or it is not ours
            pass
        for closing in (self.control.close, lambda: os.close(self.pidfd), lambda: os.close(self.stderr_fd)):
            try:
                closing()
            except OSError:
                pass

    def stderr(self) -> bytes:
        return os.pread(self.stderr_fd, 65536, 0)


def memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def start_jail(spawn: Callable[..., subprocess.Popen], command: Callable[[int | None], list[str]], spec: dict,
          popen_kwargs: dict, info: bool, timeout: float = READY_TIMEOUT_S) -> Jail:
    """Launch a jail whose command runs `inside.serve(spec)` and wait for the zygote's b"ready".

    `command(info_fd)` builds the launcher's argv (bwrap writes its child's pid to `info_fd`);
    `spawn(argv, **kwargs)` starts it (on a long-lived thread: bwrap's --die-with-parent follows the
    thread that forked it). popen_kwargs: cwd, preexec_fn and pass_fds (more fds to hand down).
    Raises JailStartError with the launcher's stderr when the zygote does not answer in `timeout` s."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    info_r, info_w = os.pipe() if info else (None, None)
    stdin_fd = memfd("curate-zygote-spec", marshal.dumps({**spec, "control": child_end.fileno()}))
    stderr_fd = os.memfd_create("curate-zygote-stderr", os.MFD_CLOEXEC)
    pass_fds = (child_end.fileno(), *popen_kwargs.pop("pass_fds", ()), *((info_w,) if info else ()))
    try:
        proc = spawn(command(info_w), stdin=stdin_fd, stdout=subprocess.DEVNULL, stderr=stderr_fd, env={},
                     pass_fds=pass_fds, **popen_kwargs)
    except OSError as exc:
        for fd in (info_r, info_w, stdin_fd, stderr_fd):
            if fd is not None:
                os.close(fd)
        parent_end.close()
        child_end.close()
        raise JailStartError(str(exc)) from exc
    finally:
        child_end.close()
        for fd in (info_w, stdin_fd):
            if fd is not None:
                os.close(fd)
    try:
        ready = select.select([parent_end], [], [], timeout)[0] and parent_end.recv(16) == b"ready"
        zygote = _zygote_pid(proc, info_r) if ready else None
    finally:
        if info_r is not None:
            os.close(info_r)
    if not ready or zygote is None:
        proc.kill()
        proc.wait()
        message = os.pread(stderr_fd, 65536, 0).decode(errors="replace").strip()
        os.close(stderr_fd)
        parent_end.close()
        raise JailStartError(message or f"the zygote did not start (launcher exit {proc.returncode})")
    try:
        return Jail(proc, parent_end, zygote, stderr_fd)
    except OSError as exc:  # the zygote died since it answered
        proc.kill()
        proc.wait()
        os.close(stderr_fd)
        parent_end.close()
        raise JailStartError(f"the zygote died after starting: {exc}") from exc


def _zygote_pid(proc: subprocess.Popen, info_r: int | None) -> int | None:
    """The zygote's host pid: from bwrap's --info-fd, else the launcher's (unshare's) only child."""
    if info_r is not None:
        data = b""
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if select.select([info_r], [], [], max(0.0, end - time.monotonic()))[0]:
                chunk = os.read(info_r, 4096)
                data += chunk
                try:
                    return int(json.loads(data.decode())["child-pid"])
                except (ValueError, KeyError):
                    if not chunk:
                        return None
        return None
    parent = str(proc.pid)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == parent:
            return int(pid)
    return None
