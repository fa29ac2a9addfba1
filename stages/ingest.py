"""Ingest: raw records → chat `messages` with content-hash ids; malformed rows → quarantine.

Accepted row shapes (first match wins):
- OpenAI `messages`: [{role, content}, ...]; `content` a string or a list of parts, whose text
  parts (`{"type": "text", "text": ...}`) are joined by newlines; any other part (image, audio,
  file) quarantines the row, naming the part type. Tool use is kept: an assistant turn's
  `tool_calls` (a list of objects; its `content` may then be empty, null or absent) or legacy
  `function_call`, a tool turn's `tool_call_id` and `name` (role `function`, the legacy name, is
  read as `tool`); see schema.TOOL_FIELDS. A `tool_calls` that is not a list of objects
  quarantines the row. A `tool_fields` column (samples.tool_fields, as a drops export to Parquet
  or HF writes it) puts its items into the turns.
- ShareGPT `conversations`: [{from, value}, ...], with LLaMA-Factory's tool turns
  (storage/sharegpt_tools.py): a `function_call` turn, JSON text of {name, arguments} or a list
  of them, is an assistant turn with those `tool_calls` (ids `call_0`, `call_1`, ... made up);
  `observation` / `function` / `tool` is a tool turn, answering the calls before it in order. A
  `function_call` value that is not such JSON quarantines the row: LLaMA-Factory refuses it too,
  and read as a plain answer it would teach the model to reply with a broken call.
- Alpaca `instruction` / `input` / `output` (or `response` / `completion`)
- `prompt` / `response` (or `completion` / `output`)
On every shape, a row's tool definitions, `tools` (OpenAI's, or LLaMA-Factory's JSON text of
them) or legacy `functions`, a list of objects or JSON text of one, are kept in `meta.tools` /
`meta.functions` as a list and count in the row's id (schema.sample_id); any other value
quarantines the row; null, "" and [] are none. A top-level `system` string becomes the first (system) turn, unless the
conversation opens with a system turn of its own (then the field stays in `meta`), and
`history` ([[user, assistant], ...]) becomes the turns before the row's own.
`fields` maps these names to a data set's own column names ({instruction: question}).

Null and NaN (pandas' missing value; Python's json reads the bare `NaN`) are the same: absent in
a text field, JSON null in `meta`. Every other field of the row goes into `meta`; a `meta` object
(or a JSON string of one, as an export to Parquet stores it) is merged into it, and an `id` that
is the row's content hash (curate's own export) is dropped, so an export reads back as it was.
A row's `source` column (an export's) does not name the sample's source: the file it was read
from does (lineage, drops and quarantine point at it); a different value read is kept in
`meta.origin_source` (the first one, when the row already has one).
"""

from __future__ import annotations

import json

import pyarrow as pa

from curate.stages.base import Resources, Stage, StageResult
from curate.storage import schema as S
from curate.storage.sharegpt_tools import number_calls, parse_calls

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system", "tool": "tool", "function": "tool", "observation": "tool",
}  # and `function_call`, LLaMA-Factory's assistant call turn (_sharegpt_turn)
OPENAI_ROLES = {"function": "tool"}  # the legacy role of a function's result
# Fields that describe the sample itself rather than going into `meta`.
RESERVED = {"origin", "source", "parent_ids", "meta"}
# The names a row's fields are recognised by; `fields` maps them to other column names.
FIELD_NAMES = ("messages", "conversations", "instruction", "input", "output", "prompt", "response",
               "completion", "system", "history")
SHAPE_FIELDS = ("messages", "conversations", "instruction", "prompt")  # in the order they are tried
ANSWER_FIELDS = ("output", "response", "completion")
# Content parts that hold text, and the key of their text (OpenAI chat and Responses APIs).
TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}


class RowError(ValueError):
    """Why a row cannot become a sample; its message is the quarantine reason."""


