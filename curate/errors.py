"""Errors the user sees, and how the CLI says them in one line.

A stage runs inside a Ray worker: what it raises reaches the driver wrapped, as
`RayTaskError(UserCodeException)` whose own message is Ray's ("ray::MapWorker(...).submit()
(pid=..)"), and the original exception object is gone by then (Ray Data re-raises it as a
UserCodeException in the worker, and only the traceback text crosses processes). `root_cause`
unwraps Ray's exception chain to the exception the stage raised, from the live chain where it
still exists (RayTaskError.cause, `__cause__`) or else from the worker's traceback text, and
`one_line` says it: its type, its message and where it was raised, with a pointer to the full
traceback (CURATE_DEBUG=1).
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass


class CurateError(Exception):
    """An error the user can act on; the CLI prints it as one line, without a traceback."""


DEBUG_HINT = "set CURATE_DEBUG=1 for the full traceback"

# A traceback's exception line: `pkg.mod.Type: message`, `Type`, Ray's `RayTaskError(Type): ...`.
_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*(?:\([\w.]+\))?)(?::\s?(?P<msg>.*))?$")
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+)')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CHAIN = ("The above exception was the direct cause", "During handling of the above exception")


@dataclass
class Cause:
    type_name: str  # short class name: "TemplateError"
    qualname: str  # with its module when known: "jinja2.exceptions.TemplateError"
    message: str
    where: str | None = None  # "generators/backends/vllm_engine.py:88"
    is_curate: bool = False  # a CurateError: its message is meant for the user as it is
    via_ray: bool = False  # it came out of a Ray worker


def _is_ray_wrapper(e: BaseException) -> bool:
    return any(c.__module__.startswith("ray.") and c.__name__ in ("RayTaskError", "UserCodeException", "RayDataUserCodeException")
               for c in type(e).__mro__)


def root_cause(e: BaseException) -> Cause:
    """The exception a stage raised, out of Ray's wrappers; `e` itself when it is none."""
    seen, current = set(), e
    while _is_ray_wrapper(current) and id(current) not in seen:
        seen.add(id(current))
        nxt = getattr(current, "cause", None) if "RayTaskError" in {c.__name__ for c in type(current).__mro__} else None
        nxt = nxt if nxt is not None and nxt is not current else (current.__cause__ or None)
        if nxt is None:
            break
        current = nxt
    if not _is_ray_wrapper(current):
        where = _where_raised(current)
        return Cause(type(current).__name__, f"{type(current).__module__}.{type(current).__qualname__}",
                     _first_line(str(current)), where, isinstance(current, CurateError), via_ray=current is not e)
    parsed = parse_traceback_text(_ANSI.sub("", str(e)))
    if parsed is not None:
        parsed.via_ray = True
        return parsed
    return Cause(type(e).__name__, type(e).__name__, _first_line(_ANSI.sub("", str(e))), via_ray=True)


def parse_traceback_text(text: str) -> Cause | None:
    """The last exception a worker's traceback text names that is not one of Ray's wrappers:
    the one that left the stage's code. None when the text holds no traceback."""
    lines = text.splitlines()
    found: Cause | None = None
    frames: list[tuple[str, str]] = []
    in_frames = False
    for i, line in enumerate(lines):
        frame = _FRAME.match(line)
        if frame:
            if not in_frames:
                frames = []
            frames.append((frame.group("file"), frame.group("line")))
            in_frames = True
            continue
        if not line.strip() or line.startswith((" ", "\t")):
            continue
        if in_frames:  # the first unindented line after the frames: the exception
            in_frames = False
            m = _EXC_LINE.match(line.strip())
            if m and not _is_ray_name(m.group("type")):
                qualname = m.group("type")
                message = m.group("msg") or ""
                if not message:  # a multi-line message starts on the next lines
                    message = next((x.strip() for x in lines[i + 1:] if x.strip() and not x.startswith(_CHAIN)), "")
                found = Cause(qualname.rsplit(".", 1)[-1], qualname, message.strip(), _where(frames), _names_curate_error(qualname))
    return found


def one_line(e: BaseException) -> tuple[str, int]:
    """What the CLI prints for an exception a run raised, and its exit code: 2 for a
    CurateError (the user can act on it), 1 for anything else (a bug, a failing stage)."""
    cause = root_cause(e)
    if cause.is_curate and not cause.via_ray:
        return f"error: {cause.message}", 2
    if cause.is_curate:  # a CurateError from a worker: its message, and where it came from
        where = f"raised at {cause.where}; " if cause.where else ""
        return f"error: {cause.message} ({where}{DEBUG_HINT})", 2
    where = f"raised at {cause.where}; " if cause.where else ""
    message = f": {cause.message}" if cause.message else ""
    return f"error: {cause.type_name}{message} ({where}{DEBUG_HINT})", 1


def _is_ray_name(name: str) -> bool:
    return name.startswith("ray.") or name.split("(")[0].rsplit(".", 1)[-1] in ("RayTaskError", "UserCodeException",
                                                                                "RayDataUserCodeException")


def _names_curate_error(qualname: str) -> bool:
    """Whether a dotted class name from a traceback is a CurateError (only curate's own
    modules are imported to tell)."""
    module, _, name = qualname.rpartition(".")
    if not module.startswith("curate."):
        return False
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception:
        return False
    return isinstance(cls, type) and issubclass(cls, CurateError)


def _where_raised(e: BaseException) -> str | None:
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, str(tb.tb_lineno)))
        tb = tb.tb_next
    return _where(frames)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARY = ("site-packages" + os.sep, "dist-packages" + os.sep)


def _where(frames: list[tuple[str, str]]) -> str | None:
    """The innermost frame in the project's own code (a library's frame, such as the Jinja
    helper that raises for a template, says less), else the innermost frame."""
    ours = [f for f in frames if (f[0].startswith(_ROOT + os.sep) and not any(lib in f[0] for lib in _LIBRARY))
            or any(lib + "curate" + os.sep in f[0] for lib in _LIBRARY)]  # curate installed as a package
    chosen = (ours or frames or [None])[-1]
    return _short_path(*chosen) if chosen else None


def _short_path(path: str, line: str) -> str:
    for lib in _LIBRARY:
        if lib in path:
            return f"{path.split(lib, 1)[1]}:{line}"
    if path.startswith(_ROOT + os.sep):
        path = os.path.relpath(path, _ROOT)
    return f"{path}:{line}"


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def show_traceback(e: BaseException) -> bool:
    """Whether the CLI should let the traceback through: with CURATE_DEBUG set, for anything
    but a CurateError raised in this process (whose one line says all there is)."""
    if not os.environ.get("CURATE_DEBUG"):
        return False
    return not (isinstance(e, CurateError) and not _is_ray_wrapper(e))
