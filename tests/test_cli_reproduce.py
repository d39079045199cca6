"""``histodrl reproduce`` as a user runs it: table4 end to end at smoke scale on generated data."""

import csv
import traceback

import pytest
import yaml

from histodrl.cli import main
from histodrl.errors import UserInputError
from histodrl.experiments import reproduce as rp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas
    from histodrl.data.synth_pcam import make_pcam

    root = tmp_path_factory.mktemp("data")
    glas = make_glas(root / "glas", n_train=6, n_test_a=2, n_test_b=2, size=(128, 96), seed=0)
    pcam = make_pcam(root / "pcam", n_train=128, n_valid=64, n_test=64, seed=0)
    return glas, pcam


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0]


def test_table4_smoke_end_to_end_then_reused(data, tmp_path, capsys, monkeypatch):
    glas, pcam = data
    out = tmp_path / "repro"
    args = ["reproduce", "table4", "--glas", str(glas), "--pcam", f"pcam:{pcam}"]
    args += ["--out", str(out), "--seeds", "2", "--scale", "smoke"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count(" done in ") == 36
    assert (
        "[ 3/36] lsh seed 0: pretrain drl --gch none --no-fem on glas: run ... done in" in printed
    )
    assert "### Segmentation, test A" in printed  # the final table
    assert f"wrote {out / 'table4' / 'report.md'}" in printed

    folder = out / "table4"
    report = (folder / "report.md").read_text()
    for heading in ("### Segmentation, test A", "### Segmentation, test B", "### Classification"):
        assert heading in report
    assert "36 of 36 finished" in report and "p vs baseline" in report
    assert "(figures/table4.png)" in report and (folder / "figures" / "table4.png").is_file()
    with open(folder / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 5 variants x 2 seeds x (F1, Dice, Hausdorff for test A and B + accuracy, AUC).
    assert len(rows) == 80
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert all((folder / r["run"] / "metrics.json").is_file() for r in rows)

    # The runs are ordinary histodrl runs with the variant's options and the task's lambda.
    runs = folder / "runs"
    pcam_config = yaml.safe_load((runs / "gch-soft/seed1/pretrain-pcam/config.yaml").read_text())
    assert (pcam_config["gch"], pcam_config["no_fem"], pcam_config["lambda_"]) == (
        "soft",
        True,
        0.5,
    )
    assert (pcam_config["seed"], pcam_config["width"], pcam_config["crop"]) == (1, 0.125, 32)
    glas_config = yaml.safe_load((runs / "fem/seed0/pretrain-glas/config.yaml").read_text())
    assert (glas_config["gch"], glas_config["no_fem"], glas_config["lambda_"]) == (
        "hard",
        False,
        0.5,
    )
    assert (glas_config["preset"], glas_config["global_head"]) == ("histodrl", "preact")
    segment = yaml.safe_load((runs / "fem/seed0/segment/config.yaml").read_text())
    assert segment["init"] == str(runs / "fem/seed0/pretrain-glas")
    baseline = yaml.safe_load((runs / "baseline/seed1/classify-f1/config.yaml").read_text())
    assert (baseline["init"], baseline["label_fraction"]) == ("random", 1.0)

    # A second invocation reruns nothing.
    calls = []
    monkeypatch.setattr(rp, "run_command", lambda *call: calls.append(call) or 1)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert calls == [] and printed.count(": reused") == 36
    assert (folder / "report.md").read_text().split("- **Commit**")[1:] == report.split(
        "- **Commit**"
    )[1:]


def test_dry_run_lists_the_runs_without_running_them(data, tmp_path, capsys):
    glas, _ = data
    out = tmp_path / "plan"
    assert (
        main(
            [
                "reproduce",
                "fig5",
                "--glas",
                str(glas),
                "--out",
                str(out),
                "--seeds",
                "1",
                "--dry-run",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.count(": would run") == 4
    assert "drl-gch-none seed 0: pretrain drl --gch none on glas: would run" in printed
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["table5", "--glas", "G"], ["table5: unknown table or figure", "table1"]),
        (["table4", "--seeds", "0"], ["--seeds 0: expected", ">= 1"]),
        (["table1"], ["--glas: table1 needs the GLaS folder"]),
        (["table3", "--pcam", "/no/such/pcam"], ["--pcam /no/such/pcam: expected the PCam folder"]),
        (["table2", "--glas", "G", "--scale", "large"], ["--scale large"]),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(data, tmp_path, capsys, extra, needles):
    glas, _ = data
    extra = [str(glas) if a == "G" else a for a in extra]
    assert main(["reproduce", *extra, "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, *needles)
    assert not (tmp_path / "o").exists()


def test_a_failing_run_is_one_line_and_debug_shows_its_traceback(
    data, tmp_path, capsys, monkeypatch
):
    glas, pcam = data

    def failing_pretrain(command, options, launch):
        raise UserInputError(f"{options.data}: the data the run could not read")

    monkeypatch.setattr(rp, "run_command", failing_pretrain)
    args = [
        "reproduce",
        "table1",
        "--glas",
        str(glas),
        "--out",
        str(tmp_path / "o"),
        "--seeds",
        "1",
    ]
    assert main(args) == 2
    log = tmp_path / "o" / "table1" / "logs" / "vae-seed0-pretrain-glas.log"
    _one_line_error(
        capsys,
        "vae/seed0/pretrain-glas: pretrain failed: glas:",
        "the data the run could not read; full output in",
        str(log),
    )
    with pytest.raises(UserInputError) as info:
        main(["--debug", *args])
    frames = [frame.name for frame in traceback.extract_tb(info.value.__cause__.__traceback__)]
    assert "failing_pretrain" in frames


def test_missing_out_is_one_line_and_exit_status_2(capsys):
    assert main(["reproduce", "table4"]) == 2
    _one_line_error(capsys, "--out")
