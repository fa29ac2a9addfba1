"""SemDeDup: drops rows whose meaning duplicates an earlier kept row, naming it."""

import os

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("faiss")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curate.selectors.vectors import binary_rows  # noqa: E402
from curate.stages.semdedup import SemDeDup  # noqa: E402
from curate.storage import schema as S  # noqa: E402


def _keys_batches(ids, vecs, size=64):
    """What the runner hands `decide`: (id, key) batches in input order."""
    keys = binary_rows(vecs.astype(np.float32))
    for start in range(0, len(ids), size):
        yield pa.record_batch({"id": pa.array(ids[start:start + size]), "key": keys[start:start + size]})


def test_decide_drops_planted_copies_and_names_a_kept_original():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 64)) * 1.5
    base = centres[rng.integers(0, 6, 600)] + rng.normal(size=(600, 64))  # six topics, no two rows alike
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies_of = rng.choice(600, 100, replace=False)
    noise = rng.normal(size=(100, 64)) * 0.02
    vecs = np.concatenate([base, base[copies_of] + noise])
    ids = [f"r{i}" for i in range(len(vecs))]
    stage = SemDeDup(threshold=0.95, k=6)
    drops = stage.decide(_keys_batches(ids, vecs))
    assert sorted(d[0] for d in drops) == sorted(f"r{600 + j}" for j in range(100))
    assert all(reason == f"semantic_duplicate_of:r{copies_of[int(row[1:]) - 600]}" for row, reason in drops)
    assert SemDeDup(threshold=0.95, k=6).decide(_keys_batches(ids, vecs)) == drops  # deterministic


def test_no_chains_and_an_earlier_row_is_kept():
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.25), np.sin(0.25)])  # cos(a, b) ≈ 0.969
    c = np.array([np.cos(0.5), np.sin(0.5)])  # cos(a, c) ≈ 0.878, cos(b, c) ≈ 0.969
    drops = SemDeDup(threshold=0.95, k=1).decide(_keys_batches(["a", "b", "c"], np.stack([a, b, c])))
    assert drops == [("b", "semantic_duplicate_of:a")]  # c resembles only b, which was dropped: c stays


def test_stream_half_passes_the_embed_vectors_as_keys():
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4)
    batch = pa.table({"id": ["a", "b", "c"], S.VEC_PREFIX + "embed": pa.array(vecs.tolist(), pa.list_(pa.float32()))})
    result = SemDeDup()(batch)
    assert result.kept.num_rows == 3
    assert np.frombuffer(result.keys[1].as_py(), np.float32).tolist() == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="needs the vectors 'other'"):
        SemDeDup(vectors="other")(batch)


def test_real_paraphrase_copies_of_alpaca_instructions(alpaca_rows):
    pytest.importorskip("sentence_transformers")
    from curate.stages.embed import Embed

    originals = [r["instruction"] for r in alpaca_rows[:200]]
    copies = [f"{t.rstrip('.')}, please." for t in originals[:20]]  # cosine to the original: 0.94 to 0.99
    vecs = Embed().encode(originals + copies)
    ids = [f"o{i}" for i in range(200)] + [f"c{i}" for i in range(20)]
    drops = dict(SemDeDup(threshold=0.93, k=4).decide(_keys_batches(ids, vecs)))
    caught = {row for row in drops if row.startswith("c")}
    assert len(caught) >= 19, sorted(caught)  # a pair split across two clusters may be missed
    assert all(drops[f"c{i}"] == f"semantic_duplicate_of:o{i}" for i in range(20) if f"c{i}" in caught)
    assert sum(row.startswith("o") for row in drops) <= 2  # the originals are (nearly all) distinct
