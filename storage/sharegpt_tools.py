"""LLaMA-Factory's ShareGPT tool turns ↔ OpenAI tool calls, both ways, so that ingest and the
`sharegpt` export shape agree.

LLaMA-Factory writes an assistant's calls as a `function_call` turn whose value is JSON text of
`{"name": ..., "arguments": {...}}` (or a list of them: parallel calls), and each result as an
`observation` turn; a row's `tools` is JSON text of the definitions. curate reads a
`function_call` turn as an assistant turn with empty text and OpenAI `tool_calls`
(`{"id", "type": "function", "function": {"name", "arguments"}}`, `arguments` as JSON text: the
object as `json.dumps(..., ensure_ascii=False)` writes it, which is how LLaMA-Factory writes it
to its prompts). ShareGPT has no call ids: they are made up as `call_0`, `call_1`, ... counting
the row's calls in order, and the tool turns that follow a call turn get the ids of its calls in
order as `tool_call_id` (one observation after two parallel calls answers the first). The same
row always gets the same ids, so a ShareGPT row reads back with the same id.

Writing back is the reverse: calls become a `function_call` turn (arguments as the JSON value
they hold, as LLaMA-Factory expects; text that is not JSON stays text), ids are left out. A row
whose tool turns do not answer its calls in order cannot be written (ShareGPT pairs by order).
"""

from __future__ import annotations

import json

CALL_ID = "call_{}"


def parse_calls(value) -> list[dict]:
    """A `function_call` turn's value (JSON text, or the object or list itself) → OpenAI
    tool_calls without ids. ValueError says why it is not a call."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"is not JSON of a call {{name, arguments}}: {value.strip()[:60]!r}") from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise ValueError("is an empty list of calls")
    out = []
    for call in calls:
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]):
            raise ValueError(f"is not a call {{name, arguments}}: {json.dumps(call, ensure_ascii=False, default=str)[:60]}")
        args = call.get("arguments", {})
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        out.append({"type": "function", "function": {"name": call["name"], "arguments": args}})
    return out


def number_calls(messages: list[dict]) -> list[dict]:
    """Turns read from ShareGPT with ids given: each call without an id gets `call_<n>` (n counts
    the row's calls), and each tool turn without a `tool_call_id` right after a call turn gets the
    next of that turn's call ids, in order."""
    out, pending, n = [], [], 0
    for m in messages:
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                calls.append(c if "id" in c else {"id": CALL_ID.format(n), **c})
                n += 1
            m, pending = {**m, "tool_calls": calls}, [c.get("id") for c in calls]
        elif m["role"] == "tool":
            if pending and m.get("tool_call_id") is None:
                m = {**m, "tool_call_id": pending[0]}
            pending = pending[1:]
        else:
            pending = []
        out.append(m)
    return out


def call_value(calls: list[dict]) -> str:
    """An assistant turn's tool_calls → a `function_call` turn's value; ValueError for a call
    that is not a function call {name, arguments}."""
    out = []
    for c in calls:
        fn = c.get("function")
        if c.get("type", "function") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"a tool call that is not a function call ({json.dumps(c, ensure_ascii=False)[:60]})")
        extra = sorted((set(c) - {"id", "type", "function"}) | (set(fn) - {"name", "arguments"}))
        if extra:
            raise ValueError(f"a tool call with {', '.join(extra)}")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass  # not JSON: written as the text it is
        out.append({"name": fn["name"], "arguments": args})
    return json.dumps(out[0] if len(out) == 1 else out, ensure_ascii=False)


def unpaired_result(messages: list[dict]) -> dict | None:
    """The first tool turn whose `tool_call_id` is not the call it would be paired with on the
    way back (the next of the call turn before it, in order), else None."""
    pending: list = []
    for m in messages:
        if m.get("tool_calls"):
            pending = [c.get("id") for c in m["tool_calls"]]
        elif m["role"] == "tool":
            expected = pending[0] if pending else None
            if m.get("tool_call_id") is not None and m["tool_call_id"] != expected:
                return m
            pending = pending[1:]
        else:
            pending = []
    return None
