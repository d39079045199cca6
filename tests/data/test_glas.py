import collections
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histodrl.data.glas import (
    GlasCrops,
    GlasDataset,
    find_glas_records,
    read_glas_annotation,
    read_grade_csv,
)
from histodrl.errors import UserInputError


def _shared() -> Path | None:
    for candidate in (Path(__file__).resolve().parents[2] / ".." / "shared", Path("/work/shared")):
        if (candidate / "data" / "glas-samples").is_dir():
            return candidate / "data" / "glas-samples"
    return None


SAMPLES = _shared()
needs_samples = pytest.mark.skipif(SAMPLES is None, reason="shared/data/glas-samples not found")


def write_pair(root, name, width=40, height=30, seed=0, labels=None, ext=".bmp"):
    """A random RGB image and an instance annotation (two glands) named like GLaS files."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / f"{name}{ext}")
    if labels is None:
        labels = np.zeros((height, width), dtype=np.uint8)
        labels[2:10, 3:12] = 1
        labels[15:25, 20:35] = 2
    Image.fromarray(labels).save(root / f"{name}_anno{ext}")
    return image, labels


def write_grades(root, rows):
    header = "name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"
    lines = [header] + [f"{n},{p}, {g}, {f}" for n, p, g, f in rows]
    (root / "Grade.csv").write_bytes("\r".join(lines).encode())


@needs_samples
def test_real_grade_csv_gives_the_published_counts_per_part():
    raw = (SAMPLES / "Grade.csv").read_bytes()
    assert b"\r" in raw and b"\n" not in raw  # the release's CR-only line endings
    grades = read_grade_csv(SAMPLES / "Grade.csv")
    assert len(grades) == 165
    counts = collections.Counter((name.split("_")[0], g.grade) for name, g in grades.items())
    assert counts == {
        ("train", "benign"): 37,
        ("train", "malignant"): 48,
        ("testA", "benign"): 33,
        ("testA", "malignant"): 27,
        ("testB", "benign"): 4,
        ("testB", "malignant"): 16,
    }
    fine = collections.Counter(g.fine_grade for g in grades.values())
    assert fine == {
        "healthy": 42,
        "adenomatous": 32,
        "moderately differentiated": 47,
        "moderately-to-poorly differentiated": 20,  # misspelt "differentated" in the file
        "poorly differentiated": 24,
    }
    assert {g.patient for g in grades.values()} == set(range(1, 17))
    assert grades["testA_1"].patient == 4 and grades["testA_1"].fine_grade == "adenomatous"


@needs_samples
def test_every_grade_row_reaches_the_records_of_a_full_glas_folder(tmp_path):
    shutil.copy(SAMPLES / "Grade.csv", tmp_path / "Grade.csv")
    tiny = np.zeros((2, 2), dtype=np.uint8)
    for name in read_grade_csv(tmp_path / "Grade.csv"):
        Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / f"{name}.bmp")
        Image.fromarray(tiny).save(tmp_path / f"{name}_anno.bmp")
    per_part = {}
    for part in ("train", "testA", "testB"):
        records = GlasDataset(tmp_path, parts=(part,)).records
        per_part[part] = collections.Counter(r.grade for r in records)
        assert [r.number for r in records] == sorted(r.number for r in records)
    assert per_part["train"] == {"benign": 37, "malignant": 48}
    assert per_part["testA"] == {"benign": 33, "malignant": 27}
    assert per_part["testB"] == {"benign": 4, "malignant": 16}


@needs_samples
def test_real_annotations_come_out_as_int32_instance_maps(tmp_path):
    shutil.copy(SAMPLES / "Grade.csv", tmp_path / "Grade.csv")
    expected = {}
    for n in (1, 2, 3, 4):
        src = SAMPLES / "ground-truth" / f"testA_{n}_anno.png"
        shutil.copy(src, tmp_path / src.name)
        stored = np.asarray(Image.open(src))
        expected[f"testA_{n}"] = stored
        h, w = stored.shape
        Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(tmp_path / f"testA_{n}.bmp")
    dataset = GlasDataset(tmp_path, parts=("testA",))
    assert [r.name for r in dataset.records] == ["testA_1", "testA_2", "testA_3", "testA_4"]
    for item in dataset:
        label = item["label"]
        assert label.dtype == np.int32 and label.ndim == 2
        assert np.array_equal(label, expected[item["name"]].astype(np.int32))
        ids = np.unique(label)
        assert ids[0] == 0 and np.array_equal(ids, np.arange(len(ids)))  # 0..N consecutive
        assert item["image"].shape == label.shape + (3,) and item["image"].dtype == np.uint8
    first = dataset[0]
    assert first["label"].max() == 9  # testA_1 holds glands 1..9
    assert (first["grade"], first["patient"]) == ("benign", 4)
    # testA_2 and testA_3 are smaller than the usual 775x522: sizes are taken as they are
    sizes = {(r.width, r.height) for r in dataset.records}
    assert len(sizes) > 1


def test_images_are_sorted_numerically_and_filtered_by_part(tmp_path):
    for name in ("train_10", "train_2", "train_1", "testA_3", "testB_1"):
        write_pair(tmp_path, name)
    (tmp_path / "notes.txt").write_text("ignored")
    names = [r.name for r in find_glas_records(tmp_path, parts=("train", "testB"))]
    assert names == ["train_1", "train_2", "train_10", "testB_1"]


def test_missing_grade_csv_leaves_grades_unknown(tmp_path):
    write_pair(tmp_path, "train_1")
    item = GlasDataset(tmp_path)[0]
    assert item["grade"] is None and item["patient"] is None and item["fine_grade"] is None


def test_png_and_tiff_files_with_glas_stems_are_read(tmp_path):
    image, labels = write_pair(tmp_path, "train_1", ext=".png")
    write_pair(tmp_path, "train_2", ext=".tif")
    dataset = GlasDataset(tmp_path)
    assert len(dataset) == 2
    assert np.array_equal(dataset[0]["image"], image)
    assert np.array_equal(dataset[0]["label"], labels.astype(np.int32))


def test_labels_above_255_survive_as_int32(tmp_path):
    labels = np.zeros((30, 40), dtype=np.uint16)
    labels[:10, :10] = 300
    labels[20:, 20:] = 7
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "train_1.bmp")
    Image.fromarray(labels).save(tmp_path / "train_1_anno.png")
    out = GlasDataset(tmp_path)[0]["label"]
    assert out.dtype == np.int32 and set(np.unique(out)) == {0, 7, 300}


def test_palette_and_three_channel_annotations_give_their_stored_labels(tmp_path):
    labels = np.zeros((30, 40), dtype=np.uint8)
    labels[5:9, 5:9] = 3
    palette = Image.fromarray(labels, mode="L").convert("P")
    palette.putpalette([v for i in range(256) for v in ((37 * i) % 256, 0, 255 - i)])
    palette.save(tmp_path / "p.bmp")
    assert Image.open(tmp_path / "p.bmp").mode == "P"
    assert np.array_equal(read_glas_annotation(tmp_path / "p.bmp"), labels)
    Image.fromarray(np.repeat(labels[:, :, None], 3, axis=2)).save(tmp_path / "rgb.bmp")
    assert np.array_equal(read_glas_annotation(tmp_path / "rgb.bmp"), labels)
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[0, 0] = (1, 2, 3)
    Image.fromarray(colour).save(tmp_path / "colour.bmp")
    with pytest.raises(UserInputError, match="colour.bmp.*channels"):
        read_glas_annotation(tmp_path / "colour.bmp")


def test_annotation_of_another_size_names_the_file_and_both_sizes(tmp_path):
    write_pair(tmp_path, "train_1", labels=np.zeros((30, 41), np.uint8))
    with pytest.raises(UserInputError, match=r"train_1_anno.bmp: annotation is 41x30.*40x30"):
        GlasDataset(tmp_path)


def test_missing_annotation_names_the_image(tmp_path):
    write_pair(tmp_path, "train_1")
    (tmp_path / "train_1_anno.bmp").unlink()
    with pytest.raises(UserInputError, match=r"train_1.bmp: no annotation"):
        GlasDataset(tmp_path)


def test_annotation_without_its_image_is_an_error(tmp_path):
    write_pair(tmp_path, "train_1")
    (tmp_path / "train_1.bmp").unlink()
    with pytest.raises(UserInputError, match=r"train_1_anno.bmp: annotation without its image"):
        GlasDataset(tmp_path)


def test_image_without_a_grade_row_names_grade_csv_and_the_image(tmp_path):
    write_pair(tmp_path, "train_1")
    write_pair(tmp_path, "train_2")
    write_grades(tmp_path, [("train_1", 3, "benign", "healthy")])
    with pytest.raises(UserInputError, match=r"Grade.csv: no row for image train_2"):
        GlasDataset(tmp_path)


def test_bad_grade_value_names_the_line(tmp_path):
    write_pair(tmp_path, "train_1")
    write_grades(tmp_path, [("train_1", 3, "benign", "healthy"), ("train_2", 3, "unsure", "x")])
    with pytest.raises(UserInputError, match=r"Grade.csv line 3: grade 'unsure'"):
        GlasDataset(tmp_path)


@pytest.mark.parametrize("name", ["train_2.bmp", "train_2_anno.bmp"])
def test_truncated_file_names_the_file_when_the_dataset_is_built(tmp_path, name):
    write_pair(tmp_path, "train_1")
    write_pair(tmp_path, "train_2")
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-500])  # the header stays intact
    assert len(find_glas_records(tmp_path)) == 2
    with pytest.raises(UserInputError, match=rf"{name}: cannot decode.*truncated"):
        GlasDataset(tmp_path)
    if name == "train_2.bmp":
        with pytest.raises(UserInputError, match=rf"{name}: cannot decode.*truncated"):
            GlasCrops(tmp_path, crop=16, stride=8)


def test_empty_folder_and_missing_folder_are_errors(tmp_path):
    with pytest.raises(UserInputError, match="no GLaS images"):
        GlasDataset(tmp_path)
    inner = tmp_path / "Warwick QU Dataset (Released 2016_07_08)"
    inner.mkdir()
    write_pair(inner, "train_1")
    with pytest.raises(UserInputError, match=r"did you mean .*Warwick QU Dataset"):
        GlasDataset(tmp_path)
    with pytest.raises(UserInputError, match="expected a GLaS folder"):
        GlasDataset(tmp_path / "nope")


def test_two_formats_of_one_image_are_refused(tmp_path):
    write_pair(tmp_path, "train_1")
    write_pair(tmp_path, "train_1", ext=".png")
    with pytest.raises(UserInputError, match="same name"):
        GlasDataset(tmp_path)


def test_glas_crops_are_the_covering_windows_of_each_image(tmp_path):
    big, _ = write_pair(tmp_path, "train_1", width=775, height=522)
    small, _ = write_pair(tmp_path, "train_2", width=300, height=260, seed=1)
    write_pair(tmp_path, "testA_1", width=775, height=522)  # never used for pretraining
    crops = GlasCrops(tmp_path, crop=256, stride=64)
    assert len(crops) == 60 + 2 * 2
    assert crops.description.endswith("(2 train images, 64 crops 256/64)")
    expected = [
        big[t : t + 256, c : c + 256]
        for t in (0, 64, 128, 192, 256, 266)
        for c in (0, 64, 128, 192, 256, 320, 384, 448, 512, 519)
    ]
    expected += [small[t : t + 256, c : c + 256] for t in (0, 4) for c in (0, 44)]
    for k in (0, 9, 10, 59, 60, 63):
        item = crops[k]
        assert item.dtype == torch.uint8 and item.shape == (3, 256, 256)
        assert np.array_equal(item.permute(1, 2, 0).numpy(), expected[k])


def test_image_smaller_than_the_crop_names_the_file_and_sizes(tmp_path):
    write_pair(tmp_path, "train_1", width=300, height=200)
    with pytest.raises(
        UserInputError, match=r"train_1.bmp: image is 300x200, smaller than the crop 256x256"
    ):
        GlasCrops(tmp_path, crop=256, stride=64)
