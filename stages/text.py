"""Text views of the `messages` column shared by stages, vectorised over the batch.

Normalisation (the form exact dedup, near dedup and decontamination compare) follows Unicode's
NFKC_Casefold (UAX #44, `NFKC_CF`; the form UAX #31 §5 uses for caseless identifier matching):
NFKC, full case folding, default-ignorable code points removed. Then every run of characters
that are not letters, combining marks or digits becomes one space. Combining marks stay: they are
letters of Devanagari, Tamil, Bengali, Thai, Arabic, Hebrew... (दान and दिन differ only by a mark),
and NFKC has already composed those that precomposed letters exist for (e + ◌́ → é).

Tokens (`tokens`, `word_hashes`): words split at white space, except in scripts written without
spaces (Han, kana, Bopomofo, Yi, Thai, Lao, Khmer, Myanmar, Tai Tham, Javanese, Balinese), where
each character with its combining marks is one token, so n-grams of tokens are character n-grams
there, as Data-Juicer's `tokenization: character` and text-dedup's MinHash do for Chinese.

Vectorised: ASCII text is mapped by one byte-table lookup over the Arrow data buffer (NumPy);
the Unicode steps (Arrow's NFKC and lower-casing, one RE2 pass) run only on the rows that hold a
non-ASCII character, CPython's `str.casefold` only on rows holding a character Arrow's simple
lower-casing leaves unfolded (ß, ς...), and the character split of spaceless scripts works on the
UTF-8 bytes with NumPy.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

# The text a stage reads, in every stage that takes `text` (one vocabulary: docs/stages.md):
# `instruction` (the first user turn), `response` (the last assistant turn), `conversation`
# (every turn joined). A list names several (embed joins them; decontaminate checks each).
TextPart = Literal["instruction", "response", "conversation"]
TextParts = Annotated[list[TextPart], Field(min_length=1)]


def text_messages(batch: pa.Table) -> pa.ChunkedArray | pa.Array:
    """`batch["messages"]` as text stages read it: a turn with tool calls (the `tool_fields`
    column) has their text (`name(arguments)`, one a line) after its content, so an assistant
    turn that only calls a tool is not blank, and two calls that differ only in their arguments
    differ. Rows without tool fields (every row, mostly) are the column as it is."""
    messages = batch["messages"]
    if "tool_fields" not in batch.column_names or batch["tool_fields"].null_count == batch.num_rows:
        return messages
    from curate.storage import schema as S

    convs = []
    for conv, fields in zip(messages.to_pylist(), batch["tool_fields"].to_pylist()):
        if conv is None or not fields:
            convs.append(conv)
            continue
        turns = []
        for m in S.with_tool_fields(conv, fields):
            calls = S.tool_text(m)
            text = "\n".join(t for t in (m["content"], calls) if t) if calls else m["content"]
            turns.append({"role": m["role"], "content": text})
        convs.append(turns)
    return pa.array(convs, pa.list_(S.MESSAGE))


def first_user_turn(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The instruction: each conversation's first user turn ("" where there is none)."""
    return _turn_of(messages, "user", last=False)


def instruction(messages: list[dict] | None) -> str:
    """The instruction of one conversation (Python rows): its first user turn, "" when it has
    none. The same meaning as `first_user_turn` over an Arrow column; generators use this one."""
    return next((m["content"] for m in messages or () if m["role"] == "user"), "")


def last_assistant_turn(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The response: each conversation's last assistant turn ("" where there is none)."""
    return _turn_of(messages, "assistant", last=True)


def turn_positions(messages: pa.ChunkedArray | pa.Array, role: str, last: bool) -> np.ndarray:
    """Per row, the index into `pc.list_flatten(messages)` of its first (or last) turn of `role`;
    -1 where the row has none. Shape (rows,), int64."""
    messages = _plain(messages)
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages).to_numpy()
    matches = np.flatnonzero(pc.fill_null(pc.equal(flat.field("role"), role), False).to_numpy(zero_copy_only=False))
    if last:
        matches = matches[::-1]
    rows, first = np.unique(parents[matches], return_index=True)
    pick = np.full(len(messages), -1, dtype=np.int64)
    pick[rows] = matches[first]
    return pick


def _turn_of(messages: pa.ChunkedArray | pa.Array, role: str, last: bool) -> pa.Array:
    messages = _plain(messages)
    pick = turn_positions(messages, role, last)
    taken = pc.list_flatten(messages).field("content").take(pa.array(pick, mask=pick < 0))
    return pc.fill_null(taken, "")


