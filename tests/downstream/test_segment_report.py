"""Report pieces of histodrl segment: outline overlays, figures and the metric table."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from histodrl.commands.segment import SegmentOptions
from histodrl.downstream.segment_report import (
    metrics_table,
    outline_overlay,
    report_markdown,
    write_figures,
)


def test_outline_is_the_inner_boundary_of_each_instance():
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    labels = np.zeros((12, 12), dtype=np.int32)
    labels[2:7, 2:7] = 1
    labels[2:7, 7:10] = 2  # touches gland 1
    out = outline_overlay(image, labels, (1.0, 0.0, 0.0))
    painted = out[:, :, 0] == 255
    expected = np.zeros((12, 12), dtype=bool)
    for k in (1, 2):
        inside = labels == k
        # An object pixel is on the outline when a 4-neighbour has another label.
        padded = np.pad(labels, 1, mode="edge")
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            neighbour = padded[dy : dy + 12, dx : dx + 12]
            expected |= inside & (neighbour != k)
    np.testing.assert_array_equal(painted, expected)
    assert not out[:, :, 1:].any() and not image.any()  # the input is not modified


def test_figures_are_png_files_named_after_the_images(tmp_path):
    labels = np.zeros((40, 50), dtype=np.int32)
    labels[5:20, 5:30] = 1
    item = SimpleNamespace(
        name="testA_3", image=np.full((40, 50, 3), 200, np.uint8), truth=labels, prediction=labels
    )
    written = write_figures(tmp_path, [item])
    assert written == [("testA_3", "figures/testA_3.png")]
    with Image.open(tmp_path / "figures" / "testA_3.png") as figure:
        assert figure.format == "PNG" and figure.width > 100
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["testA_3.png"]


def test_report_has_one_table_row_per_part_and_aggregation():
    scores = {"f1": 0.5, "dice": 0.25, "hausdorff": 12.345, "pixel_dice": 0.75}
    metrics = {
        "testA": {"pooled": scores, "mean": scores, "n_images": 3, "n_empty_pred": 1},
        "testB": {"pooled": scores, "mean": scores, "n_images": 2, "n_empty_pred": 0},
    }
    table = metrics_table(metrics).splitlines()
    assert len(table) == 2 + 4
    assert table[0].endswith("| object Hausdorff (px) | pixel Dice |")
    assert table[2] == "| testA | pooled | 3 | 0.5000 | 0.2500 | 12.35 | 0.7500 |"
    options = SegmentOptions(data="glas:/d", out="r", epochs=100.0, min_object_area=100)
    text = report_markdown(
        options,
        metrics,
        figures=[("testA_1", "figures/testA_1.png")],
        init_description="random initialisation",
        n_train=85,
        n_used=9,
        steps=4200,
    )
    assert "9 of 85 training images" in text and "4200 steps" in text
    assert "testA: 1 image(s) with no predicted gland" in text
    assert "![testA_1](figures/testA_1.png)" in text
    assert "Encoder: vgg19_bn, width 1.0, random initialisation" in text
    assert "objects under 100 px removed" in text and "no contour channel" in text


def test_report_reads_the_trunk_contour_and_dice_options():
    scores = {"f1": 0.5, "dice": 0.25, "hausdorff": 1.0, "pixel_dice": 0.5}
    metrics = {"testA": {"pooled": scores, "mean": scores, "n_images": 1, "n_empty_pred": 0}}
    options = SegmentOptions(
        data="glas:/d", out="r", arch="vgg19", contour=True, dice_weight=0.5, min_object_area=7
    )
    text = report_markdown(
        options, metrics, figures=[], init_description="x", n_train=4, n_used=4, steps=3
    )
    assert "Encoder: vgg19, width 1.0" in text and "+ 0.5 x soft Dice" in text
    assert "a DCAN contour channel (3 px deep" in text and "objects under 7 px removed" in text
    assert "## Examples" not in text
