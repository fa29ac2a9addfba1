"""Text views of the `messages` column shared by stages: instruction, response, conversation."""

from __future__ import annotations

import pyarrow as pa


def first_user_turn(messages: pa.ChunkedArray | pa.Array) -> list[str]:
    return [next((m["content"] for m in conv if m["role"] == "user"), "") for conv in messages.to_pylist()]


def last_assistant_turn(messages: pa.ChunkedArray | pa.Array) -> list[str]:
    return [next((m["content"] for m in reversed(conv) if m["role"] == "assistant"), "") for conv in messages.to_pylist()]
