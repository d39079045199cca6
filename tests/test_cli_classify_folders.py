"""``histodrl classify`` and ``histodrl probe`` on the user's own labelled data: ``folder:DIR``
with one subfolder per class (generated PNGs always; the LC25000 lung sample when present)."""

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file

from histodrl.cli import main
from histodrl.data.labelled import classification_source
from histodrl.downstream.evaluation import read_subset

pytestmark = pytest.mark.usefixtures("one_thread")

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
LC25000 = REAL / "lc25000-lung-sample"
LC25000_CLASSES = ["lung_aca", "lung_n", "lung_scc"]

TINY = ["--width", "0.125", "--num-workers", "0"]
# Two steps at batch 4, one validation (after the last step).
SHORT = ["--max-steps", "2", "--min-steps", "0", "--batch-size", "4", "--val-every", "2"]
# Class colours of the generated tiles: the classes are separable by their mean colour.
COLOURS = {"adipose": (230, 200, 210), "stroma": (200, 80, 150), "tumour": (90, 40, 140)}


def _tiles(folder: Path, cls: str, n: int, size: int = 40, start: int = 0) -> None:
    """``n`` noisy PNG tiles of ``cls``'s colour in ``folder/cls/``."""
    rng = np.random.default_rng(zlib.crc32(f"{cls}-{start}".encode()))
    (folder / cls).mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        noise = rng.integers(-30, 31, (size, size + 8, 3))
        tile = np.clip(np.asarray(COLOURS[cls]) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(tile).save(folder / cls / f"tile_{i}.png")


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """``DIR/<class>/*.png``: 12 tiles of each of three classes (40x48 px), no split folders."""
    root = tmp_path_factory.mktemp("three_classes")
    for cls in COLOURS:
        _tiles(root, cls, 12)
    return root


@pytest.fixture(scope="module")
def split_folders(tmp_path_factory):
    """``DIR/train/<class>/``, ``DIR/val/<class>/``, ``DIR/test/<class>/``, two classes."""
    root = tmp_path_factory.mktemp("split_folders")
    for split, n in (("train", 8), ("val", 3), ("test", 4)):
        for k, cls in enumerate(("stroma", "tumour")):
            _tiles(root / split, cls, n, start=100 * k + 10 * len(split))
    return root


def _run(command, data, run, *extra):
    progress = ["--no-progress"] if command == "classify" else []
    return [command, "--data", f"folder:{data}", "--out", str(run), *TINY, *progress, *extra]


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_classify_on_three_class_folders_splits_them_and_reports_each_class(
    three_classes, tmp_path
):
    run = tmp_path / "run"
    args = _run("classify", three_classes, run, "--crop", "32", *SHORT)
    assert main(args) == 0
    metrics = _metrics(run)
    classes = ["adipose", "stroma", "tumour"]
    assert metrics["classes"] == classes and metrics["n_classes"] == 3
    # The default split: 20 % test, 10 % validation of each class (12 tiles: 2 and 1), seed 0.
    assert metrics["test_per_class"] == dict.fromkeys(classes, 2)
    assert metrics["valid_per_class"] == dict.fromkeys(classes, 1)
    assert metrics["train_per_class"] == dict.fromkeys(classes, 9)
    assert metrics["labelled_per_class"] == dict.fromkeys(classes, 9)
    assert metrics["n_labelled"] == 27 and metrics["n_test"] == 6 and metrics["n_valid"] == 3
    assert metrics["split_seed"] == 0 and metrics["crop"] == 32
    assert metrics["test_auc_kind"] == "one-vs-rest macro"
    assert metrics["test_auc"] is not None and 0.0 <= metrics["test_auc"] <= 1.0
    per_class = metrics["test_per_class_accuracy"]
    assert list(per_class) == classes
    assert metrics["test_balanced_accuracy"] == pytest.approx(np.mean(list(per_class.values())))

    # The splits on disk are those of the data layer with the split seed.
    splits = json.loads((run / "splits.json").read_text())
    source = classification_source(f"folder:{three_classes}", seed=0, crop=32)
    assert splits["classes"] == classes
    assert {k: splits[k] for k in ("train", "val", "test")} == source.split_lists()
    assert len(read_subset(run / "subset_indices.txt")) == 27
    weights = load_file(str(run / "classifier.safetensors"))
    assert weights["fc.weight"].shape[0] == 3
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["crop"] == 32 and config["split_seed"] == 0
    report = (run / "report.md").read_text()
    assert "3 classes: adipose, stroma, tumour" in report and "Linear(-> 3)" in report
    assert "| 2 | tumour | 9 | 1 | 2 |" in report

    # Another split seed holds out other tiles; the training seed does not change the split.
    other = classification_source(f"folder:{three_classes}", seed=1, crop=32).split_lists()
    assert other["test"] != splits["test"]


def test_a_resumed_folder_run_refuses_data_whose_splits_changed(tmp_path, capsys):
    data = tmp_path / "data"
    for cls in COLOURS:
        _tiles(data, cls, 10)
    run = tmp_path / "run"
    args = _run("classify", data, run, "--crop", "32", *SHORT, "--label-fraction", "0.3")
    assert main(args) == 0
    assert main([*args, "--resume"]) == 0  # unchanged data: nothing to train, same result
    _tiles(data, "stroma", 3, start=50)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "splits.json" in err[0], err


def test_split_folders_are_the_splits_and_probe_gets_one_output_per_class(
    split_folders, three_classes, tmp_path
):
    run = tmp_path / "classify"
    assert main(_run("classify", split_folders, run, "--crop", "32", *SHORT)) == 0
    metrics = _metrics(run)
    assert metrics["classes"] == ["stroma", "tumour"]
    assert metrics["train_per_class"] == {"stroma": 8, "tumour": 8}
    assert metrics["valid_per_class"] == {"stroma": 3, "tumour": 3}
    assert metrics["test_per_class"] == {"stroma": 4, "tumour": 4}
    assert metrics["test_auc_kind"] == "class-1 probability"
    splits = json.loads((run / "splits.json").read_text())
    assert splits["val"] == [f"stroma/tile_{i}.png" for i in range(30, 33)] + [
        f"tumour/tile_{i}.png" for i in range(130, 133)
    ]

    # Probes on the three generated classes (colour is linearly separable in the features).
    probe = tmp_path / "probe"
    args = _run("probe", three_classes, probe, "--crop", "32", "--blocks", "2,3", "--epochs", "3")
    assert main(args) == 0
    metrics = _metrics(probe)
    assert metrics["classes"] == ["adipose", "stroma", "tumour"]
    assert metrics["labelled_per_class"] == {"adipose": 9, "stroma": 9, "tumour": 9}
    assert metrics["test_per_class"] == {"adipose": 2, "stroma": 2, "tumour": 2}
    weights = load_file(str(probe / "probes.safetensors"))
    assert weights["conv2.weight"].shape == (3, 16) and weights["conv3.bias"].shape == (3,)
    for block in metrics["blocks"]:
        assert list(block["test_per_class_accuracy"]) == metrics["classes"]
        assert block["test_auc"] is not None
    assert (probe / "splits.json").is_file()
    assert "Linear(C -> 3)" in (probe / "report.md").read_text()


def _bad_data(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty class folder":
        _tiles(root, "stroma", 4)
        (root / "tumour").mkdir()
    elif case == "single class":
        _tiles(root, "stroma", 6)
    elif case == "no images":
        for cls in ("stroma", "tumour"):
            (root / cls).mkdir(parents=True)
            (root / cls / "notes.txt").write_text("no image here")
    elif case == "images without class folders":
        root.mkdir()
        for i in range(4):
            Image.new("RGB", (40, 40)).save(root / f"tile_{i}.png")
    elif case == "no validation split":
        for cls in ("stroma", "tumour"):
            _tiles(root, cls, 6)
    return root


@pytest.mark.parametrize("command", ["classify", "probe"])
@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty class folder", "tumour: empty class folder"),
        ("single class", "expected at least two classes"),
        ("no images", "empty class folder"),
        ("images without class folders", "no class folders (images found directly in it)"),
        ("no validation split", "--val-fraction"),
        ("missing folder", "missing"),
    ],
)
def test_bad_folders_are_one_line_exit_2_and_write_nothing(
    tmp_path, capsys, command, case, expected
):
    data = tmp_path / "missing" if case == "missing folder" else _bad_data(tmp_path, case)
    extra = ["--val-fraction", "0"] if case == "no validation split" else []
    run = tmp_path / "run"
    assert main([*_run(command, data, run, "--crop", "32"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not run.exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--crop", "16"], "--crop 16"),
        (["--val-fraction", "0.5", "--test-fraction", "0.5"], "--val-fraction 0.5"),
        (["--test-fraction", "1"], "--test-fraction 1"),
        (["--split-seed", "-1"], "--split-seed -1"),
    ],
)
def test_bad_split_options_are_one_line_exit_2(three_classes, tmp_path, capsys, extra, expected):
    run = tmp_path / "run"
    assert main([*_run("classify", three_classes, run), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not run.exists()


# ------------------------------------------------------------------------------------------------
# Real data: the LC25000 lung sample (three classes of 150 JPEGs, 224x224)
# ------------------------------------------------------------------------------------------------

needs_lc25000 = pytest.mark.skipif(
    not LC25000.is_dir(), reason=f"{LC25000}: the LC25000 sample is not here"
)
REAL_TINY = ["--crop", "64", "--label-fraction", "0.05"]


@needs_lc25000
def test_classify_on_the_lc25000_lung_sample(tmp_path):
    run = tmp_path / "run"
    steps = ["--max-steps", "5", "--min-steps", "0", "--batch-size", "8", "--val-every", "5"]
    assert main(_run("classify", LC25000, run, *REAL_TINY, *steps)) == 0
    metrics = _metrics(run)
    assert metrics["classes"] == LC25000_CLASSES
    # 150 JPEGs per class: 30 test, 15 validation, 105 training, of which 5 % are labelled.
    assert metrics["test_per_class"] == dict.fromkeys(LC25000_CLASSES, 30)
    assert metrics["valid_per_class"] == dict.fromkeys(LC25000_CLASSES, 15)
    assert metrics["train_per_class"] == dict.fromkeys(LC25000_CLASSES, 105)
    assert metrics["labelled_per_class"] == dict.fromkeys(LC25000_CLASSES, 5)
    assert metrics["total_steps"] == 5 and metrics["batch_size"] == 8
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_auc"] is not None
    assert "resize to 64x64" in metrics["data"]
    assert load_file(str(run / "classifier.safetensors"))["fc.weight"].shape[0] == 3


@needs_lc25000
def test_probe_on_the_lc25000_lung_sample(tmp_path):
    run = tmp_path / "run"
    args = _run("probe", LC25000, run, *REAL_TINY, "--blocks", "2,4", "--epochs", "3")
    assert main(args) == 0
    metrics = _metrics(run)
    assert metrics["classes"] == LC25000_CLASSES
    assert metrics["labelled_per_class"] == dict.fromkeys(LC25000_CLASSES, 5)
    assert metrics["test_per_class"] == dict.fromkeys(LC25000_CLASSES, 30)
    assert [b["block"] for b in metrics["blocks"]] == ["conv2", "conv4"]
    weights = load_file(str(run / "probes.safetensors"))
    assert weights["conv4.weight"].shape == (3, 64)
