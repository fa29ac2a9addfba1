"""Run untrusted Python in a layered jail and return what happened; the caller judges it.

Layers, outer to inner (../shared/SANDBOX.md §4), each one recorded in the result's `tier`:
- a pool of slots (slots.py), each with its own uid (61000+) held by a lock file across
  processes, so RLIMIT_NPROC means something (it is ignored for root) and the kernel never sees
  uid 0;
- cgroups v1 per slot: a memory limit (OOM is classified "memory"), a pids limit, a CPU quota;
- rlimits: CPU seconds, address space, processes, file size, open files, no core dumps;
- bubblewrap, started *after* dropping to the slot uid (bwrap as root keeps full capabilities)
  and with an empty environment (bwrap's own pid 1 shows its environment in /proc/1/environ):
  new user/pid/net/ipc/uts/mount namespaces, read-only /usr, size-capped tmpfs for /work, /tmp,
  /dev/shm, the rest of the tree read-only, no network at all;
- seccomp (see seccomp.py);
- the parent's watchdog: a wall-clock deadline, byte caps on stdout/stderr/channel, and on any
  breach SIGKILL to bwrap, whose death takes the whole pid namespace down. The parent is a child
  subreaper and waits for the namespace's pid 1 itself, so no process of a run outlives it.
Without bubblewrap (tier C) `unshare` makes the namespaces and drops to the slot uid, and the
runner fences itself with Landlock and the same seccomp filter before any candidate code runs.

Warm jails (zygote.py; on by default wherever there is a pid namespace, tiers A to C): each slot
keeps its jail running, with a fork server as the namespace's pid 1 that has the runner imported,
and every execution is a fork of that clean process. Per execution the child still gets: fds 0-3
of its own (the parent's byte caps and deadline apply as before), RLIMIT_CPU counted from zero,
the other rlimits, the seccomp filter, Landlock (tier C), the slot uid, cgroups and namespaces it
inherits, and an emptied working dir; after it, every other process of the namespace is killed
and the writable dirs are emptied. A deadline, an output cap, a zygote that died or reports
anything unclean kill the whole jail (as a run was killed before); the slot starts a new one.
`zygote=False` (and tier none, which has no namespace to keep) starts one jail per execution.
"""

from __future__ import annotations

import ast
import atexit
import ctypes
import json
import logging
import marshal
import os
import queue
import resource
import secrets
import select
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from curate.stages.verify import seccomp
from curate.stages.verify.isolation import SandboxUnavailableError, probe
from curate.stages.verify.slots import Limits, Slot, claim_uids, remove_stale_cgroups, remove_stale_workdirs
from curate.stages.verify.zygote import Jail, JailStartError, memfd, start_jail

INSIDE_SOURCE = (Path(__file__).with_name("inside.py")).read_text()
# What `python -c` runs in the jail: it reads the marshalled payload from stdin, which carries the
# runner (inside.py) compiled beforehand by this same interpreter (`runner_code`), and calls its
# main(). Compiling the runner's source in every run cost ~5 ms. Locals only: nothing of the
# payload (the nonce) is left in the jail's __main__.
BOOT = """def _boot():
    import marshal, os
    chunks = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    payload = marshal.loads(b"".join(chunks))
    runner = payload.pop("runner")
    scope = {"__name__": "curate_runner", "__builtins__": __builtins__}
    exec(marshal.loads(runner) if type(runner) is bytes else compile(runner, "<runner>", "exec"), scope)
    scope[payload.pop("entry", "main")](payload)
_boot()
"""
COMPILE = ("import marshal, sys; "
           "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.buffer.read(), '<runner>', 'exec')))")
_RUNNERS: dict[str, bytes | str] = {}
_RUNNERS_LOCK = threading.Lock()
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
log = logging.getLogger("curate.sandbox")


@dataclass
class ExecResult:
    status: str  # finished | timeout | memory | output_limit | crash | infra
    returncode: int | None
    records: list[dict] = field(default_factory=list)  # channel records that carried the nonce
    forged: int = 0  # channel lines without the nonce, or unreadable
    stdout: bytes = b""
    stderr: bytes = b""
    wall_ms: float = 0.0
    tier: str = ""


