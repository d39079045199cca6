import numpy as np
import pytest

from histodrl.data.crops import (
    EpochSeeded,
    center_crop_box,
    item_rng,
    random_crop_box,
    sliding_windows,
    window_starts,
)


def reference_window_starts(length, crop, stride):
    """Explicit loop: regular starts while the window fits, then a flush one if a gap is left."""
    starts = []
    start = 0
    while start + crop <= length:
        starts.append(start)
        start += stride
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


@pytest.mark.parametrize(
    "length,crop,stride",
    [(775, 256, 64), (522, 256, 64), (256, 256, 64), (257, 256, 64), (100, 7, 3), (10, 1, 4)],
)
def test_window_starts_match_the_loop_reference_and_cover_every_pixel(length, crop, stride):
    starts = window_starts(length, crop, stride)
    assert starts == reference_window_starts(length, crop, stride)
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + crop] = True
    assert covered.all() == (stride <= crop)  # a stride longer than the crop leaves gaps
    assert starts[-1] == length - crop
    assert len(starts) == -(-(length - crop) // stride) + 1


def test_a_775x522_glas_image_gives_60_windows_at_crop_256_stride_64():
    windows = sliding_windows(522, 775, 256, 64)
    assert len(windows) == 60  # 6 rows x 10 columns; E19's 45 = 9 x 5 leaves the borders out
    assert windows[0] == (0, 0)
    assert windows[9] == (0, 775 - 256)
    assert windows[-1] == (522 - 256, 775 - 256)


def test_window_larger_than_the_image_is_a_value_error():
    with pytest.raises(ValueError, match="crop=300"):
        window_starts(200, 300, 64)
    with pytest.raises(ValueError, match="stride=0"):
        window_starts(200, 100, 0)


def test_item_rng_depends_on_seed_epoch_and_index_only():
    a = item_rng(3, 1, 7).integers(0, 1 << 30, 8)
    assert np.array_equal(a, item_rng(3, 1, 7).integers(0, 1 << 30, 8))
    for other in (item_rng(4, 1, 7), item_rng(3, 2, 7), item_rng(3, 1, 8)):
        assert not np.array_equal(a, other.integers(0, 1 << 30, 8))
    with pytest.raises(ValueError):
        item_rng(-1, 0, 0)


def test_random_crop_box_reaches_every_position_and_stays_inside():
    rng = np.random.default_rng(0)
    boxes = {random_crop_box(5, 6, 4, rng) for _ in range(500)}
    assert boxes == {(t, c) for t in range(2) for c in range(3)}
    with pytest.raises(ValueError, match="crop=7"):
        random_crop_box(5, 6, 7, rng)


def test_center_crop_box_rounds_towards_the_top_left():
    assert center_crop_box(96, 96, 64) == (16, 16)
    assert center_crop_box(5, 8, 2) == (1, 3)


class _Toy(EpochSeeded):
    def __init__(self, n, seed):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n


def test_an_index_past_the_length_carries_the_epoch():
    toy = _Toy(10, seed=5)
    assert toy.split_index(3) == (0, 3)
    assert toy.split_index(23) == (2, 3)
    item, rng = toy.rng(23)
    assert item == 3
    assert rng.integers(1 << 30) == item_rng(5, 2, 3).integers(1 << 30)
    toy.set_epoch(4)
    assert toy.split_index(23) == (6, 3)
    with pytest.raises(IndexError):
        toy.split_index(-1)
