"""The reproduction harness: run layout, reuse and resumption, failures, bad input, records.

The runs are replaced by a fake ``histodrl`` that writes each command's final artefact, so these
tests check the harness alone (tests/test_cli_reproduce.py runs the real commands).
"""

import json
from pathlib import Path

import pytest

from histodrl.errors import UserInputError
from histodrl.experiments import reproduce as rp
from histodrl.experiments.tables import SCALES, experiment


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas
    from histodrl.data.synth_pcam import make_pcam

    root = tmp_path_factory.mktemp("data")
    glas = make_glas(root / "glas", n_train=3, n_test_a=1, n_test_b=1, size=(96, 80), seed=0)
    pcam = make_pcam(root / "pcam", n_train=32, n_valid=16, n_test=16, seed=0)
    return str(glas), str(pcam)


class FakeHistodrl:
    """Writes the artefact each command would write; remembers every command line."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(list(argv))
        out = Path(argv[argv.index("--out") + 1])
        if self.fail_on and self.fail_on in str(out):
            print("histodrl: error: the fake run failed")
            return 2
        out.mkdir(parents=True, exist_ok=True)
        value = (sum(map(ord, str(out))) % 97) / 100  # deterministic, differs between runs
        if argv[0] == "pretrain":
            (out / "encoder.safetensors").write_bytes(b"weights")
            return 0
        if argv[0] == "segment":
            scores = {"f1": value, "dice": value / 2, "hausdorff": 50 + value}
            metrics = {part: {"pooled": scores, "mean": scores} for part in ("testA", "testB")}
        elif argv[0] == "classify":
            fraction = float(argv[argv.index("--label-fraction") + 1])
            metrics = {"label_fraction": fraction, "test_accuracy": value, "test_auc": None}
        else:
            blocks = [
                {"block": b, "test_accuracy": value, "test_auc": 0.5}
                for b in ("conv2", "conv3", "conv4")
            ]
            metrics = {"blocks": blocks}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return 0


def _reproduce(data, out, runner, names=("table4",), **kw):
    glas, pcam = data
    kw.setdefault("seeds", 2)
    lines: list[str] = []
    status = rp.reproduce(
        list(names), out=out, glas=glas, pcam=pcam, runner=runner,
        echo=lambda *a, **k: lines.append(" ".join(map(str, a))), **kw,
    )  # fmt: skip
    return status, lines


def _settings(data, out, seeds=2):
    glas, pcam = data
    return rp.Settings(out=Path(out), scale=SCALES["smoke"], seeds=seeds, glas=glas, pcam=pcam)


def test_plan_layout_pretrains_per_dataset_before_the_tasks_seed_by_seed(data, tmp_path):
    jobs = rp.plan(experiment("table4"), _settings(data, tmp_path))
    rel = [str(j.folder.relative_to(tmp_path / "table4" / "runs")) for j in jobs]
    assert rel[:6] == [
        "baseline/seed0/segment",
        "baseline/seed0/classify-f1",
        "lsh/seed0/pretrain-glas",
        "lsh/seed0/pretrain-pcam",
        "lsh/seed0/segment",
        "lsh/seed0/classify-f1",
    ]
    assert len(jobs) == 2 * (2 + 4 * 4) and all(j.seed == 0 for j in jobs[:18])
    by_folder = {r: j for r, j in zip(rel, jobs)}
    segment = by_folder["lsh/seed1/segment"].argv
    assert segment[segment.index("--init") + 1] == str(
        tmp_path / "table4/runs/lsh/seed1/pretrain-glas"
    )
    classify = by_folder["lsh/seed1/classify-f1"].argv
    assert classify[classify.index("--init") + 1].endswith("lsh/seed1/pretrain-pcam")
    baseline = by_folder["baseline/seed1/segment"].argv
    assert baseline[baseline.index("--init") + 1] == "random"
    pretrain = by_folder["lsh/seed1/pretrain-pcam"].argv
    for option in (("--gch", "none"), ("--lambda", "0.5"), ("--seed", "1"), ("--crop", "32")):
        assert pretrain[pretrain.index(option[0]) + 1] == option[1]
    assert "--no-fem" in pretrain and "--max-steps" in pretrain
    glas_pretrain = by_folder["lsh/seed1/pretrain-glas"].argv
    assert "--lambda" not in glas_pretrain  # the pretrain default, 0.01, is the GLaS setting


def test_exemplar_classes_are_capped_by_the_pretraining_items(data, tmp_path):
    from histodrl.data.sources import pretrain_dataset

    jobs = rp.plan(experiment("table1"), _settings(data, tmp_path, seeds=1))
    exemplar = next(j for j in jobs if j.variant.key == "exemplar" and j.kind == "pretrain")
    n = len(pretrain_dataset(f"glas:{data[0]}", crop=64, seed=0))
    assert n < 4000
    assert exemplar.argv[exemplar.argv.index("--exemplar-classes") + 1] == str(n)


def test_second_invocation_reruns_nothing(data, tmp_path):
    fake = FakeHistodrl()
    status, lines = _reproduce(data, tmp_path, fake)
    assert status == 0 and len(fake.calls) == 36
    assert sum(": run ..." in line for line in lines) == 36
    assert (tmp_path / "table4" / "report.md").is_file()

    again = FakeHistodrl()
    status, lines = _reproduce(data, tmp_path, again)
    assert status == 0 and again.calls == []
    assert sum(line.endswith(": reused") for line in lines) == 36
    assert "36 reused, 0 run" in lines[-1]


def test_more_seeds_later_runs_only_the_new_seeds(data, tmp_path):
    _reproduce(data, tmp_path, FakeHistodrl(), seeds=1)
    fake = FakeHistodrl()
    _reproduce(data, tmp_path, fake, seeds=2)
    assert len(fake.calls) == 18
    assert all(c[c.index("--seed") + 1] == "1" for c in fake.calls)


def test_interrupted_runs_are_resumed_or_replaced(data, tmp_path):
    _reproduce(data, tmp_path, FakeHistodrl())
    runs = tmp_path / "table4" / "runs"
    # A pretraining run killed after a checkpoint: resumed.
    (runs / "fem/seed1/pretrain-glas/encoder.safetensors").unlink()
    (runs / "fem/seed1/pretrain-glas/checkpoints").mkdir()
    (runs / "fem/seed1/pretrain-glas/checkpoints/last.ckpt").write_bytes(b"ckpt")
    # A segmentation run killed before its first checkpoint: replaced.
    (runs / "lsh/seed0/segment/metrics.json").unlink()
    (runs / "lsh/seed0/segment/config.yaml").write_text("seed: 0\n")

    fake = FakeHistodrl()
    _reproduce(data, tmp_path, fake)
    done = {c[c.index("--out") + 1]: c for c in fake.calls}
    assert set(done) == {str(runs / "fem/seed1/pretrain-glas"), str(runs / "lsh/seed0/segment")}
    assert done[str(runs / "fem/seed1/pretrain-glas")][-1] == "--resume"
    assert done[str(runs / "lsh/seed0/segment")][-1] == "--overwrite"


def test_action_of_a_job_depends_on_what_its_folder_holds(data, tmp_path):
    job = rp.plan(experiment("table4"), _settings(data, tmp_path, seeds=1))[2]  # lsh pretrain-glas
    assert rp.action(job) == "run"
    job.folder.mkdir(parents=True)
    assert rp.action(job) == "run"  # an empty folder is not a run yet
    (job.folder / "config.yaml").write_text("x: 1\n")
    assert rp.action(job) == "overwrite"
    (job.folder / "checkpoints").mkdir()
    (job.folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert rp.action(job) == "resume"
    (job.folder / "encoder.safetensors").write_bytes(b"")
    assert rp.action(job) == "reuse"


def test_a_failed_run_stops_with_one_line_naming_its_log(data, tmp_path):
    fake = FakeHistodrl(fail_on="gch-hard/seed0/segment")
    with pytest.raises(UserInputError) as info:
        _reproduce(data, tmp_path, fake)
    message = str(info.value)
    assert "\n" not in message
    assert "gch-hard/seed0/segment: histodrl segment failed with status 2" in message
    assert "the fake run failed" in message
    log = tmp_path / "table4" / "logs" / "gch-hard-seed0-segment.log"
    assert str(log) in message and "the fake run failed" in log.read_text()
    # Everything before the failure is kept, so the next call continues after it.
    assert (tmp_path / "table4/runs/gch-hard/seed0/pretrain-pcam/encoder.safetensors").is_file()


def test_dry_run_lists_the_runs_and_writes_nothing(data, tmp_path):
    fake = FakeHistodrl()
    status, lines = _reproduce(data, tmp_path / "out", fake, dry_run=True)
    assert status == 0 and fake.calls == []
    assert sum(": would run" in line for line in lines) == 36
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"names": ["table7"]}, "table7: unknown table or figure"),
        ({"seeds": 0}, "--seeds 0: expected an integer >= 1"),
        ({"scale": "huge"}, "--scale huge: expected one of smoke, paper"),
        ({"glas": None}, "--glas: table4 needs the GLaS folder"),
        ({"pcam": None, "names": ["fig4"]}, "--pcam: fig4 needs the PCam folder"),
        ({"glas": "/nonexistent/glas"}, "--glas /nonexistent/glas: expected the GLaS folder"),
        ({"imagenet": "/nonexistent.pth"}, "--imagenet /nonexistent.pth: file not found"),
        ({"num_workers": -1}, "--num-workers -1"),
    ],
)
def test_bad_input_is_one_user_error_before_anything_runs(data, tmp_path, kwargs, message):
    glas, pcam = data
    options = {"names": ["table4"], "glas": glas, "pcam": pcam, "seeds": 2, **kwargs}
    fake = FakeHistodrl()
    with pytest.raises(UserInputError, match=message.replace("(", r"\(")):
        rp.reproduce(
            options.pop("names"), out=tmp_path, runner=fake, echo=lambda *a, **k: None, **options
        )
    assert fake.calls == []


def test_imagenet_weights_need_the_paper_scale(data, tmp_path):
    weights = tmp_path / "vgg19_bn.pth"
    weights.write_bytes(b"")
    with pytest.raises(UserInputError, match="needs --scale paper"):
        _reproduce(data, tmp_path, FakeHistodrl(), names=["table1"], imagenet=str(weights))


def test_a_folder_made_at_another_scale_is_refused(data, tmp_path):
    _reproduce(data, tmp_path, FakeHistodrl(), seeds=1)
    plan_file = tmp_path / "table4" / "reproduce.json"
    saved = json.loads(plan_file.read_text())
    plan_file.write_text(json.dumps({**saved, "scale": "paper"}))
    fake = FakeHistodrl()
    with pytest.raises(UserInputError, match="used scale 'paper', not 'smoke'"):
        _reproduce(data, tmp_path, fake, seeds=1)
    assert fake.calls == []


def test_names_expand_all_and_drop_duplicates():
    assert rp.expand_names(["all"]) == ["table1", "table2", "table3", "table4", "fig4", "fig5"]
    assert rp.expand_names(["table4", "table1", "table4"]) == ["table4", "table1"]


def test_records_of_each_kind_of_run(data, tmp_path):
    settings = _settings(data, tmp_path, seeds=1)
    jobs = {}
    for job in rp.plan(experiment("fig4"), settings):
        jobs.setdefault(job.kind, job)
    fake = FakeHistodrl()
    for kind in ("pretrain", "classify", "probe"):
        assert fake(list(jobs[kind].argv)) == 0
    assert rp.job_records("fig4", jobs["pretrain"]) == []
    classify = rp.job_records("fig4", jobs["classify"], root=tmp_path / "fig4")
    assert [(r.part, r.metric) for r in classify] == [("1", "accuracy")]  # a None AUC is left out
    assert classify[0].run == "runs/drl/seed0/classify-f1"
    probe = rp.job_records("fig4", jobs["probe"])
    assert [(r.part, r.metric) for r in probe][:2] == [("conv2", "accuracy"), ("conv2", "auc")]
    segment = rp.plan(experiment("table1"), settings)[1]
    assert fake(list(segment.argv)) == 0
    records = rp.job_records("table1", segment)
    assert {(r.part, r.metric) for r in records} == {
        (p, m) for p in ("testA", "testB") for m in ("f1", "dice", "hausdorff")
    }
