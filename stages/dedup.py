"""Exact and near deduplication.

Both are GlobalStages: the stream computes a key per row in parallel CPU workers (a hash of the
normalised text; a MinHash signature), the writer stores the keys, and after the stream
`decide` drops every row but the first occurrence (input order), naming the id it duplicates.

Both compare `dedup_text`: text normalised as in `curate.stages.text` (NFKC_Casefold, combining
marks kept), turn by turn, a turn of emoji or punctuation only keeping its folded raw text. A row
whose text is blank matches nothing. Near dedup shingles are token n-grams: word n-grams, and
character n-grams in scripts written without spaces (Chinese, Japanese, Thai...).
"""

from __future__ import annotations

import array
import functools
import hashlib
from typing import Literal

import numpy as np
import pyarrow as pa

from curate.lib.params import OpenFraction, Positive
from curate.stages.base import GlobalStage, Resources, StageResult
from curate.stages.text import (conversation_keys, conversation_words, first_user_turn, key_text, text_messages, token_hashes, tokens,
                                word_spaced)


def dedup_text(batch: pa.Table, on: str) -> pa.Array:
    """Per row, the already normalised text dedup compares (`key_text` of the first user turn for
    `on="instruction"`, `conversation_keys` for `"conversation"`); "" for a blank one."""
    return key_text(first_user_turn(text_messages(batch))) if on == "instruction" else conversation_keys(text_messages(batch))


class ExactDedup(GlobalStage):
    """Rows whose normalised instruction (or whole conversation, turn by turn) is equal: keep the
    first. A row whose text is blank (no instruction) matches no other row."""

    name = "exact_dedup"
    ALIASES = {"on": "text"}  # old parameter name → new (pipeline/config.py)
    resources = Resources(num_cpus=1)
    batch_size = 4096
    order = "key"

    def __init__(self, text: Literal["instruction", "conversation"] = "instruction"):
        self.text = text

    def __call__(self, batch: pa.Table) -> StageResult:
        texts = dedup_text(batch, self.text).cast(pa.binary()).to_pylist()  # UTF-8 bytes, no str round trip
        keys = [hashlib.blake2b(t, digest_size=16).digest() for t in texts]
        blank = [i for i, t in enumerate(texts) if not t]
        if blank:  # a blank text is no duplicate of another: a key of its own (the id's)
            ids = batch.column("id").to_pylist()
            for i in blank:
                keys[i] = hashlib.blake2b(b"\x00blank\x00" + ids[i].encode("utf-8"), digest_size=16).digest()
        return StageResult.keep(batch, keys=keys)

    def decide(self, batches) -> list[tuple[str, str]]:
        drops, last_key, first_id = [], None, None
        for batch in batches:  # equal keys are adjacent, in input order
            for id_, key in zip(batch.column("id").to_pylist(), batch.column("key").to_pylist()):
                if key == last_key:
                    drops.append((id_, f"duplicate_of:{first_id}"))
                else:
                    last_key, first_id = key, id_
        return drops


