"""Text views of the `messages` column shared by stages, vectorised over the batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def first_user_turn(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The instruction: each conversation's first user turn ("" where there is none)."""
    return _turn_of(messages, "user", last=False)


def last_assistant_turn(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The response: each conversation's last assistant turn ("" where there is none)."""
    return _turn_of(messages, "assistant", last=True)


def _turn_of(messages: pa.ChunkedArray | pa.Array, role: str, last: bool) -> pa.Array:
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages).to_numpy()
    matches = np.flatnonzero(pc.fill_null(pc.equal(flat.field("role"), role), False).to_numpy(zero_copy_only=False))
    if last:
        matches = matches[::-1]
    rows, first = np.unique(parents[matches], return_index=True)
    pick = np.full(len(messages), -1, dtype=np.int64)
    pick[rows] = matches[first]
    taken = flat.field("content").take(pa.array(pick, mask=pick < 0))
    return pc.fill_null(taken, "")