def conversation_text(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    """All turns joined as `role: content` lines: the text of a whole conversation."""
    messages = _plain(messages)
    flat = pc.list_flatten(messages)
    lines = pc.binary_join_element_wise(flat.field("role"), flat.field("content"), ": ")
    rebuilt = pa.ListArray.from_arrays(pa.array(_offsets(messages), pa.int32()), lines)
    return pc.fill_null(pc.binary_join(rebuilt, "\n"), "")


def conversation_keys(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each conversation as `role key` lines joined by newlines, `key` being `key_text` of the
    turn: the text exact and near dedup compare on whole conversations.

    Turns are keyed one by one, so a turn of emoji or punctuation only keeps its own (folded)
    text instead of vanishing, and no key contains a newline, so turn boundaries stay apart.
    Tokenised, a row without such turns gives the same words as `normalise(conversation_text)`."""
    messages = _plain(messages)
    flat = pc.list_flatten(messages)
    lines = pc.binary_join_element_wise(flat.field("role"), key_text(flat.field("content")), " ")
    rebuilt = pa.ListArray.from_arrays(pa.array(_offsets(messages), pa.int32()), lines)
    return pc.fill_null(pc.binary_join(rebuilt, "\n"), "")


# ---------------------------------------------------------------------------- normalisation

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt): removed, as NFKC_Casefold does.
_IGNORABLE_RANGES = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                     (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
                     (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                     (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
_IGNORABLE = re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _IGNORABLE_RANGES) + "]")
# A run of anything but letters, marks and digits, with the marks it leaves without a base
# (an emoji's skin-tone or keycap modifier); a mark at the very start has no base either.
_BREAK = r"[^\p{L}\p{M}\p{N}]+\p{M}*|^\p{M}+"
_NO_SPACE_SCRIPTS = ("Han", "Hiragana", "Katakana", "Bopomofo", "Yi", "Thai", "Lao", "Khmer", "Myanmar",
                     "Tai_Tham", "Javanese", "Balinese")
_NO_SPACE_CLASS = "[" + "".join(rf"\p{{{s}}}" for s in _NO_SPACE_SCRIPTS) + "]"


def _re2_class(points) -> str:
    """An RE2 character class of the given code points (ascending), as ranges."""
    ranges, points = [], list(points)
    start = prev = points[0]
    for c in points[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        ranges.append(rf"\x{{{start:X}}}" + (rf"-\x{{{prev:X}}}" if prev > start else ""))
        if c is not None:
            start = prev = c
    return "[" + "".join(ranges) + "]"


# After NFKC and Arrow's (simple) lower-casing, a row needs CPython's full `str.casefold` only if
# it holds a character casefold still changes (ß, ς, ŉ, Cherokee...; case exists in planes 0-1
# only), and the ignorables removed only if it holds one: one RE2 match finds both.
_NEEDS_PYTHON = "|".join([
    _re2_class(c for c in range(0x80, 0x20000) if chr(c).casefold() != chr(c)),
    _re2_class(c for lo, hi in _IGNORABLE_RANGES for c in range(lo, hi + 1)),
])


def fold(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """NFKC_Casefold of every row (nulls stay null): NFKC, full case folding (`str.casefold`:
    ß → ss, ς → σ), NFKC again, default-ignorable code points removed. Punctuation, symbols and
    spacing are kept. Same length as `text`. ASCII rows are only lower-cased."""
    text = _plain(text)
    out = pc.ascii_lower(text)
    other = _non_ascii(text)
    if other is None:
        return out
    return pc.replace_with_mask(out, other, _fold_unicode(text.filter(other)))


def _fold_unicode(text: pa.Array) -> pa.Array:
    """`fold` of rows without nulls: Arrow's NFKC and (simple) lower-casing, then CPython's full
    casefold and the ignorables only on the rows that hold such a character."""
    part = pc.utf8_lower(pc.utf8_normalize(text, "NFKC"))
    rare = pc.match_substring_regex(part, _NEEDS_PYTHON)
    if pc.any(rare).as_py():
        fixed = [unicodedata.normalize("NFKC", _IGNORABLE.sub("", s.casefold())) for s in part.filter(rare).to_pylist()]
        part = pc.replace_with_mask(part, rare, pa.array(fixed, pa.string()))
    return part


# ASCII bytes of a UTF-8 buffer mapped as `normalise` maps ASCII text: digits and lower-case
# letters kept, upper case lowered, anything else a space. Bytes from 0x80 are left alone: no byte
# of a multi-byte UTF-8 sequence is ASCII, so the map is safe on any row.
_ASCII_MAP = np.full(256, ord(" "), np.uint8)
_ASCII_MAP[0x80:] = np.arange(0x80, 0x100)
for _c in b"0123456789abcdefghijklmnopqrstuvwxyz":
    _ASCII_MAP[_c] = _c
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _ASCII_MAP[_c] = _c + 32


def _spaced(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`normalise` before its white space is folded: every non-word character a space, runs of
    spaces left as they are. ASCII rows take one byte-table lookup over the data buffer (NumPy);
    the RE2 pass runs on the rows holding a non-ASCII character only."""
    text = _strings(text)
    offsets, data = _utf8(text)
    out = pa.Array.from_buffers(pa.string(), len(text), [None, pa.py_buffer(offsets), pa.py_buffer(_ASCII_MAP[data])])
    if text.null_count:
        out = pc.if_else(pc.is_valid(text), out, pa.scalar(None, pa.string()))
    other = _non_ascii(text)
    if other is None:
        return out
    part = pc.replace_substring_regex(_fold_unicode(text.filter(other)), _BREAK, " ")
    return pc.replace_with_mask(out, other, part)


def _utf8(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (rows + 1, int32, from 0) and UTF-8 bytes (uint8) of a string array's own
    rows: a slice's share of its parent's buffers, without copying the bytes."""
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[text.offset: text.offset + len(text) + 1] if offsets_buf else []
    if data_buf is None or len(offsets) == 0:
        return np.zeros(len(text) + 1, np.int32), np.zeros(0, np.uint8)
    return offsets - offsets[0], np.frombuffer(data_buf, np.uint8)[offsets[0]: offsets[-1]]


def normalise(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The form dedup and decontamination compare: `fold`ed (NFKC, case folded, ignorables
    removed), then every run of characters that are not letters, combining marks or digits made
    one space, trimmed. Any script; combining marks kept. "" where nothing is left; null stays null."""
    return pc.ascii_trim_whitespace(pc.replace_substring_regex(_spaced(text), " {2,}", " "))


def key_text(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`normalise(text)`, except that a text that normalises to nothing but is not blank (emoji,
    symbols or punctuation only) keeps its `fold`ed text, white space folded, so "👍" and "😂"
    stay apart. Such a key holds a non-letter, so it never equals a normalised text. "" only for
    blank text: callers must not let "" match."""
    text = _plain(text)
    norm = normalise(text)
    empty = pc.fill_null(pc.equal(norm, ""), False)
    if not pc.any(empty).as_py():
        return norm
    raw = pc.replace_substring_regex(fold(text.filter(empty)), r"[\s\p{Z}\p{Cc}]+", " ")
    return pc.replace_with_mask(norm, empty, pc.ascii_trim_whitespace(raw))


def tokens(normalised: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Tokens of normalised text (`normalise` or `key_text`: words apart by ASCII spaces):
    the words, and each character (with its marks) of scripts written without spaces. A row of
    "" or null has no tokens. Returns a list<string> array, one list per row."""
    normalised = pc.ascii_trim_whitespace(_spaced_scripts(_strings(normalised)))
    blank = pc.equal(normalised, "")
    return pc.ascii_split_whitespace(pc.if_else(blank, pa.scalar(None, pa.string()), normalised))


def _spaced_scripts(text: pa.Array) -> pa.Array:
    """`text` (a string array) with `_space_out` applied to the rows holding a character of a
    script written without spaces; the other rows as they are."""
    other = _non_ascii(text)
    if other is None:
        return text
    rows = np.flatnonzero(other.to_numpy(zero_copy_only=False))
    spaceless = pc.match_substring_regex(text.take(pa.array(rows)), _NO_SPACE_CLASS).to_numpy(zero_copy_only=False)
    if not spaceless.any():
        return text
    mask = np.zeros(len(text), bool)
    mask[rows[spaceless]] = True
    return pc.replace_with_mask(text, pa.array(mask), _space_out(text.filter(mask)))


def _space_out(text: pa.Array) -> pa.Array:
    """A space before and after every character (with the marks that follow it) of a script
    written without spaces. Vectorised over the UTF-8 bytes with NumPy: code points decoded at
    every character start, looked up in tables built once from RE2's script classes, spaces
    inserted with one `np.insert` and the offsets shifted by the spaces before them. (An RE2
    replace makes one match per character there: five times slower.)"""
    text = pc.fill_null(text, "")
    offsets, data = _utf8(text)
    offsets = offsets.astype(np.int64)
    spaceless, mark = _script_tables()
    starts = np.flatnonzero((data & 0xC0) != 0x80)
    padded = np.concatenate([data, np.zeros(3, np.uint8)]).astype(np.int64)
    lead = padded[starts]
    c1, c2, c3 = padded[starts + 1] & 0x3F, padded[starts + 2] & 0x3F, padded[starts + 3] & 0x3F
    cp = np.where(lead < 0x80, lead,
         np.where(lead < 0xE0, ((lead & 0x1F) << 6) | c1,
         np.where(lead < 0xF0, ((lead & 0x0F) << 12) | (c1 << 6) | c2,
                  ((lead & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3)))
    inside = cp < len(spaceless)
    is_mark = np.zeros(len(cp), bool)
    is_mark[inside] = mark[cp[inside]]
    base = np.zeros(len(cp), bool)
    base[inside] = spaceless[cp[inside]]
    # A mark belongs to the character before it: its cluster is spaceless if that base is.
    # A mark that starts its row is its own base, as in a batch of one row: a cluster never
    # reaches back into the row before.
    own_base = ~is_mark
    own_base[np.searchsorted(starts, offsets[:-1][np.diff(offsets) > 0])] = True
    last_base = np.maximum.accumulate(np.where(own_base, np.arange(len(cp)), 0))
    in_cluster = base[last_base]
    # A space before each spaceless base, and before the first character after a spaceless cluster.
    after = np.zeros(len(cp), bool)
    after[1:] = in_cluster[:-1] & ~is_mark[1:]
    at = starts[(base & ~is_mark) | after]
    spaced = np.insert(data, at, np.uint8(ord(" ")))
    new_offsets = offsets + np.searchsorted(at, offsets, side="left")
    return pa.Array.from_buffers(pa.string(), len(text), [None, pa.py_buffer(new_offsets.astype(np.int32)), pa.py_buffer(spaced)])


_TABLES: list[np.ndarray] = []


def _script_tables() -> tuple[np.ndarray, np.ndarray]:
    """Boolean tables over code points 0..0x3FFFF (Han extensions reach plane 3): in a script
    written without spaces (`_NO_SPACE_CLASS`), and a combining mark (\\p{M}). Built on first use."""
    if not _TABLES:
        points, chars = _characters(0, 0x40000)
        for pattern in (_NO_SPACE_CLASS, r"\p{M}"):
            table = np.zeros(0x40000, bool)
            table[points] = pc.match_substring_regex(chars, pattern).to_numpy(zero_copy_only=False)
            _TABLES.append(table)
    return _TABLES[0], _TABLES[1]


def _characters(lo: int, hi: int) -> tuple[np.ndarray, pa.Array]:
    """The code points lo..hi-1 but surrogates (uint32), and each as a one-character string."""
    points = np.arange(lo, hi, dtype=np.uint32)
    points = points[(points < 0xD800) | (points > 0xDFFF)]  # surrogates are no characters
    data = points.astype("<u4").tobytes().decode("utf-32-le").encode("utf-8")
    widths = np.select([points < 0x80, points < 0x800, points < 0x10000], [1, 2, 3], 4)
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int32)
    return points, pa.Array.from_buffers(pa.string(), len(points), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def token_counts(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Number of `tokens` of each row's normalised text (words; characters in scripts without
    spaces), int64, 0 for null: a word count that works for Chinese, Japanese and Thai."""
    return pc.fill_null(pc.list_value_length(tokens(_spaced(text))), 0).cast(pa.int64())


def word_hashes(text: pa.Array | pa.ChunkedArray, normalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of every row (`tokens` of `normalise(text)`, or of `text` itself when it is
    already `normalised`) as 64-bit hashes, flattened, with row offsets (rows + 1,).

    Each distinct token of the batch is hashed once (dictionary encoding), so the cost is per
    vocabulary entry, not per token. Hashes are stable across processes (blake2b)."""
    words = tokens(text if normalised else _spaced(text))
    offsets = _offsets(words)
    flat = pc.list_flatten(words)
    if len(flat) == 0:
        return np.zeros(0, np.uint64), offsets
    encoded = pc.dictionary_encode(flat)
    vocab = encoded.dictionary.to_pylist()
    vocab_hash = np.fromiter((_hash64(w) for w in vocab), dtype=np.uint64, count=len(vocab))
    return vocab_hash[encoded.indices.to_numpy()], offsets


def ngram_hashes(hashes: np.ndarray, offsets: np.ndarray, n: int, short_rows: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every n-token window inside each row, and the row of each window.

    A row with fewer than n tokens gives one window of all its tokens when `short_rows`."""
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


def _non_ascii(text: pa.Array) -> pa.Array | None:
    """Boolean mask of the rows holding a non-ASCII character (null rows: False); None if none does."""
    other = pc.fill_null(pc.invert(pc.string_is_ascii(text)), False)
    return other if pc.any(other).as_py() else None


def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _strings(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One `string` array (32-bit offsets), whatever string type or chunking came in."""
    arr = _plain(arr)
    return arr if arr.type == pa.string() else arr.cast(pa.string())


def _offsets(lists: pa.ListArray) -> np.ndarray:
    """Offsets of a list array rebased to its flattened values (rows + 1,), int64: a sliced array
    keeps its parent's offsets, and a null list may have any."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out



# ---------------------------------------------------------------------------- near dedup's words
#
# Near dedup reads the words of every row of every batch, so its path to them skips the string
# work that its words do not need: `word_spaced` gives the same words as `normalise` (runs of
# spaces need not be folded), most non-ASCII text without Arrow's NFKC or an RE2 pass, and
# `token_hashes` hashes each distinct word of a batch once, in rensa (Rust).

KEEP, SPACE = 1, 2  # `_fold_classes` values; 0: the character needs the full Unicode path
_ASCII_TABLE = _ASCII_MAP.tobytes()  # the same map, for `bytes.translate` (one C pass)
_FOLD_CLASSES: list[np.ndarray] = []


def _fold_classes() -> np.ndarray:
    """uint8 per code point of the BMP (0..0xFFFF): KEEP where NFKC_Casefold leaves the
    character as it is and it is a letter or digit (é, ñ, ж, 中, ア), SPACE where it is no letter,
    mark or digit and folds to nothing but such characters (’ “ – • → …), 0 for the rest: upper
    case, compatibility forms (½ ™ ﬁ), combining marks, default ignorables, and Hangul's
    conjoining vowels and final consonants (which compose with the character before them, as
    marks do; every other canonical composition ends in a mark). A row whose non-ASCII characters
    are all KEEP or SPACE folds character by character, so it needs no NFKC. Built on first use
    from the same Arrow and RE2 calls as `fold` and `normalise` (~0.04 s)."""
    if not _FOLD_CLASSES:
        points, chars = _characters(0x80, 0x10000)
        folded = _fold_unicode(chars)
        word = pc.match_substring_regex(chars, r"^[\p{L}\p{N}]$")
        mark = pc.match_substring_regex(chars, r"\p{M}")
        keep = pc.and_(pc.equal(folded, chars), word)
        breaks = pc.invert(pc.match_substring_regex(folded, r"[\p{L}\p{M}\p{N}]"))  # `_BREAK` takes all of it
        space = pc.and_(pc.and_(breaks, pc.greater(pc.binary_length(folded), 0)), pc.invert(pc.or_(word, mark)))
        table = np.zeros(0x10000, np.uint8)
        table[points[keep.to_numpy(zero_copy_only=False)]] = KEEP
        table[points[space.to_numpy(zero_copy_only=False)]] = SPACE
        table[0x1160:0x1176] = table[0x11A8:0x11C3] = 0  # Hangul jungseong and jongseong: they compose
        _FOLD_CLASSES.append(table)
    return _FOLD_CLASSES[0]


def word_spaced(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Per row, the words of `key_text(text)` apart by runs of ASCII spaces, each character of
    a script written without spaces a word of its own: `pc.ascii_split_whitespace` of the result,
    empty strings left out, is `tokens(key_text(text))`, row by row. Null is "".

    ASCII bytes are mapped by one table (`bytes.translate`); of the other characters only the
    first bytes are decoded, and a KEEP character (`_fold_classes`) stays while a SPACE one
    becomes spaces, byte for byte. Only the rows holding any other character (upper case
    non-ASCII, ½, a combining mark...) take `normalise`'s Unicode path, and only the rows left
    without a word take `key_text`'s fallback (their folded text: emoji and symbols)."""
    text = pc.fill_null(_strings(text), "")
    offsets, data = _utf8(text)
    out = bytearray(data.tobytes()).translate(_ASCII_TABLE)
    mapped = np.frombuffer(out, np.uint8)
    slow = spaceless = None
    lead = np.flatnonzero(mapped >= 0xC0)  # first bytes of the non-ASCII characters
    if len(lead):
        padded = np.concatenate([data, np.zeros(2, np.uint8)])
        b0 = padded[lead].astype(np.int64)
        b1, b2 = padded[lead + 1] & 0x3F, padded[lead + 2] & 0x3F
        three = (b0 >= 0xE0) & (b0 < 0xF0)
        cp = np.where(three, ((b0 & 0x0F) << 12) | (b1.astype(np.int64) << 6) | b2, ((b0 & 0x1F) << 6) | b1)
        kind = np.where(b0 >= 0xF0, 0, _fold_classes()[cp & 0xFFFF])  # four bytes: beyond the BMP
        row = np.searchsorted(offsets, lead, side="right") - 1
        slow = _row_mask(len(text), row[kind == 0])
        space = lead[kind == SPACE]
        mapped[space] = mapped[space + 1] = ord(" ")
        mapped[space[three[kind == SPACE]] + 2] = ord(" ")
        spaceless = _row_mask(len(text), row[(kind == KEEP) & _script_tables()[0][cp]])
    result = pa.Array.from_buffers(pa.string(), len(text), [None, pa.py_buffer(offsets), pa.py_buffer(out)])
    if spaceless is not None:
        result = pc.replace_with_mask(result, spaceless, _space_out(result.filter(spaceless)))
    if slow is not None:
        result = pc.replace_with_mask(result, slow, _spaced_scripts(_spaced(text.filter(slow))))
    blank = pc.or_(pc.equal(pc.binary_length(result), 0), pc.ascii_is_space(result))
    if pc.any(blank).as_py():  # `key_text`'s fallback: the folded text, white space folded
        raw = pc.replace_substring_regex(fold(text.filter(blank)), r"[\s\p{Z}\p{Cc}]+", " ")
        result = pc.replace_with_mask(result, blank, _spaced_scripts(pc.ascii_trim_whitespace(raw)))
    return result


def _row_mask(n: int, rows: np.ndarray) -> pa.Array | None:
    """A boolean Arrow mask of `n` rows true at `rows`; None if `rows` is empty."""
    if len(rows) == 0:
        return None
    mask = np.zeros(n, bool)
    mask[rows] = True
    return pa.array(mask)


def token_hashes(text: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The words of every row as 64-bit hashes, flattened, with row offsets (rows + 1,), int64.
    `text`: strings split at runs of ASCII white space, empty strings left out (`word_spaced`,
    `conversation_words`), or a list<string> array of words (`tokens`); a null row has none.

    Each distinct word of the batch is hashed once (dictionary encoding) by rensa's
    `RMinHash.hash_token_sets` (Rust; stable across processes and runs), the per-token hash of
    the MinHash library near dedup digests with."""
    import rensa

    text = _plain(text)
    words = text if pa.types.is_list(text.type) else pc.ascii_split_whitespace(_strings(text))
    flat = pc.list_flatten(words)
    sizes = pc.fill_null(pc.list_value_length(words), 0).to_numpy(zero_copy_only=False)
    flat_offsets, _ = _utf8(flat) if len(flat) else (np.zeros(1, np.int32), None)
    real = np.diff(flat_offsets) > 0  # a row's leading or trailing spaces split off as ""
    owner = np.repeat(np.arange(len(sizes)), sizes)[real]
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(np.bincount(owner, minlength=len(sizes)), out=offsets[1:])
    if not real.any():
        return np.zeros(0, np.uint64), offsets
    encoded = pc.dictionary_encode(flat)
    vocab = np.array(rensa.RMinHash.hash_token_sets([encoded.dictionary.to_pylist()])[0], np.uint64)
    return vocab[encoded.indices.to_numpy()[real]], offsets


def conversation_words(messages: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each conversation as its turns' `role words` (`word_spaced` of the content) joined by
    spaces: split into words, the words of `conversation_keys` (tokens), row by row."""
    messages = _plain(messages)
    flat = pc.list_flatten(messages)
    lines = pc.binary_join_element_wise(flat.field("role"), word_spaced(flat.field("content")), " ")
    rebuilt = pa.ListArray.from_arrays(pa.array(_offsets(messages), pa.int32()), lines)
    return pc.fill_null(pc.binary_join(rebuilt, " "), "")
