"""histodrl.downstream.segment: the task's options, its length, and a real fine-tuning run."""

import json

import numpy as np
import pytest
import yaml

from histodrl.commands.segment import DEFAULT_EPOCHS, SegmentOptions
from histodrl.data.glas import GlasDataset
from histodrl.data.synth_glas import make_glas
from histodrl.downstream.segment import SegmentTask, run_segment
from histodrl.errors import UserInputError
from histodrl.metrics import glas_metrics
from histodrl.metrics.label_files import read_label_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=6, n_test_a=2, n_test_b=1, size=(192, 160), seed=0)
    return root


def _options(**values) -> SegmentOptions:
    return SegmentOptions(**{"data": "glas:unused", "out": "unused", **values})


def test_resolve_records_the_default_epochs_and_the_sources_min_object_area(glas):
    task = SegmentTask()
    resolved = task.resolve(_options(data=f"glas:{glas}"))
    assert resolved.epochs == DEFAULT_EPOCHS and resolved.min_object_area == 100
    # A given --min-object-area is kept, and then the data is not read to resolve it.
    only_steps = SegmentTask().resolve(_options(max_steps=6, min_object_area=0))
    assert only_steps.epochs is None and only_steps.min_object_area == 0


def test_max_steps_alone_sets_the_length_and_caps_explicit_epochs():
    task = SegmentTask()
    task.train = list(range(85))  # only the training set's length counts
    assert task.total_steps(_options().resolved(), world_size=1) == 4200
    assert task.total_steps(_options(max_steps=5000), world_size=1) == 5000
    assert task.total_steps(_options(epochs=2.0, max_steps=50), world_size=1) == 50
    assert task.total_steps(_options(epochs=2.0, max_steps=5000), world_size=1) == 84
    assert task.total_steps(_options(epochs=2.0), world_size=2) == 42


def test_split_defaults_are_the_data_layers_and_pretrainings():
    from histodrl.data.masks import DEFAULT_TEST_FRACTION
    from histodrl.data.sources import SOURCE_OPTIONS

    options = _options()
    for kind in ("masks", "monuseg"):
        assert (
            options.test_fraction == DEFAULT_TEST_FRACTION == SOURCE_OPTIONS[kind]["test_fraction"]
        )
        assert options.split_seed == SOURCE_OPTIONS[kind]["split_seed"] == 0


def test_resuming_refuses_a_run_whose_training_images_changed(glas, tmp_path):
    options = _options(data=f"glas:{glas}", label_fraction=0.5)
    task = SegmentTask()
    task.prepare(options, resume=False)
    task.write_inputs(tmp_path, options)
    task.check_resumed(tmp_path, options)  # the same images: fine
    task.chosen = task.chosen[:-1]
    with pytest.raises(UserInputError, match="train_images.txt"):
        task.check_resumed(tmp_path, options)
    task.prepare(options, resume=True)
    task.check_resumed(tmp_path, options)
    task.source.tests["testB"].records.pop()  # a test image gone from the folder
    with pytest.raises(UserInputError, match="splits.json"):
        task.check_resumed(tmp_path, options)


def test_short_fine_tuning_beats_trivial_predictions_and_writes_the_run(glas, tmp_path):
    # 60 steps of batch 4 at width 1/8: test A object Dice was 0.58-0.64 for seeds 0, 1, 2 (an
    # all-foreground prediction scores 0.21 there, an all-background one 0).
    run = tmp_path / "run"
    options = SegmentOptions(
        data=f"glas:{glas}",
        out=str(run),
        width=0.125,
        crop=64,
        max_steps=60,
        batch_size=4,
        lr=0.01,
        num_workers=0,
        no_progress=True,
        figures=2,
    )
    metrics = run_segment(options)

    tests = GlasDataset(glas, parts=("testA", "testB"))
    for part in ("testA", "testB"):
        gts = [tests[i]["label"] for i in range(len(tests)) if tests[i]["part"] == part]
        all_background = glas_metrics([np.zeros_like(g) for g in gts], gts)["dice"]
        all_foreground = glas_metrics([np.ones_like(g) for g in gts], gts)["dice"]
        for aggregate in ("pooled", "mean"):
            assert metrics[part][aggregate]["dice"] > all_background
            # Test B's one image has touching glands that merge without --contour.
            if part == "testA":
                assert metrics[part][aggregate]["dice"] > all_foreground + 0.2

    assert json.loads((run / "metrics.json").read_text()) == metrics
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["total_steps"] == 60 and config["lr"] == 0.01 and config["init"] == "random"
    assert config["min_object_area"] == 100 and config["epochs"] is None
    assert (run / "train_images.txt").read_text().split() == [f"train_{i}" for i in range(1, 7)]
    assert json.loads((run / "splits.json").read_text()) == {
        "train": [f"train_{i}" for i in range(1, 7)],
        "testA": ["testA_1", "testA_2"],
        "testB": ["testB_1"],
    }
    for part in ("testA", "testB"):
        for aggregate in ("pooled", "mean"):
            assert set(metrics[part][aggregate]) == {"f1", "dice", "hausdorff", "pixel_dice"}
            assert 0 < metrics[part][aggregate]["pixel_dice"] <= 1
    for record in tests.records:
        assert read_label_image(run / "predictions" / f"{record.name}.png").shape == (160, 192)
    report = (run / "report.md").read_text()
    assert "| testA | pooled | 2 |" in report and "| testB | mean | 1 |" in report
    assert report.startswith("# Gland segmentation (GLaS)") and "pixel Dice" in report
    assert "splits.json" not in report and "merge" not in report
    assert "objects under 100 px removed" in report and "60 steps of SGD" in report
    for name in ("testA_1", "testB_1"):
        assert f"](figures/{name}.png)" in report
        assert (run / "figures" / f"{name}.png").stat().st_size > 0
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_skip_hausdorff_scores_the_same_f1_and_dice_without_the_distance(glas, tmp_path):
    run = tmp_path / "run"
    options = SegmentOptions(
        data=f"glas:{glas}",
        out=str(run),
        width=0.125,
        crop=64,
        max_steps=3,
        batch_size=4,
        num_workers=0,
        no_progress=True,
        figures=0,
        skip_hausdorff=True,
    )
    metrics = run_segment(options)
    tests = GlasDataset(glas, parts=("testA", "testB"))
    for part in ("testA", "testB"):
        records = [r for r in tests.records if r.part == part]
        gts = [tests[i]["label"] for i in range(len(tests)) if tests[i]["part"] == part]
        preds = [read_label_image(run / "predictions" / f"{r.name}.png") for r in records]
        reference = glas_metrics(preds, gts)
        pooled = metrics[part]["pooled"]
        assert pooled["hausdorff"] is None and metrics[part]["mean"]["hausdorff"] is None
        assert pooled["f1"] == pytest.approx(reference["f1"])
        assert pooled["dice"] == pytest.approx(reference["dice"])
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert "| skipped |" in (run / "report.md").read_text()
