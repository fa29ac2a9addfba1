"""The exact nearest-centroid search (lib/clustering.Assigner) against brute force."""

import numpy as np
import pytest

from curate.lib.clustering import Assigner


def brute_force(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = ((x.astype(np.float64)[:, None, :] - centroids.astype(np.float64)[None]) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


@pytest.mark.parametrize("rows", [1, 4095, 4097, 9000])  # one row, around the GEMM block, several blocks
def test_assigner_finds_the_nearest_centroid_and_its_squared_distance(rows):
    rng = np.random.default_rng(rows)
    centroids = rng.normal(size=(37, 24)).astype(np.float32) * rng.uniform(0.5, 2, (37, 1)).astype(np.float32)
    x = (centroids[rng.integers(0, 37, rows)] + rng.normal(size=(rows, 24)) * 0.7).astype(np.float32)
    label, distance = Assigner(centroids)(x)
    want_label, want_distance = brute_force(x, centroids)
    assert label.dtype == np.int32 and distance.dtype == np.float32 and label.shape == distance.shape == (rows,)
    # Where float32 rounding could swap two almost equally near centroids, both are right.
    wrong = label != want_label
    gap = ((x[wrong] - centroids[label[wrong]]) ** 2).sum(1) - want_distance[wrong]
    assert np.all(np.abs(gap) < 1e-3), gap
    np.testing.assert_allclose(distance, want_distance, rtol=1e-4, atol=1e-3)


def test_a_row_on_its_centroid_is_at_distance_zero_and_empty_input_is_empty():
    centroids = np.eye(4, dtype=np.float32) * 3
    label, distance = Assigner(centroids)(centroids[[2, 0]])
    assert label.tolist() == [2, 0] and np.all(distance >= 0) and np.all(distance < 1e-5)
    label, distance = Assigner(centroids)(np.zeros((0, 4), np.float32))
    assert label.shape == distance.shape == (0,)


def test_rows_of_another_width_are_refused():
    with pytest.raises(ValueError, match="dims"):
        Assigner(np.zeros((3, 8), np.float32))(np.zeros((2, 5), np.float32))

