"""``histodrl classify`` and ``histodrl probe`` as a user runs them, on generated PCam data."""

import csv
import json
import re

import h5py
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from histodrl.cli import main
from histodrl.downstream.evaluation import labelled_subset, read_subset
from histodrl.runs.trainer import checkpoint_step

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


@pytest.fixture(scope="session")
def tiny_pcam(tmp_path_factory):
    """The smallest PCam that a 10-step run at batch 8 trains on: 64 / 16 / 16 patches."""
    from histodrl.data.synth_pcam import make_pcam

    return make_pcam(
        tmp_path_factory.mktemp("tiny_pcam"), n_train=64, n_valid=16, n_test=16, seed=0
    )


# A 10-step run logging every step (validation every step: the default of 20 per run).
TEN_STEPS = ["--max-steps", "10", "--min-steps", "0", "--batch-size", "8", "--log-every", "1"]


@pytest.fixture(scope="session")
def finished_run(tiny_pcam, tmp_path_factory):
    """A finished 10-step classify run (shared: tests only resume it, which changes nothing)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("finished") / "run"
        assert main(_classify(tiny_pcam, run, *TEN_STEPS)) == 0
    finally:
        torch.set_num_threads(threads)
    return run


def _logged_steps(run):
    with open(run / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


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


def test_a_finished_run_ends_with_its_last_step_checkpointed_and_resuming_it_trains_nothing(
    finished_run, tiny_pcam, capsys, monkeypatch
):
    from histodrl.downstream.classifier import ClassifierModule

    assert checkpoint_step(finished_run / "checkpoints" / "last.ckpt") == 10
    assert _logged_steps(finished_run) == list(range(10))
    logged = (finished_run / "metrics.csv").read_text()
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert [h["step"] for h in metrics["val_history"]] == list(range(1, 11))

    steps = []
    original = ClassifierModule.training_step

    def counting(self, batch, batch_idx):
        steps.append(int(self.global_step))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", counting)
    capsys.readouterr()
    assert main([*_classify(tiny_pcam, finished_run, *TEN_STEPS), "--resume"]) == 0
    assert steps == []
    assert (finished_run / "metrics.csv").read_text() == logged
    assert checkpoint_step(finished_run / "checkpoints" / "last.ckpt") == 10
    # The selected model came back from the checkpoint: the same test, the same line.
    assert json.loads((finished_run / "metrics.json").read_text()) == metrics
    out = capsys.readouterr().out
    expected = (
        rf"histodrl: selected step {metrics['selected_step']} \(val accuracy "
        rf"{metrics['val_accuracy']:.4f}\); test accuracy {metrics['test_accuracy']:.4f}; "
        rf"wrote {re.escape(str(finished_run / 'report.md'))}"
    )
    assert re.search(expected, out), out


def test_an_interrupted_run_resumed_logs_each_step_once_and_ends_as_if_never_stopped(
    finished_run, tiny_pcam, tmp_path, monkeypatch
):
    from histodrl.downstream.classifier import ClassifierModule

    original = ClassifierModule.training_step

    def stopping(self, batch, batch_idx):
        if self.global_step == 7:
            raise RuntimeError("killed at step 7")
        return original(self, batch, batch_idx)

    run = tmp_path / "run"
    args = _classify(tiny_pcam, run, *TEN_STEPS)
    with monkeypatch.context() as patch:
        patch.setattr(ClassifierModule, "training_step", stopping)
        with pytest.raises(RuntimeError, match="killed at step 7"):
            main([*args, "--checkpoint-every", "4"])
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 4
    assert _logged_steps(run) == list(range(7))

    assert main([*args, "--resume"]) == 0
    assert _logged_steps(run) == list(range(10))
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 10
    # Resuming is exact: the same losses, validations and test as the uninterrupted run.
    assert (run / "metrics.csv").read_text() == (finished_run / "metrics.csv").read_text()
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed == json.loads((finished_run / "metrics.json").read_text())


def test_a_runs_config_starts_a_new_run_with_the_same_options(finished_run, tmp_path):
    run = tmp_path / "again"
    assert main(["classify", "--config", str(finished_run / "config.yaml"), "--out", str(run)]) == 0
    first = yaml.safe_load((finished_run / "config.yaml").read_text())
    second = yaml.safe_load((run / "config.yaml").read_text())
    assert second.pop("out") == str(run) and first.pop("out") == str(finished_run)
    assert second == first
    same = json.loads((finished_run / "metrics.json").read_text())
    assert json.loads((run / "metrics.json").read_text()) == same


def test_a_probe_runs_config_starts_a_new_probe_with_the_same_options(tiny_pcam, tmp_path):
    first = tmp_path / "probe"
    args = ["--blocks", "2,3", "--epochs", "2", "--no-progress"]
    assert main(_probe(tiny_pcam, first, *args[:4])) == 0
    config = yaml.safe_load((first / "config.yaml").read_text())
    assert config["blocks"] == "conv2,conv3"
    assert config["data_description"].endswith("train (64 patches 96x96)")
    second = tmp_path / "again"
    assert main(["probe", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    again = yaml.safe_load((second / "config.yaml").read_text())
    assert again.pop("out") == str(second) and config.pop("out") == str(first)
    assert again == config
    metrics = json.loads((first / "metrics.json").read_text())
    assert json.loads((second / "metrics.json").read_text()) == metrics
    assert [b["block"] for b in metrics["blocks"]] == ["conv2", "conv3"]
