import csv
import re

import h5py
import numpy as np
import pytest

from histodrl.data import synth_pcam
from histodrl.data.synth_pcam import (
    META_HEADER,
    PCAM_SPLITS,
    TumourCells,
    draw_pcam_patches,
    make_pcam,
    render_pcam_patches,
    sample_tumour_cells,
)
from histodrl.errors import UserInputError


def _round_cells(patch, centers, radius):
    """Round tumour nuclei (no outline harmonics) at known places."""
    m = len(patch)
    return TumourCells(
        patch=np.asarray(patch),
        centers=np.asarray(centers, dtype=np.float64),
        semi_axes=np.full((m, 2), float(radius)),
        angles=np.zeros(m),
        amplitudes=np.zeros((m, 2)),
        phases=np.zeros((m, 2)),
        strength=np.full(m, 1.6),
    )


def test_known_tumour_placement_gives_the_pcam_label():
    # Patch 0: a cell in the middle. 1: in a corner. 2: reaching 0.25 px into the centre square
    # (rows 32..63). 3: stopping 0.25 px short of it. 4: no tumour.
    cells = _round_cells(
        [0, 1, 2, 3], [[48.0, 48.0], [10.0, 10.0], [27.25, 48.0], [26.75, 48.0]], 5.0
    )
    batch = draw_pcam_patches(np.random.default_rng(0), 5, cells)
    np.testing.assert_array_equal(batch.y, [1, 0, 1, 0, 0])
    np.testing.assert_array_equal(batch.tumour_patch, [True, True, True, True, False])
    # The tumour mask is exactly the set of pixels within the nucleus outline.
    yy, xx = np.mgrid[0:96, 0:96]
    for i, (cy, cx) in enumerate(cells.centers):
        np.testing.assert_array_equal(batch.tumour[i], np.hypot(yy - cy, xx - cx) <= 5.0)
    assert batch.x.shape == (5, 96, 96, 3) and batch.x.dtype == np.uint8
    assert batch.y.dtype == np.uint8


LABELS = np.tile([0, 1], 40)


@pytest.fixture(scope="module")
def batch():
    return render_pcam_patches(np.random.default_rng(1), LABELS)


def test_labels_follow_the_requested_labels_and_the_centre_rule(batch):
    labels = LABELS
    np.testing.assert_array_equal(batch.y, labels)
    np.testing.assert_array_equal(batch.y, batch.tumour[:, 32:64, 32:64].any(axis=(1, 2)))
    negatives = labels == 0
    # Some negatives carry tumour in the outer ring only, some none at all.
    ring_share = batch.tumour_patch[negatives].mean()
    assert 0.25 < ring_share < 0.75
    assert batch.tumour_patch[labels == 1].all()


def test_ring_fraction_sets_how_many_negatives_carry_tumour_and_is_validated():
    cells = sample_tumour_cells(np.random.default_rng(2), np.zeros(50, dtype=int), 0.0)
    assert len(cells.patch) == 0
    cells = sample_tumour_cells(np.random.default_rng(2), np.zeros(50, dtype=int), 1.0)
    assert len(np.unique(cells.patch)) > 30
    with pytest.raises(ValueError, match="ring_fraction=2"):
        sample_tumour_cells(np.random.default_rng(2), np.zeros(5, dtype=int), 2)
    with pytest.raises(ValueError, match="labels"):
        sample_tumour_cells(np.random.default_rng(2), np.array([0, 2]))


def test_render_is_deterministic_for_a_seed():
    labels = np.array([0, 1, 1, 0])
    a = render_pcam_patches(np.random.default_rng(3), labels)
    b = render_pcam_patches(np.random.default_rng(3), labels)
    c = render_pcam_patches(np.random.default_rng(4), labels)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.tumour, b.tumour)
    assert not np.array_equal(a.x, c.x)


def test_patches_look_like_lymph_node_h_and_e_with_darker_bigger_tumour_nuclei(batch):
    labels = LABELS
    rgb = batch.x.astype(np.float64)
    r, g, b = rgb.reshape(-1, 3).mean(axis=0)
    assert g < r and g < b, "H&E: green is the most absorbed channel"
    brightness = rgb.mean(axis=3)
    # Dense lymphocytes: a large share of every patch is dark nuclei.
    dark = brightness < 0.7 * np.median(brightness)
    assert dark.mean() > 0.15
    # Tumour nuclei are dark too, not just big.
    assert brightness[batch.tumour].mean() < np.median(brightness) - 30
    # ... and far bigger than lymphocytes: at least 60 px per tumour patch on average.
    assert batch.tumour[labels == 1].sum(axis=(1, 2)).mean() > 60


def test_draw_rejects_cells_outside_the_batch():
    with pytest.raises(ValueError, match="cells.patch"):
        draw_pcam_patches(np.random.default_rng(0), 1, _round_cells([1], [[5.0, 5.0]], 4.0))


