"""VectorSource: samples and fetches by rowid give the vectors of the ids asked for, in the order
asked for, whatever order the rows were stored in."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from curate.errors import CurateError
from curate.lib.vectors import VectorSource
from curate.storage.store import Store


def _store(path, ids, vecs, pool_ids):
    store = Store(str(path))
    store.con.register("_v", pa.table({"id": ids, "vec": [v.tolist() for v in vecs]}))
    store.con.execute("INSERT INTO vectors SELECT 'r', 'embed', id, 'm', vec FROM _v")
    store.con.execute("INSERT INTO vectors SELECT 'other', 'embed', id, 'm', [0.0, 0.0, 0.0, 0.0] FROM _v")
    store.con.register("_p", pa.table({"id": pool_ids}))
    store.con.execute("CREATE OR REPLACE TEMP TABLE _pool AS SELECT id FROM _p")
    return store


def test_sample_is_the_md5_draw_in_id_order_and_fetch_keeps_the_order_asked(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    ids = [f"row-{i:05d}" for i in rng.permutation(n)]  # stored out of id order
    vecs = rng.normal(size=(n, 4)).astype(np.float32)
    by_id = dict(zip(ids, vecs))
    pool_ids = sorted(ids)[::2]  # half of the rows are in the pool
    store = _store(tmp_path / "v.duckdb", ids, vecs, pool_ids)
    source = VectorSource(store.con, "r", "_pool", "embed")
    assert source.rows == len(pool_ids)

    drawn = sorted(sorted(pool_ids, key=lambda i: (hashlib.md5(("7" + i).encode()).hexdigest(), i))[:200])
    sample = source.sample(200, 7)
    np.testing.assert_array_equal(sample, np.stack([by_id[i] for i in drawn]))
    assert source.sample(10 * n, 7).shape == (len(pool_ids), 4)  # a sample larger than the pool is the pool

    asked = [pool_ids[i] for i in rng.permutation(len(pool_ids))[:500]]
    np.testing.assert_array_equal(source.fetch(pa.array(asked)), np.stack([by_id[i] for i in asked]))
    rowids = source.rowids(pa.array(asked))
    np.testing.assert_array_equal(source.fetch_rowids(rowids[::-1]), np.stack([by_id[i] for i in asked[::-1]]))
    assert source.fetch_rowids(np.zeros(0, np.int64)).shape[0] == 0

    with pytest.raises(CurateError, match="1 of the requested rows have no vectors"):
        source.fetch(pa.array([asked[0], "no-such-row"]))
    store.close()
