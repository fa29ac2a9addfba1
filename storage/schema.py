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


_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def canonical_messages(messages: list[dict]) -> str:
    return _CANONICAL.encode([[m["role"], m["content"]] for m in messages])


def sample_id(messages: list[dict]) -> str:
    """Stable id: the same conversation always gets the same id, across runs and machines."""
    return hashlib.blake2b(canonical_messages(messages).encode("utf-8"), digest_size=16).hexdigest()


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