def runner_code(python: str) -> bytes | str:
    """The runner as a marshalled code object, compiled once per process by `python` itself (a
    code object loads only in the interpreter version that made it); its source where that fails."""
    with _RUNNERS_LOCK:
        if python not in _RUNNERS:
            try:
                done = subprocess.run([python, "-I", "-S", "-c", COMPILE], input=INSIDE_SOURCE.encode(),
                                      capture_output=True, env={}, timeout=60)
                _RUNNERS[python] = done.stdout if done.returncode == 0 and done.stdout else INSIDE_SOURCE
            except (OSError, subprocess.SubprocessError):
                _RUNNERS[python] = INSIDE_SOURCE
            if _RUNNERS[python] is INSIDE_SOURCE:
                log.warning("could not precompile the sandbox runner with %s; each run compiles its source", python)
        return _RUNNERS[python]


def _become_subreaper() -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


class Sandbox:
    """A pool of slots. `run(payload)` executes one program; `run_many` fills every slot.

    `disable` switches layers off (for the overhead benchmark and the tier tests): any of bwrap,
    unshare, uid, seccomp, cgroups. Without bwrap the jail falls back to tier C (unshare +
    Landlock); without either (tier "none") the constructor refuses unless `allow_unsandboxed`.
    `zygote` keeps one warm jail per slot and forks each execution from it (see the module
    docstring); False starts a jail per execution (the cold path, ~30 ms more each).
    """

    def __init__(self, limits: Limits | None = None, slots: int | None = None, allow_unsandboxed: bool = False,
                 python: str | None = None, disable: tuple[str, ...] = (), zygote: bool = True):
        self.limits = limits or Limits()
        self.caps = probe(python)
        self.disable = set(disable)
        unknown = self.disable - {"bwrap", "unshare", "uid", "seccomp", "cgroups"}
        if unknown:
            raise ValueError(f"unknown sandbox layers to disable: {sorted(unknown)}")
        self.use_uid = self.caps.uid_switch and "uid" not in self.disable
        self.use_bwrap = self.caps.jail and self.use_uid and "bwrap" not in self.disable
        # tier C needs seccomp: without bwrap's seccomp-free namespaces, nothing else stops unshare/mount
        self.use_unshare = (not self.use_bwrap and self.caps.fallback_jail and self.use_uid
                            and not self.disable & {"unshare", "seccomp"})
        self.use_seccomp = (self.use_bwrap or self.use_unshare) and self.caps.seccomp and "seccomp" not in self.disable
        self.use_cgroups = self.caps.cgroups and self.use_uid and "cgroups" not in self.disable
        self.use_zygote = zygote and (self.use_bwrap or self.use_unshare)  # needs a pid namespace to be pid 1 of
        if not (self.use_bwrap or self.use_unshare) and not allow_unsandboxed:
            raise SandboxUnavailableError(
                "refusing to run untrusted code without isolation (tier none). Missing: " + self.caps.explain()
                + ". Set allow_unsandboxed: true to run anyway (rlimits only).")
        self.python = self.caps.interpreter or (python or "/usr/bin/python3")
        self.runner = runner_code(self.python)
        self.layers = [name for name, on in (("bwrap", self.use_bwrap), ("unshare", self.use_unshare),
                                             ("landlock", self.use_unshare), ("uid", self.use_uid), ("rlimits", True),
                                             ("seccomp", self.use_seccomp), ("cgroups", self.use_cgroups),
                                             ("zygote", self.use_zygote)) if on]
        if self.use_bwrap:
            self.tier = "A" if self.use_cgroups and self.use_seccomp else "B"
        else:
            self.tier = "C" if self.use_unshare else "none"
        if self.tier != "A":
            why = [f"missing: {self.caps.explain()}"] if self.caps.missing else []
            why += [f"switched off: {', '.join(sorted(self.disable))}"] if self.disable else []
            log.warning("verifier sandbox at tier %s (layers: %s); %s", self.tier, ", ".join(self.layers), "; ".join(why))
        n = slots or max(2, 2 * (os.cpu_count() or 1))
        if self.use_cgroups:
            remove_stale_cgroups(self.caps)
        if self.use_unshare:
            remove_stale_workdirs()
        self.subreaper = _become_subreaper()
        self._slots: queue.Queue[Slot] = queue.Queue()
        self._all: list[Slot] = []
        for uid, fd in claim_uids(n):
            slot = Slot(uid, fd, self.caps, self.limits, self.use_cgroups, private_tmpfs=self.use_unshare)
            self._all.append(slot)
            self._slots.put(slot)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox")
        # jails are launched from one long-lived thread: bwrap's --die-with-parent (and unshare's
        # parent-death signal) fire when the *thread* that forked them ends
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawn") if self.use_zygote else None
        self._closed = False
        atexit.register(self.close)

    @property
    def size(self) -> int:
        return len(self._all)

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        for slot in self._all:
            if slot.jail is not None:
                self._stop_jail(slot)
            slot.close()
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run_many(self, payloads: list[dict]) -> list[ExecResult]:
        return list(self._pool.map(self.run, payloads))

    def run(self, payload: dict) -> ExecResult:
        slot = self._slots.get()
        run_in = self._run_zygote if self.use_zygote else self._run_in
        try:
            result = run_in(slot, payload)
            if result.status == "infra":  # the jail failed to start or its zygote died: once more
                result = run_in(slot, payload)
            return result
        finally:
            self._slots.put(slot)

    def jail_pids(self) -> set[int]:
        """Host pids of the warm jails' launchers and zygotes (the only slot processes between runs)."""
        return {pid for slot in self._all if slot.jail is not None for pid in slot.jail.pids}

    # ------------------------------------------------------------------ one execution

    def _command(self, slot: Slot, info_fd: int | None, seccomp_fd: int | None, as_pid_1: bool = False) -> list[str]:
        # -S: no site module (3-4 ms); the jail's Python sees the standard library only
        inner = [self.python, "-I", "-S", "-u", "-c", BOOT]
        if self.use_unshare:
            uid = str(slot.uid)
            return [self.caps.unshare, "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts",
                    "--setuid", uid, "--setgid", uid, "--", *inner]
        if not self.use_bwrap:
            return inner
        L = self.limits
        args = [self.caps.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--cap-drop", "ALL", *(["--as-pid-1"] if as_pid_1 else []),
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin"]
        prefix = str(Path(self.python).parent.parent)
        if not prefix.startswith("/usr"):
            args += ["--ro-bind", prefix, prefix]
        tmpfs = str(L.tmpfs_mb * 2**20)
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", tmpfs, "--tmpfs", "/dev/shm",
                 "--perms", "1777", "--size", tmpfs, "--tmpfs", "/tmp",
                 "--perms", "0700", "--size", tmpfs, "--tmpfs", "/work",
                 "--remount-ro", "/dev", "--remount-ro", "/",
                 "--chdir", "/work", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work",
                 "--setenv", "LANG", "C.UTF-8"]
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        return args + ["--", *inner]

    def _preexec(self, slot: Slot, cpu: bool = True):
        """cpu=False for a zygote: it lives across executions; each child sets RLIMIT_CPU itself."""
        L = self.limits
        limits = [(resource.RLIMIT_CPU, (self._cpu_limit, self._cpu_limit + 1))] if cpu else []
        limits += [(resource.RLIMIT_AS, ((L.memory_mb + 256) * 2**20,) * 2),
                   (resource.RLIMIT_FSIZE, (L.fsize_mb * 2**20,) * 2),
                   (resource.RLIMIT_NOFILE, (L.nofile,) * 2),
                   (resource.RLIMIT_CORE, (0, 0))]
        if self.use_uid:
            limits.append((resource.RLIMIT_NPROC, (L.nproc,) * 2))
        uid, procs_fds, use_uid, unshare = slot.uid, slot.procs_fds, self.use_uid, self.use_unshare
        prctl = ctypes.CDLL(None, use_errno=True).prctl

        def preexec():  # runs in the forked child: only os/resource calls, no imports, no locks
            pid = str(os.getpid()).encode()
            for fd in procs_fds:
                os.write(fd, pid)
            for which, value in limits:
                resource.setrlimit(which, value)
            if use_uid:
                os.setgroups([])
                if not unshare:  # unshare needs root for the namespaces, then switches uid itself
                    os.setgid(uid)
                    os.setuid(uid)
            if unshare:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # unshare dies with the thread that started it
        return preexec

    @property
    def _cpu_limit(self) -> int:
        return int(self.limits.cpu_s + 0.999)

    def _run_in(self, slot: Slot, payload: dict) -> ExecResult:
        L = self.limits
        nonce = secrets.token_hex(16)
        chan_r, chan_w = os.pipe()
        info_r, info_w = os.pipe() if self.use_bwrap else (None, None)
        seccomp_fd = seccomp.filter_fd() if self.use_seccomp and self.use_bwrap else None
        extra = {"fence": self._fence(slot)} if self.use_unshare else {}
        body = marshal.dumps({**payload, **extra, "nonce": nonce, "channel": chan_w, "runner": self.runner})
        stdin_fd = os.memfd_create("curate-payload", os.MFD_CLOEXEC)
        os.write(stdin_fd, body)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        ooms_before = slot.oom_count()
        pass_fds = tuple(fd for fd in (chan_w, info_w, seccomp_fd) if fd is not None)
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(self._command(slot, info_w, seccomp_fd), stdin=stdin_fd, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={}, cwd=str(slot.workdir or "/"), pass_fds=pass_fds,
                                    preexec_fn=self._preexec(slot), start_new_session=not (self.use_bwrap or self.use_unshare))
        except OSError as exc:
            for fd in (chan_r, chan_w, info_r, info_w, seccomp_fd, stdin_fd):
                if fd is not None:
                    os.close(fd)
            return ExecResult("infra", None, stderr=str(exc).encode(), tier=self.tier)
        for fd in (chan_w, info_w, seccomp_fd, stdin_fd):
            if fd is not None:
                os.close(fd)
        try:
            status, streams = self._watch(proc, chan_r, info_r, start + L.wall)
        except BaseException:
            proc.kill()  # the namespace goes with bwrap
            proc.wait()
            raise
        finally:
            for fd in (chan_r, info_r):
                if fd is not None:
                    os.close(fd)
        rc = proc.wait()
        self._reap_namespace(streams.get("info", b""))
        if self.use_unshare:
            self._reap_orphans(slot.uid)
            slot.empty_workdir()
        wall_ms = (time.perf_counter() - start) * 1000
        if not slot.wait_empty():
            status = status if status != "finished" else "infra"
        if slot.oom_count() > ooms_before and status in ("finished", "crash", "timeout"):
            status = "memory"
        if status == "finished" and rc != 0:
            status = self._classify_exit(rc, streams["stderr"])
        if status == "finished" and rc != 0 and self.use_unshare and wall_ms >= self.limits.cpu_s * 1000:
            # Tier C: unshare can report a child that RLIMIT_CPU killed as a plain exit 1.
            status = "timeout"
        records, forged = _parse_channel(streams["channel"], nonce)
        return ExecResult(status, rc, records, forged, streams["stdout"][-4096:], streams["stderr"][-4096:],
                          wall_ms, self.tier)

    # ------------------------------------------------------------------ one execution in a warm jail

    def _start_jail(self, slot: Slot) -> Jail:
        if self.use_unshare:  # the zygote empties it too, but as the slot uid: root does it first
            slot.empty_workdir()
        workdir = str(slot.workdir) if self.use_unshare else "/work"
        scratch = [(workdir, 0o700)] if self.use_unshare else [("/work", 0o700), ("/tmp", 0o1777), ("/dev/shm", 0o1777)]
        spec = {"runner": self.runner, "entry": "serve", "cpu": self._cpu_limit, "workdir": workdir, "scratch": scratch}
        if self.use_unshare:
            spec["fence"] = self._fence(slot)
        seccomp_fd = seccomp.filter_fd() if self.use_seccomp and self.use_bwrap else None
        try:
            jail = start_jail(lambda argv, **kw: self._spawner.submit(subprocess.Popen, argv, **kw).result(),
                              lambda info_fd: self._command(slot, info_fd, seccomp_fd, as_pid_1=True), spec,
                              {"cwd": str(slot.workdir or "/"), "preexec_fn": self._preexec(slot, cpu=False),
                               "pass_fds": (seccomp_fd,) if seccomp_fd is not None else ()}, info=self.use_bwrap)
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        jail.pids_baseline = slot.pids_current()
        return jail

    def _stop_jail(self, slot: Slot):
        """Kill the slot's jail and wait until nothing of it is left."""
        jail, slot.jail = slot.jail, None
        jail.kill()
        if self.use_unshare:
            self._reap_orphans(slot.uid)
            slot.empty_workdir()
        if not slot.wait_empty():
            log.warning("sandbox slot %d: processes left in its cgroup after its jail was killed", slot.uid)

    def _run_zygote(self, slot: Slot, payload: dict) -> ExecResult:
        if slot.jail is not None and not slot.jail.alive():
            self._stop_jail(slot)
        if slot.jail is None:
            try:
                slot.jail = self._start_jail(slot)
            except JailStartError as exc:  # this one runs in a jail of its own, as without warm jails
                log.warning("sandbox slot %d: the warm jail did not start (%s); running this execution cold",
                            slot.uid, str(exc)[-300:])
                return self._run_in(slot, payload)
        jail = slot.jail
        nonce = secrets.token_hex(16)
        (out_r, out_w), (err_r, err_w), (chan_r, chan_w) = os.pipe(), os.pipe(), os.pipe()
        stdin_fd = memfd("curate-payload", marshal.dumps({**payload, "nonce": nonce, "channel": 3}))
        ooms_before = slot.oom_count()
        start = time.perf_counter()
        try:
            jail.send([stdin_fd, out_w, err_w, chan_w])
            sent = True
        except OSError:
            sent = False
        finally:
            for fd in (stdin_fd, out_w, err_w, chan_w):
                os.close(fd)
        try:
            if sent:
                status, streams, answer = self._watch_zygote(jail, out_r, err_r, chan_r, start + self.limits.wall)
            else:
                status, streams, answer = "infra", {"stdout": b"", "stderr": jail.stderr(), "channel": b""}, None
        except BaseException:
            self._stop_jail(slot)
            raise
        finally:
            for fd in (out_r, err_r, chan_r):
                os.close(fd)
        wall_ms = (time.perf_counter() - start) * 1000
        rc = None
        if answer is None and status == "finished":
            status = "infra"  # the zygote died under the run (or its launcher did)
        clean = answer is not None and answer[1] and status == "finished"
        if clean and jail.pids_baseline is not None:
            clean = slot.pids_current() <= jail.pids_baseline
        if not clean:
            self._stop_jail(slot)
        if slot.oom_count() > ooms_before and status in ("finished", "crash", "timeout", "infra"):
            status = "memory"
        if answer is not None:
            rc = os.waitstatus_to_exitcode(answer[0])
            if status == "finished" and rc != 0:
                status = self._classify_exit(rc, b"")
        records, forged = _parse_channel(streams["channel"], nonce)
        return ExecResult(status, rc, records, forged, streams["stdout"][-4096:], streams["stderr"][-4096:],
                          wall_ms, self.tier)

    def _watch_zygote(self, jail: Jail, out_r: int, err_r: int, chan_r: int, deadline: float):
        """Read the run's pipes (capped) and the zygote's answer until all have ended or the deadline."""
        L = self.limits
        caps = {"stdout": L.output_bytes, "stderr": L.output_bytes, "channel": L.channel_bytes}
        answers = []
        status, streams = _drain({out_r: "stdout", err_r: "stderr", chan_r: "channel"}, caps, deadline,
                                 {jail.control.fileno(): lambda: answers.append(jail.answer())})
        return status, streams, (answers[0] if answers else None)

    def _watch(self, proc: subprocess.Popen, chan_r: int, info_r: int | None, deadline: float):
        L = self.limits
        caps = {"stdout": L.output_bytes, "stderr": L.output_bytes, "channel": L.channel_bytes, "info": 65536}
        fds = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", chan_r: "channel"}
        if info_r is not None:
            fds[info_r] = "info"
        status, streams = _drain(fds, caps, deadline)
        if status != "finished" or proc.poll() is None:
            # bwrap's exit takes the pid namespace with it; wait briefly for a normal exit first
            if status == "finished":
                try:
                    proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    status = "timeout"
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL) if not (self.use_bwrap or self.use_unshare) else proc.kill()
                except ProcessLookupError:
                    pass
        proc.stdout.close()
        proc.stderr.close()
        return status, streams

    def _reap_namespace(self, info: bytes):
        """Wait for the namespace's pid 1, orphaned to us when bwrap exits: then nothing of the run is left."""
        if not self.subreaper or not info:
            return
        try:
            child = int(json.loads(info.decode())["child-pid"])
        except (ValueError, KeyError):
            return
        try:
            os.waitpid(child, 0)
        except ChildProcessError:
            pass

    def _fence(self, slot: Slot) -> dict:
        prefix = str(Path(self.python).parent.parent)
        read = ["/usr", "/lib", "/lib64", "/bin", "/proc", *([prefix] if not prefix.startswith("/usr") else [])]
        return {"abi": self.caps.landlock_abi, "read": read, "devices": ["/dev/null", "/dev/zero", "/dev/urandom"],
                "write": [str(slot.workdir)], "seccomp": seccomp.filter_bytes()}

    def _reap_orphans(self, uid: int):
        """Tier C after a kill: unshare's child (pid 1 of the run's namespace) is orphaned to us;
        killing it takes the namespace down."""
        if not self.subreaper:
            return
        me = str(os.getpid())
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            ppid = stat.rsplit(")", 1)[1].split()[1]
            if ppid == me and f"Uid:\t{uid}\t" in status:
                try:
                    os.kill(int(pid), signal.SIGKILL)  # a credential change cleared unshare's --kill-child
                    os.waitpid(int(pid), 0)
                except ChildProcessError:
                    pass

    def _classify_exit(self, rc: int, stderr: bytes) -> str:
        if self.use_bwrap and rc == 1 and stderr.startswith(b"bwrap:"):
            return "infra"
        sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return "timeout"  # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one
        if sig:
            return "crash"
        return "finished"


