"""``histodrl label-efficiency`` end to end at smoke scale on generated data, reuse, bad input, and
what pretraining may see."""

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from histodrl.cli import main
from histodrl.commands.label_efficiency import (
    Budget,
    LabelEfficiencyOptions,
    parse_labels,
    parse_methods,
)
from histodrl.errors import UserInputError
from histodrl.experiments import label_efficiency as le

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def glas(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas

    root = tmp_path_factory.mktemp("data")
    return make_glas(root / "glas", n_train=6, n_test_a=2, n_test_b=2, size=(128, 96), seed=0)


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """Two class folders of 48 generated PCam-like patches."""
    from histodrl.data.pcam import PCamDataset
    from histodrl.data.synth_pcam import make_pcam

    root = tmp_path_factory.mktemp("classes")
    pcam = make_pcam(root / "pcam", n_train=48, n_valid=8, n_test=8, seed=0)
    dataset = PCamDataset(pcam, "train")
    for i in range(len(dataset)):
        x, y = dataset[i]
        folder = root / "classes" / ("tumour" if y else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.numpy().transpose(1, 2, 0)).save(folder / f"{i}.png")
    return root / "classes"


@pytest.fixture(scope="module")
def masks(glas, tmp_path_factory):
    """The GLaS train images as a masks: source (images/ + masks/, no split folders)."""
    root = tmp_path_factory.mktemp("masks") / "masks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image in sorted(glas.glob("train_*.bmp")):
        if image.stem.endswith("_anno"):
            continue
        Image.open(image).save(root / "images" / f"{image.stem}.png")
        anno = np.asarray(Image.open(glas / f"{image.stem}_anno.bmp"))
        Image.fromarray(anno.astype(np.uint8)).save(root / "masks" / f"{image.stem}.png")
    return root


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def _args(data, out, *extra):
    return ["label-efficiency", "--data", data, "--out", str(out), "--scale", "smoke", *extra]


def test_segmentation_end_to_end_then_reused_then_resumed(glas, tmp_path, capsys):
    out = tmp_path / "study"
    args = _args(f"glas:{glas}", out, "--methods", "rotation,random", "--labels", "2,4")
    args += ["--seeds", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # 2 seeds x (1 pretraining + 2 methods x 2 budgets).
    assert printed.count(" done in ") == 10
    assert "rotation seed 1: pretrain rotation on glas (3 steps): run ... done in" in printed
    assert "random seed 0: segment glas: from random init, 4 labels: run ... done in" in printed
    assert "### Object F1, testA" in printed and f"wrote {out / 'report.md'}" in printed

    report = (out / "report.md").read_text()
    for metric in ("Object F1", "Object Dice", "Pixel Dice"):
        for part in ("testA", "testB"):
            assert f"### {metric}, {part}" in report
    assert "| Method | 2 labels | 4 labels |" in report
    assert "p, Rotation vs random init (Welch)" in report
    assert "p, Rotation vs random init (paired)" in report
    assert "10 of 10 finished" in report and "**Commit**" in report
    assert "the GLaS train images" in report
    for name in ("f1", "dice", "pixel_dice"):
        assert (out / "figures" / f"{name}.png").is_file()
        assert f"(figures/{name}.png)" in report
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 2 methods x 2 seeds x 2 budgets x 2 test parts x 3 metrics.
    assert len(rows) == 48
    assert {(r["budget"], r["n_labelled"]) for r in rows} == {("2", "2"), ("4", "4")}

    # Seed k pairs the methods: the same labelled images and the same fine-tuning seed.
    runs = out / "runs"
    for seed in (0, 1):
        for budget in (2, 4):
            folders = [
                runs / m / f"seed{seed}" / f"segment-n{budget}" for m in ("rotation", "random")
            ]
            names = [(f / "train_images.txt").read_text().split() for f in folders]
            assert names[0] == names[1] and len(names[0]) == budget
            configs = [yaml.safe_load((f / "config.yaml").read_text()) for f in folders]
            assert [c["seed"] for c in configs] == [seed, seed]
            assert [c["label_count"] for c in configs] == [budget, budget]
            assert configs[0]["init"] == str(runs / "rotation" / f"seed{seed}" / "pretrain")
            assert configs[1]["init"] == "random"
    pretrain = yaml.safe_load((runs / "rotation/seed1/pretrain/config.yaml").read_text())
    assert (pretrain["method"], pretrain["seed"], pretrain["width"]) == ("rotation", 1, 0.125)

    # A second call reuses every finished run: nothing is retrained.
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")}
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count(": reused") == 10 and " done in " not in printed
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.json")} == stamps

    # An interrupted run (its checkpoint, no metrics.json) is resumed, the others reused.
    (runs / "random/seed1/segment-n4/metrics.json").unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count(": reused") == 9
    assert "random seed 1: segment glas: from random init, 4 labels: resume ... done in" in printed
    assert (runs / "random/seed1/segment-n4/metrics.json").is_file()

    # The folder belongs to this data and scale: another scale is refused before anything runs.
    assert main([*args, "--scale", "cpu"]) == 2
    _one_line_error(capsys, "label_efficiency.json", "scale 'smoke'")


def test_classification_on_class_folders_with_counts(classes, tmp_path, capsys):
    out = tmp_path / "study"
    args = _args(f"folder:{classes}", out, "--methods", "rotation,random", "--labels", "2,4")
    assert main([*args, "--seeds", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" done in ") == 5
    report = (out / "report.md").read_text()
    for metric in ("### Accuracy", "### Balanced accuracy", "### AUC"):
        assert metric in report
    assert "| p, Rotation vs random init (paired) | n/a (fewer than 2 seeds) |" in report
    assert "classification of 2 classes (normal, tumour)" in report
    assert {p.name for p in (out / "figures").iterdir()} == {
        "accuracy.png",
        "balanced_accuracy.png",
        "auc.png",
    }
    metrics = json.loads((out / "runs/random/seed0/classify-n4/metrics.json").read_text())
    assert metrics["n_labelled"] == 4 and metrics["label_count"] == 4
    assert metrics["labelled_per_class"] == {"normal": 2, "tumour": 2}

    # Pretraining saw the train and validation tiles only: a folder of links, test tiles absent.
    view = out / le.VIEW_DIR
    splits = json.loads((out / "runs/random/seed0/classify-n2/splits.json").read_text())
    seen = {p.resolve() for p in view.iterdir() if p.suffix == ".png"}
    test = {(classes / name).resolve() for name in splits["test"]}
    train = {(classes / name).resolve() for name in splits["train"] + splits["val"]}
    assert seen == train and not seen & test
    pretrain = yaml.safe_load((out / "runs/rotation/seed0/pretrain/config.yaml").read_text())
    assert pretrain["data"] == f"folder:{view}"


def test_dry_run_prints_the_plan_and_its_time_and_writes_nothing(glas, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["label-efficiency", "--data", f"glas:{glas}", "--out", str(out), "--labels", "2,4"]
    assert main([*args, "--seeds", "5", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    # 5 seeds x (2 pretraining runs + 3 methods x 2 budgets) at the default (cpu) scale.
    assert "40 runs (3 method(s) x 5 seed(s) x 2 budget(s), 40 to run, about" in printed
    assert printed.count(": would run") == 40
    assert "estimated time of the 40 run(s) to do:" in printed
    assert not out.exists()


def test_bad_input_is_one_line_and_status_2(glas, classes, tmp_path, capsys):
    out = tmp_path / "study"
    assert main(_args(f"glas:{glas}", out, "--methods", "drl,sup", "--labels", "2")) == 2
    _one_line_error(capsys, "--methods sup: unknown method", "random")
    assert main(_args(f"glas:{glas}", out, "--labels", "7")) == 2
    _one_line_error(capsys, "--labels 7: expected at most 6", "training images")
    assert main(_args(f"folder:{classes}", out, "--labels", "1")) == 2
    _one_line_error(capsys, "--labels 1: expected at least 2", "one labelled tile per class")
    assert main(_args(f"glas:{glas}", out, "--labels", "2,0.5")) == 2
    _one_line_error(capsys, "--labels 2,0.5: expected only label counts")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(loose / "a.png")
    assert main(_args(f"folder:{loose}", out, "--labels", "2")) == 2
    _one_line_error(capsys, "no class folders")
    assert main(_args(f"wsi:{loose / 'a.png'}", out, "--labels", "2")) == 2
    _one_line_error(capsys, "wsi: sources have no labels")
    assert main(_args(f"glas:{glas}", out, "--labels", "2", "--seeds", "0")) == 2
    _one_line_error(capsys, "--seeds 0")
    assert not out.exists()


def test_masks_pretraining_holds_out_the_scored_test_images(masks, glas, tmp_path):
    def study(**values):
        options = LabelEfficiencyOptions(
            data=f"masks:{masks}", labels="2", out=str(tmp_path / "out"), scale="smoke", **values
        )
        return le.prepare(options)

    # The default split: pretraining on the source itself holds out exactly the scored images.
    default = study()
    assert default.pretrain.spec == f"masks:{masks}" and not default.pretrain.links
    seen = le._seen_by_pretraining(default.pretrain.spec)
    train = {r.image_path.resolve() for r in default.facts.source.train.records}
    assert seen == train and not seen & default.facts.test_images
    assert len(default.facts.test_images) == 1  # 20 % of 6 images

    # Another test fraction: pretraining reads a view with the scored test images in test/.
    other = study(test_fraction=0.5)
    assert other.pretrain.spec == f"masks:{tmp_path / 'out' / le.VIEW_DIR}"
    le.write_view(tmp_path / "out" / le.VIEW_DIR, other.pretrain.links)
    seen = le._seen_by_pretraining(other.pretrain.spec)
    train = {r.image_path.resolve() for r in other.facts.source.train.records}
    assert seen == train and len(other.facts.test_images) == 3
    assert not seen & other.facts.test_images
    # Writing the same view again keeps it; --pretrain-data with test images is refused.
    le.write_view(tmp_path / "out" / le.VIEW_DIR, other.pretrain.links)
    with pytest.raises(UserInputError, match="holds 1 test image"):
        study(pretrain_data=f"folder:{masks / 'images'}")
    assert study(pretrain_data=f"glas:{glas}").pretrain.how.endswith("no test image)")


def test_labels_and_methods_are_parsed_and_checked():
    assert parse_labels("4, 2") == (Budget("count", 2), Budget("count", 4))
    assert parse_labels("0.5,0.1") == (Budget("fraction", 0.1), Budget("fraction", 0.5))
    assert [b.folder for b in parse_labels("0.1,1.0")] == ["f0.1", "f1"]
    assert [b.label for b in parse_labels("1,10")] == ["1 label", "10 labels"]
    for bad, message in (
        ("0", "count >= 1"),
        ("1.5", "fraction in (0, 1]"),
        ("two", "expected a label count"),
        ("2,2", "given twice"),
        ("", "expected label counts"),
    ):
        with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_labels(bad)
    assert parse_methods("DRL, dim,random") == ("drl", "dim", "random")
    with pytest.raises(UserInputError, match="given twice"):
        parse_methods("drl,drl")


def test_comparisons_are_against_random_init_and_dim():
    assert le.comparisons(("drl", "dim", "random")) == [
        ("drl", "random"),
        ("dim", "random"),
        ("drl", "dim"),
    ]
    assert le.comparisons(("rotation", "random")) == [("rotation", "random")]
    assert le.comparisons(("drl", "rotation")) == []


def test_scores_pair_the_seeds_both_methods_finished():
    from scipy import stats

    values = [
        le.Value("drl", k, "2", 2, "test", "f1", v, "") for k, v in enumerate([0.5, 0.6, 0.55, 0.7])
    ]
    values += [
        le.Value("random", k, "2", 2, "test", "f1", v, "")
        for k, v in zip((0, 1, 3), [0.4, 0.5, 0.52])
    ]
    scores = le.Scores(values)
    paired = scores.paired("drl", "random", "2", "test", "f1")
    reference = stats.ttest_rel([0.5, 0.6, 0.7], [0.4, 0.5, 0.52])
    assert paired.n == 3 and paired.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    welch = scores.welch("drl", "random", "2", "test", "f1")
    ref = stats.ttest_ind([0.5, 0.6, 0.55, 0.7], [0.4, 0.5, 0.52], equal_var=False)
    assert welch.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert scores.paired("drl", "dim", "2", "test", "f1") is None


def test_the_cpu_plan_of_the_benchmark_is_estimated_at_half_an_hour_to_an_hour(tmp_path):
    """drl, dim, random x 5 seeds x 2-4 label counts on 20 training / 10 test 1000 px tiles."""
    from types import SimpleNamespace

    minutes = []
    for n_budgets in (2, 3, 4):
        labels = ",".join(str(2 * (k + 1)) for k in range(n_budgets))
        options = LabelEfficiencyOptions(
            data="monuseg:x", labels=labels, out=str(tmp_path), seeds=5, scale="cpu"
        )
        facts = SimpleNamespace(task="segment", kind="monuseg", spec="monuseg:x")
        facts.test_megapixels = 10.0
        pretrain = le.PretrainData("monuseg:x", "")
        study = le.Study(options, tmp_path, le.SCALES["cpu"], facts, pretrain)  # type: ignore[arg-type]
        jobs = le.plan(study)
        assert len(jobs) == 5 * (2 + 3 * n_budgets)
        minutes.append(le.estimate_seconds(study, jobs) / 60)
    assert 25 <= minutes[0] < minutes[1] < minutes[2] <= 75, minutes
