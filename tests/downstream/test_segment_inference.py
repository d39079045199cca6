"""histodrl.downstream.segment_inference: whole-image inference, instance maps, object and pixel scores."""

import numpy as np
import pytest
from torch import nn

from histodrl.commands.options import with_values
from histodrl.commands.segment import SegmentOptions
from histodrl.data.glas import GlasDataset
from histodrl.data.labelled import segmentation_source
from histodrl.data.synth_glas import make_glas
from histodrl.downstream.segment_inference import (
    evaluate_source,
    figure_names,
    pixel_dice,
    pixel_terms,
    predict_probabilities,
    write_label_png,
)
from histodrl.metrics import glas_metrics
from histodrl.metrics.label_files import read_label_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=1, n_test_a=2, n_test_b=1, size=(192, 160), seed=0)
    return root


def _constant_model(logit: float) -> nn.Module:
    model = nn.Conv2d(3, 1, 1)
    nn.init.zeros_(model.weight)
    nn.init.constant_(model.bias, logit)
    return model.eval()


def _options(glas, **changes) -> SegmentOptions:
    return SegmentOptions(data=f"glas:{glas}", out="unused", crop=64, min_object_area=0, **changes)


def _evaluate(model, glas, options, predictions_dir=None, keep=0):
    return evaluate_source(
        model, segmentation_source(f"glas:{glas}"), options, predictions_dir, keep
    )


def test_probabilities_cover_the_whole_image():
    image = np.zeros((100, 70, 3), dtype=np.uint8)
    prob = predict_probabilities(_constant_model(0.0), image, crop=64)
    assert prob.shape == (1, 100, 70) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, 0.5, atol=1e-6)


def test_all_background_prediction_scores_zero_and_is_written(glas, tmp_path):
    metrics, kept = _evaluate(
        _constant_model(-10.0), glas, _options(glas), predictions_dir=tmp_path, keep=2
    )
    assert set(metrics) == {"testA", "testB"}
    assert metrics["testA"]["n_images"] == 2 and metrics["testA"]["n_empty_pred"] == 2
    for part in metrics.values():
        for aggregate in ("pooled", "mean"):
            assert part[aggregate]["f1"] == 0 and part[aggregate]["dice"] == 0
            assert part[aggregate]["pixel_dice"] == 0
    for name in ("testA_1", "testA_2", "testB_1"):
        labels = read_label_image(tmp_path / f"{name}.png")
        assert labels.shape == (160, 192) and not labels.any()
    assert [k.name for k in kept] == ["testA_1", "testB_1"]


def test_all_foreground_prediction_is_one_object_per_image(glas):
    metrics, _ = _evaluate(_constant_model(10.0), glas, _options(glas))
    gts = [GlasDataset(glas, parts=("testA",))[i]["label"] for i in range(2)]
    expected = glas_metrics([np.ones_like(g) for g in gts], gts)
    assert metrics["testA"]["pooled"]["dice"] == pytest.approx(expected["dice"])
    assert metrics["testA"]["pooled"]["f1"] == pytest.approx(expected["f1"])
    # Every pixel predicted: the pixel Dice is 2 |G| / (|image| + |G|).
    true = sum(int((g > 0).sum()) for g in gts)
    pooled = 2 * true / (2 * 192 * 160 + true)
    assert metrics["testA"]["pooled"]["pixel_dice"] == pytest.approx(pooled)
    per_image = [2 * (g > 0).sum() / (g.size + (g > 0).sum()) for g in gts]
    assert metrics["testA"]["mean"]["pixel_dice"] == pytest.approx(np.mean(per_image))


def test_pixel_dice_pools_counts_and_scores_an_empty_pair_as_perfect():
    truth = np.zeros((4, 4), np.int32)
    truth[:2, :2] = 1
    pred = np.zeros_like(truth)
    pred[:2, :] = 7  # 4 of 8 predicted pixels are true
    empty = np.zeros_like(truth)
    terms = [pixel_terms(pred, truth), pixel_terms(empty, empty)]
    assert terms[0].dice == pytest.approx(2 * 4 / (8 + 4)) and terms[1].dice == 1.0
    assert pixel_dice(terms, "pooled") == pytest.approx(2 * 4 / (8 + 4))
    assert pixel_dice(terms, "mean") == pytest.approx((2 * 4 / 12 + 1) / 2)


def test_objects_under_the_minimum_area_are_removed(glas):
    # The whole image is one object of 192 x 160 px: kept under 30720 px, removed above.
    options = _options(glas)
    kept, _ = _evaluate(_constant_model(10.0), glas, options)
    removed, _ = _evaluate(
        _constant_model(10.0), glas, with_values(options, min_object_area=192 * 160 + 1)
    )
    assert kept["testA"]["n_empty_pred"] == 0
    assert removed["testA"]["n_empty_pred"] == 2


def test_figures_alternate_between_test_parts():
    names = {"testA": ["testA_1", "testA_2", "testA_3"], "testB": ["testB_1"]}
    assert figure_names(names, 3) == ["testA_1", "testB_1", "testA_2"]
    assert figure_names(names, 0) == []
    assert figure_names(names, 9) == ["testA_1", "testB_1", "testA_2", "testA_3"]
    assert figure_names({"test": ["b", "a"]}, 1) == ["b"]


def test_label_maps_with_many_objects_are_written_as_16_bit(tmp_path):
    labels = np.arange(300 * 4, dtype=np.int32).reshape(30, 40) % 300
    write_label_png(tmp_path / "many.png", labels)
    np.testing.assert_array_equal(read_label_image(tmp_path / "many.png"), labels)