class MinHasher:
    """MinHash signatures of token shingles (`shingle` consecutive tokens: words, or characters
    in scripts without spaces), a batch at a time, computed by rensa (Rust, PyPI `rensa`):
    `RMinHash.digest_matrix_from_flat_token_hashes` over each row's 64-bit shingle hashes, its
    R-MinHash permutations being multiply-shift hashes (a·h + b mod 2^64, top 32 bits, `a` odd)
    drawn from Xoshiro256++ seeded with `seed`, so every worker computes the same signatures.

    Tokens are hashed by `token_hashes` (rensa's token hash, per distinct word of a batch),
    shingles by `shingle_hashes` (a polynomial rolling hash of the token hashes)."""

    def __init__(self, shingle: int = 5, num_perm: int = 128, seed: int = 0):
        if shingle < 1 or num_perm < 1:
            raise ValueError(f"shingle and num_perm must be at least 1, got {shingle} and {num_perm}")
        self.shingle = shingle
        self.num_perm = num_perm
        self.seed = seed

    def signatures(self, text: pa.Array, normalised: bool = False) -> np.ndarray:
        """(rows, num_perm) uint32; a row without tokens gets all-max (it matches nothing).
        `text`: raw text, its words as `key_text` gives them (`word_spaced`); `normalised`: text
        already normalised (`dedup_text`), split by `tokens`. Both give the same signatures."""
        return self.digest(*token_hashes(tokens(text) if normalised else word_spaced(text)))

    def digest(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures (rows, num_perm) uint32 of rows given as token hashes (uint64, flattened)
        and row offsets (rows + 1,); a row without tokens gets all-max."""
        import rensa

        grams, gram_offsets = shingle_hashes(hashes, offsets, self.shingle)
        flat = array.array(_U32)
        for start in range(0, len(gram_offsets) - 1, DIGEST_ROWS):
            part = gram_offsets[start: start + DIGEST_ROWS + 1]
            matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
                grams[part[0]: part[-1]], part - part[0], self.num_perm, self.seed)
            for row in matrix.to_rows():  # rensa's one way out: lists of ints; array.extend reads them in C
                flat.extend(row)
        sig = np.frombuffer(flat, np.uint32).reshape(len(gram_offsets) - 1, self.num_perm)
        sig[np.diff(gram_offsets) == 0] = np.iinfo(np.uint32).max  # rensa's empty digest, made explicit
        return sig


# Rows per rensa call: rensa spreads a call of 256 rows or more over Rayon threads (one per core;
# `DEFAULT_DOC_PAR_BATCH_SIZE`), while a near dedup task holds one CPU: smaller calls stay on its
# thread, so two tasks on two cores do not contend, and busy seconds stay per core.
DIGEST_ROWS = 255
_U32 = next(code for code in "IL" if array.array(code).itemsize == 4)


def shingle_hashes(hashes: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every n-token window of each row, grouped by row in order (uint64), with the
    rows' offsets into them (rows + 1,), int64. A row with fewer than n tokens but some gives one
    window of all its tokens; a row without tokens none. The window hash is the polynomial
    Σ h[j]·M^(len−1−j) mod 2^64 of its token hashes (as `ngram_hashes`), vectorised over the batch."""
    offsets = np.asarray(offsets, np.int64)
    lengths = np.diff(offsets)
    counts = np.where(lengths >= n, lengths - n + 1, lengths > 0)
    gram_offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(counts, out=gram_offsets[1:])
    out = np.empty(gram_offsets[-1], np.uint64)
    total = len(hashes)
    if total == 0:
        return out, gram_offsets
    powers = np.cumprod(np.r_[np.uint64(1), np.full(n - 1, _MULT, np.uint64)], dtype=np.uint64)
    padded = np.concatenate([hashes, np.zeros(n - 1, np.uint64)])
    with np.errstate(over="ignore"):
        # The window at every token (contiguous slices, no gathers), then the valid ones.
        acc = padded[:total].copy()
        for j in range(1, n):  # Horner: acc·M + the next token, in place
            acc *= _MULT
            acc += padded[j: j + total]
        # A window starts at a token with n − 1 more of its row after it: not at the last n − 1
        # tokens of a row of n or more, nor in a shorter row.
        valid = np.ones(total, bool)
        ends = offsets[1:][lengths >= n]
        for k in range(1, n):
            valid[ends - k] = False
        short = (lengths > 0) & (lengths < n)
        if not short.any():
            return acc[valid], gram_offsets
        valid[np.repeat(short, lengths)] = False
        # Short rows too: the full windows go to their rows' places (shifted from token to
        # window positions), then each short row's one window, rows of one length at a time.
        starts = np.flatnonzero(valid)
        out[starts + np.repeat(gram_offsets[:-1] - offsets[:-1], np.where(short, 0, counts))] = acc[starts]
        for length in np.unique(lengths[short]):
            first = offsets[:-1][lengths == length]
            acc = padded[first] * powers[length - 1]
            for j in range(1, length):
                acc += padded[first + j] * powers[length - 1 - j]
            out[gram_offsets[:-1][lengths == length]] = acc
    return out, gram_offsets


_MULT = np.uint64(0x100000001B3)


def near_dedup_words(batch: pa.Table, on: str) -> tuple[np.ndarray, np.ndarray]:
    """The token hashes and row offsets (`token_hashes`) of the words of `dedup_text(batch, on)`,
    by the short path (`word_spaced`, `conversation_words`): the same words, without building
    the normalised text."""
    if on == "instruction":
        return token_hashes(word_spaced(first_user_turn(text_messages(batch))))
    return token_hashes(conversation_words(text_messages(batch)))


class NearDedup(GlobalStage):
    """MinHash + LSH over token shingles (word n-grams; character n-grams in Chinese, Japanese,
    Thai..., as Data-Juicer's `tokenization: character`): rows whose Jaccard similarity to an
    earlier kept row reaches `threshold` are dropped, naming that row. Rows without tokens pair
    with nothing.

    Bands favour recall (`recall_weight` of the error mass on false negatives: at the default
    0.99 and threshold 0.8, 18 bands of 7 rows, which pass a pair at J = 0.8 with probability
    0.986 and at 0.85 with 0.999, where 0.9's 14 × 9 passed 0.87 and 0.97 and missed ~2% of the
    rows to drop in bench/cpu_stages.py; the extra candidates, most of them below the
    threshold, cost little: each is verified on its signatures); every candidate
    pair is then verified on its signatures, accepting an estimated similarity of at least
    threshold − `verify_margin`: the estimate's noise (σ ≈ 0.04 at 128 permutations) would
    otherwise reject about half of the pairs just above the threshold."""

    name = "near_dedup"
    ALIASES = {"on": "text"}  # old parameter name → new (pipeline/config.py)
    resources = Resources(num_cpus=1)
    batch_size = 2048
    order = "position"

    @classmethod
    def check_params(cls, params: dict) -> None:
        """Each LSH band takes `num_perm // bands` rows of the signature: at least one."""
        bands, num_perm = params.get("bands"), params.get("num_perm", 128)
        if bands is not None and bands > num_perm:
            raise ValueError(f"bands ({bands}) is above num_perm ({num_perm}): each band takes num_perm // bands "
                             "signature rows, at least one")

    def __init__(self, threshold: OpenFraction = 0.8, num_perm: Positive = 128, shingle: Positive = 5, seed: int = 0,
                 text: Literal["instruction", "conversation"] = "conversation", bands: Positive | None = None,
                 recall_weight: float = 0.99, verify_margin: float = 0.05, max_bucket: int = 64):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
        self.threshold = threshold
        self.text = text
        self.hasher = MinHasher(shingle, num_perm, seed)
        if bands is None:
            self.bands, self.rows_per_band = lsh_params(threshold, num_perm, 1 - recall_weight, recall_weight)
        else:
            self.bands, self.rows_per_band = bands, num_perm // bands
        self.verify_at = threshold - verify_margin
        self.max_bucket = max_bucket

    def __call__(self, batch: pa.Table) -> StageResult:
        sig = self.hasher.digest(*near_dedup_words(batch, self.text))
        return StageResult.keep(batch, keys=_rows_as_binary(sig))

    def decide(self, batches) -> list[tuple[str, str]]:
        ids, sigs = [], []
        for batch in batches:
            ids.extend(batch.column("id").to_pylist())
            sigs.append(_signature_matrix(batch.column("key"), self.hasher.num_perm))
        if not ids:
            return []
        sig = np.concatenate(sigs)
        del sigs
        pairs = self.candidate_pairs(sig)
        return greedy_drops(ids, pairs)

    def candidate_pairs(self, sig: np.ndarray) -> np.ndarray:
        """Verified pairs (i, j), i < j in input order, with estimated Jaccard ≥ verify_at.
        Rows without tokens (all-max signatures) pair with nothing: blank is not a duplicate.

        A pair is one int64 code (i × n + j); the codes found so far are made unique whenever
        more than COMPACT_CODES wait: a group of copies collides in most bands with the same
        pairs, and collecting every band's (i, j) pairs before one unique held ~500 MB on 100k
        rows with ~30 copies each (bench/end_to_end.py)."""
        n = len(sig)
        r = self.rows_per_band
        blank = (sig == np.iinfo(np.uint32).max).all(axis=1)
        codes, waiting, waiting_n = np.empty(0, np.int64), [], 0
        mult = np.random.default_rng(12345).integers(1, 2**63, r, dtype=np.uint64) | np.uint64(1)
        with np.errstate(over="ignore"):
            for band in range(self.bands):
                chunk = sig[:, band * r: (band + 1) * r].astype(np.uint64)
                key = (chunk * mult).sum(axis=1)
                del chunk
                order = np.argsort(key, kind="stable")
                sorted_key = key[order]
                starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
                sizes = np.diff(np.r_[starts, n])
                pairs_of_two = starts[sizes == 2]  # most buckets that collide hold two rows
                a, b = order[pairs_of_two], order[pairs_of_two + 1]
                found = [np.minimum(a, b) * n + np.maximum(a, b)]
                for start, size in zip(starts[sizes > 2], sizes[sizes > 2]):
                    group = np.sort(order[start: start + size])
                    if size <= self.max_bucket:
                        i, j = _pairs_within(int(size))
                        found.append(group[i] * n + group[j])
                    else:  # a big bucket: pair every member with its first few, not all with all
                        heads = group[:8]
                        i, j = np.meshgrid(heads, group, indexing="ij")
                        keep = i < j
                        found.append(i[keep] * n + j[keep])
                waiting.append(np.concatenate(found))
                waiting_n += len(waiting[-1])
                del found, key, order, sorted_key
                if waiting_n > COMPACT_CODES:
                    codes, waiting, waiting_n = np.unique(np.concatenate([codes, *waiting])), [], 0
        codes = np.unique(np.concatenate([codes, *waiting]))
        del waiting
        if blank.any():
            codes = codes[~(blank[codes // n] | blank[codes % n])]
        pairs = np.stack([codes // n, codes % n], axis=1)
        # Verified a slice at a time: both signatures of every pair at once would take
        # pairs × num_perm × 8 bytes (1.5 GB for the 1.5M pairs of 100k rows with 30 copies each).
        keep = np.empty(len(pairs), bool)
        for start in range(0, len(pairs), VERIFY_PAIRS):
            part = pairs[start: start + VERIFY_PAIRS]
            keep[start: start + len(part)] = (sig[part[:, 0]] == sig[part[:, 1]]).mean(axis=1) >= self.verify_at
        return pairs[keep]


COMPACT_CODES = 1 << 21  # candidate pair codes held before they are made unique: 16 MiB
VERIFY_PAIRS = 16_384  # candidate pairs verified at once: 16 MiB of signatures at 128 permutations


def _rows_as_binary(sig: np.ndarray) -> pa.Array:
    """Each row of a (rows, num_perm) uint32 matrix as one binary value of num_perm × 4 bytes
    (native order), over the matrix's own buffer (no bytes object per row)."""
    width = sig.shape[1] * 4
    offsets = np.arange(len(sig) + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), len(sig), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(sig))])


def _signature_matrix(keys: pa.Array, num_perm: int) -> np.ndarray:
    """(rows, num_perm) uint32 from a binary column of signatures, read from its Arrow buffers
    (no Python bytes object per row)."""
    keys = pa.array(keys) if not isinstance(keys, pa.Array) else keys
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    width = num_perm * 4
    offsets = np.frombuffer(keys.buffers()[1], np.int32, len(keys) + 1, keys.offset * 4)
    data = np.frombuffer(keys.buffers()[2], np.uint8)[offsets[0]: offsets[-1]]
    if len(data) != width * len(keys):
        raise ValueError(f"near_dedup keys are not {width}-byte signatures (num_perm {num_perm})")
    return data.view(np.uint32).reshape(len(keys), num_perm).copy()


@functools.lru_cache(maxsize=64)
def _pairs_within(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of `size` bucket members, as `np.triu_indices(size, k=1)`; cached, as
    most buckets hold a few rows."""
    return np.triu_indices(size, k=1)


def greedy_drops(ids: list[str], pairs: np.ndarray) -> list[tuple[str, str]]:
    """In input order, drop a row if a verified neighbour before it is still kept; name the
    earliest such neighbour. No chains: every drop names a row it is itself similar to."""
    if len(pairs) == 0:
        return []
    pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]  # by j, then i
    dropped: dict[int, int] = {}
    for start in range(0, len(pairs), VERIFY_PAIRS):  # a slice at a time: a Python pair per row costs ~130 bytes
        for i, j in pairs[start: start + VERIFY_PAIRS].tolist():
            if j in dropped or i in dropped:
                continue
            dropped[j] = i
    return [(ids[j], f"near_duplicate_of:{ids[i]}") for j, i in sorted(dropped.items())]


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """Bands and rows per band minimising weighted false positive and negative probability
    mass around the threshold (the rule datasketch's MinHashLSH uses)."""

    def integrate(f, lo, hi):
        xs = np.linspace(lo, hi, 201)
        return float(np.trapezoid(f(xs), xs))

    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = integrate(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)
            fn = integrate(lambda s: 1 - (1 - (1 - s ** r) ** b), threshold, 1.0)
            err = fp * fp_weight + fn * fn_weight
            if err < best_err:
                best, best_err = (b, r), err
    return best
