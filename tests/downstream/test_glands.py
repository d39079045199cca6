"""Contour targets and gland instances, against explicit loops and hand-built masks."""

import numpy as np
import pytest

from histodrl.downstream.glands import contour_target, disk, instances_from_probabilities
from histodrl.metrics import instances_from_mask


def _contour_loop(labels: np.ndarray, width: int) -> np.ndarray:
    h, w = labels.shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            if labels[y, x] == 0:
                continue
            for dy in range(-width, width + 1):
                for dx in range(-width, width + 1):
                    if dy * dy + dx * dx > width * width:
                        continue
                    qy, qx = y + dy, x + dx
                    if 0 <= qy < h and 0 <= qx < w and labels[qy, qx] != labels[y, x]:
                        out[y, x] = True
    return out


def _touching_squares() -> np.ndarray:
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[5:25, 4:20] = 1
    labels[5:25, 20:36] = 2  # shares a whole edge with gland 1
    return labels


@pytest.mark.parametrize("width", [1, 2, 3])
def test_contour_matches_the_per_pixel_definition(width):
    rng = np.random.default_rng(width)
    labels = np.zeros((24, 28), dtype=np.int32)
    for k in range(1, 6):
        y, x = rng.integers(0, 20), rng.integers(0, 24)
        labels[y : y + rng.integers(3, 9), x : x + rng.integers(3, 9)] = k
    np.testing.assert_array_equal(contour_target(labels, width), _contour_loop(labels, width))


def test_image_border_is_not_a_contour():
    labels = np.ones((10, 10), dtype=np.int32)
    assert not contour_target(labels, 2).any()


def test_disk_footprint():
    np.testing.assert_array_equal(disk(1), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool))


def test_contour_channel_splits_touching_glands_and_restores_their_rims():
    labels = _touching_squares()
    gland = (labels > 0).astype(float)
    contour = contour_target(labels, 3).astype(float)
    merged = instances_from_probabilities(gland, None, min_area=0)
    assert merged.max() == 1  # without the contour the two glands are one object
    split = instances_from_probabilities(gland, contour, min_area=0, contour_width=3)
    assert split.max() == 2
    np.testing.assert_array_equal(split, labels)


def test_without_contour_it_is_instances_from_mask():
    rng = np.random.default_rng(0)
    prob = rng.random((32, 32))
    np.testing.assert_array_equal(
        instances_from_probabilities(prob, threshold=0.6, min_area=3),
        instances_from_mask(prob, threshold=0.6, min_area=3),
    )


def test_small_objects_are_removed_and_the_rest_numbered_in_raster_order():
    gland = np.zeros((20, 20))
    gland[12:18, 2:8] = 1  # 36 px, first pixel at row 12
    gland[1:3, 10:12] = 1  # 4 px, removed
    gland[4:10, 12:18] = 1  # 36 px, first pixel at row 4
    contour = np.zeros_like(gland)
    out = instances_from_probabilities(gland, contour, min_area=5)
    assert out.dtype == np.int32
    assert out[5, 13] == 1 and out[13, 3] == 2 and out[1, 10] == 0
    assert set(np.unique(out)) == {0, 1, 2}


def test_holes_inside_a_gland_are_filled():
    gland = np.zeros((20, 20))
    gland[3:17, 3:17] = 1
    gland[8:12, 8:12] = 0  # lumen predicted as background
    out = instances_from_probabilities(gland, np.zeros_like(gland), min_area=0, contour_width=1)
    assert out[10, 10] == 1 and out.max() == 1


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="width=0"):
        contour_target(np.zeros((4, 4), dtype=np.int32), 0)
    with pytest.raises(ValueError, match="integer"):
        contour_target(np.zeros((4, 4)), 1)
    with pytest.raises(ValueError, match="contour"):
        instances_from_probabilities(np.zeros((4, 4)), np.zeros((4, 5)))
