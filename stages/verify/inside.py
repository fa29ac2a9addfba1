"""The trusted runner that executes inside the jail (standard library only, run with `python -I -c`).

It reads its payload (marshal, written by the parent) from stdin and closes stdin before any
candidate code runs, then reports one record per test over an inherited pipe (its fd number is in
the payload): one line per record, a dict written with ascii() that the parent reads with
ast.literal_eval, carrying the run's nonce. (json would cost 7 ms of imports per run.) It decides
nothing: the parent checks the records against what it expects.
  io mode:     runs the solution, then evaluates each call and sends back its value, encoded
               with exact builtin types (a subclass, say an int whose == is always true, cannot
               be encoded). The expected values never enter the jail.
  assert mode: runs the solution, then each top-level test statement, and reports ok or the
               failure kind. Code in the same process could forge these (strength in_process).
"""

import builtins
import marshal
import os
import sys


def main():
    _write, _exit, _ascii, _type, _repr, _len = os.write, os._exit, ascii, type, repr, len
    _settrace, _BaseException = sys.settrace, BaseException
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
    if payload.get("fence"):
        fence(payload["fence"])

    def send(record):
        record["n"] = nonce
        _write(channel, (_ascii(record) + "\n").encode())

    def kind(exc):
        t = _type(exc)
        if t is AssertionError:
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

    def encode(value, depth=0):
        if depth > 64:
            raise TypeError("value nested too deeply")
        t = _type(value)
        if value is None:
            return None
        if t is bool:
            return {"b": value}
        if t is int:
            return {"i": str(value)}
        if t is float:
            return {"f": _repr(value)}
        if t is str:
            return {"s": value}
        if t is bytes:
            return {"y": value.hex()}
        if t is complex:
            return {"c": [_repr(value.real), _repr(value.imag)]}
        if t is list or t is tuple or t is set or t is frozenset:
            tag = {list: "l", tuple: "t", set: "set", frozenset: "fs"}[t]
            return {tag: [encode(v, depth + 1) for v in value]}
        if t is dict:
            return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
        raise TypeError("cannot return a " + t.__name__ + " (only exact builtin types)")

    def plain(value):
        try:
            encode(value)
            return True
        except _BaseException:
            return False

    def strict_eq(a, b):
        if plain(a) and plain(b):
            return a == b
        return _type(a) is _type(b) and a == b

    namespace = {"__name__": "__main__", "__builtins__": builtins, "__curate_strict_eq__": strict_eq}
    try:
        code = compile(payload["solution"], "<solution>", "exec")
    except _BaseException as exc:
        send({"t": "solution", "e": "syntax_error", "m": message(exc)})
        _exit(0)
    try:
        exec(code, namespace)
        if payload.get("setup"):
            exec(compile(payload["setup"], "<setup>", "exec"), namespace)
    except _BaseException as exc:
        send({"t": "solution", "e": kind(exc), "m": message(exc)})
        _exit(0)

    items = payload["calls"] if payload["mode"] == "io" else payload["tests"]
    for i, source in enumerate(items):
        _settrace(None)
        try:
            if payload["mode"] == "io":
                value = eval(compile(source, "<call %d>" % i, "eval"), namespace)
                encoded = encode(value)
                if _len(_ascii(encoded)) > 1_000_000:
                    raise TypeError("return value too large")
                send({"t": "case", "i": i, "v": encoded})
            else:
                exec(compile(source, "<test %d>" % i, "exec"), namespace)
                send({"t": "case", "i": i, "ok": True})
        except _BaseException as exc:
            send({"t": "case", "i": i, "e": kind(exc), "m": message(exc)})
    send({"t": "done", "count": _len(items)})
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


if __name__ == "__main__":  # `python -c` in the jail; importing it runs nothing
    main()
