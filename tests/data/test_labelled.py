"""One interface over labelled sources: segmentation (glas, masks, monuseg), classification
(pcam, folder), and the pretraining datasets of masks: and monuseg: sources."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from histodrl.data.labelled import (
    GLAS_MIN_OBJECT_AREA,
    PCAM_CLASSES,
    classification_source,
    fit_to_crop,
    segmentation_source,
)
from histodrl.data.masks import ImageCrops, seeded_split
from histodrl.data.monuseg import MIN_OBJECT_AREA
from histodrl.data.pcam import pcam_path
from histodrl.data.sources import pretrain_dataset
from histodrl.errors import UserInputError

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
GRADES = "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\r"


def write_glas(root, n_train=6, with_grades=True):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"train_{k}" for k in range(1, n_train + 1)] + ["testA_1", "testA_2", "testB_1"]
    rows = [GRADES]
    for k, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            root / f"{name}.bmp"
        )
        anno = np.zeros((20, 24), np.uint8)
        anno[2:8, 2:8] = 1
        Image.fromarray(anno).save(root / f"{name}_anno.bmp")
        grade = "benign" if k % 2 else "malignant"
        rows.append(f"{name},1, {grade}, healthy\r")
    if with_grades:
        (root / "Grade.csv").write_text("".join(rows), newline="")
    return root


def write_mask_pairs(root, names, shape=(20, 24)):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(
            root / f"{name}.png"
        )
        mask = np.zeros(shape, np.uint8)
        mask[3:9, 3:9] = 1
        mask[12:18, 12:20] = 2
        Image.fromarray(mask).save(root / f"{name}_mask.png")
    return root


def write_monuseg(root, names, shape=(20, 24)):
    (root / "Tissue Images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    rng = np.random.default_rng(2)
    xml = (
        '<Annotations MicronsPerPixel="0.25"><Annotation><Regions><Region Id="1"><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(2.5, 2.5), (9.5, 2.5), (9.5, 9.5)])
        + "</Vertices></Region></Regions></Annotation></Annotations>"
    )
    for name in names:
        rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        tifffile.imwrite(root / "Tissue Images" / f"{name}.tif", rgb, photometric="rgb")
        (root / "Annotations" / f"{name}.xml").write_text(xml)
    return root


def write_classes(root, counts, size=(30, 40)):
    rng = np.random.default_rng(3)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(array).save(root / cls / f"{cls}_{k}.png")
    return root


# ------------------------------------------------------------------------------------------------
# Segmentation
# ------------------------------------------------------------------------------------------------


def test_glas_source_has_both_test_parts_and_the_glas_defaults(tmp_path):
    source = segmentation_source(f"glas:{write_glas(tmp_path)}", seed=0)
    assert list(source.tests) == ["testA", "testB"] and source.val is None
    assert source.min_object_area == GLAS_MIN_OBJECT_AREA == 100 and not source.binary_masks
    assert source.split_lists() == {
        "train": [f"train_{k}" for k in range(1, 7)],
        "testA": ["testA_1", "testA_2"],
        "testB": ["testB_1"],
    }
    item = source.train[0]
    assert item["label"].dtype == np.int32 and item["grade"] in ("benign", "malignant")
    assert all(r.grade is not None for r in source.train.records)


def test_glas_validation_split_is_drawn_by_grade_and_keeps_records(tmp_path):
    source = segmentation_source(f"glas:{write_glas(tmp_path)}", seed=0, val_fraction=0.34)
    assert len(source.val) == 2 and len(source.train) == 4
    assert sorted(r.grade for r in source.val.records) == ["benign", "malignant"]
    assert source.val[0]["part"] == "val" and source.train[0]["part"] == "train"
    lists = source.split_lists()
    assert set(lists["val"]).isdisjoint(lists["train"])


def test_masks_source_gives_the_glas_item_format_and_its_split_lists(tmp_path):
    root = write_mask_pairs(tmp_path, [f"img_{k}" for k in range(10)])
    source = segmentation_source(f"masks:{root}", seed=2, test_fraction=0.2, val_fraction=0.1)
    expected = seeded_split([f"img_{k}" for k in range(10)], 2, 0.2, 0.1)
    assert source.split_lists() == {"train": expected["train"], "val": expected["val"],
                                    "test": expected["test"]}  # fmt: skip
    assert list(source.tests) == ["test"] and not source.binary_masks
    item = source.tests["test"][0]
    assert item["image"].shape == (20, 24, 3) and item["label"].max() == 2
    assert item["part"] == "test" and source.train.records[0].grade is None
    assert 1 <= source.min_object_area <= 100
    assert source.description.startswith(f"masks:{root} (")


def test_monuseg_source_has_the_nuclei_default(tmp_path):
    root = write_monuseg(tmp_path, [f"t{k}" for k in range(5)])
    source = segmentation_source(f"monuseg:{root}", seed=0)
    assert source.min_object_area == MIN_OBJECT_AREA and not source.binary_masks
    assert len(source.train) == 4 and list(source.tests) == ["test"]
    assert source.train[0]["label"].max() == 1


def test_segmentation_source_refuses_other_kinds_and_bad_fractions(tmp_path):
    with pytest.raises(UserInputError, match=r"pcam: is not a labelled segmentation source"):
        segmentation_source(f"pcam:{tmp_path}")
    root = write_mask_pairs(tmp_path / "m", ["a", "b"])
    with pytest.raises(UserInputError, match=r"test_fraction=1.5: expected a fraction"):
        segmentation_source(f"masks:{root}", test_fraction=1.5)
    with pytest.raises(UserInputError, match=r"a_mask\.png: mask is"):
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "a_mask.png")
        segmentation_source(f"masks:{root}")


def test_real_monuseg_through_the_interface():
    real = REAL / "monuseg-train"
    if not real.is_dir():
        pytest.skip("no shared real data")
    source = segmentation_source(f"monuseg:{real}", seed=0)
    lists = source.split_lists()
    assert len(lists["train"]) == 24 and len(lists["test"]) == 6
    assert source.binary_masks and "touching objects merge" in source.description
    assert source.min_object_area == MIN_OBJECT_AREA
    item = source.tests["test"][0]
    assert item["image"].shape == (1000, 1000, 3) and item["label"].max() > 20


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------


def test_resize_scales_the_shorter_side_then_centre_crops():
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    # Reference for a 3x box downscale: the mean of each 3x3 block.
    blocks = square.reshape(16, 3, 16, 3, 3).astype(np.float64).mean(axis=(1, 3))
    got = fit_to_crop(square, 16)
    assert got.shape == (16, 16, 3) and np.abs(got - blocks).max() <= 1
    wide = rng.integers(0, 256, (16, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit_to_crop(wide, 16), wide[:, 12:28])  # shorter side already 16
    tall = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)
    assert fit_to_crop(tall, 16).shape == (16, 16, 3)
    np.testing.assert_array_equal(fit_to_crop(tall, 16, "center_crop"), tall[24:40, 8:24])
    with pytest.raises(ValueError, match="smaller than the crop"):
        fit_to_crop(wide, 20, "center_crop")


def test_folder_with_class_folders_gives_a_stratified_seeded_split(tmp_path):
    write_classes(tmp_path, {"tumour": 10, "normal": 20, "stroma": 10})
    source = classification_source(f"folder:{tmp_path}", seed=0, crop=16)
    assert source.classes == ("normal", "stroma", "tumour")
    lists = source.split_lists()
    assert (len(lists["train"]), len(lists["val"]), len(lists["test"])) == (28, 4, 8)
    assert np.bincount(source.test.labels).tolist() == [4, 2, 2]
    patch, label = source.train[0]
    assert patch.dtype == torch.uint8 and patch.shape == (3, 16, 16) and isinstance(label, int)
    assert source.classes[label] == lists["train"][0].split("/")[0]
    again = classification_source(f"folder:{tmp_path}", seed=0, crop=16)
    assert again.split_lists() == lists
    assert classification_source(f"folder:{tmp_path}", seed=1, crop=16).split_lists() != lists


def test_folder_split_folders_are_used_and_missing_val_is_drawn(tmp_path):
    write_classes(tmp_path / "train", {"a": 10, "b": 10})
    write_classes(tmp_path / "test", {"a": 2, "b": 3})
    source = classification_source(f"folder:{tmp_path}", seed=0, val_fraction=0.2, crop=16)
    assert len(source.test) == 5 and np.bincount(source.test.labels).tolist() == [2, 3]
    assert np.bincount(source.val.labels).tolist() == [2, 2] and len(source.train) == 16
    none = classification_source(f"folder:{tmp_path}", seed=0, val_fraction=0.0, crop=16)
    assert none.val is None and "val" not in none.split_lists()


def test_bad_class_folders_are_one_line_errors_naming_them(tmp_path):
    write_classes(tmp_path / "one", {"a": 3})
    with pytest.raises(UserInputError, match=r"one: one class folder \(a/\)"):
        classification_source(f"folder:{tmp_path / 'one'}")
    write_classes(tmp_path / "empty", {"a": 3})
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(UserInputError, match=r"empty/b: empty class folder"):
        classification_source(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "none").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "none" / "x.png")
    with pytest.raises(UserInputError, match=r"none: no class folders \(images found"):
        classification_source(f"folder:{tmp_path / 'none'}")
    write_classes(tmp_path / "s" / "train", {"a": 5, "b": 5})
    write_classes(tmp_path / "s" / "test", {"c": 1})
    with pytest.raises(UserInputError, match=r"test/c: class 'c' has no training folder"):
        classification_source(f"folder:{tmp_path / 's'}")
    write_classes(tmp_path / "few", {"a": 2, "b": 5})
    with pytest.raises(UserInputError, match=r"of class 'a': 2, too few"):
        classification_source(f"folder:{tmp_path / 'few'}")
    with pytest.raises(UserInputError, match=r"glas: is not a labelled classification source"):
        classification_source(f"glas:{tmp_path}")


def test_center_crop_fit_refuses_tiles_smaller_than_the_crop(tmp_path):
    write_classes(tmp_path, {"a": 3, "b": 3}, size=(20, 20))
    with pytest.raises(UserInputError, match=r"a_0\.png: image is 20x20, smaller than the crop"):
        classification_source(f"folder:{tmp_path}", crop=32, fit="center_crop", val_fraction=0)
    source = classification_source(f"folder:{tmp_path}", crop=32, val_fraction=0)
    assert source.train[0][0].shape == (3, 32, 32)  # resize enlarges instead


def test_pcam_source_wraps_the_official_splits(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("valid", 4), ("test", 4)):
        with h5py.File(pcam_path(tmp_path, split, "x"), "w") as f:
            f.create_dataset("x", data=rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8))
        with h5py.File(pcam_path(tmp_path, split, "y"), "w") as f:
            f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))
    source = classification_source(f"pcam:{tmp_path}", seed=5)
    assert source.classes == PCAM_CLASSES and source.val.split == "valid"
    assert source.test.labels.tolist() == [0, 1, 0, 1]
    lists = source.split_lists()
    assert lists["val"] == [f"valid_{i}" for i in range(4)] and len(lists["train"]) == 8
    patch, label = source.train[1]
    assert patch.shape == (3, 96, 96) and label == 1


def test_real_lc25000_sample_as_class_folders():
    real = REAL / "lc25000-lung-sample"
    if not real.is_dir():
        pytest.skip("no shared real data")
    source = classification_source(f"folder:{real}", seed=0)
    assert source.classes == ("lung_aca", "lung_n", "lung_scc")
    lists = source.split_lists()
    assert (len(lists["train"]), len(lists["val"]), len(lists["test"])) == (315, 45, 90)
    assert np.bincount(source.test.labels).tolist() == [30, 30, 30]
    patch, label = source.test[0]
    assert patch.shape == (3, 96, 96) and patch.dtype == torch.uint8
    assert lists["test"][0].startswith(source.classes[label] + "/")
    assert float(patch.float().std()) > 5  # real tissue, not a blank tile


# ------------------------------------------------------------------------------------------------
# Pretraining on masks: and monuseg: sources
# ------------------------------------------------------------------------------------------------


def test_pretraining_never_sees_the_downstream_test_images(tmp_path):
    root = write_mask_pairs(tmp_path / "m", [f"img_{k}" for k in range(10)])
    data = pretrain_dataset(f"masks:{root}", crop=16, seed=7, stride=4)
    assert isinstance(data, ImageCrops) and data[0].shape == (3, 16, 16)
    seen = {p.stem for p in data.paths}
    held = set(segmentation_source(f"masks:{root}", seed=0, val_fraction=0.2).split_lists()["test"])
    assert seen.isdisjoint(held) and len(seen) == 8
    # Another split seed holds out other images (and is passed through).
    other = pretrain_dataset(f"masks:{root}", crop=16, split_seed=3)
    assert {p.stem for p in other.paths} != seen
    mon = write_monuseg(tmp_path / "n", [f"t{k}" for k in range(5)])
    tiles = pretrain_dataset(f"monuseg:{mon}", crop=16)
    assert len(tiles.paths) == 4 and tiles.stride == 4
    assert tiles.description.startswith(f"monuseg:{mon} non-test")


def test_real_monuseg_pretraining_crops():
    real = REAL / "monuseg-train"
    if not real.is_dir():
        pytest.skip("no shared real data")
    data = pretrain_dataset(f"monuseg:{real}", crop=256, stride=256)
    assert len(data.paths) == 24 and len(data) == 24 * 16
    assert data[5].dtype == torch.uint8 and data[5].shape == (3, 256, 256)