class Ingest(Stage):
    name = "ingest"
    resources = Resources(num_cpus=1)
    batch_size = None  # whole shards: records arrive as read

    def __init__(self, max_row_bytes: int = 1_000_000, require_response: bool = True, origin: str = "seed",
                 fields: dict[str, str] | None = None):
        self.max_row_bytes = max_row_bytes
        self.require_response = require_response
        self.origin = origin
        self.fields = check_field_map(fields or {})

    def __call__(self, batch: pa.Table) -> StageResult:
        raws = batch.column(S.RAW).to_pylist()
        read_errors = batch.column("read_error").to_pylist()
        sources = batch.column("source").to_pylist()
        good_idx, bad_idx, errors = [], [], []
        samples = []
        for i, (raw, read_error, source) in enumerate(zip(raws, read_errors, sources)):
            try:
                if read_error:
                    raise RowError(read_error)
                samples.append(self.parse(raw, source))
            except RowError as e:
                bad_idx.append(i)
                errors.append(str(e))
                continue
            good_idx.append(i)
        kept = batch.drop_columns([S.RAW, "read_error", "source"]).take(pa.array(good_idx, pa.int64()))
        for name, column in S.sample_arrays(samples).items():
            kept = kept.append_column(name, column)
        kept = kept.append_column(S.RAW, pa.nulls(len(good_idx), pa.string()))
        quarantined = (batch.take(pa.array(bad_idx, pa.int64())).drop_columns(["read_error"])
                       .append_column("error", pa.array(errors, pa.string())))
        return StageResult(kept=kept, quarantined=quarantined)

    def _view(self, row: dict) -> dict:
        """The row under its recognised names (`fields`); a mapped name wins over the others of
        its kind (the shape fields, the answer fields), which stay in `meta`."""
        present = {name: col for name, col in self.fields.items() if col in row}
        if not present:
            return row
        view = dict(row)
        for kind in (SHAPE_FIELDS, ANSWER_FIELDS):
            if present.keys() & set(kind):
                for name in kind:
                    view.pop(name, None)
        view.update({name: row[col] for name, col in present.items()})
        return view

    def parse(self, raw: str, source: str) -> dict:
        """One raw record (JSON text) → a sample dict of SAMPLE_SCHEMA's columns; RowError says why not."""
        size = len(raw.encode("utf-8"))
        if size > self.max_row_bytes:
            raise RowError(f"row is {size} bytes, over the limit of {self.max_row_bytes} (max_row_bytes)")
        row = _load_json(raw)
        if not isinstance(row, dict):
            raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
        messages, used = to_messages(self._view(row))
        validate_messages(messages, self.require_response)
        read = {self.fields[k] if self.fields.get(k) in row else k for k in used}  # the row's columns read
        meta = {k: v for k, v in row.items() if k not in read and k not in RESERVED}
        nested = _nested_meta(row.get("meta"))
        try:
            definitions = S.parse_tool_definitions({**nested, **meta})  # a top-level field wins
        except ValueError as e:
            raise RowError(str(e)) from None
        sid = S.sample_id(messages, definitions)
        if meta.get("id") in (sid, S.sample_id(messages)):
            del meta["id"]  # curate's own id (an export's; one made before tools counted), which the content gives back
        meta = {**nested, **meta}  # the row's own `meta.id` survives an export's id
        for key in S.TOOL_DEFINITIONS:
            meta.pop(key, None)
        meta.update(definitions)
        parents = row.get("parent_ids") or []
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise RowError("parent_ids must be a list of strings")
        read_source = row.get("source")
        if isinstance(read_source, str) and read_source and read_source != source and "origin_source" not in meta:
            meta["origin_source"] = read_source  # an export's source: the file read wins, this one is kept
        return {
            "id": sid,
            "messages": messages,
            "origin": _str_or(row.get("origin"), self.origin),
            "source": source,
            "parent_ids": parents,
            "meta": S.meta_json(meta) if meta else "{}",
        }


