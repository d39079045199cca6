"""histodrl.downstream.segment_data: the training images, their random windows, the augmentation."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from histodrl.data.glas import GlasDataset
from histodrl.data.synth_glas import make_glas
from histodrl.downstream.glands import contour_target
from histodrl.downstream.segment_data import (
    SegmentationCrops,
    augment_batch,
    training_images,
    window_side,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=6, n_test_a=1, n_test_b=1, size=(192, 160), seed=0)
    return root


def _find_window(full: np.ndarray, window: np.ndarray) -> tuple[int, int]:
    side = window.shape[0]
    limit = full[: full.shape[0] - side + 1, : full.shape[1] - side + 1]
    for top, left in np.argwhere((limit == window[0, 0]).all(axis=-1)):
        if np.array_equal(full[top : top + side, left : left + side], window):
            return int(top), int(left)
    raise AssertionError("window not found in the image")


def test_crops_are_a_function_of_seed_epoch_and_item(glas):
    ds = GlasDataset(glas)
    crops = SegmentationCrops(ds, [0, 2, 4], 80, seed=1, contour_width=3)
    first = crops[1]
    assert torch.equal(first["image"], crops[1]["image"])
    assert torch.equal(first["target"], crops[1]["target"])
    next_epoch = crops[1 + len(crops)]
    other_seed = SegmentationCrops(ds, [0, 2, 4], 80, seed=2, contour_width=3)[1]
    assert not torch.equal(first["image"], next_epoch["image"])
    assert not torch.equal(first["image"], other_seed["image"])


def test_crop_targets_are_the_full_image_targets_at_the_window(glas):
    ds = GlasDataset(glas)
    crops = SegmentationCrops(ds, [3], 80, seed=0, contour_width=2)
    item = ds[3]
    full_contour = contour_target(item["label"], 2)
    for k in range(3):
        crop = crops[k]
        image = crop["image"].numpy().transpose(1, 2, 0)
        top, left = _find_window(item["image"], image)
        rows, cols = slice(top, top + 80), slice(left, left + 80)
        target = crop["target"].numpy()
        assert target.dtype == np.uint8 and target.shape == (2, 80, 80)
        np.testing.assert_array_equal(target[0], item["label"][rows, cols] > 0)
        np.testing.assert_array_equal(target[1], full_contour[rows, cols])


def test_images_smaller_than_the_window_are_reflect_padded_with_their_labels(glas):
    ds = GlasDataset(glas)
    crop = SegmentationCrops(ds, [0], 200, seed=0)[0]  # images are 192x160
    item = ds[0]
    pad = ((0, 40), (0, 8))
    np.testing.assert_array_equal(
        crop["image"].numpy().transpose(1, 2, 0),
        np.pad(item["image"], (*pad, (0, 0)), mode="reflect"),
    )
    np.testing.assert_array_equal(
        crop["target"][0].numpy(), np.pad(item["label"], pad, mode="reflect") > 0
    )


def test_one_image_still_fills_a_batch_of_two(glas):
    crops = SegmentationCrops(GlasDataset(glas), [5], 64, seed=0, min_length=2)
    assert len(crops) == 2
    assert not torch.equal(crops[0]["image"], crops[1]["image"])


def test_window_is_a_quarter_larger_than_the_crop():
    assert window_side(64) == 80 and window_side(256) == 320


def test_training_images_are_a_seeded_subset_with_both_grades(glas):
    ds = GlasDataset(glas)
    half = training_images(ds, 0.5, seed=3)
    assert 3 <= len(half) < 6 and list(half) == sorted(half)
    assert {ds.records[i].grade for i in half} == {"benign", "malignant"}
    np.testing.assert_array_equal(half, training_images(ds, 0.5, seed=3))
    np.testing.assert_array_equal(training_images(ds, 1.0, seed=0), np.arange(6))


class _Records:
    """A training split of the user's own masks: records without grades."""

    def __init__(self, n):
        self.records = [SimpleNamespace(name=f"img_{i}", grade=None) for i in range(n)]

    def __len__(self):
        return len(self.records)


def test_training_images_without_grades_are_a_plain_seeded_subset():
    chosen = training_images(_Records(10), 0.3, seed=1)
    assert len(chosen) == 3 and list(chosen) == sorted(set(chosen))
    np.testing.assert_array_equal(chosen, training_images(_Records(10), 0.3, seed=1))
    np.testing.assert_array_equal(training_images(_Records(4), 1.0, seed=0), np.arange(4))


def test_augmentation_moves_image_and_target_together():
    gen = torch.Generator().manual_seed(0)
    target = torch.zeros(4, 1, 80, 80, dtype=torch.uint8)
    for b in range(4):
        target[b, 0, 10 + 5 * b : 50, 20 : 40 + 5 * b] = 1
        target[b, 0, 60:75, 5:70] = 1
    image = (target * 200 + 30).expand(4, 3, 80, 80).contiguous()
    x, y = augment_batch(image, target, 64, gen)
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 1, 64, 64) and y.dtype == torch.float32
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    # The image stays grey under the jitter and every step is monotone in intensity, so the bright
    # pixels must be the target's (up to bilinear blur at the edges).
    grey = x.mean(dim=1, keepdim=True)
    for b in range(4):
        g, t = grey[b], y[b] > 0
        assert t.any() and (~t).any()
        cut = (g[t].mean() + g[~t].mean()) / 2
        assert ((g > cut) == t).float().mean() > 0.97
    again = augment_batch(image, target, 64, torch.Generator().manual_seed(0))
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
