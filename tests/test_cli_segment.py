"""``histodrl segment`` as a user runs it: outputs, --init, --contour, resume, config reuse, bad input."""

import csv
import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from histodrl.cli import main
from histodrl.nn import vgg19_bn

TINY = ["--width", "0.125", "--crop", "64", "--num-workers", "0", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas

    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=4, n_test_a=1, n_test_b=1, size=(96, 96), seed=0)
    return root


def _segment(glas, run, *extra):
    return ["segment", "--data", f"glas:{glas}", "--out", str(run), *TINY, *extra]


def _checkpoint_step(run) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def _logged_steps(run) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0]


def test_contour_run_from_an_encoder_file_writes_every_output(glas, tmp_path, capsys):
    encoder = vgg19_bn(width=0.125, generator=torch.Generator().manual_seed(7))
    weights = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(weights))
    run = tmp_path / "run"
    args = [
        *("segment", "--data", f"glas:{glas}", "--out", str(run), *TINY),
        *("--init", str(weights), "--contour", "--label-fraction", "0.5", "--dice-weight", "0.5"),
        # A vanishing learning rate keeps the trunk at the loaded weights, so the load is visible.
        *("--lr", "1e-12", "--max-steps", "3", "--figures", "1"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "testA (1 images, pooled): F1" in out and "testB (1 images, pooled)" in out
    assert "pixel Dice" in out
    assert f"wrote {run / 'report.md'}" in out

    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(
        state["model.encoder.features.0.weight"], encoder.state_dict()["features.0.weight"]
    )
    assert state["model.head.weight"].shape[0] == 2  # gland and contour channels
    names = (run / "train_images.txt").read_text().split()
    assert len(names) == 2 and all(n.startswith("train_") for n in names)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"testA", "testB"}
    assert set(metrics["testA"]) >= {"pooled", "mean", "n_images"}
    assert set(metrics["testA"]["pooled"]) == {"f1", "dice", "hausdorff", "pixel_dice"}
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["testA_1.png", "testB_1.png"]
    report = (run / "report.md").read_text()
    assert "pretrained encoder" in report and "contour <= 0.5" in report
    assert "(figures/testA_1.png)" in report

    # The same command again is refused, and nothing is lost.
    assert main(args) == 2
    _one_line_error(capsys, str(run), "--overwrite")
    assert (run / "metrics.json").is_file()

    # Resuming the finished run trains no further and scores the same model again.
    assert main(["segment", "--data", f"glas:{glas}", "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics

    # The run's config.yaml is a valid --config for a new run.
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["contour"] is True and config["label_fraction"] == 0.5
    assert "overwrite" not in config and "resume" not in config
    again = tmp_path / "again"
    reuse = ["segment", "--config", str(run / "config.yaml"), "--data", f"glas:{glas}"]
    assert main([*reuse, "--out", str(again), "--max-steps", "1", "--figures", "0"]) == 0
    assert yaml.safe_load((again / "config.yaml").read_text())["contour"] is True


def test_missing_glas_folder_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    status = main(["segment", "--data", f"glas:{missing}", "--out", str(tmp_path / "r"), *TINY])
    assert status == 2
    _one_line_error(capsys, str(missing))
    assert not (tmp_path / "r").exists()


def test_a_source_without_labels_is_refused(tmp_path, capsys):
    status = main(["segment", "--data", f"folder:{tmp_path}", "--out", str(tmp_path / "r"), *TINY])
    assert status == 2
    _one_line_error(capsys, "glas:DIR", "masks:DIR", "monuseg:DIR")


def test_glas_folder_without_test_images_is_refused_before_training(tmp_path, capsys):
    from histodrl.data.synth_glas import make_glas

    root = make_glas(tmp_path / "train_only", n_train=2, n_test_a=0, n_test_b=0, size=(96, 64))
    status = main(["segment", "--data", f"glas:{root}", "--out", str(tmp_path / "r"), *TINY])
    assert status == 2
    _one_line_error(capsys, "testA")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--crop", "100", "--crop 100"),
        ("--overlap", "1", "--overlap 1"),
        ("--epochs", "0", "--epochs"),
    ],
)
def test_impossible_option_values_are_one_line(glas, tmp_path, capsys, option, value, needle):
    args = ["segment", "--data", f"glas:{glas}", "--out", str(tmp_path / "r"), *TINY]
    assert main([*args, option, value]) == 2
    _one_line_error(capsys, needle)


def test_label_fraction_outside_zero_one_is_refused(tmp_path, capsys):
    args = ["segment", "--data", "glas:x", "--out", str(tmp_path), "--label-fraction", "1.5"]
    assert main(args) == 2
    _one_line_error(capsys, "--label-fraction", "(0, 1]")


def test_finished_run_has_its_last_step_checkpointed_and_resumes_to_no_new_step(glas, tmp_path):
    run = tmp_path / "run"
    args = _segment(glas, run, "--max-steps", "6", "--checkpoint-every", "100", "--log-every", "1")
    assert main([*args, "--figures", "0"]) == 0
    assert _checkpoint_step(run) == 6
    assert _logged_steps(run) == list(range(6))
    metrics = (run / "metrics.json").read_text()

    assert main(["segment", "--out", str(run), "--resume"]) == 0
    assert _checkpoint_step(run) == 6
    assert _logged_steps(run) == list(range(6))
    assert (run / "metrics.json").read_text() == metrics


def test_resume_after_an_interrupted_run_logs_each_step_once(glas, tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    first = _segment(glas, run, "--max-steps", "3", "--checkpoint-every", "2", "--log-every", "1")
    assert main([*first, "--figures", "0"]) == 0
    assert _checkpoint_step(run) == 3
    at_step_3 = ckpt.read_bytes()
    assert main(["segment", "--out", str(run), "--resume", "--max-steps", "5"]) == 0
    assert _logged_steps(run) == list(range(5))
    # Killed after logging steps 3 and 4 but before their checkpoint: resuming redoes them.
    ckpt.write_bytes(at_step_3)
    assert main(["segment", "--out", str(run), "--resume", "--max-steps", "6"]) == 0
    assert _checkpoint_step(run) == 6
    assert _logged_steps(run) == list(range(6))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["max_steps"] == 6 and config["total_steps"] == 6


def test_a_runs_config_yaml_is_reusable_as_is(glas, tmp_path):
    run, again = tmp_path / "run", tmp_path / "again"
    assert main(_segment(glas, run, "--max-steps", "2", "--figures", "0", "--seed", "3")) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["min_object_area"] == 100 and config["epochs"] is None
    assert main(["segment", "--config", str(run / "config.yaml"), "--out", str(again)]) == 0
    reused = yaml.safe_load((again / "config.yaml").read_text())
    assert reused.pop("out") == str(again) and config.pop("out") == str(run)
    assert reused == config
