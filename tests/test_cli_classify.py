"""``histodrl classify`` and ``histodrl probe`` as a user runs them, on generated PCam data."""

import json

import h5py
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from histodrl.cli import main
from histodrl.downstream.classify import labelled_subset, read_subset
from histodrl.errors import UserInputError

TINY = ["--width", "0.125", "--num-workers", "0"]
SPLIT_FILES = [
    f"camelyonpatch_level_2_split_{split}_{part}"
    for split in ("train", "valid", "test")
    for part in ("x.h5", "y.h5")
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pcam(tmp_path_factory):
    from histodrl.data.synth_pcam import make_pcam

    return make_pcam(tmp_path_factory.mktemp("pcam"), n_train=256, n_valid=96, n_test=128, seed=0)


@pytest.fixture(scope="module")
def full_size_pcam(tmp_path_factory):
    """A PCam folder whose training split has the real 262,144 patches, in a few kB.

    The x dataset is chunked, compressed and never written, so HDF5 stores no chunk and reads
    return the fill value (black patches); the labels alternate 0/1 like the balanced release.
    """
    root = tmp_path_factory.mktemp("pcam_full")
    for split, n in (("train", 262_144), ("valid", 8), ("test", 8)):
        prefix = root / f"camelyonpatch_level_2_split_{split}"
        with h5py.File(f"{prefix}_x.h5", "w") as f:
            f.create_dataset(
                "x", shape=(n, 96, 96, 3), dtype="uint8", chunks=(min(n, 64), 96, 96, 3),
                compression="gzip",
            )  # fmt: skip
        with h5py.File(f"{prefix}_y.h5", "w") as f:
            f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))
    return root


def _classify(data, run, *extra):
    return ["classify", "--data", f"pcam:{data}", "--out", str(run), *TINY, "--no-progress", *extra]


def _probe(data, run, *extra):
    return ["probe", "--data", f"pcam:{data}", "--out", str(run), *TINY, *extra]


def test_classify_beats_chance_and_writes_a_comparable_run(pcam, tmp_path, capsys):
    run = tmp_path / "run"
    args = _classify(
        pcam, run, "--label-fraction", "0.75", "--batch-size", "16", "--epochs", "1",
        "--min-steps", "40", "--val-every", "10", "--seed", "0",
    )  # fmt: skip
    assert main(args) == 0
    for name in ("config.yaml", "metrics.json", "report.md", "subset_indices.txt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.6, metrics  # chance is 0.5 on the balanced test split
    assert metrics["test_auc"] > 0.6
    assert metrics["n_labelled"] == 192 and metrics["labelled_per_class"] == {"0": 96, "1": 96}
    assert metrics["total_steps"] == 40 and metrics["batch_size"] == 16

    # Validation every 10 steps; the selected step is the first one with the best accuracy.
    history = metrics["val_history"]
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    best = max(h["accuracy"] for h in history)
    assert metrics["selected_step"] == next(h["step"] for h in history if h["accuracy"] == best)
    assert metrics["val_accuracy"] == best

    # The subset is on disk and is the one any run with this seed and fraction draws.
    from histodrl.data.pcam import read_pcam_labels

    labels = read_pcam_labels(pcam / "camelyonpatch_level_2_split_train_y.h5")
    assert np.array_equal(read_subset(run / "subset_indices.txt"), labelled_subset(labels, 0.75, 0))

    report = (run / "report.md").read_text()
    assert "| init | label fraction | n labelled | val acc | test acc | test AUC |" in report
    assert "| random initialisation | 0.75 | 192 |" in report
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["label_fraction"] == 0.75 and config["total_steps"] == 40
    weights = load_file(str(run / "classifier.safetensors"))
    assert "fc.weight" in weights and "encoder.features.0.weight" in weights

    # Resuming the finished run restores the selected model from the checkpoint: same numbers.
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["test_accuracy"] == metrics["test_accuracy"]
    assert again["selected_step"] == metrics["selected_step"]
    assert again["val_history"] == history


def test_classify_on_a_hundredth_of_a_percent_of_full_size_pcam(full_size_pcam, tmp_path):
    run = tmp_path / "run"
    args = _classify(
        full_size_pcam, run, "--label-fraction", "0.0001", "--epochs", "1", "--min-steps", "2",
    )  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_labelled"] == 26
    assert metrics["labelled_per_class"] == {"0": 13, "1": 13}
    # The subset is smaller than the batch of 128: it is used whole in every step.
    assert metrics["batch_size"] == 26 and metrics["total_steps"] == 2
    subset = read_subset(run / "subset_indices.txt")
    assert len(subset) == 26 and subset.max() < 262_144 and len(set(subset % 2)) == 2


def test_probe_reports_one_accuracy_per_block(pcam, tmp_path, capsys):
    from histodrl.nn import save_encoder, vgg19_bn

    weights = save_encoder(
        vgg19_bn(width=0.125, generator=torch.Generator().manual_seed(0)),
        tmp_path / "enc.safetensors",
    )
    run = tmp_path / "probe"
    args = _probe(pcam, run, "--init", str(weights), "--label-fraction", "0.5", "--epochs", "5")
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    blocks = metrics["blocks"]
    assert [b["block"] for b in blocks] == ["conv2", "conv3", "conv4"]
    assert [b["tap"] for b in blocks] == ["conv2_2", "conv3_4", "conv4_4"]
    assert [b["channels"] for b in blocks] == [16, 32, 64]
    for b in blocks:
        assert 0.0 <= b["test_accuracy"] <= 1.0 and len(b["val_history"]) == 5
    assert metrics["n_labelled"] == 128
    probes = load_file(str(run / "probes.safetensors"))
    assert probes["conv4.weight"].shape == (2, 64) and probes["conv2.bias"].shape == (2,)
    report = (run / "report.md").read_text()
    assert report.count("\n| conv") == 3
    assert "probe conv3" in capsys.readouterr().out


def _missing_test_labels(pcam, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in SPLIT_FILES:
        if name != "camelyonpatch_level_2_split_test_y.h5":
            (partial / name).symlink_to(pcam / name)
    return partial


@pytest.mark.parametrize(
    "command, extra, expected",
    [
        ("classify", ["--label-fraction", "0"], "--label-fraction 0"),
        ("classify", ["--label-fraction", "1.5"], "--label-fraction 1.5"),
        ("probe", ["--label-fraction", "-0.1"], "--label-fraction -0.1"),
        ("probe", ["--blocks", "conv2,pool9"], "'pool9'"),
        ("probe", ["--precision", "8-bit"], "--precision 8-bit"),
        ("classify", ["missing-split"], "camelyonpatch_level_2_split_test_y.h5"),
        ("probe", ["missing-split"], "camelyonpatch_level_2_split_test_y.h5"),
        ("classify", ["--data", "glas:."], "pcam:DIR"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    pcam, tmp_path, capsys, command, extra, expected
):
    data = pcam
    if extra == ["missing-split"]:
        data, extra = _missing_test_labels(pcam, tmp_path), []
    run = tmp_path / "run"
    build = _classify if command == "classify" else _probe
    status = main([*build(data, run), *extra])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not run.exists()


def test_an_existing_run_is_refused_without_overwrite(pcam, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    assert main(_classify(pcam, run, "--max-steps", "1")) == 2
    assert main(_probe(pcam, run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(str(run) in line for line in err)
    assert (run / "keep.txt").read_text() == "precious"


def test_labelled_subset_refuses_a_fraction_outside_the_unit_interval():
    with pytest.raises(UserInputError, match="2.0"):
        labelled_subset(np.array([0, 1, 0, 1]), 2.0, seed=0)
