"""lib/vectors.py helpers."""

import pyarrow as pa
import pyarrow.compute as pc

from curate.lib.vectors import id_order


def test_id_order_sorts_ids_bytewise_and_keeps_equal_ids_in_place():
    ids = pa.chunked_array([pa.array(["b", "a", "é", "A", "a", ""]), pa.array(["z", "a"])])
    order = id_order(ids)
    assert order.tolist() == pc.sort_indices(ids).to_numpy().tolist() == [5, 3, 1, 4, 7, 0, 6, 2]
    assert id_order(pa.array([], pa.string())).tolist() == []
