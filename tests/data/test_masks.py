"""masks:DIR: pairing images with masks, binary vs instance masks, seeded splits, pretraining crops."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from histodrl.data.masks import (
    ImageCrops,
    binary_to_instances,
    default_min_object_area,
    find_mask_pairs,
    find_mask_splits,
    is_binary_mask,
    mask_datasets,
    mask_pretrain_crops,
    read_mask,
    seeded_split,
    split_records,
)
from histodrl.errors import UserInputError

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def rgb(seed, shape=(24, 32)):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def instances(seed, shape=(24, 32), n=3):
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.int32)
    for label in range(1, n + 1):
        r, c = rng.integers(0, shape[0] - 5), rng.integers(0, shape[1] - 5)
        out[r : r + 4, c : c + 4] = label
    return out


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def side_by_side(folder, names, mask=lambda k: instances(k).astype(np.uint8), ext=".png"):
    for k, name in enumerate(names):
        save(folder / f"{name}.png", rgb(k))
        save(folder / f"{name}_mask{ext}", mask(k))
    return folder


def test_both_layouts_pair_by_stem_in_natural_order(tmp_path):
    side_by_side(tmp_path / "a", ["img_10", "img_2", "img_1"])
    records = find_mask_pairs(tmp_path / "a")
    assert [r.name for r in records] == ["img_1", "img_2", "img_10"]
    assert records[0].mask_path.name == "img_1_mask.png" and records[0].part == "train"
    assert (records[0].width, records[0].height) == (32, 24)

    b = tmp_path / "b"
    save(b / "images" / "x.jpg", rgb(0))
    save(b / "masks" / "x.png", instances(0).astype(np.uint8))
    save(b / "images" / "y.tif", rgb(1))
    save(b / "masks" / "y_anno.tif", instances(1).astype(np.uint16))
    records = find_mask_pairs(b, part="test")
    assert [(r.name, r.mask_path.name, r.part) for r in records] == [
        ("x", "x.png", "test"),
        ("y", "y_anno.tif", "test"),
    ]


@pytest.mark.parametrize(
    ("name", "dtype", "top"),
    [("m.png", np.uint8, 200), ("m.png", np.uint16, 700), ("m.tif", np.uint16, 60000),
     ("m.tif", np.int32, 70000), ("m.bmp", np.uint8, 9)],
)  # fmt: skip
def test_instance_masks_keep_their_values(tmp_path, name, dtype, top):
    mask = instances(0).astype(dtype)
    mask[0, 0] = top
    save(tmp_path / name, mask)
    got = read_mask(tmp_path / name)
    np.testing.assert_array_equal(got.astype(np.int64), mask.astype(np.int64))


def test_binary_masks_become_8_connected_components():
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 1:3] = 255
    mask[3, 3] = 255  # diagonal neighbour: same object under 8-connectivity
    mask[6, 6] = 255
    assert is_binary_mask(mask) and is_binary_mask(mask // 255)
    assert not is_binary_mask(np.array([[0, 1, 2]])) and not is_binary_mask(np.array([[0, 1, 255]]))
    labels = binary_to_instances(mask)
    # Reference: flood fill with the 8 neighbours.
    expected = np.zeros_like(labels)
    current = 0
    for r0, c0 in zip(*np.nonzero(mask)):
        if expected[r0, c0]:
            continue
        current += 1
        stack = [(r0, c0)]
        while stack:
            r, c = stack.pop()
            if 0 <= r < 8 and 0 <= c < 8 and mask[r, c] and not expected[r, c]:
                expected[r, c] = current
                stack += [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32 and labels.max() == 2


def test_a_source_of_binary_masks_is_marked_binary_and_instance_maps_are_not(tmp_path):
    def blob(k):
        m = np.zeros((24, 32), np.uint8)
        m[2:6, 2:6] = m[10:14, 10:20] = 255
        return m

    side_by_side(tmp_path / "bin", [f"t{k}" for k in range(5)], mask=blob)
    datasets, survey = mask_datasets(tmp_path / "bin", seed=0)
    assert survey.binary and datasets["train"].binary_masks
    item = datasets["train"][0]
    assert item["label"].dtype == np.int32 and item["label"].max() == 2
    assert item["image"].dtype == np.uint8 and item["image"].shape == (24, 32, 3)
    assert set(item) >= {"image", "label", "name", "part", "grade"} and item["grade"] is None

    side_by_side(tmp_path / "inst", [f"t{k}" for k in range(5)])
    datasets, survey = mask_datasets(tmp_path / "inst", seed=0)
    assert not survey.binary
    np.testing.assert_array_equal(datasets["train"][0]["label"], instances(int(
        datasets["train"][0]["name"][1:])))  # fmt: skip
    # The same 0/1 files read as instance maps when asked to.
    _, forced = mask_datasets(tmp_path / "bin", seed=0, mask_kind="instance")
    assert not forced.binary


def test_default_min_object_area_is_a_quarter_of_the_5th_percentile_clipped():
    assert default_min_object_area([]) == 0
    assert default_min_object_area([400] * 20) == 100
    areas = np.arange(1, 201) * 10
    assert default_min_object_area(areas) == int(np.percentile(areas, 5) / 4)
    assert default_min_object_area([2, 2, 2]) == 1


def test_seeded_split_is_reproducible_order_free_and_stable():
    names = [f"img_{k}" for k in range(50)]
    a = seeded_split(names, seed=3, test_fraction=0.2, val_fraction=0.1)
    b = seeded_split(list(reversed(names)), seed=3, test_fraction=0.2, val_fraction=0.1)
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (35, 5, 10)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(names)
    assert seeded_split(names, seed=4)["test"] != a["test"]
    # The test names do not depend on the validation share.
    assert seeded_split(names, seed=3, test_fraction=0.2)["test"] == a["test"]
    # Adding one image moves at most a couple of names out of test.
    more = seeded_split([*names, "img_50"], seed=3, test_fraction=0.2, val_fraction=0.1)
    assert len(set(a["test"]) - set(more["test"])) <= 2
    # Stratified: every class is split on its own.
    labels = ["x"] * 10 + ["y"] * 40
    strat = seeded_split(names, 0, 0.2, 0.0, labels=labels)
    assert sum(n in names[:10] for n in strat["test"]) == 2
    with pytest.raises(UserInputError, match="images: 2, too few"):
        seeded_split(["a", "b"], 0, 0.3, 0.3)
    with pytest.raises(UserInputError, match="expected a sum below 1"):
        seeded_split(names, 0, 0.6, 0.5)


def test_split_folders_are_used_and_a_missing_test_folder_is_drawn(tmp_path):
    side_by_side(tmp_path / "train", [f"a{k}" for k in range(6)])
    save(tmp_path / "val" / "images" / "v1.png", rgb(9))
    save(tmp_path / "val" / "masks" / "v1.png", instances(9).astype(np.uint8))
    side_by_side(tmp_path / "testA", ["ta1"])
    side_by_side(tmp_path / "testB", ["tb1", "tb2"])
    datasets, _ = mask_datasets(tmp_path, seed=0, val_fraction=0.5)
    assert list(datasets) == ["train", "val", "testA", "testB"]
    assert len(datasets["train"]) == 6 and datasets["val"].records[0].name == "v1"
    assert [r.part for r in datasets["testB"].records] == ["testB", "testB"]
    assert datasets["testA"][0]["part"] == "testA"

    only_train = tmp_path / "only"
    side_by_side(only_train / "train", [f"a{k}" for k in range(10)])
    datasets, _ = mask_datasets(only_train, seed=0)
    assert (len(datasets["train"]), len(datasets["test"])) == (8, 2) and "val" not in datasets


def test_no_split_folders_gives_the_seeded_split(tmp_path):
    side_by_side(tmp_path, [f"a{k}" for k in range(10)])
    found = find_mask_splits(tmp_path)
    splits = split_records(found, seed=1, test_fraction=0.2, val_fraction=0.1)
    expected = seeded_split([f"a{k}" for k in range(10)], 1, 0.2, 0.1)
    assert {k: [r.name for r in v] for k, v in splits.items()} == expected
    assert all(r.part == split for split, records in splits.items() for r in records)


def test_image_without_mask_is_an_error_naming_it(tmp_path):
    side_by_side(tmp_path, ["a"])
    save(tmp_path / "b.png", rgb(1))
    with pytest.raises(UserInputError, match=r"b\.png: image without a mask \(expected b_mask"):
        find_mask_pairs(tmp_path)
    other = tmp_path / "two"
    save(other / "images" / "c.png", rgb(1))
    (other / "masks").mkdir()
    with pytest.raises(UserInputError, match=r"images/c\.png: image without a mask"):
        find_mask_pairs(other)


def test_mask_without_image_is_an_error_naming_it(tmp_path):
    side_by_side(tmp_path, ["a"])
    save(tmp_path / "z_anno.png", instances(0).astype(np.uint8))
    with pytest.raises(UserInputError, match=r"z_anno\.png: mask without an image"):
        find_mask_pairs(tmp_path)
    other = tmp_path / "two"
    save(other / "masks" / "q.png", instances(0).astype(np.uint8))
    (other / "images").mkdir()
    with pytest.raises(UserInputError, match=r"masks/q\.png: mask without an image"):
        find_mask_pairs(other)


def test_mask_of_another_size_is_an_error_naming_it(tmp_path):
    save(tmp_path / "a.png", rgb(0))
    save(tmp_path / "a_mask.png", np.zeros((20, 32), np.uint8))
    with pytest.raises(
        UserInputError, match=r"a_mask\.png: mask is 32x20, expected the size of its image a\.png"
    ):
        find_mask_pairs(tmp_path)


def test_other_bad_masks_are_named(tmp_path):
    save(tmp_path / "a.png", rgb(0))
    save(tmp_path / "a_mask.png", instances(0).astype(np.uint8))
    save(tmp_path / "a_anno.png", instances(0).astype(np.uint8))
    with pytest.raises(UserInputError, match=r"a_mask\.png: a_anno\.png is a second mask"):
        find_mask_pairs(tmp_path)
    jpeg = tmp_path / "jpeg"
    save(jpeg / "a.png", rgb(0))
    save(jpeg / "a_mask.jpg", np.zeros((24, 32), np.uint8))
    with pytest.raises(UserInputError, match=r"a_mask\.jpg: JPEG masks are lossy"):
        find_mask_pairs(jpeg)
    colour = tmp_path / "colour.png"
    save(colour, rgb(3))
    with pytest.raises(UserInputError, match=r"colour\.png: mask has colour channels"):
        read_mask(colour)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nothing")
    with pytest.raises(UserInputError, match=r"broken\.png: cannot read the mask"):
        read_mask(tmp_path / "broken.png")
    tifffile.imwrite(tmp_path / "neg.tif", np.full((4, 4), -1, np.int16))
    with pytest.raises(UserInputError, match=r"neg\.tif: negative mask value"):
        read_mask(tmp_path / "neg.tif")


def test_empty_folder_and_split_folders_without_train_are_errors(tmp_path):
    with pytest.raises(UserInputError, match=rf"{tmp_path}: no image/mask pairs"):
        find_mask_pairs(tmp_path)
    side_by_side(tmp_path / "test", ["a"])
    with pytest.raises(UserInputError, match=r"has test/ but no train/ folder"):
        mask_datasets(tmp_path)
    half = tmp_path / "half"
    (half / "images").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"images: has no masks/ folder"):
        find_mask_pairs(half)


def test_pretraining_crops_cover_the_non_test_images_only(tmp_path):
    side_by_side(tmp_path, [f"a{k}" for k in range(5)])
    crops = mask_pretrain_crops(tmp_path, crop=16, stride=8, split_seed=0, test_fraction=0.2)
    held = seeded_split([f"a{k}" for k in range(5)], 0, 0.2)["test"]
    assert sorted(p.stem for p in crops.paths) == sorted(set(f"a{k}" for k in range(5)) - set(held))
    # 24x32 at crop 16, stride 8: rows 0, 8 and cols 0, 8, 16 -> 6 windows per image.
    assert len(crops) == 6 * 4
    item = crops[1]
    assert item.dtype == torch.uint8 and item.shape == (3, 16, 16)
    k, top, left = crops.windows[1]
    image = np.asarray(Image.open(crops.paths[k]))
    np.testing.assert_array_equal(
        item.numpy().transpose(1, 2, 0), image[top : top + 16, left : left + 16]
    )
    with pytest.raises(UserInputError, match=r"smaller than the crop 40x40"):
        ImageCrops(crops.paths, crops.sizes, crop=40, stride=8, description="x")


def test_real_monuseg_binary_masks_as_a_masks_source(tmp_path):
    real = REAL / "monuseg-train"
    if not real.is_dir():
        pytest.skip("no shared real data")
    names = sorted(p.stem for p in (real / "Binary masks").glob("*.png"))[:3]
    for name in names:  # a masks: folder made of links to three real tiles and masks
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        (tmp_path / "images" / f"{name}.tif").symlink_to(real / "Tissue Images" / f"{name}.tif")
        (tmp_path / "masks" / f"{name}.png").symlink_to(real / "Binary masks" / f"{name}.png")
    datasets, survey = mask_datasets(tmp_path, seed=0, test_fraction=0.34)
    assert survey.binary and len(datasets["test"]) == 1 and len(datasets["train"]) == 2
    item = datasets["train"][0]
    assert item["image"].shape == (1000, 1000, 3) and item["label"].max() > 50
    assert 5 <= default_min_object_area(survey.train_areas) <= 100
