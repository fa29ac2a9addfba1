"""Warm jails (zygote.py, inside.serve): executions forked one after another from one slot's
zygote see nothing of each other, a crashing or killed child leaves the slot working, a child
that tampers with its zygote gets it replaced, and the time limits hold per execution.

Every test uses one slot, so consecutive executions meet the same zygote unless it was replaced
(its host pid tells which).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from curate.stages.verify.isolation import probe
from curate.stages.verify.judge import verify_programs
from curate.stages.verify.plan import plan_tests
from curate.stages.verify.sandbox import Limits, Sandbox

CAPS = probe()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(CAPS.tier == "none", reason=f"no sandbox jail here: {CAPS.explain()}")]
# tier A, tier B (no cgroups: only the zygote's kill(-1) clears a run's processes), tier C
JAILS = {"bwrap": (), "bwrap_no_cgroups": ("cgroups",), "unshare": ("bwrap",)}
OK = ("def f():\n    return 1\n", "assert f() == 1")

# leaves everything it can behind: module state, builtins, a patched preloaded module, a poisoned
# sys.modules entry, env, files (cwd, a 000 dir, /tmp, /dev/shm), a thread and a daemon process
# that write later
LEAVE_STATE = """import builtins, collections, os, re, sys, threading, time
builtins.LEAKED = 1
collections.LEAKED = 1
re.compile = None
sys.modules['json'] = 'poisoned'
os.environ['LEAKED'] = '1'
open('leak.txt', 'w').write('x')
os.mkdir('locked')
open('locked/inner', 'w').write('x')
os.chmod('locked', 0)
for path in ('/tmp/leak', '/dev/shm/leak'):
    try:
        open(path, 'w').write('x')
    except OSError:
        pass
threading.Thread(target=lambda: (time.sleep(0.3), open('thread.txt', 'w'))).start()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.3)
        open('daemon.txt', 'w').write('x')
        time.sleep(60)
    os._exit(0)
def f():
    return 1
"""
# what a later execution must not find (it waits for the thread and the daemon first)
FIND_STATE = """import builtins, collections, os, re, sys, time
def leaks():
    time.sleep(0.6)
    found = []
    if hasattr(builtins, 'LEAKED'):
        found.append('builtins')
    if hasattr(collections, 'LEAKED'):
        found.append('module global')
    if re.compile is None:
        found.append('patched module')
    if sys.modules.get('json') == 'poisoned':
        found.append('sys.modules')
    if 'LEAKED' in os.environ:
        found.append('env')
    found += ['cwd: ' + name for name in os.listdir('.')]
    found += [path for path in ('/tmp/leak', '/dev/shm/leak') if os.path.exists(path)]
    found += ['process ' + p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]
    return found
"""
# the zygote's process attributes, as a child inherits them
ATTRIBUTES = """import ctypes, os, resource
def attributes():
    ioprio = ctypes.CDLL(None).syscall(252, 1, 0) if os.uname().machine == 'x86_64' else None
    return [os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0)), ioprio,
            list(resource.getrlimit(resource.RLIMIT_NOFILE)), list(resource.getrlimit(resource.RLIMIT_AS))]
