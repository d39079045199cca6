from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import regionprops

from histodrl.data.synth_glas import (
    BENIGN_GRADES,
    GLAS_SIZE,
    GRADE_HEADER,
    MALIGNANT_GRADES,
    SMALL_GLAS_SIZES,
    grade_csv_text,
    make_glas,
    parse_size,
    plan_glas,
    render_glas_image,
    render_glas_layers,
)
from histodrl.errors import UserInputError


def _real_grade_csv() -> Path | None:
    """The real Grade.csv from the shared fixtures, when this checkout has them."""
    for shared in (Path(__file__).resolve().parents[2] / ".." / "shared", Path("/work/shared")):
        path = shared / "data" / "glas-samples" / "Grade.csv"
        if path.is_file():
            return path
    return None


REAL_GRADE_CSV = _real_grade_csv()
SIZE = (256, 192)


def _render(seed: int, malignant: bool, size=SIZE):
    return render_glas_layers(np.random.default_rng(seed), size, malignant)


@pytest.fixture(scope="module")
def benign():
    return [_render(s, False) for s in range(4)]


@pytest.fixture(scope="module")
def malignant():
    return [_render(s, True) for s in range(4)]


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in ((labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])):
        edge = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[edge].tolist(), b[edge].tolist())}
    return pairs


def test_render_is_deterministic_for_a_seed():
    rgb1, lab1 = render_glas_image(np.random.default_rng(7), SIZE, True)
    rgb2, lab2 = render_glas_image(np.random.default_rng(7), SIZE, True)
    rgb3, _ = render_glas_image(np.random.default_rng(8), SIZE, True)
    np.testing.assert_array_equal(rgb1, rgb2)
    np.testing.assert_array_equal(lab1, lab2)
    assert not np.array_equal(rgb1, rgb3)


def test_render_returns_width_by_height_uint8_rgb_and_int32_labels():
    rgb, labels = render_glas_image(np.random.default_rng(0), (130, 90), False)
    assert rgb.shape == (90, 130, 3) and rgb.dtype == np.uint8
    assert labels.shape == (90, 130) and labels.dtype == np.int32


def test_labels_are_consecutive_with_one_connected_gland_each(benign, malignant):
    for layers in benign + malignant:
        labels = layers.labels
        k = labels.max()
        assert 1 <= k <= 255
        np.testing.assert_array_equal(np.unique(labels), np.arange(k + 1))
        for region in regionprops(labels):
            _, pieces = ndimage.label(region.image)
            assert pieces == 1, f"label {region.label} is in {pieces} pieces"


def test_malignant_glands_touch_but_keep_distinct_labels_and_benign_ones_stay_apart(
    benign, malignant
):
    assert sum(len(_touching_pairs(m.labels)) for m in malignant) >= 2
    assert all(not _touching_pairs(b.labels) for b in benign)


def test_malignant_glands_are_less_regular_than_benign(benign, malignant):
    def mean_shape(images):
        regions = [r for im in images for r in regionprops(im.labels) if r.area >= 200]
        solidity = np.mean([r.solidity for r in regions])
        circularity = np.mean([4 * np.pi * r.area / r.perimeter**2 for r in regions])
        return solidity, circularity

    benign_solidity, benign_circularity = mean_shape(benign)
    malignant_solidity, malignant_circularity = mean_shape(malignant)
    assert benign_solidity > 0.95
    assert malignant_solidity < benign_solidity - 0.03
    assert malignant_circularity < benign_circularity - 0.1


def test_images_look_like_h_and_e(benign, malignant):
    for layers in benign + malignant:
        rgb = layers.rgb.astype(np.float64)
        r, g, b = rgb.reshape(-1, 3).mean(axis=0)
        assert r > b > g, "mean colour should be pink: red, then blue, green lowest"
        brightness = rgb.mean(axis=2)
        stroma = (layers.labels == 0) & ~layers.nuclei
        nuclei = layers.nuclei
        assert brightness[nuclei].mean() < brightness[stroma].mean() - 30
        # Nuclei are hematoxylin-blue: blue above red there.
        assert rgb[nuclei][:, 2].mean() > rgb[nuclei][:, 0].mean()
        lumen = layers.lumen & ~layers.nuclei
        assert lumen.any()
        assert brightness[lumen].mean() > brightness[stroma].mean() + 15