def check_field_map(fields: dict[str, str]) -> dict[str, str]:
    """`{recognised name: the data set's column}`; ValueError names a key or value that cannot be."""
    unknown = sorted(set(fields) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown field {', '.join(map(repr, unknown))}: the fields are {', '.join(FIELD_NAMES)}")
    bad = [k for k, v in fields.items() if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"field {bad[0]!r} must map to a column name (a non-empty string)")
    return dict(fields)


def _nan_as_null(constant: str) -> float | None:
    """json's hook for the bare constants: NaN (pandas' missing value) is null; ±Infinity stay floats."""
    return None if constant == "NaN" else float(constant)


_DECODER = json.JSONDecoder(parse_constant=_nan_as_null)


def _load_json(raw: str):
    try:
        return _DECODER.decode(raw)
    except json.JSONDecodeError as e:
        raise RowError(f"invalid JSON: {e.msg} at char {e.pos}") from None


def _nested_meta(value) -> dict:
    """A row's own `meta`: an object, or a JSON string of one, is merged; anything else is kept as is."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            parsed = _DECODER.decode(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    return value if isinstance(value, dict) else {"meta": value}


def to_messages(row: dict) -> tuple[list[dict], set[str]]:
    """A row (see the module doc) → (messages, the fields it read). Raises RowError."""
    if "messages" in row:
        turns = _with_stored_tool_fields(_expect_list(row, "messages"), row.get("tool_fields"))
        messages, used = [_turn(t, k, "role", "content", OPENAI_ROLES) for k, t in enumerate(turns)], {"messages"}
        used |= {"tool_fields"} & row.keys()
    elif "conversations" in row:
        turns = _expect_list(row, "conversations")
        messages, used = number_calls([_sharegpt_turn(t, k) for k, t in enumerate(turns)]), {"conversations"}
    elif "instruction" in row or "prompt" in row:
        messages, used = _single_turn(row)
    else:
        raise RowError(
            f"unrecognised row: fields {sorted(row)[:8]}; expected messages, conversations, "
            "instruction/output or prompt/response (or map your columns with ingest: {fields: ...})"
        )
    return _with_system_and_history(row, messages, used)


def _with_stored_tool_fields(turns: list, stored) -> list:
    """The turns with a `tool_fields` column's items put in (samples.tool_fields: a JSON list,
    one null or object per turn, as `curate export --drops` writes it to Parquet and HF beside
    turns that are {role, content}); a field the turn has itself wins. Null: the turns as they are."""
    if stored is None:
        return turns
    if isinstance(stored, str):
        try:
            stored = json.loads(stored)
        except ValueError:
            raise RowError("field 'tool_fields' must be a JSON list (one item per turn)") from None
    if not (isinstance(stored, list) and len(stored) == len(turns) and all(f is None or isinstance(f, dict) for f in stored)):
        raise RowError(f"field 'tool_fields' must be a list of {len(turns)} items (null or an object per turn), "
                       f"got {json.dumps(stored, default=str)[:60]}")
    return [{**t, **{k: v for k, v in f.items() if k in S.TOOL_FIELDS and t.get(k) is None}}
            if isinstance(f, dict) and isinstance(t, dict) else t for t, f in zip(turns, stored)]


def _single_turn(row: dict) -> tuple[list[dict], set[str]]:
    """Alpaca (`instruction` + optional `input`) or `prompt`, and the answer if there is one."""
    key = "instruction" if "instruction" in row else "prompt"
    user = _expect_str(row, key).strip()
    used = {key}
    if key == "instruction":
        extra = _optional_str(row, "input")
        if extra and extra.strip():
            user += "\n\n" + extra.strip()
        used.add("input")
    messages = [{"role": "user", "content": user}]
    for answer in ANSWER_FIELDS:
        if row.get(answer) is not None:
            messages.append({"role": "assistant", "content": _expect_str(row, answer).strip()})
            used.add(answer)
            break
    else:
        used.update(a for a in ANSWER_FIELDS if a in row)  # null answers: absent, not meta
    return messages, used


def _with_system_and_history(row: dict, messages: list[dict], used: set[str]) -> tuple[list[dict], set[str]]:
    """Prepend `history` turns, then the `system` turn (see the module doc)."""
    used = set(used)
    opening = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(opening):]
    if "history" in row:
        rest = _history(row["history"]) + rest
        used.add("history")
    system = _optional_str(row, "system")
    if system is None or not system.strip():
        used.update({"system"} & row.keys())  # null or blank: no system prompt
    elif not opening or opening[0]["content"] == system.strip():
        opening = [{"role": "system", "content": system.strip()}]
        used.add("system")
    return opening + rest, used


def _history(history) -> list[dict]:
    if history is None:
        return []
    if not isinstance(history, list):
        raise RowError(f"field 'history' must be a list of [user, assistant] pairs, got {type(history).__name__}")
    turns = []
    for k, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError(f"history item {k} must be a [user, assistant] pair of strings, got {json.dumps(pair, default=str)[:80]}")
        turns += [{"role": "user", "content": pair[0].strip()}, {"role": "assistant", "content": pair[1].strip()}]
    return turns


def validate_messages(messages: list[dict], require_response: bool) -> None:
    if not messages:
        raise RowError("the conversation has no turns")
    for k, m in enumerate(messages):
        if not m["content"].strip() and not (m["role"] == "assistant" and (m.get("tool_calls") or m.get("function_call"))):
            raise RowError(f"turn {k} ({m['role']}) has empty text")
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        raise RowError("the conversation has no user turn")
    if require_response and roles[-1] != "assistant":
        raise RowError("missing response: the last turn is not from the assistant (an empty or null output/response field counts as none; prompts alone: ingest.require_response: false; other column names: ingest.fields)")


def _sharegpt_turn(t, k: int) -> dict:
    """A ShareGPT turn; LLaMA-Factory's `function_call` turn is an assistant turn with its calls
    (ids are given by number_calls, over the whole conversation)."""
    if isinstance(t, dict) and isinstance(t.get("from"), str) and t["from"].lower() == "function_call":
        try:
            return {"role": "assistant", "content": "", "tool_calls": parse_calls(t.get("value"))}
        except ValueError as e:
            raise RowError(f"turn {k} (function_call) {e}") from None
    return _turn(t, k, "from", "value", SHAREGPT_ROLES)


def _turn(t, k: int, role_key: str, content_key: str, role_map: dict | None) -> dict:
    if not isinstance(t, dict):
        raise RowError(f"turn {k} must be an object, got {type(t).__name__}")
    try:
        tools = S.parse_tool_fields(t)
    except ValueError as e:
        raise RowError(f"turn {k} {e}") from None
    calls = "tool_calls" in tools or "function_call" in tools
    if role_key not in t or (content_key not in t and not calls):
        raise RowError(f"turn {k} lacks '{role_key}' or '{content_key}'")
    role = t[role_key]
    if not isinstance(role, str):
        raise RowError(f"turn {k} '{role_key}' must be a string, got {type(role).__name__}")
    raw_content = t.get(content_key)
    content = "" if raw_content is None and calls else _content_text(raw_content, k, content_key)
    role = role.lower()
    if role_map and role_key == "from":
        role = role_map.get(role)
    elif role_map:
        role = role_map.get(role, role)
    if role not in S.VALID_ROLES:
        raise RowError(f"turn {k} has unknown role {t[role_key]!r}")
    return {"role": role, "content": content.strip(), **tools}


def _content_text(content, k: int, key: str) -> str:
    """A turn's text: a string, or a list of content parts whose text parts are joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RowError(f"turn {k} '{key}' must be a string or a list of content parts, got {_type(content)}")
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RowError(f"turn {k} '{key}' part {j} must be an object, got {_type(part)}")
        kind = part.get("type", "text" if "text" in part else None)
        if kind not in TEXT_PARTS:
            raise RowError(f"turn {k} has a content part of type {kind!r}, which a text pipeline cannot keep")
        text = part.get(TEXT_PARTS[kind])
        if not isinstance(text, str):
            raise RowError(f"turn {k} '{key}' part {j} ({kind}) has no '{TEXT_PARTS[kind]}' string")
        texts.append(text.strip())
    return "\n".join(t for t in texts if t)


def _expect_list(row: dict, key: str) -> list:
    v = row[key]
    if not isinstance(v, list):
        raise RowError(f"field '{key}' must be a list, got {_type(v)}")
    return v


def _expect_str(row: dict, key: str) -> str:
    v = row[key]
    if not isinstance(v, str):
        raise RowError(f"field '{key}' must be a string, got {_type(v)}")
    return v


def _optional_str(row: dict, key: str) -> str | None:
    v = row.get(key)
    if v is not None and not isinstance(v, str):
        raise RowError(f"field '{key}' must be a string, got {type(v).__name__}")
    return v


def _type(v) -> str:
    return "null (or NaN)" if v is None else type(v).__name__


def _str_or(value, default: str) -> str:
    return value if isinstance(value, str) and value else default
