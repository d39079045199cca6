"""Runs that never end silently wrong and never lose a run.

Every bad input: exit status 2, one line on stderr naming the value or file, no traceback, and
nothing already written changed. Divergence stops a run with the last good checkpoint kept;
SIGTERM / SIGINT save a checkpoint and exit 143 / 130; a run folder is locked; ``--overwrite``
replaces a run only once the new one has started; ``--init`` refuses an unfinished run.
"""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from histodrl.cli import main

TINY = ["--width", "0.125", "--crop", "64", "--batch-size", "4"]
QUIET = ["--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas

    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=4, n_test_a=1, n_test_b=1, size=(96, 96), seed=0)
    return root


@pytest.fixture(scope="module")
def pcam(tmp_path_factory):
    from histodrl.data.synth_pcam import make_pcam

    root = tmp_path_factory.mktemp("pcam")
    make_pcam(root, n_train=32, n_valid=8, n_test=8, seed=0)
    return root


@pytest.fixture(scope="module")
def finished(glas, tmp_path_factory):
    """A finished 3-step rotation pretraining run (not to be changed by any test)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    args = ["--method", "rotation", *TINY, *QUIET, "--max-steps", "3", "--checkpoint-every", "2"]
    assert main(["pretrain", "--data", f"glas:{glas}", "--out", str(run), *args]) == 0
    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _one_line_error(capsys, *needles):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("histodrl: error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- bad values: (command line builder, needles) ------------------------------------------------

BAD_PRETRAIN = [
    (["--width", "0"], ["--width 0"]),
    (["--max-steps", "-3"], ["--max-steps -3"]),
    (["--max-steps", "0"], ["--max-steps 0"]),
    (["--epochs", "0"], ["--epochs 0"]),
    (["--checkpoint-every", "0"], ["--checkpoint-every 0"]),
    (["--log-every", "0"], ["--log-every 0"]),
    (["--lr", "-1"], ["--lr -1"]),
    (["--precision", "fp8"], ["--precision fp8"]),
    (["--devices", "0"], ["--devices 0"]),
    (["--num-workers", "-1"], ["--num-workers -1"]),
    (["--min-tissue", "1.5"], ["--min-tissue 1.5"]),
    (["--method", "nope"], ["--method nope"]),
    (["--batch-size", "1"], ["--batch-size 1"]),
    (["--crop", "16"], ["--crop 16"]),
    (["--sigma-range", "0.05,0.03"], ["--sigma-range"]),
    (["--sigma-range", "abc"], ["--sigma-range"]),
    (["--width", "wide"], ["--width", "wide"]),
    (["--seed", "-1"], ["--seed -1"]),
    (["--temperature", "0"], ["--temperature 0"]),
    (["--tap", "conv9"], ["--tap conv9"]),
]


@pytest.mark.parametrize("extra, needles", BAD_PRETRAIN, ids=[" ".join(b[0]) for b in BAD_PRETRAIN])
def test_bad_pretrain_values_are_one_line_and_write_nothing(glas, tmp_path, capsys, extra, needles):
    run = tmp_path / "run"
    status = main(["pretrain", "--data", f"glas:{glas}", "--out", str(run), *QUIET, *extra])
    assert status == 2
    _one_line_error(capsys, *needles)
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_accelerator_gpu_without_a_gpu_is_one_line(glas, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", f"glas:{glas}", "--out", str(run), "--accelerator", "gpu"])
    _one_line_error(capsys, "--accelerator gpu", "no CUDA device")
    assert not run.exists()


BAD_CONFIG = [
    ("sigma_range: 0.5\n", ["sigma_range", "0.5"]),
    ("max_steps: 2.7\n", ["max_steps", "2.7", "integer"]),
    ("deterministic: 'no'\n", ["deterministic", "true or false"]),
    ("bogus: 1\n", ["unknown option 'bogus'"]),
    ("lr: fast\n", ["lr", "fast"]),
    ("[1, 2]\n", ["expected a mapping"]),
    ("width: [\n", ["not valid YAML"]),
]


@pytest.mark.parametrize("text, needles", BAD_CONFIG, ids=[t for t, _ in BAD_CONFIG])
def test_bad_config_values_name_the_file_and_key(glas, tmp_path, capsys, text, needles):
    cfg = _write(tmp_path / "c.yaml", text)
    run = tmp_path / "run"
    status = main(["pretrain", "--data", f"glas:{glas}", "--out", str(run), "--config", str(cfg)])
    assert status == 2
    _one_line_error(capsys, str(cfg), *needles)
    assert not run.exists()


BAD_DOWNSTREAM = [
    ("segment", "glas", ["--crop", "100"], ["--crop 100"]),
    ("segment", "glas", ["--label-fraction", "0"], ["--label-fraction 0"]),
    ("segment", "glas", ["--threshold", "1"], ["--threshold 1"]),
    ("segment", "glas", ["--overlap", "1"], ["--overlap 1"]),
    ("segment", "glas", ["--schedule", "cosine"], ["--schedule cosine"]),
    ("classify", "pcam", ["--batch-size", "1"], ["--batch-size 1"]),
    ("classify", "pcam", ["--dropout", "1"], ["--dropout 1"]),
    ("classify", "pcam", ["--label-fraction", "1.5"], ["--label-fraction 1.5"]),
    ("probe", "pcam", ["--blocks", "conv9"], ["conv9"]),
    ("probe", "pcam", ["--epochs", "0"], ["--epochs 0"]),
    ("probe", "pcam", ["--precision", "64-true"], ["--precision 64-true"]),
]


@pytest.mark.parametrize(
    "command, kind, extra, needles",
    BAD_DOWNSTREAM,
    ids=[f"{c} {' '.join(e)}" for c, _, e, _ in BAD_DOWNSTREAM],
)
def test_bad_downstream_values_are_one_line(
    request, tmp_path, capsys, command, kind, extra, needles
):
    data = request.getfixturevalue(kind)
    run = tmp_path / "run"
    quiet = QUIET if command != "probe" else ["--num-workers", "0"]
    status = main([command, "--data", f"{kind}:{data}", "--out", str(run), *quiet, *extra])
    assert status == 2
    _one_line_error(capsys, *needles)
    assert not run.exists()


def test_an_output_folder_that_cannot_be_written_is_one_line(glas, tmp_path, capsys):
    blocker = _write(tmp_path / "a-file", "not a folder")
    out = str(blocker / "run")
    status = main(["pretrain", "--data", f"glas:{glas}", "--out", out, *TINY, *QUIET])
    assert status == 2
    _one_line_error(capsys, str(blocker / "run"))
    assert blocker.read_text() == "not a folder"


def test_an_existing_run_is_kept_without_overwrite(glas, finished, capsys):
    before = _snapshot(finished)
    assert main(["pretrain", "--data", f"glas:{glas}", "--out", str(finished), *TINY, *QUIET]) == 2
    _one_line_error(capsys, str(finished), "already exists")
    assert _snapshot(finished) == before


def test_resume_ignores_nothing_it_refuses_and_changes_nothing(finished, capsys):
    before = _snapshot(finished)
    other = ["--data", "glas:/elsewhere", "--lr", "0.5"]
    assert main(["pretrain", "--resume", "--out", str(finished), *other, *QUIET]) == 2
    _one_line_error(capsys, "--data glas:/elsewhere", "--lr 0.5")
    assert _snapshot(finished) == before


def test_a_corrupt_checkpoint_is_named(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    before = _snapshot(run)
    assert main(["pretrain", "--resume", "--out", str(run), *QUIET]) == 2
    _one_line_error(capsys, str(ckpt), "not a readable checkpoint")
    assert _snapshot(run) == before


def test_a_run_folder_is_locked_while_a_process_works_in_it(finished, capsys):
    from histodrl.runs.folder import RunLock

    before = _snapshot(finished)
    lock = RunLock(finished).acquire()
    try:
        assert main(["pretrain", "--resume", "--out", str(finished), *QUIET]) == 2
    finally:
        lock.release()
    _one_line_error(capsys, str(finished), "in use by process", str(os.getpid()))
    assert _snapshot(finished) == before


def test_two_resumes_of_one_run_at_once_the_second_is_refused(glas, tmp_path):
    run = tmp_path / "run"
    base = ["pretrain", "--method", "rotation", "--data", f"glas:{glas}", "--out", str(run)]
    assert main([*base, *TINY, *QUIET, "--max-steps", "1"]) == 0
    resume = [sys.executable, "-m", "histodrl.cli", "pretrain", "--resume", "--out", str(run)]
    first = subprocess.Popen(
        [*resume, "--max-steps", "400", *QUIET], stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: (run / ".lock").is_file() and (run / ".lock").read_text().strip())
        time.sleep(1.0)
        second = subprocess.run([*resume, *QUIET], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "in use by process" in second.stderr and str(first.pid) in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)


def _wait_for(condition, timeout=120.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def _metrics_steps(run):
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss") not in ("", None)]


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_resume_continues(glas, tmp_path, sig, status):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "histodrl.cli", "pretrain", "--method", "rotation"]
    cmd += ["--data", f"glas:{glas}", "--out", str(run), *TINY, *QUIET, "--log-every", "1"]
    proc = subprocess.Popen(
        [*cmd, "--max-steps", "2000", "--checkpoint-every", "1000"],
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: len(_metrics_steps(run)) >= 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and signal.Signals(sig).name in lines[0] and "--resume" in lines[0]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    stopped = int(ckpt["global_step"])
    assert stopped >= 3
    resumed = main(["pretrain", "--resume", "--out", str(run), "--max-steps", str(stopped + 2)])
    assert resumed == 0
    assert _metrics_steps(run) == list(range(stopped + 2))


@pytest.mark.parametrize("method", ["drl", "rotation"])
def test_pretraining_that_diverges_stops_and_writes_no_encoder(glas, tmp_path, capsys, method):
    run = tmp_path / "run"
    args = ["--method", method, *TINY, *QUIET, "--max-steps", "6", "--checkpoint-every", "1"]
    assert main(["pretrain", "--data", f"glas:{glas}", "--out", str(run), *args, "--lr", "1e6"])
    line = _one_line_error(capsys, "step ", "training diverged")
    assert "nan, inf or above" in line or "nan or inf" in line
    assert not (run / "encoder.safetensors").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_segmentation_that_diverges_writes_no_metrics(glas, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, *QUIET, "--max-steps", "4", "--lr", "1e6"]
    assert main(["segment", "--data", f"glas:{glas}", "--out", str(run), *args]) == 2
    _one_line_error(capsys, "training diverged")
    assert not (run / "metrics.json").exists() and not (run / "report.md").exists()


def test_classification_that_diverges_writes_no_metrics(pcam, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--width", "0.125", *QUIET, "--max-steps", "4", "--min-steps", "0", "--lr", "1e6"]
    assert main(["classify", "--data", f"pcam:{pcam}", "--out", str(run), *args]) == 2
    _one_line_error(capsys, "training diverged")
    assert not (run / "metrics.json").exists() and not (run / "report.md").exists()


def test_init_refuses_an_unfinished_run_and_never_writes_into_it(glas, tmp_path, capsys):
    run = tmp_path / "pre"
    base = ["pretrain", "--method", "rotation", "--data", f"glas:{glas}", "--out", str(run)]
    assert main([*base, *TINY, *QUIET, "--max-steps", "2"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["total_steps"] = 5  # as if it had been stopped at step 2 of 5
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "encoder.safetensors").unlink()
    before = _snapshot(run)
    seg = ["segment", "--data", f"glas:{glas}", *TINY, *QUIET, "--max-steps", "1"]
    assert main([*seg, "--init", str(run), "--out", str(tmp_path / "seg")]) == 2
    _one_line_error(capsys, str(run), "stopped at step 2 of 5", "last.ckpt")
    assert _snapshot(run) == before
    assert not (tmp_path / "seg").exists()
    # Told to, it starts from the partial weights, still writing nothing into the run.
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main([*seg, "--init", str(ckpt), "--out", str(tmp_path / "seg")]) == 0
    assert _snapshot(run) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_has_started(
    glas, finished, tmp_path, capsys
):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    before = _snapshot(run)
    missing = tmp_path / "no-such-encoder.safetensors"
    seg = ["segment", "--data", f"glas:{glas}", *TINY, *QUIET, "--max-steps", "1", "--overwrite"]
    # The encoder file is read after the run folder is opened: the failure must restore it.
    assert main([*seg, "--init", str(missing), "--out", str(run)]) == 2
    _one_line_error(capsys, str(missing))
    assert _snapshot(run) == before
    assert not list(tmp_path.glob(".copy.replaced-*"))


def test_stale_temporary_files_are_removed_and_files_follow_the_umask(finished, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    stale = _write(run / "checkpoints" / ".last.ckpt.k3j2h1g0.tmp", "half")
    assert main(["pretrain", "--resume", "--out", str(run), *QUIET]) == 0
    assert not stale.exists()
    mode = (run / "config.yaml").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
