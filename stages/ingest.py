"""Ingest: raw records → chat `messages` with content-hash ids; malformed rows → quarantine.

Accepted row shapes (first match wins):
- OpenAI `messages`: [{role, content}, ...]
- ShareGPT `conversations`: [{from, value}, ...]
- Alpaca `instruction` / `input` / `output`
- `prompt` / `response` (also `prompt` / `completion`)
Every other field of the row goes into `meta`.
"""

from __future__ import annotations

import json

import pyarrow as pa

from curate.stages.base import Resources, Stage, StageResult
from curate.storage import schema as S

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system", "tool": "tool", "function": "tool", "observation": "tool",
}
# Fields that describe the sample itself rather than going into `meta`.
RESERVED = {"origin", "source", "parent_ids", "meta"}
_META_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, default=str)


class RowError(ValueError):
    """Why a row cannot become a sample; its message is the quarantine reason."""


class Ingest(Stage):
    name = "ingest"
    resources = Resources(num_cpus=1)
    batch_size = None  # whole shards: records arrive as read

    def __init__(self, max_row_bytes: int = 1_000_000, require_response: bool = True, origin: str = "seed"):
        self.max_row_bytes = max_row_bytes
        self.require_response = require_response
        self.origin = origin

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

    def parse(self, raw: str, source: str) -> dict:
        size = len(raw.encode("utf-8"))
        if size > self.max_row_bytes:
            raise RowError(f"row is {size} bytes, over the limit of {self.max_row_bytes} (max_row_bytes)")
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RowError(f"invalid JSON: {e.msg} at char {e.pos}") from None
        if not isinstance(row, dict):
            raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
        messages, used = to_messages(row)
        validate_messages(messages, self.require_response)
        meta = {k: v for k, v in row.items() if k not in used and k not in RESERVED}
        if isinstance(row.get("meta"), dict):
            meta = {**row["meta"], **meta}
        parents = row.get("parent_ids") or []
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise RowError("parent_ids must be a list of strings")
        return {
            "id": S.sample_id(messages),
            "messages": messages,
            "origin": _str_or(row.get("origin"), self.origin),
            "source": _str_or(row.get("source"), source),
            "parent_ids": parents,
            "meta": _META_JSON.encode(meta) if meta else "{}",
        }


def to_messages(row: dict) -> tuple[list[dict], set[str]]:
    if "messages" in row:
        turns = _expect_list(row, "messages")
        return [_turn(t, k, "role", "content", None) for k, t in enumerate(turns)], {"messages"}
    if "conversations" in row:
        turns = _expect_list(row, "conversations")
        return [_turn(t, k, "from", "value", SHAREGPT_ROLES) for k, t in enumerate(turns)], {"conversations"}
    if "instruction" in row:
        instruction = _expect_str(row, "instruction")
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RowError(f"field 'input' must be a string, got {type(extra).__name__}")
        user = instruction.strip() + ("\n\n" + extra.strip() if extra and extra.strip() else "")
        messages = [{"role": "user", "content": user}]
        if "output" in row:
            messages.append({"role": "assistant", "content": _expect_str(row, "output").strip()})
        return messages, {"instruction", "input", "output"}
    if "prompt" in row:
        messages = [{"role": "user", "content": _expect_str(row, "prompt").strip()}]
        for key in ("response", "completion"):
            if key in row:
                messages.append({"role": "assistant", "content": _expect_str(row, key).strip()})
                return messages, {"prompt", key}
        return messages, {"prompt"}
    raise RowError(
        f"unrecognised row: fields {sorted(row)[:8]}; expected messages, conversations, "
        "instruction/output or prompt/response"
    )


def validate_messages(messages: list[dict], require_response: bool) -> None:
    if not messages:
        raise RowError("the conversation has no turns")
    for k, m in enumerate(messages):
        if not m["content"].strip():
            raise RowError(f"turn {k} ({m['role']}) has empty text")
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        raise RowError("the conversation has no user turn")
    if require_response and roles[-1] != "assistant":
        raise RowError("missing response: the last turn is not from the assistant")


def _turn(t, k: int, role_key: str, content_key: str, role_map: dict | None) -> dict:
    if not isinstance(t, dict):
        raise RowError(f"turn {k} must be an object, got {type(t).__name__}")
    if role_key not in t or content_key not in t:
        raise RowError(f"turn {k} lacks '{role_key}' or '{content_key}'")
    role, content = t[role_key], t[content_key]
    if not isinstance(role, str):
        raise RowError(f"turn {k} '{role_key}' must be a string, got {type(role).__name__}")
    if not isinstance(content, str):
        raise RowError(f"turn {k} '{content_key}' must be a string, got {type(content).__name__}")
    role = role_map.get(role.lower()) if role_map else role.lower()
    if role not in S.VALID_ROLES:
        raise RowError(f"turn {k} has unknown role {t[role_key]!r}")
    return {"role": role, "content": content.strip()}


def _expect_list(row: dict, key: str) -> list:
    v = row[key]
    if not isinstance(v, list):
        raise RowError(f"field '{key}' must be a list, got {type(v).__name__}")
    return v


def _expect_str(row: dict, key: str) -> str:
    v = row[key]
    if not isinstance(v, str):
        raise RowError(f"field '{key}' must be a string, got {type(v).__name__}")
    return v


def _str_or(value, default: str) -> str:
    return value if isinstance(value, str) and value else default
