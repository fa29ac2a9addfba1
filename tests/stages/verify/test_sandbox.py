"""Adversarial programs against the verifier sandbox: each gets the right verdict, the host is unharmed.

Two kinds of case. An *escape* case tries something harmful and reports whether it worked; its
test asserts it was blocked, so the expected verdict is a pass (and the host is checked too). A
*verdict* case tries to fail its tests yet be judged passing (or to exhaust a resource); the
expected verdict is a failure of a given kind. All cases run at once, in parallel over the pool.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from curate.stages.verify.isolation import FIRST_SLOT_UID, SandboxUnavailableError, probe
from curate.stages.verify.judge import verify_programs
from curate.stages.verify.plan import plan_tests
from curate.stages.verify.sandbox import Limits, Sandbox

CAPS = probe()
pytestmark = [pytest.mark.sandbox, pytest.mark.skipif(CAPS.tier == "none", reason=f"no sandbox jail here: {CAPS.explain()}")]
# the bubblewrap jail (tier A or B) and the fallback without it (tier C), each where this machine has
# it: warm jails (an execution forked from the slot's zygote) and, for bubblewrap, a jail per execution
JAILS = {"bwrap": {}, "bwrap_cold": {"zygote": False}, "unshare": {"disable": ("bwrap",)}}

SECRET = "curate-test-secret-4711"
HOST_DIR = Path(f"/tmp/curate-sandbox-host-{os.getpid()}")
MARKER = HOST_DIR / "marker.txt"

BLOCKED = "assert attempt() == 'blocked'"


def escape(body: str) -> str:
    """A program whose attempt() returns 'blocked' when the harmful action failed."""
    indented = "\n".join("        " + line for line in body.strip().splitlines())
    return f"import os, sys, socket, subprocess\ndef attempt():\n    try:\n{indented}\n    except Exception:\n        return 'blocked'\n    return 'escaped'\n"


def cases(port: int) -> dict[str, tuple[str, str, str]]:
    """name → (solution, tests, expected kind or kinds); 'passed' means the attack was blocked."""
    return {
        # resources
        "infinite_loop": ("while True:\n    pass\n", "assert 1 == 1", "timeout"),
        "sleep_forever": ("import time\ntime.sleep(600)\n", "assert 1 == 1", "timeout"),
        "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                      "assert 1 == 1", "timeout"),
        "memory_bomb": ("x = bytearray(8 << 30)\n", "assert 1 == 1", "memory"),
        "memory_growth": ("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n", "assert 1 == 1", "memory"),
        "huge_output": ("while True:\n    print('x' * 10000)\n", "assert 1 == 1", "output_limit"),
        "deep_recursion": ("def r(n):\n    return r(n + 1)\nr(0)\n", "assert 1 == 1", "recursion"),
        "deep_recursion_no_limit": ("import sys\nsys.setrecursionlimit(10**8)\ndef r(n):\n    return r(n + 1) + 1\nr(0)\n",
                                    "assert 1 == 1", ("crash", "memory", "timeout")),  # 3.11 frames live on the heap
        "ctypes_crash": ("import ctypes\nctypes.string_at(0)\n", "assert 1 == 1", "crash"),
        "disk_fill": (escape("with open('fill', 'wb') as f:\n    for _ in range(4096):\n        f.write(b'x' * (1 << 20))"),
                      BLOCKED, "passed"),
        "many_files_fill": (escape("for i in range(10000):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))"),
                            BLOCKED, "passed"),
        # the file system
        "write_outside_workdir": (escape(f"open('{HOST_DIR}/pwned', 'w').write('x')"), BLOCKED, "passed"),
        "overwrite_host_marker": (escape(f"open('{MARKER}', 'w').write('pwned')"), BLOCKED, "passed"),
        "write_usr": (escape("open('/usr/pwned', 'w').write('x')"), BLOCKED, "passed"),
        "write_root_of_jail": (escape("open('/pwned', 'w').write('x')"), BLOCKED, "passed"),
        "read_shadow": (escape("open('/etc/shadow').read()"), BLOCKED, "passed"),
        "read_project_files": (escape(f"open('{Path(__file__).resolve()}').read()"), BLOCKED, "passed"),
        "read_root_home": (escape("os.listdir('/root')"), BLOCKED, "passed"),
        "symlink_to_host_file": (escape("os.symlink('/etc/passwd', 'l')\nopen('l').read()"), BLOCKED, "passed"),
        "symlink_via_proc_root": (escape("open('/proc/1/root/etc/shadow').read()"), BLOCKED, "passed"),
        "proc_snooping": (escape("pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                                 "assert len(pids) > 3 or open('/proc/1/environ').read()"), BLOCKED, "passed"),
        "mount_tmpfs": (escape("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                               "assert libc.mount(b'none', b'/work', b'tmpfs', 0, None) == 0"), BLOCKED, "passed"),
        "become_root": (escape("os.setuid(0)"), BLOCKED, "passed"),
        # network, secrets, processes
        "connect_localhost": (escape(f"socket.create_connection(('127.0.0.1', {port}), timeout=1)"), BLOCKED, "passed"),
        "dns_lookup": (escape("socket.getaddrinfo('pypi.org', 443)"), BLOCKED, "passed"),
        "environment_secrets": (escape(f"assert '{SECRET}' in repr(dict(os.environ)) + open('/proc/1/environ').read()"),
                                BLOCKED, "passed"),
        "subprocess_shell": (escape("out = subprocess.run(['sh', '-c', 'cat /etc/shadow /etc/passwd; id -u'], "
                                    "capture_output=True, text=True).stdout\nassert 'root:' in out or out.strip() == '0'"),
                             BLOCKED, "passed"),
        "kill_parent": ("import os, signal\nfor pid in {os.getppid(), 1, -1} - {0}:\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
                        "    except OSError:\n        pass\ndef f():\n    return 1\n", "assert f() == 1", "passed"),  # nothing outside is visible
        "daemon_outlives_run": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                                "        time.sleep(60)\n    os._exit(0)\ndef f():\n    return 1\n", "assert f() == 1", "passed"),
        # forged verdicts
        "os_exit_before_tests": ("import os\nos._exit(0)\n", "assert f() == 1", "early_exit"),
        "sys_exit_before_tests": ("import sys\nsys.exit(0)\n", "assert f() == 1", "exit"),
        "exit_inside_call": ("import os\ndef f():\n    os._exit(0)\n", "assert f() == 1", "early_exit"),
        "print_pass_marker": ("print('passed')\nprint('{\"t\": \"done\", \"count\": 1}')\ndef f():\n    return 2\n",
                              "assert f() == 1", "wrong_output"),
        "forge_channel_records": ("import os\nfor fd in os.listdir('/proc/self/fd'):\n    try:\n"
                                  "        os.write(int(fd), b\"{'t': 'case', 'i': 0, 'v': {'i': '1'}, 'n': 'guess'}\\n\")\n"
                                  "    except OSError:\n        pass\ndef f():\n    return 2\n", "assert f() == 1", "forged"),
        "steal_nonce_io_mode": ("import sys\ndef f():\n    frame = sys._getframe()\n    while frame:\n"
                                "        send = frame.f_locals.get('send')\n        if send:\n"
                                "            send({'t': 'case', 'i': 0, 'v': {'i': '1'}})\n        frame = frame.f_back\n"
                                "    return 2\n", "assert f() == 1", "forged"),
        "always_equal_object": ("class Eq:\n    def __eq__(self, other):\n        return True\ndef f():\n    return Eq()\n",
                                "assert f() == 1", "exception:TypeError"),
        "always_equal_int_subclass": ("class Int(int):\n    def __eq__(self, other):\n        return True\n"
                                      "def f():\n    return Int(2)\n", "assert f() == 1", "exception:TypeError"),
        "always_equal_assert_mode": ("class Eq:\n    def __eq__(self, other):\n        return True\ndef f():\n    return Eq()\n",
                                     "x = 1\nassert f() == x", "assertion"),
        "patched_assertion_error": ("import builtins\nclass Quiet(Exception):\n    pass\nbuiltins.AssertionError = Quiet\n"
                                    "def f():\n    return 2\n", "x = 1\nassert f() == x", "exception:AssertionError"),
        "settrace_skips_tests": ("import sys\ndef skip(frame, event, arg):\n    raise SystemExit(0)\nsys.settrace(skip)\n"
                                 "def f():\n    return 2\n", "x = 1\nassert f() == x", "assertion"),
        # standard-library values, floats and main blocks (issue 18): still nothing passes that is wrong
        "fake_stdlib_type_name": ("import collections\nclass Eq(dict):\n    __module__ = 'collections'\n    __qualname__ = 'Counter'\n"
                                  "    def __eq__(self, other):\n        return True\ndef f():\n    return Eq()\n",
                                  "assert f() == {'a': 1}", "exception:TypeError"),
        "patched_stdlib_type": ("import collections\nclass Eq(dict):\n    __module__ = 'collections'\n    __qualname__ = 'Counter'\n"
                                "    def __eq__(self, other):\n        return True\ncollections.Counter = Eq\ndef f():\n    return Eq()\n",
                                "assert f() == {'a': 1}", "wrong_output"),  # fooled runner, but the parent builds the value
        "metaclass_hides_own_eq": ("class Meta(type):\n    __mro__ = property(lambda cls: (int, object))\n"
                                   "class Int(int, metaclass=Meta):\n    def __eq__(self, other):\n        return True\n"
                                   "def f():\n    return Int(2)\n", "assert f() == 1", "exception:TypeError"),
        "always_equal_namedtuple": ("from collections import namedtuple\nclass P(namedtuple('P', 'x')):\n"
                                    "    def __eq__(self, other):\n        return True\ndef f():\n    return P(2)\n",
                                    "assert f() == (1,)", "exception:TypeError"),
        "list_subclass_lies_when_iterated": ("class L(list):\n    def __iter__(self):\n        return iter([1])\n"
                                             "def f():\n    return L([2])\n", "assert f() == [1]", "wrong_output"),
        "str_subclass_repr_injection": ("class S(str):\n    def __repr__(self):\n        return \"'a'}, 'n': 'x'}\"\n"
                                        "    __str__ = __repr__\ndef f():\n    return S('b')\n", "assert f() == 'a'", "wrong_output"),
        "truthy_opaque_object": ("class Yes:\n    def __bool__(self):\n        return True\ndef f():\n    return Yes()\n",
                                 "assert f() == 1", "wrong_output"),
        "nan_against_the_tolerance": ("def f():\n    return [float('nan'), float('inf')]\n", "assert f() == [1.0, 2.0]", "wrong_output"),
        "huge_fraction": ("from fractions import Fraction\ndef f():\n    return Fraction(3 ** 60000, 2 ** 90000)\n",
                          "assert f() == 0.5", "exception:TypeError"),
        "main_block_exit_after_wrong": ("import os\ndef f():\n    return 2\nif __name__ == '__main__':\n    os._exit(0)\n",
                                        "assert f() == 1", "wrong_output"),
        "exit_unless_main": ("import os\nif __name__ != '__main__':\n    os._exit(0)\ndef f():\n    return 2\n",
                             "assert f() == 1", "early_exit"),
    }


@pytest.fixture(scope="module")
def host():
    HOST_DIR.mkdir(exist_ok=True)
    MARKER.write_text("intact")
    os.environ["CURATE_SANDBOX_TEST_SECRET"] = SECRET
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield {"port": server.getsockname()[1], "accepted": accepted}
    stop.set()
    thread.join()
    server.close()
    os.environ.pop("CURATE_SANDBOX_TEST_SECRET", None)
    for p in HOST_DIR.iterdir():
        p.unlink()
    HOST_DIR.rmdir()


@pytest.fixture(scope="module", params=sorted(JAILS))
def sandbox(request):
    available = CAPS.fallback_jail if request.param == "unshare" else CAPS.jail
    if not available:
        pytest.skip(f"no {request.param} jail here: {CAPS.explain()}")
    with Sandbox(Limits(cpu_s=1.5, wall_s=6, memory_mb=256), slots=4, **JAILS[request.param]) as sb:
        assert sb.tier in (("C",) if request.param == "unshare" else ("A", "B"))
        assert ("zygote" in sb.layers) == (request.param != "bwrap_cold")
        yield sb


@pytest.fixture(scope="module")
def outcomes(sandbox, host):
    table = cases(host["port"])
    started = time.monotonic()
    verdicts = verify_programs(sandbox, [(sol, tests) for sol, tests, _ in table.values()])
    return {"verdicts": dict(zip(table, verdicts)), "expected": {k: v[2] for k, v in table.items()},
            "seconds": time.monotonic() - started}


def test_the_suite_is_large_enough(host):
    assert len(cases(host["port"])) >= 25


@pytest.mark.parametrize("name", sorted(cases(0)))
def test_adversarial_case_gets_its_verdict(outcomes, name):
    verdict, expected = outcomes["verdicts"][name], outcomes["expected"][name]
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert verdict.kind in expected, (name, verdict)
    assert verdict.passed == (expected == ("passed",))


def slot_processes() -> list[int]:
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if FIRST_SLOT_UID <= uid < FIRST_SLOT_UID + 512 and "State:\tZ" not in status:
            alive.append(int(pid))
    return alive


def test_host_is_unharmed(outcomes, host, sandbox):
    assert MARKER.read_text() == "intact"
    assert sorted(p.name for p in HOST_DIR.iterdir()) == ["marker.txt"]
    assert not Path("/usr/pwned").exists() and not Path("/pwned").exists()
    assert host["accepted"] == []
    # daemons and fork-bomb children died with their runs: what is left is each slot's warm jail
    assert set(slot_processes()) <= sandbox.jail_pids()
    # every slot still works after the attacks
    ok = verify_programs(sandbox, [("def f():\n    return 1\n", "assert f() == 1")] * sandbox.size * 2)
    assert all(v.passed and v.strength == "io" for v in ok)


def test_verdict_strength_follows_the_test_shape(sandbox):
    io, in_process = verify_programs(sandbox, [("def f(x):\n    return x * 2\n", "assert f(2) == 4\nassert f(0) is not None"),
                                               ("def f(x):\n    return x * 2\n", "for i in range(3):\n    assert f(i) == 2 * i")])
    assert (io.passed, io.strength) == (True, "in_process")  # `is not None` is not an I/O shape
    assert (in_process.passed, in_process.strength) == (True, "in_process")
    plan = plan_tests("from math import sqrt\nassert f(4) == 2.0\nassert 3 == g()\nassert h() is None\nassert ok()\nassert not bad()")
    assert plan.mode == "io" and plan.calls == ["f(4)", "g()", "h()", "ok()", "bad()"]
    assert [c.op for c in plan.checks] == ["eq", "eq", "is", "truthy", "falsy"] and "2.0" not in "".join(plan.calls)


def test_io_mode_compares_types_like_python(sandbox):
    sol = "def f(kind):\n    return {'list': [1, 2], 'tuple': (1, 2), 'float': 1.0, 'bool': True, 'set': {1, 2}}[kind]\n"
    verdicts = verify_programs(sandbox, [(sol, "assert f('list') == [1, 2]"), (sol, "assert f('tuple') == [1, 2]"),
                                         (sol, "assert f('float') == 1"), (sol, "assert f('bool') is True"),
                                         (sol, "assert f('float') is True"), (sol, "assert f('set') == {2, 1}")])
    assert [v.passed for v in verdicts] == [True, False, True, True, False, True]


def test_refuses_to_run_without_isolation_unless_allowed():
    with pytest.raises(SandboxUnavailableError, match="allow_unsandboxed"):
        Sandbox(disable=("bwrap", "unshare"))
    with Sandbox(disable=("bwrap", "unshare"), allow_unsandboxed=True, slots=1) as bare:
        (verdict,) = verify_programs(bare, [("def f():\n    return 1\n", "assert f() == 1")])
        assert verdict.passed and verdict.strength == "none" and bare.tier == "none"
