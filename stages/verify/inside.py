"""The trusted runner that executes inside the jail (standard library only, under `python -I -S`).

sandbox.py's bootstrap reads the payload (marshal, written by the parent) from stdin, loads this
runner from it (precompiled) and calls main(payload) (or, in a warm jail, serve(spec): the fork
server that calls main in a fresh child per execution), which closes stdin before any candidate
code runs, then reports one record per test over an inherited pipe (its fd number is in
the payload): one line per record, a dict written with ascii() that the parent reads with
ast.literal_eval, carrying the run's nonce. (json would cost 7 ms of imports per run.) It decides
nothing: the parent checks the records against what it expects.

The solution runs as an imported module named `solution` (registered in sys.modules), never as
`__main__`: like human-eval and evalplus, whose harnesses exec the code without running its
`if __name__ == "__main__":` demo block, a block that reads stdin, loops or exits is not run.
The tests are the script: they run in the solution's namespace with `__name__ == "__main__"`, so
a tests' own main block (`if __name__ == "__main__": test_f()`) does run.
  io mode:     runs the solution, then evaluates each call and sends back its value in a canonical
               encoding (`encode`) that the parent rebuilds with types of its own; no object made
               in the jail leaves it, and the expected values never enter it. Encoded: builtin
               values; the standard library's Counter, OrderedDict, defaultdict, deque, Fraction,
               Decimal, range and dict key/item views; subclasses of builtin types that keep their
               base's `==` (namedtuple, IntEnum, ...) as their base value; objects that keep
               object's identity `==` (a generator, a function) and standard-library values
               never equal to a builtin one (date, timedelta, UUID, a path) as an opaque value
               equal to nothing a test can write. A value whose type defines its own `==` (say an int
               whose == is always true) cannot be encoded: exception:TypeError.
  assert mode: runs the solution, then each top-level test statement, and reports ok or the
               failure kind. `assert a == b` compares with plain `==` only when both sides can be
               encoded (otherwise both must be of one exact type); when it fails on numbers within
               the payload's float tolerance the assertion message starts with "float rounding".
               Code in the same process could forge these (strength in_process).
"""

import builtins
import marshal
import os
import sys

# Standard-library types the runner encodes, named by (module, name): they are looked up in
# sys.modules when met (importing them up front would cost every run). "o": types whose == is
# false against every builtin value, so against every literal a test can write (encoded opaque).
STDLIB = {("collections", "Counter"): "ctr", ("collections", "OrderedDict"): "od",
          ("collections", "defaultdict"): "dd", ("collections", "deque"): "dq",
          ("fractions", "Fraction"): "fr", ("decimal", "Decimal"): "dec",
          **{("datetime", name): "o" for name in ("date", "datetime", "time", "timedelta", "timezone")},
          ("uuid", "UUID"): "o", ("pathlib", "PosixPath"): "o", ("pathlib", "PurePosixPath"): "o"}


