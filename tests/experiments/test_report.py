"""Reports from known per-seed values: cells, p-values, paper columns, CSV, figures, commit."""

import csv
import re
from pathlib import Path

import numpy as np

from histodrl.experiments.jobs import Record, Settings
from histodrl.experiments.report import (
    Results,
    git_commit,
    markdown_table,
    paper_cell,
    write_report,
)
from histodrl.experiments.stats import format_p, welch_t_test
from histodrl.experiments.tables import SCALES, experiment


def _record(variant, seed, task, part, metric, value, exp="table4"):
    return Record(
        exp, variant, variant, seed, task, part, metric, value, f"runs/{variant}/seed{seed}"
    )


def _table4_records(seeds=(0, 1)):
    records = []
    for i, variant in enumerate(("baseline", "lsh", "gch-hard", "gch-soft", "fem")):
        for seed in seeds:
            for part in ("testA", "testB"):
                base = 0.5 + 0.1 * i + 0.05 * seed
                records += [
                    _record(variant, seed, "segment", part, "f1", base),
                    _record(variant, seed, "segment", part, "dice", base + 0.01),
                    _record(variant, seed, "segment", part, "hausdorff", 80 - 5 * i + seed),
                ]
            records.append(
                _record(variant, seed, "classify", "1", "accuracy", 0.6 + 0.05 * i + 0.01 * seed)
            )
    return records


def _settings(tmp_path, seeds=2):
    return Settings(out=tmp_path, scale=SCALES["smoke"], seeds=seeds, glas="g", pcam="p")


def test_results_are_looked_up_in_seed_order():
    records = [
        _record("a", 1, "segment", "testA", "f1", 0.2),
        _record("a", 0, "segment", "testA", "f1", 0.1),
    ]
    results = Results(records)
    assert results.values("a", "segment", "testA", "f1") == [0.1, 0.2]
    assert results.summary("a", "segment", "testB", "f1") is None
    assert results.welch("a", "missing", "segment", "testA", "f1") is None


def test_table4_report_has_ours_paper_and_welch_p_values(tmp_path):
    records = _table4_records()
    report, console = write_report(
        experiment("table4"), _settings(tmp_path), [], records, {"glas": "GLaS `g`"}
    )
    text = report.read_text()
    # Baseline: F1 0.50, 0.55; Dice 0.51, 0.56; Hausdorff 80, 81 -> sample std 0.0354, 0.71 (ddof=1).
    assert (
        "| Baseline (random init.) | 0.525 ± 0.035 (2) | 0.853 ± 0.009 | — | — | 0.535 ± 0.035 (2) "
        "| 0.861 ± 0.006 | — | — | 80.50 ± 0.71 (2) | 63.49 ± 4.40 | — | — |"
    ) in text
    fem = [line for line in text.splitlines() if line.startswith("| + L_LSH + L_GCH^H + FEM")]
    assert len(fem) == 3  # test A, test B, classification
    dice_p = format_p(welch_t_test([0.91, 0.96], [0.51, 0.56]))
    hausdorff_p = format_p(welch_t_test([60.0, 61.0], [80.0, 81.0]))
    assert f"| 0.935 ± 0.035 (2) | 0.896 ± 0.004 | {dice_p} | 0.0002 |" in fem[0]
    assert f"| 60.50 ± 0.71 (2) | 50.55 ± 2.65 | {hausdorff_p} | 0.0035 |" in fem[0]
    # Accuracies are shown in percent, beside the paper's.
    accuracy_p = format_p(welch_t_test([0.8, 0.81], [0.6, 0.61]))
    assert fem[2].endswith(f"| 80.50 ± 0.71 (2) | 89.35 ± 0.08 | {accuracy_p} | 0.0006 |")
    assert "| Baseline (random init.) | 60.50 ± 0.71 (2) | 83.14 ± 1.30 | — | — |" in text
    for phrase in (
        "ddof = 1",
        "two-sided Welch",
        "smoke:",
        "**Commit**",
        "0, 1 (2 per row)",
        "GLaS `g`",
    ):
        assert phrase in text
    assert "![" in text and (tmp_path / "table4" / "figures" / "table4.png").is_file()
    assert console.startswith("### Segmentation, test A") and "### Classification" in console


def test_p_values_are_not_applicable_with_one_seed(tmp_path):
    report, _ = write_report(
        experiment("table4"), _settings(tmp_path, 1), [], _table4_records((0,)), {}
    )
    assert "n/a (fewer than 2 seeds)" in report.read_text()


def test_csv_has_one_row_per_value_with_its_run_folder(tmp_path):
    records = _table4_records()
    write_report(experiment("table4"), _settings(tmp_path), [], records, {})
    with open(tmp_path / "table4" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) == 5 * 2 * 7
    assert list(rows[0]) == [
        "experiment",
        "variant",
        "label",
        "seed",
        "task",
        "part",
        "metric",
        "value",
        "run",
    ]
    assert rows[0]["run"] == "runs/baseline/seed0" and float(rows[0]["value"]) == records[0].value


def test_table1_lists_paper_only_rows_and_the_missing_imagenet_run(tmp_path):
    records = [
        _record("drl", s, "segment", "testA", "dice", 0.8 + s / 10, "table1") for s in (0, 1)
    ]
    report, _ = write_report(experiment("table1"), _settings(tmp_path), [], records, {})
    text = report.read_text()
    assert "| Supervised UNet† [2] (paper only) | — | 0.870 |" in text
    assert "ImageNet (not run: give --imagenet FILE)" in text
    assert "| p-value, DRL vs DIM | — | 0.0055 |" in text  # no DIM runs yet: no test


def test_fig5_draws_the_tsne_of_seed_0(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for key in ("drl-gch-none", "drl"):
        folder = tmp_path / "fig5" / "runs" / key / "seed0" / "embed"
        folder.mkdir(parents=True)
        g = rng.normal(size=(6, 4)).astype(np.float32)
        np.savez(folder / "features.npz", g=g, g_hat=g + 0.1)
        records.append(_record(key, 0, "embed", "", "pair_retrieval_accuracy", 0.5, "fig5"))
    report, _ = write_report(experiment("fig5"), _settings(tmp_path, 1), [], records, {})
    assert (tmp_path / "fig5" / "figures" / "fig5.png").is_file()
    assert "| DRL w/ L_GCH (hard) | 50.0 (1) |" in report.read_text()


def test_paper_cells_and_markdown_tables():
    assert paper_cell((0.9, 0.006), 3) == "0.900 ± 0.006"
    assert paper_cell((57.09, None), 2) == "57.09"
    assert paper_cell(None, 2) == "—"
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_commit_is_a_git_hash_or_unknown():
    commit = git_commit()
    assert re.fullmatch(r"[0-9a-f]{40}( \(with uncommitted changes\))?|unknown", commit)
    if (Path(__file__).resolve().parents[2] / ".git").exists():
        assert commit != "unknown"
