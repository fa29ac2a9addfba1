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


main()
