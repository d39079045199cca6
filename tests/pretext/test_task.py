"""``histodrl pretrain`` as a user runs it: run folders, exact resume, bad input, two processes."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from histodrl.cli import main

TINY = ["--width", "0.125", "--crop", "64", "--batch-size", "4", "--num-workers", "0"]


def _cmd(*args):
    return [sys.executable, "-m", "histodrl.cli", *args]


def _pretrain(data, run, *extra):
    return ["pretrain", "--data", data, "--out", str(run), *TINY, "--no-progress", *extra]


def test_existing_run_is_refused_without_overwrite(tissue_folder, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    status = main(_pretrain(f"glas:{tissue_folder}", run, "--max-steps", "1"))
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0]
    assert (run / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "make_data, expected",
    [
        (lambda d: f"folder:{d}", "no images"),
        (lambda d: f"nosuchkind:{d}", "nosuchkind"),
        (lambda d: f"folder:{d / 'missing'}", "missing"),
    ],
)
def test_bad_data_source_is_one_line_and_exit_2(tmp_path, capsys, make_data, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    status = main(_pretrain(make_data(empty), tmp_path / "run", "--max-steps", "1"))
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert expected.lower() in err[0].lower() or str(empty) in err[0]


def test_unreadable_image_is_named(tmp_path, capsys, image_folder):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status = main(_pretrain(f"folder:{image_folder}", tmp_path / "run", "--max-steps", "1"))
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0]


def test_image_smaller_than_crop_is_named(tmp_path, capsys, image_folder):
    args = _pretrain(f"folder:{image_folder}", tmp_path / "run", "--max-steps", "1")
    args[args.index("--crop") + 1] = "128"  # the images are 80x80
    status = main(args)
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "img" in err[0] and "128" in err[0]


def test_nan_loss_stops_with_one_line_and_keeps_last_checkpoint(
    tissue_folder, tmp_path, capsys, monkeypatch
):
    from histodrl.pretext.drl import DRL

    original = DRL.pretext_step

    def poisoned(self, x):
        loss, logs = original(self, x)
        if self.global_step >= 3:
            loss = loss * float("nan")
        return loss, logs

    monkeypatch.setattr(DRL, "pretext_step", poisoned)
    run = tmp_path / "run"
    status = main(
        _pretrain(
            f"glas:{tissue_folder}",
            run,
            "--max-steps",
            "8",
            "--checkpoint-every",
            "2",
            "--log-every",
            "1",
        )
    )
    assert status == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("histodrl")]
    assert len(err) == 1 and "nan" in err[0].lower()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_resume_after_sigkill_gives_the_same_weights(tissue_folder, tmp_path):
    steps = "40"
    common = ["--max-steps", steps, "--checkpoint-every", "2", "--deterministic", "--lambda", "0.5"]
    straight = tmp_path / "straight"
    subprocess.run(
        _cmd(*_pretrain(f"glas:{tissue_folder}", straight, *common)),
        check=True,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(*_pretrain(f"glas:{tissue_folder}", killed, *common)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"]
    assert 0 < interrupted_at < int(steps), "the run was not interrupted mid-way"
    assert not (killed / "encoder.safetensors").exists()

    subprocess.run(
        _cmd(
            "pretrain",
            "--data",
            f"glas:{tissue_folder}",
            "--out",
            str(killed),
            "--resume",
            "--no-progress",
        ),
        check=True,
        capture_output=True,
    )
    a = load_file(straight / "encoder.safetensors")
    b = load_file(killed / "encoder.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, (
        f"{len(different)} tensors differ, e.g. {different[:3]}: {a[different[0]]} vs {b[different[0]]}"
    )


def test_export_writes_encoder_that_loads_into_vgg19_bn(tissue_folder, tmp_path):
    from histodrl.nn import vgg19_bn

    run = tmp_path / "run"
    assert main(_pretrain(f"glas:{tissue_folder}", run, "--max-steps", "2")) == 0
    (run / "encoder.safetensors").unlink()
    assert main(["export", str(run)]) == 0
    model = vgg19_bn(width=0.125)
    model.load_state_dict(load_file(run / "encoder.safetensors"))
    config = (run / "config.yaml").read_text()
    assert "seed: 0" in config and "total_steps: 2" in config


def test_config_yaml_reproduces_the_run_options(tissue_folder, tmp_path):
    run = tmp_path / "run"
    assert main(_pretrain(f"glas:{tissue_folder}", run, "--max-steps", "1", "--gamma", "0.3")) == 0
    again = tmp_path / "again"
    assert (
        main(
            ["pretrain", "--config", str(run / "config.yaml"), "--out", str(again), "--no-progress"]
        )
        == 0
    )
    assert (again / "config.yaml").read_text() == (run / "config.yaml").read_text().replace(
        str(run), str(again)
    )


def test_two_processes_share_their_negatives(tissue_folder, tmp_path):
    run = tmp_path / "ddp"
    out = subprocess.run(
        _cmd(
            *_pretrain(f"glas:{tissue_folder}", run, "--max-steps", "3", "--log-every", "1"),
            "--devices",
            "2",
            "--accelerator",
            "cpu",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/foreign_negatives")]
    assert rows, "no foreign_negatives logged"
    # Batch 4 per process: each process saw the other's 4 deformed descriptors.
    assert all(float(r["train/foreign_negatives"]) == 4 for r in rows)


def test_preset_sets_lambda_and_global_head_and_typed_values_win(tissue_folder, tmp_path, capsys):
    import yaml

    from histodrl.commands.pretrain import PretrainOptions

    def resolved(kind, **values):
        o = PretrainOptions(method="drl", data=f"{kind}:/d", out="/r", **values).resolved()
        return o.lambda_, o.global_head

    assert resolved("glas") == (0.5, "preact")
    assert resolved("pcam") == (0.5, "preact")
    assert resolved("glas", preset="paper") == (0.01, "relu")
    assert resolved("pcam", preset="paper") == (0.5, "relu")
    assert resolved("folder", preset="paper", lambda_=1.0, global_head="preact") == (1.0, "preact")
    # The run records the preset and what it resolved to; the model card names them.
    run = tmp_path / "paper"
    args = ["--max-steps", "1", "--preset", "paper"]
    assert main(_pretrain(f"glas:{tissue_folder}", run, *args)) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["preset"], config["lambda_"], config["global_head"]) == ("paper", 0.01, "relu")
    card = (run / "MODEL_CARD.md").read_text()
    assert "lambda 0.01" in card and "global vector `relu`" in card
    # Resuming with another preset is refused: it would change the loss.
    assert main(_pretrain(f"glas:{tissue_folder}", run, "--max-steps", "2", "--resume")) == 0
    capsys.readouterr()
    assert main(_pretrain(f"glas:{tissue_folder}", run, "--resume", "--preset", "histodrl")) == 2
    assert "preset" in capsys.readouterr().err
