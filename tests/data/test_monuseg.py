"""monuseg:DIR: Aperio XML parsing, polygon rasterisation (smaller over larger), layouts, errors."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histodrl.data.masks import read_mask
from histodrl.data.monuseg import (
    MIN_OBJECT_AREA,
    find_monuseg_records,
    monuseg_datasets,
    monuseg_labels,
    monuseg_pretrain_crops,
    polygon_area,
    polygon_mask,
    rasterise_polygons,
    read_aperio_xml,
)
from histodrl.errors import UserInputError

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
SHAPE = (40, 48)  # (height, width) of the generated tiles


def point_in_polygon(x, y, vx, vy):
    """Reference: the crossing-number test at point (x, y), one edge at a time."""
    inside, j = False, len(vx) - 1
    for i in range(len(vx)):
        if (vy[i] > y) != (vy[j] > y) and x < (vx[j] - vx[i]) * (y - vy[i]) / (vy[j] - vy[i]) + vx[
            i
        ]:
            inside = not inside
        j = i
    return inside


def reference_mask(vertices, shape):
    return np.array(
        [[point_in_polygon(c, r, vertices[:, 0], vertices[:, 1]) for c in range(shape[1])]
         for r in range(shape[0])]
    )  # fmt: skip


def as_full(top, left, inside, shape):
    full = np.zeros(shape, bool)
    full[top : top + inside.shape[0], left : left + inside.shape[1]] = inside
    return full


def region_xml(polygons, mpp="0.252"):
    regions = "".join(
        f'<Region Id="{k + 1}"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in poly)
        + "</Vertices></Region>"
        for k, poly in enumerate(polygons)
    )
    return (
        f'<Annotations MicronsPerPixel="{mpp}"><Annotation Id="1"><Regions>'
        f"<RegionAttributeHeaders/>{regions}</Regions></Annotation></Annotations>"
    )


def square(x0, y0, side):
    return [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]


def write_tile(folder, name, polygons=None, mask=None, layout="train"):
    rgb = np.random.default_rng(len(name)).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    images = folder / "Tissue Images" if layout == "train" else folder
    xmls = folder / "Annotations" if layout == "train" else folder
    images.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(images / f"{name}.tif", rgb, photometric="rgb")
    if polygons is not None:
        xmls.mkdir(parents=True, exist_ok=True)
        (xmls / f"{name}.xml").write_text(region_xml(polygons))
    if mask is not None:
        (folder / "Binary masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(folder / "Binary masks" / f"{name}.png")
    return folder


def test_polygon_fill_equals_the_point_in_polygon_reference():
    rng = np.random.default_rng(0)
    for trial in range(24):
        k = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radius = rng.uniform(2, 14, k)
        # Star-shaped, concave, partly outside the tile for some trials.
        centre = rng.uniform(-2, 50, 2) if trial % 4 == 0 else np.array([24.0, 20.0])
        vertices = np.stack(
            [centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1
        )
        if trial % 3 == 0:
            vertices = np.round(vertices)  # integer vertices: centres on the outline
        got = as_full(*polygon_mask(vertices, SHAPE), SHAPE)
        np.testing.assert_array_equal(got, reference_mask(vertices, SHAPE), err_msg=str(trial))
    # A self-intersecting bow tie follows the even-odd rule too.
    bow = np.array([[5.3, 5.2], [20.7, 18.9], [20.6, 5.1], [5.2, 19.1]])
    np.testing.assert_array_equal(
        as_full(*polygon_mask(bow, SHAPE), SHAPE), reference_mask(bow, SHAPE)
    )
    assert polygon_area(np.array([[0, 0], [4, 0], [4, 3], [0, 3.0]])) == 12.0


def test_overlaps_go_to_the_smaller_region_whatever_the_order():
    big, small = square(4.5, 4.5, 10), square(10.5, 10.5, 6)
    expected = np.zeros(SHAPE, np.int32)
    expected[5:15, 5:15] = 1  # pixel centres 5..14 lie inside [4.5, 14.5)
    expected[11:17, 11:17] = 2
    np.testing.assert_array_equal(
        rasterise_polygons([np.array(big), np.array(small)], SHAPE), expected
    )
    # Small one first in the file: it still wins, and keeps label 1 (file order).
    swapped = rasterise_polygons([np.array(small), np.array(big)], SHAPE)
    np.testing.assert_array_equal(swapped, np.where(expected == 0, 0, 3 - expected))
    # Equal areas: the later region wins.
    a, b = square(4.5, 4.5, 6), square(7.5, 7.5, 6)
    got = rasterise_polygons([np.array(a), np.array(b)], SHAPE)
    assert got[9, 9] == 2 and got[5, 5] == 1 and got[12, 12] == 2


def test_regions_left_without_pixels_are_dropped_and_labels_stay_consecutive():
    polys = [
        np.array(square(4.5, 4.5, 4)),
        np.array(square(100.5, 100.5, 4)),  # outside the tile
        np.array([[20.2, 20.2], [20.3, 20.2], [20.25, 20.3]]),  # covers no pixel centre
        np.array(square(20.5, 20.5, 4)),
    ]
    labels = rasterise_polygons(polys, SHAPE)
    assert sorted(np.unique(labels)) == [0, 1, 2] and labels[22, 22] == 2


def test_training_layout_reads_xml_regions_as_instances(tmp_path):
    polys = [square(4.5, 4.5, 10), square(10.5, 10.5, 6), square(30.5, 20.5, 8)]
    for k in range(5):
        write_tile(tmp_path, f"TCGA-{k}", polys)
    records = find_monuseg_records(tmp_path)
    assert [r.name for r in records] == [f"TCGA-{k}" for k in range(5)]
    assert records[0].annotation_kind == "xml" and records[0].mpp == pytest.approx(0.252)
    datasets = monuseg_datasets(tmp_path, seed=0)
    assert (len(datasets["train"]), len(datasets["test"])) == (4, 1)
    item = datasets["train"][0]
    assert item["image"].shape == (*SHAPE, 3) and item["image"].dtype == np.uint8
    assert item["label"].dtype == np.int32 and item["label"].max() == 3
    np.testing.assert_array_equal(
        item["label"], rasterise_polygons([np.array(p) for p in polys], SHAPE)
    )
    assert not datasets["train"].binary_masks and item["grade"] is None
    assert 10 <= MIN_OBJECT_AREA <= 30


def test_test_release_layout_and_binary_mask_fallback(tmp_path):
    write_tile(tmp_path, "a", [square(4.5, 4.5, 6)], layout="test")
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:8, 2:8] = mask[20:30, 20:26] = 255
    write_tile(tmp_path, "b", None, mask=mask, layout="test")
    records = find_monuseg_records(tmp_path, part="test")
    assert [(r.name, r.annotation_kind, r.part) for r in records] == [
        ("a", "xml", "test"),
        ("b", "binary", "test"),
    ]
    labels = monuseg_labels(records[1])
    assert labels.max() == 2 and labels[25, 22] != labels[4, 4]
    datasets = monuseg_datasets(tmp_path, seed=0, test_fraction=0.5)
    assert any(d.binary_masks for d in datasets.values())


def test_split_folders_train_and_test_in_the_two_layouts(tmp_path):
    for k in range(3):
        write_tile(tmp_path / "train", f"t{k}", [square(4.5, 4.5, 6)])
    write_tile(tmp_path / "test", "x", [square(4.5, 4.5, 6)], layout="test")
    datasets = monuseg_datasets(tmp_path, seed=0)
    assert list(datasets) == ["train", "test"]
    assert datasets["test"].names == ["x"] and len(datasets["train"]) == 3
    crops = monuseg_pretrain_crops(tmp_path, crop=32, stride=16)
    assert sorted(p.stem for p in crops.paths) == ["t0", "t1", "t2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<Annotations><Annotation><Regions/></Annotation></Annotations>", "no Region with vertices"),
        (region_xml([[(1, 2), ("x", 3), (4, 5)]]), r"Region Id=1 vertex 2 has X='x'"),
        ('<Annotations><Annotation><Regions><Region Id="7"><Vertices><Vertex Y="3"/>'
         "</Vertices></Region></Regions></Annotation></Annotations>", r"Region Id=7 vertex 1 has X=None"),
        ("<Annotations><Annotation>", "malformed XML"),
    ],
)  # fmt: skip
def test_bad_xml_is_an_error_naming_the_file(tmp_path, text, message):
    write_tile(tmp_path, "bad", [square(4.5, 4.5, 6)])
    (tmp_path / "Annotations" / "bad.xml").write_text(text)
    with pytest.raises(UserInputError, match=rf"bad\.xml: {message}"):
        read_aperio_xml(tmp_path / "Annotations" / "bad.xml")
    with pytest.raises(UserInputError, match=r"bad\.xml"):
        monuseg_datasets(tmp_path)


def test_image_without_annotation_and_annotation_without_image_are_named(tmp_path):
    write_tile(tmp_path, "ok", [square(4.5, 4.5, 6)])
    write_tile(tmp_path, "lonely")
    with pytest.raises(
        UserInputError, match=r"lonely\.tif: no annotation \(expected .*lonely\.xml"
    ):
        find_monuseg_records(tmp_path)
    (tmp_path / "Tissue Images" / "lonely.tif").unlink()
    (tmp_path / "Annotations" / "ghost.xml").write_text(region_xml([square(1.5, 1.5, 3)]))
    with pytest.raises(UserInputError, match=r"ghost\.xml: annotation without its tile"):
        find_monuseg_records(tmp_path)


def test_regions_outside_the_tile_and_bad_masks_are_named(tmp_path):
    write_tile(tmp_path, "far", [square(500.5, 500.5, 6)])
    write_tile(tmp_path, "near", [square(4.5, 4.5, 6)])
    with pytest.raises(UserInputError, match=r"far\.xml: no region falls inside the 48x40 tile"):
        monuseg_datasets(tmp_path)
    other = tmp_path / "m"
    write_tile(other, "grey", None, mask=np.full(SHAPE, 7, np.uint8))
    write_tile(other, "near", [square(4.5, 4.5, 6)])
    with pytest.raises(UserInputError, match=r"grey\.png: values other than 0/1 or 0/255"):
        monuseg_datasets(other)
    small = tmp_path / "s"
    write_tile(small, "size", None, mask=np.zeros((10, 10), np.uint8))
    with pytest.raises(UserInputError, match=r"size\.png: mask is 10x10, expected the size"):
        find_monuseg_records(small)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"empty: no MoNuSeg tiles"):
        find_monuseg_records(tmp_path / "empty")


def test_real_monuseg_xml_matches_the_released_binary_mask():
    real = REAL / "monuseg-train"
    if not real.is_dir():
        pytest.skip("no shared real data")
    name = "TCGA-CH-5767-01Z-00-DX1"
    regions = read_aperio_xml(real / "Annotations" / f"{name}.xml")
    assert len(regions.polygons) == 294 and regions.mpp == pytest.approx(0.252)
    labels = rasterise_polygons(regions.polygons, (1000, 1000))
    assert labels.max() == len(regions.polygons)
    mask = read_mask(real / "Binary masks" / f"{name}.png") > 0
    fg = labels > 0
    assert (fg & mask).sum() / (fg | mask).sum() > 0.99
    # Nuclei at 40x: median area of a few hundred pixels, all well above MIN_OBJECT_AREA.
    areas = np.bincount(labels.ravel())[1:]
    assert 150 < np.median(areas) < 1000 and (areas > MIN_OBJECT_AREA).mean() > 0.98


def test_real_monuseg_folder_as_a_source():
    real = REAL / "monuseg-train"
    if not real.is_dir():
        pytest.skip("no shared real data")
    records = find_monuseg_records(real, read_polygons=False)
    kinds = [r.annotation_kind for r in records]
    assert len(records) == 30 and kinds.count("xml") == 3 and kinds.count("binary") == 27
    binary = next(r for r in records if r.annotation_kind == "binary")
    labels = monuseg_labels(binary)
    assert labels.shape == (1000, 1000) and labels.max() > 50