def test_nuclei_ring_the_glands(benign):
    for layers in benign:
        gland = layers.labels > 0
        epithelium = gland & ~layers.lumen
        # Nuclei are much denser in the epithelium than in the lumen.
        assert layers.nuclei[epithelium].mean() > 0.2
        assert layers.nuclei[layers.lumen].mean() < layers.nuclei[epithelium].mean() / 5


def test_plan_matches_the_real_dataset_counts_and_sizes():
    items = plan_glas(seed=3)
    assert len(items) == 165
    by_part = {
        p: [it for it in items if it.name.startswith(p + "_")] for p in ("train", "testA", "testB")
    }
    assert [len(v) for v in by_part.values()] == [85, 60, 20]
    benign_counts = [sum(not it.malignant for it in v) for v in by_part.values()]
    assert benign_counts == [37, 33, 4]  # the real Grade.csv's counts
    small_counts = [sum(it.size != GLAS_SIZE for it in v) for v in by_part.values()]
    assert small_counts == [4, 3, 1]
    assert {it.size for it in items} <= {GLAS_SIZE, *SMALL_GLAS_SIZES}
    assert {it.patient for it in items} <= set(range(1, 17))
    for it in items:
        grades = MALIGNANT_GRADES if it.malignant else BENIGN_GRADES
        assert it.grade in grades
    assert plan_glas(seed=3) == items
    assert plan_glas(seed=4) != items


def test_plan_keeps_one_size_for_parts_under_20_and_scales_small_sizes():
    assert {it.size for it in plan_glas(19, 1, 0, (200, 100))} == {(200, 100)}
    sizes = {it.size for it in plan_glas(40, 0, 0, (775 * 2, 522 * 2))}
    assert sizes == {(1550, 1044), (1178, 906), (1162, 884)}


def test_grade_csv_has_the_real_quirks():
    ours = grade_csv_text(plan_glas(seed=0)).encode("ascii")
    assert b"\n" not in ours and not ours.endswith(b"\r")  # bare CRs between lines only
    lines = ours.split(b"\r")
    assert lines[0] == b"name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"
    assert len(lines) == 166
    names = [ln.split(b",")[0].decode() for ln in lines[1:]]
    assert names == sorted(names) and names[:3] == ["testA_1", "testA_10", "testA_11"]
    fine = {(" " + g).encode() for g in [*BENIGN_GRADES, *MALIGNANT_GRADES]}
    assert b" moderately-to-poorly differentated" in fine  # the misspelling is kept
    grades = {}
    for line in lines[1:]:
        name, patient, grade, fine_grade = line.split(b",")
        assert 1 <= int(patient) <= 16
        assert grade in (b" benign", b" malignant") and fine_grade in fine
        assert (fine_grade.strip().decode() in MALIGNANT_GRADES) == (grade == b" malignant")
        grades.setdefault(name.split(b"_")[0], []).append(grade)
    assert [grades[p].count(b" benign") for p in (b"train", b"testA", b"testB")] == [37, 33, 4]


@pytest.mark.skipif(REAL_GRADE_CSV is None, reason="shared/data/glas-samples not found")
def test_grade_csv_lays_out_like_the_real_file_byte_for_byte():
    real = REAL_GRADE_CSV.read_bytes()
    ours = grade_csv_text(plan_glas(seed=0)).encode("ascii")
    assert b"\n" not in real and not real.endswith(b"\r")
    real_lines, our_lines = real.split(b"\r"), ours.split(b"\r")
    assert our_lines[0] == real_lines[0] == GRADE_HEADER.encode()
    # Same names in the same (string) order: testA_1, testA_10, ..., train_9.
    assert [ln.split(b",")[0] for ln in our_lines] == [ln.split(b",")[0] for ln in real_lines]
    # Same field layout: "name,patient, grade, fine grade" with the same vocabulary.
    real_values = {tuple(ln.split(b",")[2:]) for ln in real_lines[1:]}
    our_values = {tuple(ln.split(b",")[2:]) for ln in our_lines[1:]}
    assert our_values == real_values


