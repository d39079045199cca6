"""The run lifecycle through ``histodrl pretrain``: final save, resume, metrics, config reuse.

The same lifecycle serves segment and classify; their own tests check the same promises through
their commands.
"""

import csv

import pytest
import torch
import yaml

from histodrl.cli import main

TINY = ["--method", "rotation", "--width", "0.125", "--crop", "64", "--batch-size", "4"]
QUIET = ["--num-workers", "0", "--no-progress", "--log-every", "1"]


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas

    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=4, n_test_a=1, n_test_b=1, size=(96, 96), seed=0)
    return root


def _pretrain(glas, run, *extra):
    return main(["pretrain", "--data", f"glas:{glas}", "--out", str(run), *TINY, *QUIET, *extra])


def _ckpt_step(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return int(ckpt["global_step"])


def _logged_steps(run):
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss") not in ("", None)]


def _config(run):
    return yaml.safe_load((run / "config.yaml").read_text())


def test_a_finished_run_is_saved_at_its_last_step_and_resuming_it_redoes_nothing(
    glas, tmp_path, one_thread
):
    run = tmp_path / "run"
    assert _pretrain(glas, run, "--max-steps", "5", "--checkpoint-every", "100") == 0
    assert _ckpt_step(run) == 5
    assert _logged_steps(run) == [0, 1, 2, 3, 4]
    assert main(["pretrain", "--resume", "--out", str(run), *QUIET]) == 0
    assert _ckpt_step(run) == 5
    assert _logged_steps(run) == [0, 1, 2, 3, 4]


def test_resume_with_a_larger_max_steps_continues_and_records_it(glas, tmp_path, one_thread):
    run = tmp_path / "run"
    assert _pretrain(glas, run, "--max-steps", "3", "--checkpoint-every", "2") == 0
    assert main(["pretrain", "--resume", "--out", str(run), "--max-steps", "5", *QUIET]) == 0
    assert _ckpt_step(run) == 5
    assert _logged_steps(run) == [0, 1, 2, 3, 4]
    config = _config(run)
    assert (config["max_steps"], config["total_steps"]) == (5, 5)


def test_resume_refuses_options_that_differ_and_lists_them(glas, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    assert _pretrain(glas, run, "--max-steps", "2") == 0
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    status = main(
        ["pretrain", "--resume", "--out", str(run), "--lr", "0.1", "--width", "0.25", *QUIET]
    )
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--lr 0.1 (run: 0.0001)" in err[0] and "--width 0.25 (run: 0.125)" in err[0]
    assert (run / "config.yaml").read_text() == before
    # Typing the run's own value is not a difference; a smaller --max-steps is refused.
    assert main(["pretrain", "--resume", "--out", str(run), "--lr", "0.0001", *QUIET]) == 0
    assert main(["pretrain", "--resume", "--out", str(run), "--max-steps", "1", *QUIET]) == 2
    assert "already at step 2" in capsys.readouterr().err


def test_a_run_config_is_reusable_with_config(glas, tmp_path, one_thread):
    run, again = tmp_path / "run", tmp_path / "again"
    assert _pretrain(glas, run, "--max-steps", "2") == 0
    assert main(["pretrain", "--config", str(run / "config.yaml"), "--out", str(again)]) == 0
    first, second = _config(run), _config(again)
    assert first.pop("out") != second.pop("out")
    assert first == second


def test_resume_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["pretrain", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
