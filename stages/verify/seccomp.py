"""The seccomp filter handed to bwrap (`--seccomp FD`): compiled once per process as BPF bytes.

Default allow; denied with EPERM: sockets other than AF_UNIX (EACCES), ptrace and cross-process
memory access, mounts and namespace changes, kernel keyrings, BPF, perf, userfaultfd, io_uring,
the TIOCSTI ioctl (typing into the caller's terminal, CVE-2017-5226), and creating SysV IPC
objects or POSIX message queues: they live in the jail's IPC namespace, which a warm jail keeps
across executions, so one execution could leave them for the next (the standard library uses
neither; its semaphores and shared memory are files in /dev/shm, emptied after each run).
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import tempfile

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "unshare",
    "setns", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "init_module",
    "finit_module", "delete_module", "swapon", "swapoff", "reboot", "acct", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "syslog",
    "shmget", "semget", "msgget", "mq_open",
)
TIOCSTI = 0x5412


@functools.lru_cache(maxsize=1)
def filter_bytes() -> bytes:
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    f.add_rule(sc.ERRNO(errno.EACCES), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    for name in DENIED:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except Exception:  # a syscall this architecture lacks
            pass
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def filter_fd() -> int:
    """A fresh readable fd holding the filter (bwrap reads it to the end)."""
    fd = os.memfd_create("curate-seccomp", os.MFD_CLOEXEC)
    os.write(fd, filter_bytes())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
