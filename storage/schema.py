"""The sample schema, defined once: Arrow for the stream, DuckDB DDL derived from it."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

# One row per sample. `id` is a content hash of the canonical messages (see sample_id).
SAMPLE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(MESSAGE)),
        ("origin", pa.string()),  # seed, selfinstruct, evol, skillmix, response, ...
        ("source", pa.string()),  # data set or generator (with version)
        ("parent_ids", pa.list_(pa.string())),  # lineage
        ("meta", pa.string()),  # JSON object: skills, tests, task type, ...
        # JSON list, one item per turn of `messages`: null, or the turn's tool fields (TOOL_FIELDS)
        # as an object; NULL when no turn has any (see tool_fields_json).
        ("tool_fields", pa.string()),
    ]
)
SAMPLE_COLUMNS = SAMPLE_SCHEMA.names

# Bookkeeping columns that travel with every row through the stream; stages carry them along
# untouched (they return subsets of their input rows) and the writer strips them.
SHARD = "_shard"  # shard key, e.g. "s000-00012"
SHARD_ROWS = "_shard_rows"  # input rows in that shard: the writer commits a shard once all arrived
ROW = "_row"  # record position in its source file (0-based; JSONL: line index)
STATUS = "_status"  # kept | dropped | quarantined | expanded (a parent a generator replaced by children)
STAGE = "_stage"  # stage that dropped or quarantined the row
REASON = "_reason"  # drop reason or quarantine error
RAW = "_raw"  # raw input text; kept only on quarantined rows
COST_PREFIX = "_t:"  # _t:<stage>: seconds of stage time charged to the row
KEY_PREFIX = "_key:"  # _key:<stage>: a global stage's per-row key (binary), stored for its global step
# Per-row results of stages (StageResult's typed fields), as columns on the rows they ride on
# to the writer, which lands them in their tables. stages/results.py alone adds and reads them
# (a stage that appends one itself fails); stages never spell these names.
SCORE_PREFIX = "_score:"  # _score:<name>: float64 → scores(run_id, id, name, value); kept and dropped rows
VEC_PREFIX = "_vec:"  # _vec:<name>: list<float32> → vectors(run_id, name, id, model, vec); kept rows
VECMODEL_PREFIX = "_vecmodel:"  # _vecmodel:<name>: string, the model that made _vec:<name>
VERDICTS = "_verdicts"  # list<VERDICT> → verdicts(run_id, id, verifier, passed, strength, detail); kept and dropped rows
VERDICT = pa.struct([("verifier", pa.string()), ("passed", pa.bool_()), ("strength", pa.string()), ("detail", pa.string())])

WEIGHT = "_weight"  # share of an input row this row stands for (children of a generator split it)
BORN = "_born"  # stage that generated the row (null for rows read from the input)
PARENT = "_parent"  # generator output only: index of the parent row in the stage's input batch

KEPT, DROPPED, QUARANTINED, EXPANDED = "kept", "dropped", "quarantined", "expanded"

VALID_ROLES = ("system", "user", "assistant", "tool")
# OpenAI chat fields of a turn besides role and content that a sample keeps: an assistant's
# `tool_calls` (a list of objects) or legacy `function_call` (an object), a tool turn's
# `tool_call_id` and `name`. In Python a turn dict carries them as keys (absent when null); in
# Arrow and DuckDB they ride in the `tool_fields` column, beside `messages`.
TOOL_FIELDS = ("tool_calls", "tool_call_id", "name", "function_call")
# A row's tool definitions, beside its messages: OpenAI's `tools` ([{"type": "function",
# "function": {name, description, parameters}}]; LLaMA-Factory's bare function objects too) and
# the legacy `functions` ([{name, description, parameters}]). A sample keeps them in `meta` under
# these keys (a list of objects, as read); they count in its id; an export lifts them to the top.
TOOL_DEFINITIONS = ("tools", "functions")


_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
_STORED = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # keys in the order read


def canonical_messages(messages: list[dict]) -> str:
    """[[role, content], ...]; a turn with tool fields adds them: [role, content, {fields}]."""
    return _CANONICAL.encode([[m["role"], m["content"], f] if (f := turn_tool_fields(m)) else [m["role"], m["content"]]
                              for m in messages])


def turn_tool_fields(turn: dict) -> dict:
    """The tool fields (TOOL_FIELDS) a turn dict carries, nulls left out."""
    return {k: turn[k] for k in TOOL_FIELDS if turn.get(k) is not None}


def parse_tool_fields(turn: dict) -> dict:
    """A read turn's tool fields, checked: `tool_calls` a list of objects, `function_call` an
    object (either may be JSON text of one, as a Parquet or HF export stores them), `tool_call_id`
    and `name` strings; null (and an empty `tool_calls` list) is absent. ValueError says what is wrong."""
    out = {}
    for key in TOOL_FIELDS:
        value = turn.get(key)
        if isinstance(value, str) and key in ("tool_calls", "function_call"):
            try:
                value = json.loads(value)
            except ValueError:
                pass  # a plain string: named as one below
        if value is None or (key == "tool_calls" and value == []):
            continue
        if key == "tool_calls" and not (isinstance(value, list) and all(isinstance(c, dict) for c in value)):
            raise ValueError(f"'tool_calls' must be a list of tool-call objects, got {_shown(value)}")
        if key == "function_call" and not isinstance(value, dict):
            raise ValueError(f"'function_call' must be an object, got {_shown(value)}")
        if key in ("tool_call_id", "name") and not isinstance(value, str):
            raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
        out[key] = value
    return out


def parse_tool_definitions(row: dict) -> dict:
    """A read row's tool definitions (TOOL_DEFINITIONS), checked: each a list of objects, or JSON
    text of one (as ShareGPT rows and Parquet or HF exports hold them); null, blank text and an
    empty list are absent. ValueError says what is wrong."""
    out = {}
    for key in TOOL_DEFINITIONS:
        value = row.get(key)
        if isinstance(value, str):
            if not value.strip():
                continue
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"field '{key}' must be a list of tool definitions or JSON text of one, "
                                 f"got text that is not JSON: {value[:60]!r}") from None
        if value is None or value == []:
            continue
        if not (isinstance(value, list) and all(isinstance(d, dict) for d in value)):
            raise ValueError(f"field '{key}' must be a list of tool definitions (objects), got {_shown(value)}")
        out[key] = value
    return out


def meta_json(meta: dict, ensure_ascii: bool = False) -> str:
    """A sample's `meta` as JSON text, keys sorted, but for its tool definitions: first, and as
    read (a chat template renders a definition's keys in its own order: name, description, ...)."""
    encode = lambda v, **kw: json.dumps(v, ensure_ascii=ensure_ascii, default=str, **kw)  # noqa: E731
    defs = [f"{encode(k)}: {encode(meta[k])}" for k in TOOL_DEFINITIONS if k in meta]
    if not defs:
        return encode(meta, sort_keys=True)
    rest = encode({k: v for k, v in meta.items() if k not in TOOL_DEFINITIONS}, sort_keys=True)[1:-1]
    return "{" + ", ".join(defs + ([rest] if rest else [])) + "}"


def tool_definitions(meta: dict) -> dict:
    """The tool definitions a sample's meta holds (lists only), for its id and its export."""
    return {k: meta[k] for k in TOOL_DEFINITIONS if isinstance(meta.get(k), list) and meta[k]}


def _shown(value) -> str:
    return f"{type(value).__name__} {json.dumps(value, default=str)[:60]}"


def tool_fields_json(messages: list[dict]) -> str | None:
    """The `tool_fields` column's value for a conversation: NULL when no turn has tool fields."""
    fields = [turn_tool_fields(m) or None for m in messages]
    return _STORED.encode(fields) if any(fields) else None


def with_tool_fields(messages: list[dict], tool_fields: str | None) -> list[dict]:
    """Turns {role, content} read from Arrow or DuckDB with their tool fields put back."""
    if not tool_fields:
        return messages
    return [{**m, **(f or {})} for m, f in zip(messages, json.loads(tool_fields))]


def tool_text(turn: dict) -> str:
    """The text of a turn's tool calls, as text stages read it: `name(arguments)`, one a line."""
    calls = [c.get("function", c) if isinstance(c, dict) else c for c in turn.get("tool_calls") or ()]
    if turn.get("function_call") is not None:
        calls.append(turn["function_call"])
    lines = []
    for c in calls:
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            args = c.get("arguments", "")
            lines.append(f"{c['name']}({args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)})")
        else:
            lines.append(json.dumps(c, ensure_ascii=False, default=str))
    return "\n".join(lines)


def sample_id(messages: list[dict], definitions: dict | None = None) -> str:
    """Stable id: the same conversation always gets the same id, across runs and machines. A row's
    tool definitions (`tool_definitions`: {"tools": [...]}) count too, when it has any: the same
    turns offered other tools are another sample; a row without them hashes as before they existed."""
    text = canonical_messages(messages)
    if definitions:
        text += "\n" + _CANONICAL.encode(definitions)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def messages_array(conversations: list[list[dict]]) -> pa.Array:
    """list<struct<role, content>> built from flat columns: far faster than from Python dicts."""
    offsets, roles, contents = [0], [], []
    for conv in conversations:
        for m in conv:
            roles.append(m["role"])
            contents.append(m["content"])
        offsets.append(len(roles))
    turns = pa.StructArray.from_arrays([pa.array(roles, pa.string()), pa.array(contents, pa.string())], fields=list(MESSAGE))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), turns)