def main(payload=None):
    _write, _exit, _ascii, _type, _len = os.write, os._exit, ascii, type, len
    _settrace, _BaseException, _AssertionError, _TypeError = sys.settrace, BaseException, AssertionError, TypeError
    _isinstance, _bool, _abs, _getattr, _modules, _object = isinstance, bool, abs, getattr, sys.modules, object
    # the real MRO, dict, name and module of a class, whatever its metaclass says
    _mro, _cdict = type.__dict__["__mro__"].__get__, type.__dict__["__dict__"].__get__
    _qualname, _module = type.__dict__["__qualname__"].__get__, type.__dict__["__module__"].__get__
    if payload is None:  # run as a script: the payload is on stdin
        chunks = []
        while True:
            chunk = os.read(0, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        payload = marshal.loads(b"".join(chunks))
    os.close(0)
    os.open("/dev/null", os.O_RDONLY)  # becomes fd 0 again
    nonce, channel = payload["nonce"], payload["channel"]
    tolerance = payload.get("tol") or 0.0
    if payload.get("fence"):
        fence(payload["fence"])

    def send(record):
        record["n"] = nonce
        _write(channel, (_ascii(record) + "\n").encode())

    def kind(exc):
        t = _type(exc)
        if t is AssertionError:  # looked up now (a patched builtins.AssertionError shows)
            return "assertion"
        if t is MemoryError:
            return "memory"
        if t is RecursionError:
            return "recursion"
        if t is SystemExit:
            return "exit"
        if issubclass(t, SyntaxError):
            return "syntax_error"
        return "exception:" + t.__name__

    def message(exc):
        try:
            return str(exc)[:300]
        except _BaseException:
            return "<unprintable>"

    # how each builtin base type is read without calling a subclass's own methods
    items = {list: ("l", list.__iter__), tuple: ("t", tuple.__iter__), set: ("set", set.__iter__),
             frozenset: ("fs", frozenset.__iter__)}
    bases = {int, float, complex, str, bytes, bytearray, dict, *items}
    real, imag = complex.real.__get__, complex.imag.__get__
    views = {_type({}.keys()): "dk", _type({}.items()): "di", range: "r"}

    def classify(t):
        """A standard-library tag, the builtin base whose == t keeps, object (identity ==) or None
        (an == of its own). Not cached: a class can be changed between two calls."""
        tag = STDLIB.get((_module(t), _qualname(t)))
        if tag is not None:
            module = _modules.get(_module(t))
            if module is not None and _getattr(module, _qualname(t), None) is t:
                return tag
        for k in _mro(t):
            if k in bases or k is _object:
                return k
            if "__eq__" in _cdict(k):
                return None
        return None

    def pairs(iterable, depth):
        return [[encode(k, depth), encode(v, depth)] for k, v in iterable]

    def base_value(b, value, depth):
        if b is int:
            return {"i": int.__format__(value, "x")}  # hex: no 4,300-digit limit
        if b is float:
            return {"f": float.__repr__(value)}
        if b is str:
            return {"s": str.__str__(value)}
        if b in items:
            tag, iterate = items[b]
            return {tag: [encode(v, depth) for v in iterate(value)]}
        if b is dict:
            return {"d": pairs(dict.items(value), depth)}
        if b is bytes:
            return {"y": bytes.hex(value)}
        if b is bytearray:
            return {"ya": bytearray.hex(value)}
        return {"c": [float.__repr__(real(value)), float.__repr__(imag(value))]}  # complex

    def encode(value, depth=0):
        if depth > 64:
            raise _TypeError("value nested too deeply")
        depth += 1
        t = _type(value)
        if value is None:
            return None
        if t is bool:
            return {"b": value}
        if t in bases:
            return base_value(t, value, depth)
        tag = views.get(t)
        if tag == "dk":
            return {tag: [encode(k, depth) for k in value]}
        if tag == "di":
            return {tag: pairs(value, depth)}
        if tag == "r":
            return {tag: [encode(value.start), encode(value.stop), encode(value.step)]}
        how = classify(t)
        if how is None:
            raise _TypeError("cannot return a " + _qualname(t) + ": its == is its own (values are compared outside "
                             "the jail: builtin and standard-library ones, or objects with identity ==)")
        if how is _object or how == "o":
            return {"o": [_qualname(t), None]}
        if how in bases:
            return {"x": [_qualname(t), base_value(how, value, depth)]}
        if how in ("ctr", "dd"):
            return {how: pairs(dict.items(value), depth)}
        if how == "od":
            return {how: pairs(t.items(value), depth)}
        if how == "dq":
            return {how: [encode(v, depth) for v in t.__iter__(value)]}
        if how == "dec":
            return {how: t.__str__(value)}
        n, d = value.numerator, value.denominator  # Fraction
        if _type(n) is not int or _type(d) is not int or n.bit_length() > 80_000 or d.bit_length() > 80_000:
            raise _TypeError("a Fraction of non-int or over-80,000-bit parts")  # the parent's limit
        return {how: [int.__format__(n, "x"), int.__format__(d, "x")]}

    def encodable(value):
        try:
            encode(value)
            return True
        except _BaseException:
            return False

    def near(a, b, depth=0):
        """Unequal, but equal within the float tolerance (numbers, and lists, tuples, dicts of them)."""
        if depth > 64:
            return False
        ta, tb = _type(a), _type(b)
        if ta in (int, float, complex) and tb in (int, float, complex) and (ta is not int or tb is not int):
            return _abs(a - b) <= tolerance
        if (_isinstance(a, list) and _isinstance(b, list)) or (_isinstance(a, tuple) and _isinstance(b, tuple)):
            return _len(a) == _len(b) and all(x == y or near(x, y, depth + 1) for x, y in zip(a, b))
        if _isinstance(a, dict) and _isinstance(b, dict) and a.keys() == b.keys():
            return all(a[k] == b[k] or near(a[k], b[k], depth + 1) for k in a)
        return False

    def strict_eq(a, b):
        trusted = encodable(a) and encodable(b)
        equal = a == b if trusted else _type(a) is _type(b) and a == b
        if not equal and trusted and tolerance:
            try:
                shown = "%.200r == %.200r" % (a, b) if near(a, b) else None
            except _BaseException:
                shown = None
            if shown:
                raise _AssertionError("float rounding: " + shown + " is False, but they differ by less than %r "
                                      "(assert mode compares exactly)" % tolerance)
        return equal

    module = _type(sys)("solution")
    namespace = module.__dict__
    namespace.update({"__builtins__": builtins, "__curate_strict_eq__": strict_eq})
    _modules["solution"] = module
    try:
        code = compile(payload["solution"], "<solution>", "exec")
    except _BaseException as exc:
        send({"t": "solution", "e": "syntax_error", "m": message(exc)})
        _exit(0)
    try:
        exec(code, namespace)
        namespace["__name__"] = "__main__"  # the tests are the script
        if payload.get("setup"):
            exec(compile(payload["setup"], "<setup>", "exec"), namespace)
    except _BaseException as exc:
        send({"t": "solution", "e": kind(exc), "m": message(exc)})
        _exit(0)

    io = payload["mode"] == "io"
    cases = payload["calls"] if io else payload["tests"]
    for i, source in enumerate(cases):
        _settrace(None)
        try:
            if io:
                value = eval(compile(source, "<call %d>" % i, "eval"), namespace)
                encoded = encode(value)
                if _type(encoded) is dict and "o" in encoded:  # truthiness, for `assert f()`
                    try:
                        encoded["o"][1] = _bool(value)
                    except _BaseException:
                        pass
                if _len(_ascii(encoded)) > 1_000_000:
                    raise _TypeError("return value too large")
                send({"t": "case", "i": i, "v": encoded})
            else:
                exec(compile(source, "<test %d>" % i, "exec"), namespace)
                send({"t": "case", "i": i, "ok": True})
        except _BaseException as exc:
            send({"t": "case", "i": i, "e": kind(exc), "m": message(exc)})
    send({"t": "done", "count": _len(cases)})
    try:
        sys.stdout.flush()
    except _BaseException:
        pass
    _exit(0)


def fence(spec):
    """Tier C (no bubblewrap): Landlock confines the file system (read the interpreter, write the
    work dir only), TCP and signals to the outside; then the seccomp filter the parent compiled.
    Fails closed: an error here ends the run before any candidate code."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG SIGKILL: unshare's --kill-child died with the uid change
    abi = spec["abi"]
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "no_new_privs")
    fs_all = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    fields = [fs_all] + ([3] if abi >= 4 else []) + ([3] if abi >= 6 else [])  # TCP bind+connect; unix+signal scopes
    attr = (ctypes.c_uint64 * len(fields))(*fields)
    ruleset = libc.syscall(444, ctypes.byref(attr), ctypes.sizeof(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    read_dir = 1 | 4 | 8  # execute, read file, read dir
    file_rw = 2 | 4 | (1 << 14 if abi >= 3 else 0)  # read, write, truncate
    rules = [(path, read_dir) for path in spec["read"]] + [(path, file_rw) for path in spec["devices"]]
    rules += [(path, fs_all) for path in spec["write"]]
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # absent here (say /lib64): nothing to allow
        rule = PathBeneath(access & fs_all, fd)
        if libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_add_rule " + path)
        os.close(fd)
    if libc.syscall(446, ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    os.close(ruleset)
    program = spec["seccomp"]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = SockFprog(len(program) // 8, program)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp")


# The fork server (zygote): modules candidates commonly import, loaded once per jail so that an
# execution forked from it finds them in sys.modules (their import cost is paid at jail start).
PRELOAD = ("collections", "itertools", "functools", "math", "heapq", "bisect", "re", "string", "typing")


def serve(spec):
    """The zygote: the jail's pid 1, warm (the runner and PRELOAD imported), forks one child per
    execution and cleans up after it. Never runs candidate code itself.

    spec: control (fd of a SOCK_SEQPACKET socket to the parent), cpu (RLIMIT_CPU seconds for each
    child), workdir (the child's cwd), scratch ((path, mode) pairs: every writable place, emptied
    after each execution), preload (module names), fence (tier C: see fence()).
    Protocol: the parent sends b"run" with four fds (the payload in a memfd, stdout, stderr, the
    channel); the child gets them as fds 0-3 (channel 3), lowers RLIMIT_CPU to `cpu` (its CPU time
    counts from zero) and runs main(payload) in `workdir`. When the child has exited the zygote
    SIGKILLs every other process of the namespace (kill(-1) spares only pid 1) and reaps until it
    has no child left (every process of a pid namespace descends from its pid 1: none is left),
    empties the scratch dirs, checks that nothing changed its own process attributes, and answers
    b"<wait status> <clean 0|1>". Unclean: it exits, and the parent starts a new jail.

    What keeps one execution from affecting the next: each forks from this clean process (module
    state, sys.modules, threads, env live and die in the child); the zygote is non-dumpable (no
    /proc/1/mem, /proc/1/fd, /proc/1/environ for a process of the same uid; ptrace is also denied
    by seccomp); as pid 1 it gets no signal from inside its namespace that it has no handler for
    (SIGKILL and SIGSTOP included) and it keeps none; the child closes the control socket before
    anything else; the scratch dirs are emptied (and their modes and xattrs reset); nice,
    scheduling policy, CPU affinity, I/O priority and rlimits (which another process of the same
    uid can change with setpriority, sched_setscheduler, sched_setaffinity, ioprio_set and
    prlimit) are compared with their values at start. SysV IPC and POSIX message queues, the one
    kernel state shared through the jail's IPC namespace, are denied by the seccomp filter."""
    import ctypes
    import fcntl
    import gc
    import resource
    import signal
    import socket

    if os.getpid() != 1:  # kill(-1) below must reach only this namespace
        raise RuntimeError("the zygote must be pid 1 of its own pid namespace")
    if spec.get("fence"):
        fence(spec["fence"])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0
        raise OSError(ctypes.get_errno(), "PR_SET_DUMPABLE")
    for name in spec.get("preload", PRELOAD):
        try:
            __import__(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()  # a child's collections skip the zygote's objects: they stay shared, not copied on write
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no handler: dropped for pid 1 when sent from inside
    os.close(0)
    os.open("/dev/null", os.O_RDONLY)
    control = socket.socket(fileno=spec["control"])
    cpu, workdir, scratch = int(spec["cpu"]), spec["workdir"], [tuple(s) for s in spec["scratch"]]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = [getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_")]
    ioprio_get = {"x86_64": 252, "aarch64": 31}.get(os.uname().machine)

    def attributes():
        return ([resource.getrlimit(r) for r in limits], os.getpriority(os.PRIO_PROCESS, 0),
                os.sched_getscheduler(0), os.sched_getparam(0), os.sched_getaffinity(0),
                ioprio_get and libc.syscall(ioprio_get, 1, 0))  # IOPRIO_WHO_PROCESS, self

    def child(fds):
        try:
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]  # out of the way of 0-3
            for target, fd in enumerate(high):
                os.dup2(fd, target)
            os.closerange(4, nofile)
            # An fd inherited above the NOFILE limit (the control socket, when the launching
            # process had many files open) survives closerange: close what /proc lists too.
            for name in os.listdir("/proc/self/fd"):
                if int(name) > 3:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.chdir(workdir)
            main()  # reads the payload from fd 0, as when run as a script
        except BaseException as exc:  # the runner failed before or around the candidate: say why
            try:
                os.write(2, ("zygote child: %r\n" % (exc,)).encode())
            except BaseException:
                pass
        finally:
            os._exit(70)

    def reap(pid):
        while True:  # orphans of the run are reparented to pid 1: reap them on the way
            done, status = os.waitpid(-1, 0)
            if done == pid:
                return status

    def kill_all():
        while True:
            try:
                os.kill(-1, signal.SIGKILL)  # every process of the namespace but pid 1
            except ProcessLookupError:
                pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:  # every process of a pid namespace descends from its pid 1
                return

    def empty(path, depth):
        if depth > 64:
            raise OSError("directory tree too deep to empty")
        with os.scandir(path) as it:
            entries = list(it)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)
                empty(entry.path, depth + 1)
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)

    def wipe():
        for path, mode in scratch:
            if os.stat(path).st_mode & 0o7777 != mode:
                os.chmod(path, mode)
            for name in os.listxattr(path):
                os.removexattr(path, name)
            empty(path, 0)

    start = attributes()
    wipe()
    control.send(b"ready")
    while True:
        msg, fds, _, _ = socket.recv_fds(control, 64, 4)
        if not msg:  # the parent closed the socket
            os._exit(0)
        if len(fds) != 4:
            raise RuntimeError("a run request needs 4 fds")
        pid = os.fork()
        if pid == 0:
            child(fds)
        for fd in fds:
            os.close(fd)
        status = reap(pid)
        kill_all()
        try:
            wipe()
            clean = attributes() == start
        except OSError:
            clean = False
        control.send(b"%d %d" % (status, clean))
        if not clean:
            os._exit(0)


if __name__ == "__main__":  # as `python -c` with the payload on stdin; importing it runs nothing
    main()
