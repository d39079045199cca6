"""instances_from_mask against a flood-fill reference written with explicit loops."""

from collections import deque

import numpy as np
import pytest

from histodrl.metrics.instances import instances_from_mask

NEIGHBOURS = {
    1: [(-1, 0), (1, 0), (0, -1), (0, 1)],
    2: [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)],
}


def flood(mask, start, steps, seen):
    h, w = mask.shape
    queue, component = deque([start]), [start]
    seen[start] = True
    while queue:
        r, c = queue.popleft()
        for dr, dc in steps:
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                seen[rr, cc] = True
                queue.append((rr, cc))
                component.append((rr, cc))
    return component


def ref_instances(mask, threshold, min_area, fill_holes, connectivity):
    fg = mask > threshold
    h, w = fg.shape
    if fill_holes:
        # Background reachable from the border (complementary connectivity) stays background.
        outside = np.zeros_like(fg)
        seen = np.zeros_like(fg)
        for r in range(h):
            for c in range(w):
                if (r in (0, h - 1) or c in (0, w - 1)) and not fg[r, c] and not seen[r, c]:
                    for p in flood(~fg, (r, c), NEIGHBOURS[3 - connectivity], seen):
                        outside[p] = True
        fg = ~outside
    labels = np.zeros((h, w), dtype=np.int32)
    seen = np.zeros_like(fg)
    next_label = 1
    for r in range(h):
        for c in range(w):
            if fg[r, c] and not seen[r, c]:
                component = flood(fg, (r, c), NEIGHBOURS[connectivity], seen)
                if len(component) >= min_area:
                    for p in component:
                        labels[p] = next_label
                    next_label += 1
    return labels


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("fill_holes", [True, False])
def test_instances_match_the_flood_fill_reference_on_random_masks(connectivity, fill_holes):
    rng = np.random.default_rng(connectivity * 10 + fill_holes)
    for _ in range(15):
        probability = rng.random((14, 17)) * rng.uniform(0.8, 1.4)
        min_area = int(rng.integers(0, 5))
        got = instances_from_mask(probability, 0.5, min_area, fill_holes, connectivity)
        want = ref_instances(probability, 0.5, min_area, fill_holes, connectivity)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_diagonal_neighbours_join_only_with_8_connectivity():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    assert instances_from_mask(mask, connectivity=2).max() == 1
    assert instances_from_mask(mask, connectivity=1).max() == 2


def test_hole_filling_fills_enclosed_background_but_not_a_gap_to_the_border():
    ring = np.zeros((7, 7), dtype=np.uint8)
    ring[1:6, 1:6] = 255
    ring[2:5, 2:5] = 0  # a 3x3 hole
    filled = instances_from_mask(ring)
    assert (filled[2:5, 2:5] == 1).all()
    assert (instances_from_mask(ring, fill_holes=False)[2:5, 2:5] == 0).all()
    ring[3, 5] = 0  # an edge-connected channel from the hole to the border: not a hole any more
    assert (instances_from_mask(ring)[2:5, 2:5] == 0).all()
    ring[3, 5] = 255
    ring[5, 5] = 0  # without the corner the hole's (4, 4) meets the outside only diagonally:
    assert (instances_from_mask(ring)[2:5, 2:5] == 1).all()  # closed for 8-connected objects
    assert (instances_from_mask(ring, connectivity=1)[2:5, 2:5] == 0).all()  # open for 4


def test_min_area_removes_smaller_objects_keeps_equal_and_renumbers():
    mask = np.zeros((5, 12))
    mask[0, 0] = 0.9  # 1 px: removed
    mask[2:4, 2:4] = 0.9  # 4 px: kept (area == min_area)
    mask[0:3, 8:11] = 0.9  # 9 px: kept
    labels = instances_from_mask(mask, min_area=4)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[0, 0] == 0 and labels[0, 8] == 1 and labels[2, 2] == 2


def test_threshold_is_strict():
    assert instances_from_mask(np.full((2, 2), 0.5)).max() == 0
    assert instances_from_mask(np.full((2, 2), 0.5), threshold=0.49).max() == 1


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="connectivity=3"):
        instances_from_mask(np.zeros((3, 3)), connectivity=3)
    with pytest.raises(ValueError, match="min_area=-1"):
        instances_from_mask(np.zeros((3, 3)), min_area=-1)
    with pytest.raises(ValueError, match=r"\(3, 3, 3\)"):
        instances_from_mask(np.zeros((3, 3, 3)))