def _parse_channel(data: bytes, nonce: str) -> tuple[list[dict], int]:
    records, forged = [], 0
    for line in data.splitlines():
        try:
            record = ast.literal_eval(line.decode("ascii"))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
            forged += 1
            continue
        if not isinstance(record, dict) or record.pop("n", None) != nonce:
            forged += 1
            continue
        records.append(record)
    return records, forged


_DEFAULT: dict[tuple, Sandbox] = {}
_DEFAULT_LOCK = threading.Lock()


def shared_sandbox(limits: Limits, slots: int | None, allow_unsandboxed: bool, python: str | None) -> Sandbox:
    """One pool per process and configuration: stages built twice in one worker share it."""
    key = (limits, slots, allow_unsandboxed, python)
    with _DEFAULT_LOCK:
        if key not in _DEFAULT or _DEFAULT[key]._closed:
            _DEFAULT[key] = Sandbox(limits, slots, allow_unsandboxed, python)
        return _DEFAULT[key]


def _drain(fds: dict[int, str], caps: dict[str, int], deadline: float,
           signals: dict[int, Callable[[], None]] | None = None) -> tuple[str, dict[str, bytes]]:
    """Read the pipes `fds` (fd → stream name) until each has ended, one passes its cap in
    `caps` ("output_limit") or `deadline` (perf_counter seconds) passes ("timeout"); else
    "finished". `signals`: fds whose readiness calls their function once (the zygote's answer),
    read by it, not here. Returns the status and every stream's bytes (those of `caps`)."""
    signals = dict(signals or {})
    streams = {name: bytearray() for name in caps}
    poller = select.poll()
    for fd in (*fds, *signals):
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    fds, status = dict(fds), "finished"
    while fds or signals:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            status = "timeout"
            break
        for fd, _ in poller.poll(remaining * 1000):
            if fd in signals:
                signals.pop(fd)()
                poller.unregister(fd)
                continue
            name = fds.get(fd)
            if name is None:
                continue
            data = os.read(fd, 65536)
            if not data:
                poller.unregister(fd)
                del fds[fd]
                continue
            streams[name] += data
            if len(streams[name]) > caps[name]:
                status = "output_limit"
        if status != "finished":
            break
    return status, {k: bytes(v) for k, v in streams.items()}