@pytest.fixture(scope="module")
def pcam_dir(tmp_path_factory):
    # Small chunks so that the folder is written over several chunks.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth_pcam, "_CHUNK", 24)
        out = make_pcam(tmp_path_factory.mktemp("pcam"), n_train=60, n_valid=9, n_test=8, seed=7)
    return out


def _meta_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_make_pcam_writes_the_six_hdf5_files_and_three_meta_csvs(pcam_dir):
    names = sorted(p.name for p in pcam_dir.iterdir())
    expected = sorted(
        f"camelyonpatch_level_2_split_{s}_{k}"
        for s in PCAM_SPLITS
        for k in ("x.h5", "y.h5", "meta.csv")
    )
    assert names == expected
    for split, n in zip(PCAM_SPLITS, (60, 9, 8)):
        prefix = pcam_dir / f"camelyonpatch_level_2_split_{split}"
        with h5py.File(f"{prefix}_x.h5", "r") as fx, h5py.File(f"{prefix}_y.h5", "r") as fy:
            assert list(fx) == ["x"] and list(fy) == ["y"]
            x, y = fx["x"], fy["y"]
            assert x.shape == (n, 96, 96, 3) and x.dtype == np.uint8
            assert x.chunks is not None and x.chunks[1:] == (96, 96, 3)
            assert y.shape == (n, 1, 1, 1) and y.dtype == np.uint8
            labels = y[:].ravel()
            assert x[:].std() > 10
        assert labels.sum() == n // 2  # balanced
        text = (pcam_dir / f"camelyonpatch_level_2_split_{split}_meta.csv").read_text()
        assert text.startswith(META_HEADER + "\n")
        rows = _meta_rows(f"{prefix}_meta.csv")
        assert len(rows) == n + 1
        body = rows[1:]
        assert [int(r[0]) for r in body] == list(range(n))
        assert all(r[3] in ("True", "False") and r[4] in ("True", "False") for r in body)
        np.testing.assert_array_equal([r[4] == "True" for r in body], labels == 1)
        # A patch with tumour in the centre has tumour in it.
        assert all(r[3] == "True" for r in body if r[4] == "True")
        assert all(int(r[1]) >= 0 and int(r[2]) >= 0 for r in body)


def test_slides_follow_camelyon16_naming_and_no_slide_spans_two_splits(pcam_dir):
    slides = {}
    for split in PCAM_SPLITS:
        rows = _meta_rows(pcam_dir / f"camelyonpatch_level_2_split_{split}_meta.csv")[1:]
        slides[split] = {r[5] for r in rows}
        pattern = (
            r"camelyon16_test_\d{3}"
            if split == "test"
            else r"camelyon16_train_(tumor|normal)_\d{3}"
        )
        assert all(re.fullmatch(pattern, w) for w in slides[split])
        assert all("tumor" in r[5] or split == "test" for r in rows if r[3] == "True")
    assert not slides["train"] & slides["valid"]


def test_make_pcam_is_deterministic_for_a_seed(pcam_dir, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth_pcam, "_CHUNK", 24)
        again = make_pcam(tmp_path, n_train=60, n_valid=9, n_test=8, seed=7)
    for p in pcam_dir.iterdir():
        if p.suffix == ".csv":
            assert (again / p.name).read_bytes() == p.read_bytes()
        else:
            with h5py.File(p, "r") as a, h5py.File(again / p.name, "r") as b:
                key = "x" if p.name.endswith("_x.h5") else "y"
                np.testing.assert_array_equal(a[key][:], b[key][:])


def test_output_is_readable_by_the_pcam_reader(pcam_dir):
    from histodrl.data.pcam import PCamDataset

    for split, n in zip(PCAM_SPLITS, (60, 9, 8)):
        data = PCamDataset(pcam_dir, split)
        assert len(data) == n
        patch, label = data[0]
        assert tuple(patch.shape) == (3, 96, 96)
        assert data.meta is not None
        np.testing.assert_array_equal(data.meta["center_tumor_patch"], data.labels == 1)


def test_refuses_an_existing_dataset_unless_overwrite(tmp_path):
    make_pcam(tmp_path, n_train=2, n_valid=2, n_test=2)
    with pytest.raises(UserInputError, match="already holds a PCam dataset"):
        make_pcam(tmp_path, n_train=2, n_valid=2, n_test=2)
    make_pcam(tmp_path, n_train=4, n_valid=2, n_test=2, overwrite=True)
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_train_y.h5", "r") as f:
        assert f["y"].shape == (4, 1, 1, 1)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"n_train": 0}, "n_train=0"), ({"n_test": 2.5}, "n_test=2.5")]
)
def test_bad_counts_raise_value_error_naming_the_value(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_pcam(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())
