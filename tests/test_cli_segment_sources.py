"""``histodrl segment`` on the user's own labelled data: ``masks:DIR`` and ``monuseg:DIR``.

A run on the real MoNuSeg tiles (skipped when they are absent), runs on generated image/mask
pairs (both layouts, instance and binary masks), and the one-line errors of bad input.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from histodrl.cli import main
from histodrl.data.labelled import segmentation_source
from histodrl.data.masks import seeded_split, split_records
from histodrl.metrics.label_files import read_label_image

TINY = ["--width", "0.125", "--crop", "64", "--num-workers", "0", "--no-progress"]
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
MONUSEG = REAL / "monuseg-train"
SCORES = {"f1", "dice", "hausdorff", "pixel_dice"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]


def _check_metrics(run, parts, n_images):
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics) == parts
    for part in parts:
        assert metrics[part]["n_images"] == n_images[part]
        assert {"pooled", "mean", "n_empty_pred", "n_empty_gt"} <= set(metrics[part])
        for aggregate in ("pooled", "mean"):
            assert set(metrics[part][aggregate]) == SCORES
            assert 0 <= metrics[part][aggregate]["pixel_dice"] <= 1
    return metrics


# ------------------------------------------------------------------------------------------------
# MoNuSeg, the real training release
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (MONUSEG / "Tissue Images").is_dir(), reason=f"no MoNuSeg tiles in {MONUSEG}"
)
def test_monuseg_run_on_the_real_tiles(tmp_path, capsys):
    from histodrl.data.monuseg import find_monuseg_splits

    run = tmp_path / "run"
    args = [
        *("segment", "--data", f"monuseg:{MONUSEG}", "--out", str(run), *TINY),
        # 3 of the 27 training tiles, 3 test tiles of 1000x1000 px, non-overlapping tiles.
        *("--label-fraction", "0.1", "--test-fraction", "0.1", "--seed", "1"),
        *("--max-steps", "3", "--overlap", "0", "--tile-batch", "16", "--figures", "1"),
    ]
    assert main(args) == 0
    assert "test (3 images, pooled): F1" in capsys.readouterr().out

    # The held-out tiles are the seeded split of --split-seed (0), not of --seed: the ones that
    # pretraining on monuseg: with the same split seed and test fraction leaves out.
    splits = json.loads((run / "splits.json").read_text())
    expected = split_records(find_monuseg_splits(MONUSEG, read_polygons=False), 0, 0.1, 0.0)
    assert splits == {s: [r.name for r in records] for s, records in expected.items()}
    assert len(splits["train"]) == 27 and len(splits["test"]) == 3
    chosen = (run / "train_images.txt").read_text().split()
    assert len(chosen) == 3 and set(chosen) <= set(splits["train"])

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["min_object_area"] == 30  # the nucleus default, resolved into the config
    assert config["split_seed"] == 0 and config["test_fraction"] == 0.1
    _check_metrics(run, ["test"], {"test": 3})
    for name in splits["test"]:
        assert read_label_image(run / "predictions" / f"{name}.png").shape == (1000, 1000)
    report = (run / "report.md").read_text()
    assert report.startswith("# Nucleus segmentation (MoNuSeg)")
    assert "smaller over larger" in report and "Touching nuclei merge" in report
    assert "split seed 0, test fraction 0.1" in report and "gland" not in report.lower()
    assert f"(figures/{splits['test'][0]}.png)" in report


# ------------------------------------------------------------------------------------------------
# masks:DIR, generated
# ------------------------------------------------------------------------------------------------


def _pair(size, seed, n_objects=3):
    """An H&E-like image with ``n_objects`` bright discs and their instance labels."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows, cols = np.mgrid[:height, :width]
    labels = np.zeros(size, np.uint8)
    for k in range(1, n_objects + 1):
        r, c = rng.integers(12, height - 12), rng.integers(12, width - 12)
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= rng.integers(6, 11) ** 2] = k
    image = np.where(labels[..., None] > 0, (110, 40, 150), (235, 200, 220)).astype(np.uint8)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    return image, labels


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_masks_run_with_split_folders_in_both_layouts_and_instance_masks(tmp_path, capsys):
    root = tmp_path / "own"
    for k in range(4):  # train/: images/ + masks/ folders
        image, labels = _pair((80, 96), seed=k)
        _write(root / "train" / "images" / f"tile_{k}.png", image)
        _write(root / "train" / "masks" / f"tile_{k}_mask.png", labels)
    for k in range(4, 6):  # test/: each image beside its mask
        image, labels = _pair((80, 96), seed=k)
        _write(root / "test" / f"tile_{k}.png", image)
        _write(root / "test" / f"tile_{k}_anno.png", labels)
    run = tmp_path / "run"
    args = ["segment", "--data", f"masks:{root}", "--out", str(run), *TINY]
    assert main([*args, "--label-fraction", "0.5", "--max-steps", "2", "--figures", "1"]) == 0
    capsys.readouterr()

    splits = json.loads((run / "splits.json").read_text())
    assert splits == {"train": [f"tile_{k}" for k in range(4)], "test": ["tile_4", "tile_5"]}
    chosen = (run / "train_images.txt").read_text().split()
    assert len(chosen) == 2 and set(chosen) <= set(splits["train"])
    _check_metrics(run, ["test"], {"test": 2})
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["tile_4.png", "tile_5.png"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    # No default for the user's data: derived from its training objects, written in the config.
    assert config["min_object_area"] == segmentation_source(f"masks:{root}").min_object_area > 0
    report = (run / "report.md").read_text()
    assert report.startswith("# Object segmentation (own masks)")
    assert "the folder's split folders" in report and "instance masks" in report
    assert "gland" not in report.lower() and "merge" not in report
    assert (run / "figures" / "tile_4.png").is_file()


def test_masks_run_with_binary_masks_is_split_by_the_split_seed(tmp_path, capsys):
    root = tmp_path / "own"
    names = [f"img_{k}" for k in range(5)]
    for k, name in enumerate(names):  # one folder, each image beside its 0/255 mask
        image, labels = _pair((72, 72), seed=10 + k)
        _write(root / f"{name}.png", image)
        _write(root / f"{name}_mask.png", np.where(labels > 0, 255, 0).astype(np.uint8))
    run = tmp_path / "run"
    args = [
        *("segment", "--data", f"masks:{root}", "--out", str(run), *TINY),
        *("--split-seed", "3", "--test-fraction", "0.4", "--seed", "2", "--min-object-area", "5"),
        *("--max-steps", "2", "--figures", "0"),
    ]
    assert main(args) == 0
    capsys.readouterr()

    drawn = seeded_split(names, 3, 0.4, 0.0)
    splits = json.loads((run / "splits.json").read_text())
    assert splits == {"train": drawn["train"], "test": drawn["test"]} and len(drawn["test"]) == 2
    assert (run / "train_images.txt").read_text().split() == drawn["train"]
    _check_metrics(run, ["test"], {"test": 2})
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["min_object_area"] == 5 and config["split_seed"] == 3
    report = (run / "report.md").read_text()
    assert "Touching objects merge in the ground truth" in report
    assert "split seed 3, test fraction 0.4" in report and "## Examples" not in report

    # Resuming reads the same split from config.yaml's split seed and scores the same model.
    metrics = (run / "metrics.json").read_text()
    assert main(["segment", "--out", str(run), "--resume"]) == 0
    assert (run / "metrics.json").read_text() == metrics


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, no run folder
# ------------------------------------------------------------------------------------------------


def _tile(path, size=(64, 64)):
    _write(path, np.full((*size, 3), 200, np.uint8))


def _xml(path, regions):
    body = "".join(
        "<Region Id='{}'><Vertices>{}</Vertices></Region>".format(
            k + 1, "".join(f"<Vertex X='{x}' Y='{y}' />" for x, y in vertices)
        )
        for k, vertices in enumerate(regions)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<Annotations MicronsPerPixel='0.25'><Annotation><Regions>"
        f"{body}</Regions></Annotation></Annotations>"
    )


def _mask_of_the_wrong_size(root):
    for k in range(3):
        _tile(root / f"a{k}.png")
        _write(root / f"a{k}_mask.png", np.zeros((64, 60) if k == 1 else (64, 64), np.uint8))
    return f"masks:{root}", [str(root / "a1_mask.png"), "60x64", "64x64"]


def _image_without_a_mask(root):
    for k in range(3):
        _tile(root / "images" / f"a{k}.png")
        if k != 2:
            _write(root / "masks" / f"a{k}.png", np.zeros((64, 64), np.uint8))
    return f"masks:{root}", [str(root / "images" / "a2.png"), "image without a mask"]


def _xml_without_regions(root):
    _tile(root / "Tissue Images" / "t1.tif")
    _xml(root / "Annotations" / "t1.xml", [])
    return f"monuseg:{root}", [str(root / "Annotations" / "t1.xml"), "no Region"]


def _xml_with_a_broken_vertex(root):
    _tile(root / "Tissue Images" / "t1.tif")
    _xml(root / "Annotations" / "t1.xml", [[(1, 1), (9, 1), (9, 9)], [(1, 1), ("x", 4), (5, 5)]])
    return f"monuseg:{root}", [str(root / "Annotations" / "t1.xml"), "Id=2 vertex 2", "'x'"]


@pytest.mark.parametrize(
    "make",
    [
        _mask_of_the_wrong_size,
        _image_without_a_mask,
        _xml_without_regions,
        _xml_with_a_broken_vertex,
    ],
)
def test_bad_input_is_one_line_and_writes_no_run(tmp_path, capsys, make):
    spec, needles = make(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["segment", "--data", spec, "--out", str(run), *TINY, "--max-steps", "1"]) == 2
    _one_line_error(capsys, *needles)
    assert not run.exists()
