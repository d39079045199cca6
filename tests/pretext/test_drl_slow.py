"""Longer DRL checks (``make test-slow``): the paper's learning rate, not the fast test's."""

import csv

import pytest

from histodrl.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_drl_at_the_papers_learning_rate_learns_the_local_task(tissue_folder, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain", "--data", f"glas:{tissue_folder}", "--out", str(run), "--width", "0.125"]
    args += ["--crop", "64", "--max-steps", "400", "--num-workers", "0", "--log-every", "5"]
    assert main([*args, "--no-progress"]) == 0
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/lsh")]
    first = sum(float(r["train/lsh"]) for r in rows[:5]) / 5
    last = sum(float(r["train/lsh"]) for r in rows[-5:]) / 5
    assert last < 0.5 * first
    gap = [float(r["train/sigmoid_pos"]) - float(r["train/sigmoid_neg"]) for r in rows[-5:]]
    assert sum(gap) / 5 > 0.3