def sample_arrays(samples: list[dict]) -> dict[str, pa.Array]:
    """Columns of SAMPLE_SCHEMA from sample dicts."""
    out = {}
    for f in SAMPLE_SCHEMA:
        if f.name == "tool_fields":  # from the turns' own tool fields, else as given (a row read back)
            values = [tool_fields_json(s["messages"]) or s.get("tool_fields") for s in samples]
        else:
            values = [s[f.name] for s in samples]
        out[f.name] = messages_array(values) if f.name == "messages" else pa.array(values, type=f.type)
    return out


def duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_float32(t):
        return "FLOAT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return duckdb_type(t.value_type) + "[]"
    if pa.types.is_struct(t):
        fields = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in t)
        return f"STRUCT({fields})"
    raise TypeError(f"no DuckDB type for Arrow type {t}")


def sample_columns_ddl() -> str:
    return ",\n    ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in SAMPLE_SCHEMA)



def add_verdicts(table: pa.Table, verdicts: list[list[dict]]) -> pa.Table:
    """Append each row's new verdicts ({verifier, passed, strength, detail}) to the verdicts
    earlier stages gave it (the `_verdicts` column, as stages/results.py writes it; for tests
    and tools that build committed batches by hand)."""
    new = pa.array(verdicts, pa.list_(VERDICT))
    if VERDICTS not in table.column_names:
        return table.append_column(VERDICTS, new)
    old = table[VERDICTS].to_pylist()
    merged = pa.array([(o or []) + n for o, n in zip(old, verdicts)], pa.list_(VERDICT))
    return table.set_column(table.column_names.index(VERDICTS), VERDICTS, merged)
