"""histodrl glas-metrics on the real GLaS sample annotations and on bad folders."""

import json
import shutil
from pathlib import Path

import pytest

from histodrl.cli import main


def glas_samples() -> Path:
    candidates = [
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glas-samples",
        Path("/work/shared/data/glas-samples"),
    ]
    for path in candidates:
        if (path / "ground-truth").is_dir():
            return path
    pytest.skip(f"GLaS sample fixtures not found in {', '.join(map(str, candidates))}")


def test_table_shows_the_pooled_scores_of_test_a(capsys):
    root = glas_samples()
    assert main(["glas-metrics", str(root / "predictions"), str(root / "ground-truth")]) == 0
    out = capsys.readouterr().out
    assert "pooled" in out
    row = next(line for line in out.splitlines() if line.startswith("testA"))
    # 4 images; F1 30/34 = 0.8824; Hausdorff 118.3 (DATASETS_AND_METRICS.md §0.5).
    assert row.split()[1] == "4" and row.split()[2] == "0.8824"
    assert float(row.split()[4]) == pytest.approx(118.3, abs=0.05)


def test_json_with_mean_aggregation_gives_the_per_image_mean(capsys):
    root = glas_samples()
    argv = ["glas-metrics", str(root / "predictions"), str(root / "ground-truth")]
    assert main([*argv, "--aggregate", "mean", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["aggregate"] == "mean"
    assert result["parts"]["testA"]["hausdorff"] == pytest.approx(71.3, abs=0.05)
    assert result["parts"]["testA"]["n_images"] == 4


def test_annotations_scored_against_themselves_are_perfect(capsys):
    root = glas_samples()
    gt = str(root / "ground-truth")
    assert main(["glas-metrics", gt, gt, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["parts"]["testA"]
    assert (scores["f1"], scores["dice"], scores["hausdorff"]) == (1.0, 1.0, 0.0)


def test_missing_prediction_is_one_line_exit_2_naming_the_annotation(tmp_path, capsys):
    root = glas_samples()
    pred = tmp_path / "pred"
    shutil.copytree(root / "predictions", pred)
    (pred / "testA_3_seg.png").unlink()
    assert main(["glas-metrics", str(pred), str(root / "ground-truth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "testA_3_anno.png" in err


def test_empty_prediction_folder_is_exit_2(tmp_path, capsys):
    root = glas_samples()
    (tmp_path / "pred").mkdir()
    assert main(["glas-metrics", str(tmp_path / "pred"), str(root / "ground-truth")]) == 2
    assert "no label images" in capsys.readouterr().err


def test_unknown_aggregate_is_one_line_exit_2(capsys):
    assert main(["glas-metrics", "a", "b", "--aggregate", "median"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["histodrl: error: --aggregate median: expected one of pooled, mean"]
