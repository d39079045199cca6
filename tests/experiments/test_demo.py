"""``histodrl demo`` end to end, at a small fraction of its time budget."""

import pytest

from histodrl.cli import main


@pytest.mark.usefixtures("one_thread")
def test_demo_writes_a_report_with_both_inits_and_both_test_parts(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.md") in printed
    report = (out / "report.md").read_text()
    for row in (
        "| DRL | testA |",
        "| DRL | testB |",
        "| random init | testA |",
        "| random init | testB |",
    ):
        assert row in report and row in printed
    assert (out / "figures" / "deformation.png").is_file()
    assert (out / "figures" / "pretraining_losses.png").is_file()
    assert (out / "pretrain-drl" / "encoder.safetensors").is_file()
    # The monitor probed the encoder on its own generated set and the report shows its curve.
    assert (out / "pretrain-drl" / "figures" / "monitor.png").is_file()
    assert "(the random initialisation)" in report and "pretrain-drl/figures/monitor.png" in report
    assert "data/glas-monitor" in report
    # The loss terms' first and last values are stated, not assumed.
    assert "First and last logged values" in report and "L_GCH" in report and "→" in report


def test_a_new_demo_replaces_an_old_demo_folder(tmp_path):
    from histodrl.experiments.demo import MARKER, _prepare_out

    out = tmp_path / "demo"
    _prepare_out(out)
    (out / "old-report.md").write_text("stale")
    _prepare_out(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.txt").write_text("keep me")
    assert main(["demo", "--out", str(out)]) == 2
    assert "not written by histodrl demo" in capsys.readouterr().err
    assert (out / "results.txt").read_text() == "keep me"


def test_a_failing_stage_reports_its_own_error_once(tmp_path, capsys, monkeypatch):
    import traceback

    import histodrl.data.synth_glas
    from histodrl.errors import UserInputError

    def make_glas(out_dir, **kwargs):
        raise UserInputError(f"{out_dir}: no space left for the images")

    monkeypatch.setattr(histodrl.data.synth_glas, "make_glas", make_glas)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"histodrl: error: {out / 'data' / 'glas'}: no space left for the images"]
    # --debug shows the traceback of the stage that failed.
    with pytest.raises(UserInputError, match="no space left") as info:
        main(["--debug", "demo", "--out", str(out)])
    assert "make_glas" in [frame.name for frame in traceback.extract_tb(info.tb)]


@pytest.mark.slow
def test_demo_at_full_budget_shows_drl_pretraining_learning(tmp_path):
    import csv

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    with open(out / "pretrain-drl" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/sigmoid_pos")]
    last = rows[-10:]
    gap = sum(float(r["train/sigmoid_pos"]) - float(r["train/sigmoid_neg"]) for r in last) / 10
    assert gap > 0.5
    # Every term trains: the prior discriminator has not won, GCH is below chance (log 8).
    assert sum(float(r["train/prior_d"]) for r in last) / 10 > 0.2
    assert sum(float(r["train/gch"]) for r in last) / 10 < 2.0
    from histodrl.pretext.monitor import read_monitor_curves

    steps, dice = read_monitor_curves(out / "pretrain-drl")["monitor/pixel_dice"]
    assert steps[0] == 0 and len(steps) >= 6
