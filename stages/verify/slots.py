"""Execution slots: a uid of its own (held by a lock file across processes), per-slot cgroups
(memory, pids, a CPU quota), and for tier C a private size-capped tmpfs work dir; plus the
clean-up of what a process that died without closing its sandbox left behind."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from curate.stages.verify.isolation import FIRST_SLOT_UID, Capabilities, SandboxUnavailableError

LOCK_DIR = Path("/tmp/curate-sandbox-slots")
WORK_DIR = Path("/tmp/curate-sandbox-work")  # tier C: per-slot tmpfs mounts
MAX_SLOT_UIDS = 512


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 4.0
    wall_s: float | None = None  # default: 2 × cpu_s + 1
    memory_mb: int = 512
    nproc: int = 32
    fsize_mb: int = 16
    nofile: int = 64
    tmpfs_mb: int = 32
    cpu_share: int = 1  # CPUs one execution may use at once (cgroup cpu quota), whatever it forks
    output_bytes: int = 64 * 1024  # stdout and stderr, each
    channel_bytes: int = 8 * 2**20

    @property
    def wall(self) -> float:
        return self.wall_s if self.wall_s is not None else 2 * self.cpu_s + 1




class Slot:
    """One execution at a time: a uid nobody else uses, and (tier A) its own cgroups."""

    def __init__(self, uid: int, lock_fd: int, caps: Capabilities, limits: Limits, use_cgroups: bool,
                 private_tmpfs: bool = False):
        self.uid = uid
        self.lock_fd = lock_fd
        self.jail = None  # the slot's warm jail (zygote.Jail), kept by the Sandbox between executions
        self.workdir: Path | None = None
        if private_tmpfs:  # tier C: the only writable place, size-capped, emptied after every run
            WORK_DIR.mkdir(mode=0o711, exist_ok=True)
            self.workdir = WORK_DIR / f"{os.getpid()}-{uid}"
            self.workdir.mkdir(mode=0o700, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={limits.tmpfs_mb}m,mode=0700,uid={uid},gid={uid},nosuid,nodev",
                            "tmpfs", str(self.workdir)], check=True, capture_output=True)
        self.cgroup_dirs: list[Path] = []
        self.procs_fds: list[int] = []
        if use_cgroups:
            name = f"curate-sbx-{os.getpid()}-{uid}"
            mem, pids = caps.cgroup_memory / name, caps.cgroup_pids / name
            for d in (mem, pids):
                d.mkdir(exist_ok=True)
                self.cgroup_dirs.append(d)
            limit = str(limits.memory_mb * 2**20 + limits.tmpfs_mb * 3 * 2**20)
            (mem / "memory.limit_in_bytes").write_text(limit)
            if (mem / "memory.memsw.limit_in_bytes").exists():
                try:
                    (mem / "memory.memsw.limit_in_bytes").write_text(limit)
                except OSError:
                    pass
            (pids / "pids.max").write_text(str(limits.nproc))
            self.memory_dir, self.pids_dir = mem, pids
            if caps.cgroup_cpu:
                cpu = caps.cgroup_cpu / name
                cpu.mkdir(exist_ok=True)
                (cpu / "cpu.cfs_quota_us").write_text(str(limits.cpu_share * 100_000))
                (cpu / "cpu.cfs_period_us").write_text("100000")
                self.cgroup_dirs.append(cpu)
            self.procs_fds = [os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in self.cgroup_dirs]

    def oom_count(self) -> int:
        """OOM kills in this slot's memory cgroup so far (memory.failcnt stays 0 here; oom_control counts)."""
        if not self.cgroup_dirs:
            return 0
        for line in (self.memory_dir / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return int((self.memory_dir / "memory.failcnt").read_text())

    def pids_current(self) -> int | None:
        """Tasks now in the slot's pids cgroup (None without cgroups)."""
        if not self.cgroup_dirs:
            return None
        return int((self.pids_dir / "pids.current").read_text())

    def wait_empty(self, timeout: float = 2.0) -> bool:
        if not self.cgroup_dirs:
            return True
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not (self.pids_dir / "cgroup.procs").read_text().strip():
                return True
            time.sleep(0.005)
        return False

    def empty_workdir(self):
        if self.workdir:
            for entry in os.scandir(self.workdir):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)

    def close(self):
        if self.workdir:
            subprocess.run(["umount", "-l", str(self.workdir)], capture_output=True)
            try:
                self.workdir.rmdir()
            except OSError:
                pass
        for fd in self.procs_fds:
            os.close(fd)
        for d in self.cgroup_dirs:
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.01)
        os.close(self.lock_fd)


def claim_uids(n: int) -> list[tuple[int, int]]:
    LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    claimed = []
    for uid in range(FIRST_SLOT_UID, FIRST_SLOT_UID + MAX_SLOT_UIDS):
        fd = os.open(LOCK_DIR / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        claimed.append((uid, fd))
        if len(claimed) == n:
            return claimed
    for _, fd in claimed:
        os.close(fd)
    raise SandboxUnavailableError(f"no free sandbox uids in {FIRST_SLOT_UID}..{FIRST_SLOT_UID + MAX_SLOT_UIDS}")


def remove_stale_cgroups(caps: Capabilities) -> None:
    """Slot cgroups left by a process that died without closing its sandbox (a killed Ray worker)."""
    for base in (caps.cgroup_memory, caps.cgroup_pids, caps.cgroup_cpu):
        for d in base.glob("curate-sbx-*-*") if base else ():
            pid = d.name.split("-")[2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    d.rmdir()
                except OSError:
                    pass


def remove_stale_workdirs() -> None:
    """Tier C work-dir mounts left by a process that died without closing its sandbox."""
    for d in WORK_DIR.glob("*-*") if WORK_DIR.exists() else ():
        pid = d.name.split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["umount", "-l", str(d)], capture_output=True)
            try:
                d.rmdir()
            except OSError:
                pass