def test_make_glas_writes_the_real_layout_readable_back(tmp_path):
    out = make_glas(tmp_path / "glas", n_train=2, n_test_a=2, n_test_b=1, size=(96, 64), seed=5)
    names = ["train_1", "train_2", "testA_1", "testA_2", "testB_1"]
    expected = {f"{n}{s}.bmp" for n in names for s in ("", "_anno")} | {"Grade.csv"}
    assert {p.name for p in out.iterdir()} == expected
    items = {it.name: it for it in plan_glas(2, 2, 1, (96, 64), 5)}
    for name in names:
        with Image.open(out / f"{name}.bmp") as im:
            assert (im.format, im.mode, im.size) == ("BMP", "RGB", (96, 64))
            rgb = np.asarray(im)
        with Image.open(out / f"{name}_anno.bmp") as im:
            assert (im.format, im.mode, im.size) == ("BMP", "L", (96, 64))
            labels = np.asarray(im)
        # BMP header: bits per pixel at byte 28 (24-bit RGB, 8-bit single channel).
        assert (out / f"{name}.bmp").read_bytes()[28] == 24
        assert (out / f"{name}_anno.bmp").read_bytes()[28] == 8
        np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))
        it = items[name]
        seed_seq = np.random.SeedSequence(5, spawn_key=(1 + it.part, it.index))
        ref_rgb, ref_labels = render_glas_image(
            np.random.default_rng(seed_seq), it.size, it.malignant
        )
        np.testing.assert_array_equal(rgb, ref_rgb)
        np.testing.assert_array_equal(labels, ref_labels)
    text = (out / "Grade.csv").read_bytes()
    assert text == grade_csv_text(list(items.values())).encode()
    # Same seed, same bytes.
    again = make_glas(tmp_path / "again", n_train=2, n_test_a=2, n_test_b=1, size=(96, 64), seed=5)
    for p in out.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes()


def test_output_is_readable_by_the_glas_reader(tmp_path):
    from histodrl.data.glas import GlasDataset

    out = make_glas(tmp_path, n_train=2, n_test_a=1, n_test_b=1, size=(80, 64), seed=1)
    data = GlasDataset(out, parts=("train", "testA", "testB"))
    assert [d["name"] for d in data] == ["train_1", "train_2", "testA_1", "testB_1"]
    plan = {it.name: it for it in plan_glas(2, 1, 1, (80, 64), 1)}
    for item in data:
        assert item["image"].shape == (64, 80, 3) and item["label"].dtype == np.int32
        assert item["grade"] == ("malignant" if plan[item["name"]].malignant else "benign")
        assert item["patient"] == plan[item["name"]].patient


def test_refuses_an_existing_dataset_unless_overwrite_then_removes_stale_files(tmp_path):
    make_glas(tmp_path, n_train=3, n_test_a=0, n_test_b=0, size=(64, 64))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match=str(tmp_path)):
        make_glas(tmp_path, n_train=1, n_test_a=0, n_test_b=0, size=(64, 64))
    make_glas(tmp_path, n_train=1, n_test_a=0, n_test_b=0, size=(64, 64), overwrite=True)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"train_1.bmp", "train_1_anno.bmp", "Grade.csv", "notes.txt"}


def test_an_interrupted_overwrite_leaves_no_grade_csv(tmp_path, monkeypatch):
    from histodrl.data import synth_glas

    make_glas(tmp_path, n_train=2, n_test_a=0, n_test_b=0, size=(64, 64))
    calls = []

    def fail_on_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return render_glas_image(*args)

    monkeypatch.setattr(synth_glas, "render_glas_image", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        make_glas(tmp_path, n_train=2, n_test_a=0, n_test_b=0, size=(64, 64), overwrite=True)
    assert not (tmp_path / "Grade.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_writes_into_a_folder_without_a_dataset_and_refuses_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    make_glas(tmp_path, n_train=1, n_test_a=0, n_test_b=0, size=(64, 64))
    with pytest.raises(UserInputError, match="notes.txt: expected a folder"):
        make_glas(tmp_path / "notes.txt", n_train=1, n_test_a=0, n_test_b=0, size=(64, 64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (63, 100)}, "size="),
        ({"size": (100.5, 100)}, "size="),
        ({"n_train": -1}, "n_train=-1"),
        ({"n_test_a": 1.0}, "n_test_a=1.0"),
        ({"n_train": 0, "n_test_a": 0, "n_test_b": 0}, "at least one image"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_glas(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_parse_size_reads_width_by_height_and_names_a_bad_value():
    assert parse_size("775x522") == (775, 522)
    assert parse_size(" 96X64 ") == (96, 64)
    for bad in ("775", "x522", "10x10", "775x522x3", "axb"):
        with pytest.raises(UserInputError, match="--size"):
            parse_size(bad)