"""


def one_slot(jail: str, wall_s: float):
    available = {"bwrap": CAPS.jail, "bwrap_no_cgroups": CAPS.jail, "unshare": CAPS.fallback_jail}[jail]
    if not available:
        pytest.skip(f"no {jail} jail here: {CAPS.explain()}")
    sb = Sandbox(Limits(cpu_s=1, wall_s=wall_s, memory_mb=256), slots=1, disable=JAILS[jail])
    assert "zygote" in sb.layers and sb.tier == {"bwrap": CAPS.tier, "bwrap_no_cgroups": "B", "unshare": "C"}[jail]
    return sb


@pytest.fixture(params=sorted(JAILS))
def sandbox(request):
    with one_slot(request.param, wall_s=4) as sb:
        yield sb


@pytest.fixture(params=sorted(JAILS))
def patient_sandbox(request):
    """A wall deadline no busy machine reaches: only the CPU limit can stop a run."""
    with one_slot(request.param, wall_s=60) as sb:
        yield sb


def run(sb: Sandbox, program: tuple[str, str]):
    (verdict,) = verify_programs(sb, [program])
    return verdict


def zygote(sb: Sandbox) -> int:
    (jail,) = [slot.jail for slot in sb._all]
    assert jail is not None and jail.alive()
    return jail.zygote_pid


def test_state_does_not_leak_between_executions_of_a_slot(sandbox):
    assert run(sandbox, (FIND_STATE, "assert leaks() == []")).passed
    first = zygote(sandbox)
    assert run(sandbox, (LEAVE_STATE, "assert f() == 1")).passed
    verdict = run(sandbox, (FIND_STATE, "assert leaks() == []"))
    assert verdict.passed, verdict
    assert zygote(sandbox) == first  # the same warm jail served all three


def test_each_execution_gets_the_cpu_limit_afresh(patient_sandbox):
    spin = ("import time\ndef f():\n    t = time.process_time()\n    while time.process_time() - t < 0.4:\n        pass\n"
            "    return 1\n", "assert f() == 1")
    # 5 x 0.4 s from one zygote: over its 1 s limit if the children's CPU time added up
    assert [run(patient_sandbox, spin).kind for _ in range(5)] == ["passed"] * 5


def test_the_cpu_limit_stops_a_child_and_spares_its_zygote(patient_sandbox):
    run(patient_sandbox, OK)
    first = zygote(patient_sandbox)
    spin = patient_sandbox.run(plan_tests("assert 1 == 1").payload("while True:\n    pass\n"))
    assert (spin.status, spin.returncode) == ("timeout", -signal.SIGXCPU)  # the child's own RLIMIT_CPU, not the deadline
    assert run(patient_sandbox, OK).passed
    assert zygote(patient_sandbox) == first


def test_the_wall_deadline_kills_the_jail_and_the_slot_recovers(sandbox):
    run(sandbox, OK)
    first = zygote(sandbox)
    started = time.monotonic()
    assert run(sandbox, ("import time\ntime.sleep(600)\n", "assert 1 == 1")).kind == "timeout"
    assert time.monotonic() - started < 2 * sandbox.limits.wall
    assert run(sandbox, OK).passed
    assert zygote(sandbox) != first  # the deadline killed the jail, a new one took over


@pytest.mark.parametrize("program, kind", [
    ("import ctypes\nctypes.string_at(0)\n", "crash"),
    ("import os\nos.kill(os.getpid(), 9)\n", "timeout"),  # SIGKILL reads as the CPU limit's hard kill
    ("import os\nos._exit(3)\n", "early_exit"),
    ("raise SystemExit(2)\n", "exit"),
])
def test_a_crashing_or_killed_child_leaves_the_slot_working(sandbox, program, kind):
    run(sandbox, OK)
    first = zygote(sandbox)
    assert run(sandbox, (program, "assert f() == 1")).kind == kind
    assert run(sandbox, OK).passed
    assert zygote(sandbox) == first


# each returns 'blocked' when the attempt on its zygote (pid 1) failed, and passes its test then
HARMLESS = {
    "signals": "import os, signal\ndef attempt():\n    for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM, signal.SIGINT, signal.SIGXCPU):\n"
               "        os.kill(1, sig)  # accepted, and dropped: pid 1 has no handler for it\n"
               "        try:\n            os.kill(-1, sig)\n        except ProcessLookupError:  # no other process\n"
               "            pass\n    return 'blocked'\n",
    "memory": "def attempt():\n    try:\n        open('/proc/1/mem', 'r+b').write(b'x')\n    except OSError:\n        return 'blocked'\n",
    "fds": "import os\ndef attempt():\n    try:\n        os.listdir('/proc/1/fd')\n    except OSError:\n        return 'blocked'\n",
    "environ": "def attempt():\n    try:\n        open('/proc/1/environ').read()\n    except OSError:\n        return 'blocked'\n",
    "sysv_ipc": "import ctypes\ndef attempt():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
                "    if libc.shmget(0, 4096, 0o1600) < 0 and libc.msgget(0, 0o1600) < 0 and libc.semget(0, 1, 0o1600) < 0:\n"
                "        return 'blocked'\n",
}
# succeed, and change what the zygote's next children would inherit: the zygote must be replaced
CORRUPTING = {
    "renice": "import os\nos.setpriority(os.PRIO_PROCESS, 1, 19)\n",
    "affinity": "import os\nos.sched_setaffinity(1, {min(os.sched_getaffinity(0))})\n",
    "rlimit": "import resource\nresource.prlimit(1, resource.RLIMIT_NOFILE, (8, 8))\n",
    **({"ioprio": "import ctypes\nassert ctypes.CDLL(None).syscall(251, 1, 1, 3 << 13) == 0\n"}  # idle class, on pid 1
       if os.uname().machine == "x86_64" else {}),
    "kill_by_cpu_limit": "import os, resource\nresource.prlimit(1, resource.RLIMIT_CPU, (0, 0))\n"
                         "for _ in range(20):\n    if os.fork() == 0:\n        os._exit(0)\n",  # wakes the zygote to reap
}


@pytest.mark.parametrize("name", sorted(HARMLESS))
def test_a_child_cannot_reach_its_zygote(sandbox, name):
    run(sandbox, OK)
    first = zygote(sandbox)
    verdict = run(sandbox, (HARMLESS[name], "assert attempt() == 'blocked'"))
    assert verdict.passed, verdict
    assert run(sandbox, OK).passed
    assert zygote(sandbox) == first


@pytest.mark.parametrize("name", sorted(CORRUPTING))
def test_a_corrupted_or_killed_zygote_is_replaced(sandbox, name):
    (before,) = [run(sandbox, (ATTRIBUTES, "assert attributes() == []")).detail]  # the values, in the failure message
    first = zygote(sandbox)
    run(sandbox, (CORRUPTING[name] + "def f():\n    return 1\n", "assert f() == 1"))  # passes or not: the zygote may die under it
    (after,) = [run(sandbox, (ATTRIBUTES, "assert attributes() == []")).detail]
    assert after == before
    assert run(sandbox, OK).passed
    assert zygote(sandbox) != first


def test_a_zygote_killed_from_outside_mid_run_is_replaced_and_the_run_retried(sandbox):
    run(sandbox, OK)
    first = zygote(sandbox)
    killer = threading.Timer(0.4, lambda: os.kill(first, signal.SIGKILL))
    killer.start()
    verdict = run(sandbox, ("import time\ntime.sleep(0.8)\ndef f():\n    return 1\n", "assert f() == 1"))
    killer.join()
    assert verdict.passed, verdict  # the first attempt died with its jail ("infra"), the retry ran in a new one
    assert zygote(sandbox) != first
    os.kill(zygote(sandbox), signal.SIGKILL)  # between runs
    time.sleep(0.1)
    assert run(sandbox, OK).passed


FORGE = ("import os\nfor fd in os.listdir('/proc/self/fd'):\n    try:\n"
         "        os.write(int(fd), b\"{'t': 'case', 'i': 0, 'v': {'i': '1'}, 'n': 'guess'}\\n\")\n"
         "    except OSError:\n        pass\ndef f():\n    return 2\n", "assert f() == 1")


@pytest.mark.parametrize("jail", ["bwrap", "unshare"])
def test_a_child_holds_no_fd_of_the_zygote_even_one_above_its_nofile_limit(jail):
    """A process that launches the jail with many files open passes the control socket in at a
    high fd number, above the jail's NOFILE limit, where closerange does not reach: a forged
    record written to every fd the child holds must reach only its own pipes (seen in a long CI
    session: the record reached the control socket and the run read as `infra`)."""
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(400)]
    try:
        with one_slot(jail, wall_s=10) as sb:
            assert run(sb, FORGE).kind == "forged"
            assert run(sb, ("def f():\n    return 1\n", "assert f() == 1")).passed  # the same zygote still answers
    finally:
        for fd in held:
            os.close(fd)
