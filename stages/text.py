"""Text views of the `messages` column shared by stages, vectorised over the batch."""

from __future__ import annotations

import hashlib

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


def conversation_text(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    """All turns joined as `role: content` lines: the text of a whole conversation."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    flat = pc.list_flatten(messages)
    lines = pc.binary_join_element_wise(flat.field("role"), flat.field("content"), ": ")
    rebuilt = pa.ListArray.from_arrays(messages.offsets, lines)
    return pc.fill_null(pc.binary_join(rebuilt, "\n"), "")


def normalise(text: pa.Array) -> pa.Array:
    """Lower case, punctuation removed, white space folded: the form dedup and decontamination compare."""
    # One pass: anything but letters and digits (any script; RE2's \\w is ASCII-only) becomes a space.
    folded = pc.replace_substring_regex(pc.utf8_lower(text), r"[^\p{L}\p{N}]+", " ")
    return pc.utf8_trim_whitespace(folded)


def word_hashes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Normalised words of every row as 64-bit hashes, flattened, with row offsets.

    Each distinct word of the batch is hashed once (dictionary encoding), so the cost is per
    vocabulary entry, not per token. Hashes are stable across processes (blake2b)."""
    norm = normalise(text)
    words = pc.utf8_split_whitespace(pc.if_else(pc.equal(norm, ""), pa.scalar(None, pa.string()), norm))
    offsets = words.offsets.to_numpy().astype(np.int64)
    flat = pc.list_flatten(words)
    if len(flat) == 0:
        return np.zeros(0, np.uint64), offsets
    encoded = pc.dictionary_encode(flat)
    vocab = encoded.dictionary.to_pylist()
    vocab_hash = np.fromiter((_hash64(w) for w in vocab), dtype=np.uint64, count=len(vocab))
    return vocab_hash[encoded.indices.to_numpy()], offsets


def ngram_hashes(hashes: np.ndarray, offsets: np.ndarray, n: int, short_rows: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every n-word window inside each row, and the row of each window.

    A row with fewer than n words gives one window of all its words when `short_rows`."""
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    total = len(hashes)
    if total == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    # Polynomial rolling hash with wrap-around uint64 arithmetic.
    with np.errstate(over="ignore"):
        acc = np.zeros(total, np.uint64)
        for j in range(n):
            shifted = np.zeros(total, np.uint64)
            if j < total:  # a batch with fewer words than n in all: nothing to shift in
                shifted[: total - j] = hashes[j:]
            acc = acc * _MULT + shifted
        starts = np.arange(total)
        valid = starts + n <= offsets[rows + 1]
        grams, gram_rows = acc[valid], rows[valid]
        if short_rows:
            lengths = np.diff(offsets)
            short = np.flatnonzero((lengths > 0) & (lengths < n))
            if len(short):
                extra = np.array([_combine(hashes[offsets[r]: offsets[r + 1]]) for r in short], np.uint64)
                grams = np.concatenate([grams, extra])
                gram_rows = np.concatenate([gram_rows, short])
    return grams, gram_rows


_MULT = np.uint64(0x100000001B3)


def _combine(window: np.ndarray) -> np.uint64:
    acc = np.uint64(0)
    with np.errstate(over="ignore"):
        for h in window:
            acc = acc * _MULT + h
    return acc


def _hash64(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
