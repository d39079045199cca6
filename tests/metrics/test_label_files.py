"""Reading label images and pairing prediction files with GLaS annotations."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from histodrl.errors import UserInputError
from histodrl.metrics.glas import glas_metrics
from histodrl.metrics.label_files import (
    evaluate_glas_folders,
    format_glas_table,
    pair_glas_files,
    read_label_image,
)


def labels(seed=0, shape=(12, 16), top=5):
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, dtype=np.int32)
    for label in range(1, top + 1):
        r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        out[r : r + 3, c : c + 3] = label
    return out


def touch_image(path, array):
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)


@pytest.mark.parametrize(
    ("name", "dtype", "top"),
    [("a.png", np.uint8, 200), ("a.bmp", np.uint8, 9), ("a.png", np.uint16, 700),
     ("a.tif", np.uint16, 60000), ("a.tif", np.int32, 70000)],
)  # fmt: skip
def test_label_images_read_back_exactly_as_int32(tmp_path, name, dtype, top):
    array = labels().astype(dtype)
    array[0, 0] = top  # a label above 255 where the format allows it
    touch_image(tmp_path / name, array)
    got = read_label_image(tmp_path / name)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, array.astype(np.int32))


def test_three_equal_channels_are_one_channel_and_differing_channels_an_error(tmp_path):
    grey = labels().astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "rgb.png"), grey)
    colour = np.stack([grey, grey, grey + 1], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(UserInputError, match=r"colour\.png.*3 channels"):
        read_label_image(tmp_path / "colour.png")


def test_float_tiff_is_accepted_only_with_whole_numbers(tmp_path):
    tifffile.imwrite(tmp_path / "whole.tif", labels().astype(np.float32))
    np.testing.assert_array_equal(read_label_image(tmp_path / "whole.tif"), labels())
    tifffile.imwrite(tmp_path / "prob.tif", np.full((4, 4), 0.7, dtype=np.float32))
    with pytest.raises(UserInputError, match=r"prob\.tif.*integer"):
        read_label_image(tmp_path / "prob.tif")


def test_corrupt_and_missing_files_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserInputError, match=r"bad\.png: cannot read"):
        read_label_image(tmp_path / "bad.png")
    with pytest.raises(UserInputError, match=r"nope\.png: file not found"):
        read_label_image(tmp_path / "nope.png")


def make_folders(tmp_path, gt_names, pred_names):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for i, name in enumerate(gt_names):
        touch_image(gt_dir / name, labels(i).astype(np.uint8))
    for i, name in enumerate(pred_names):
        touch_image(pred_dir / name, labels(i).astype(np.uint8))
    return pred_dir, gt_dir


def test_pairing_uses_stems_so_testA_1_never_takes_testA_10(tmp_path):
    pred_dir, gt_dir = make_folders(
        tmp_path,
        ["testA_1_anno.bmp", "testA_10_anno.bmp", "testA_2_anno.bmp", "testB_1_anno.bmp"],
        ["testA_10.png", "testA_1_seg.png", "testA_2_pred.tif", "testB_1.bmp", "extra.png"],
    )
    pairs = pair_glas_files(pred_dir, gt_dir)
    assert [(n, p.name, g.name) for n, p, g in pairs] == [
        ("testA_1", "testA_1_seg.png", "testA_1_anno.bmp"),
        ("testA_2", "testA_2_pred.tif", "testA_2_anno.bmp"),
        ("testA_10", "testA_10.png", "testA_10_anno.bmp"),
        ("testB_1", "testB_1.bmp", "testB_1_anno.bmp"),
    ]


def test_a_glas_release_folder_uses_only_its_annotations(tmp_path):
    pred_dir, gt_dir = make_folders(tmp_path, ["testA_1_anno.bmp"], ["testA_1.png"])
    Image.new("RGB", (16, 12), (200, 100, 50)).save(gt_dir / "testA_1.bmp")  # the H&E image
    assert [g.name for _, _, g in pair_glas_files(pred_dir, gt_dir)] == ["testA_1_anno.bmp"]


def test_annotation_without_prediction_is_an_error_naming_it(tmp_path):
    pred_dir, gt_dir = make_folders(tmp_path, ["testA_1_anno.bmp"], ["testA_10.png"])
    with pytest.raises(UserInputError, match=r"testA_1_anno\.bmp: no prediction testA_1"):
        pair_glas_files(pred_dir, gt_dir)


def test_two_predictions_for_one_annotation_is_an_error_naming_both(tmp_path):
    pred_dir, gt_dir = make_folders(
        tmp_path, ["testA_1_anno.bmp"], ["testA_1.png", "testA_1_prob.png"]
    )
    with pytest.raises(UserInputError, match=r"testA_1\.png, testA_1_prob\.png"):
        pair_glas_files(pred_dir, gt_dir)


def test_empty_or_missing_folders_are_errors_naming_them(tmp_path):
    pred_dir, gt_dir = make_folders(tmp_path, [], ["testA_1.png"])
    with pytest.raises(UserInputError, match=rf"{gt_dir}: no label images"):
        pair_glas_files(pred_dir, gt_dir)
    with pytest.raises(UserInputError, match="not a folder"):
        pair_glas_files(pred_dir, tmp_path / "missing")


def test_size_mismatch_is_an_error_naming_both_files(tmp_path):
    pred_dir, gt_dir = make_folders(tmp_path, ["testA_1_anno.png"], [])
    touch_image(pred_dir / "testA_1.png", np.zeros((10, 16), dtype=np.uint8))
    with pytest.raises(UserInputError, match=r"testA_1\.png: size 16x10 .*testA_1_anno\.png"):
        evaluate_glas_folders(pred_dir, gt_dir)


def test_folder_scores_equal_the_array_api_per_part(tmp_path):
    gt_names = ["testA_1_anno.png", "testA_2_anno.png", "testB_1_anno.png", "train_1_anno.png"]
    pred_dir, gt_dir = make_folders(tmp_path, gt_names, [])
    for i, name in enumerate(gt_names):
        noisy = np.roll(labels(i), shift=1, axis=i % 2).astype(np.uint8)
        touch_image(pred_dir / name.replace("_anno", "_seg"), noisy)
    results = evaluate_glas_folders(pred_dir, gt_dir, aggregate="mean")
    assert list(results) == ["testA", "testB", "other"]
    preds = [np.roll(labels(i), shift=1, axis=i % 2) for i in range(2)]
    expected = glas_metrics(preds, [labels(0), labels(1)], aggregate="mean")
    for key in ("f1", "dice", "hausdorff", "n_images"):
        assert results["testA"][key] == pytest.approx(expected[key])
    assert results["testB"]["n_images"] == 1 and results["testA"]["n_empty_pred"] == 0
    table = format_glas_table(results, "mean")
    assert "mean of per-image scores" in table and "testB" in table


def test_empty_predictions_are_counted_and_noted(tmp_path):
    pred_dir, gt_dir = make_folders(tmp_path, ["testA_1_anno.png"], [])
    touch_image(pred_dir / "testA_1.png", np.zeros((12, 16), dtype=np.uint8))
    results = evaluate_glas_folders(pred_dir, gt_dir)
    assert results["testA"]["n_empty_pred"] == 1
    assert results["testA"]["f1"] == 0.0
    assert "empty prediction" in format_glas_table(results, "pooled")


def make_release(tmp_path, preds):
    """A GLaS release folder (images and annotations of train, testA, testB) and predictions."""
    names = ["train_1", "train_2", "testA_1", "testA_2", "testB_1"]
    pred_dir, gt_dir = make_folders(tmp_path, [f"{n}_anno.bmp" for n in names], [])
    for i, name in enumerate(names):
        Image.new("RGB", (16, 12), (200, 100, 50)).save(gt_dir / f"{name}.bmp")
        if name in preds:
            touch_image(pred_dir / f"{name}.png", labels(i).astype(np.uint8))
    return pred_dir, gt_dir


def test_a_release_folder_scores_only_the_parts_with_predictions(tmp_path):
    pred_dir, gt_dir = make_release(tmp_path, ["testA_1", "testA_2"])
    results = evaluate_glas_folders(pred_dir, gt_dir)
    assert list(results) == ["testA"] and results["testA"]["n_images"] == 2
    assert results["testA"]["f1"] == 1.0  # the predictions equal the annotations
    names = [n for n, _, _ in pair_glas_files(pred_dir, gt_dir)]
    assert names == ["testA_1", "testA_2"]


def test_a_release_folder_still_needs_every_prediction_of_a_scored_part(tmp_path):
    pred_dir, gt_dir = make_release(tmp_path, ["testA_1", "testB_1"])
    with pytest.raises(UserInputError, match=r"testA_2_anno\.bmp: no prediction testA_2"):
        evaluate_glas_folders(pred_dir, gt_dir)
    (tmp_path / "none").mkdir()
    empty_dir, gt_dir = make_release(tmp_path / "none", [])
    touch_image(empty_dir / "other.png", labels().astype(np.uint8))
    with pytest.raises(UserInputError, match=r"testA_1_anno\.bmp: no prediction testA_1"):
        evaluate_glas_folders(empty_dir, gt_dir)


def test_parts_choose_what_is_scored_and_an_unknown_part_is_an_error(tmp_path):
    pred_dir, gt_dir = make_release(
        tmp_path, ["train_1", "train_2", "testA_1", "testA_2", "testB_1"]
    )
    assert list(evaluate_glas_folders(pred_dir, gt_dir)) == ["testA", "testB", "other"]
    got = evaluate_glas_folders(pred_dir, gt_dir, parts=["testB"])
    assert list(got) == ["testB"] and got["testB"]["n_images"] == 1
    assert list(evaluate_glas_folders(pred_dir, gt_dir, parts=["train"])) == ["other"]
    with pytest.raises(UserInputError, match=r"part 'testC': no annotation of that part in .*"
                       r"\(parts there: testA, testB, train\)"):  # fmt: skip
        evaluate_glas_folders(pred_dir, gt_dir, parts=["testC"])
    # parts also select in a plain annotation folder, by the prefix before _<number>.
    (tmp_path / "plain").mkdir()
    plain_pred, plain_gt = make_folders(
        tmp_path / "plain", ["liver_1_anno.png", "lung_1_anno.png"], ["liver_1.png"]
    )
    assert [n for n, _, _ in pair_glas_files(plain_pred, plain_gt, parts=["liver"])] == ["liver_1"]
    with pytest.raises(UserInputError, match=r"lung_1_anno\.png: no prediction"):
        pair_glas_files(plain_pred, plain_gt)  # not a release: every annotation is scored
