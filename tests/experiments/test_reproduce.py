"""The reproduction harness: run layout, reuse and resumption, failures, bad input, records.

The run functions are replaced by a fake that writes each command's config and final artefact, so
these tests check the harness alone (tests/test_cli_reproduce.py runs the real commands).
"""

import json
from pathlib import Path

import pytest

from histodrl.commands.classify import ClassifyOptions, ProbeOptions
from histodrl.commands.options import with_values
from histodrl.commands.pretrain import PretrainOptions
from histodrl.commands.segment import SegmentOptions
from histodrl.errors import UserInputError
from histodrl.experiments import reproduce as rp
from histodrl.experiments.tables import SCALES, experiment
from histodrl.runs.layout import write_config
from histodrl.runs.lifecycle import Launch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from histodrl.data.synth_glas import make_glas
    from histodrl.data.synth_pcam import make_pcam

    root = tmp_path_factory.mktemp("data")
    glas = make_glas(root / "glas", n_train=3, n_test_a=1, n_test_b=1, size=(96, 80), seed=0)
    pcam = make_pcam(root / "pcam", n_train=32, n_valid=16, n_test=16, seed=0)
    return str(glas), str(pcam)


class FakeHistodrl:
    """Writes what each command's run would write (``config.yaml`` and its final artefact);
    remembers every call as ``(command, options, launch)``."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, object, Launch]] = []
        self.fail_on = fail_on

    def __call__(self, command: str, options, launch: Launch) -> int:
        self.calls.append((command, options, launch))
        out = Path(options.out)
        if self.fail_on and self.fail_on in str(out):
            print("histodrl: a line the fake run printed")
            raise UserInputError("the fake run failed")
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, options)
        value = (sum(map(ord, str(out))) % 97) / 100  # deterministic, differs between runs
        if command == "pretrain":
            (out / "encoder.safetensors").write_bytes(b"weights")
            return 0
        if command == "segment":
            scores = {"f1": value, "dice": value / 2, "hausdorff": 50 + value}
            metrics = {part: {"pooled": scores, "mean": scores} for part in ("testA", "testB")}
        elif command == "classify":
            metrics = {
                "label_fraction": options.label_fraction,
                "test_accuracy": value,
                "test_auc": None,
            }
        else:
            blocks = [
                {"block": b, "test_accuracy": value, "test_auc": 0.5}
                for b in ("conv2", "conv3", "conv4")
            ]
            metrics = {"blocks": blocks}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return 0

    def outs(self) -> list[str]:
        return [options.out for _, options, _ in self.calls]


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
    segment = by_folder["lsh/seed1/segment"].options
    assert isinstance(segment, SegmentOptions)
    assert segment.init == str(tmp_path / "table4/runs/lsh/seed1/pretrain-glas")
    classify = by_folder["lsh/seed1/classify-f1"].options
    assert isinstance(classify, ClassifyOptions)
    assert classify.init.endswith("lsh/seed1/pretrain-pcam")
    assert by_folder["baseline/seed1/segment"].options.init == "random"
    pretrain = by_folder["lsh/seed1/pretrain-pcam"]
    assert isinstance(pretrain.options, PretrainOptions)
    assert (pretrain.options.gch, pretrain.options.lambda_) == ("none", 0.5)
    assert (pretrain.options.seed, pretrain.options.crop) == (1, 32)
    assert pretrain.options.no_fem and pretrain.options.max_steps == 4
    glas_pretrain = by_folder["lsh/seed1/pretrain-glas"]
    # The preset (default histodrl) decides lambda: 0.5 on GLaS too, set by the plan.
    assert glas_pretrain.options.lambda_ == 0.5 and glas_pretrain.options.preset == "histodrl"
    assert {"data", "out", "seed", "width", "crop", "gch", "no_fem"} <= pretrain.given


def test_exemplar_classes_are_capped_by_the_pretraining_items(data, tmp_path):
    from histodrl.data.sources import pretrain_dataset

    jobs = rp.plan(experiment("table1"), _settings(data, tmp_path, seeds=1))
    exemplar = next(j for j in jobs if j.variant.key == "exemplar" and j.kind == "pretrain")
    n = len(pretrain_dataset(f"glas:{data[0]}", crop=64, seed=0))
    assert n < 4000
    assert exemplar.options.exemplar_classes == n


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
    assert all(options.seed == 1 for _, options, _ in fake.calls)


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
    done = {options.out: (command, launch) for command, options, launch in fake.calls}
    assert set(done) == {str(runs / "fem/seed1/pretrain-glas"), str(runs / "lsh/seed0/segment")}
    assert done[str(runs / "fem/seed1/pretrain-glas")] == ("pretrain", Launch(resume=True))
    assert done[str(runs / "lsh/seed0/segment")] == ("segment", Launch(overwrite=True))


def test_a_resumed_run_keeps_its_config_and_takes_what_the_plan_sets(data, tmp_path):
    """As ``histodrl pretrain --resume`` with typed options: the run's config.yaml supplies every
    option the plan does not set (here a data-dependent default the run resolved)."""
    job = rp.plan(experiment("table4"), _settings(data, tmp_path, seeds=1))[2]  # lsh pretrain-glas
    assert job.options.epochs is None and "epochs" not in job.given
    job.folder.mkdir(parents=True)
    write_config(job.folder, with_values(job.options, epochs=200.0, num_workers=3))
    resumed = rp.resume_options(job)
    assert resumed.epochs == 200.0  # from the run
    assert resumed.num_workers == 0 and resumed.gch == "none"  # from the plan
    assert with_values(resumed, epochs=None) == job.options


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
    assert "gch-hard/seed0/segment: segment failed: the fake run failed;" in message
    assert message.count("the fake run failed") == 1
    log = tmp_path / "table4" / "logs" / "gch-hard-seed0-segment.log"
    assert str(log) in message
    assert "a line the fake run printed" in log.read_text()
    assert "histodrl: error: the fake run failed" in log.read_text()
    # The run's own error is the cause: ``--debug`` shows its traceback.
    assert isinstance(info.value.__cause__, UserInputError)
    assert str(info.value.__cause__) == "the fake run failed"
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
        ({"preset": "literal"}, "--preset literal: expected one of histodrl, paper"),
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


def test_the_paper_preset_runs_the_papers_reading_and_the_report_says_so(data, tmp_path):
    fake = FakeHistodrl()
    status, _ = _reproduce(data, tmp_path, fake, seeds=1, preset="paper")
    assert status == 0
    pretrains = {Path(o.out).name: o for c, o, _ in fake.calls if c == "pretrain"}
    glas, pcam = pretrains["pretrain-glas"], pretrains["pretrain-pcam"]
    assert (glas.preset, glas.lambda_, glas.global_head) == ("paper", 0.01, "relu")
    assert (pcam.lambda_, pcam.global_head) == (0.5, "relu")
    report = (tmp_path / "table4" / "report.md").read_text()
    assert "`--preset paper`" in report and "literal reading" in report
    # The folder now belongs to the paper preset: the default preset is refused.
    with pytest.raises(UserInputError, match="used preset 'paper', not 'histodrl'"):
        _reproduce(data, tmp_path, FakeHistodrl(), seeds=1)


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
        assert fake(kind, jobs[kind].options, Launch()) == 0
    assert isinstance(jobs["probe"].options, ProbeOptions) and not jobs["probe"].resumable
    assert rp.job_records("fig4", jobs["pretrain"]) == []
    classify = rp.job_records("fig4", jobs["classify"], root=tmp_path / "fig4")
    assert [(r.part, r.metric) for r in classify] == [("1", "accuracy")]  # a None AUC is left out
    assert classify[0].run == "runs/drl/seed0/classify-f1"
    probe = rp.job_records("fig4", jobs["probe"])
    assert [(r.part, r.metric) for r in probe][:2] == [("conv2", "accuracy"), ("conv2", "auc")]
    segment = rp.plan(experiment("table1"), settings)[1]
    assert fake("segment", segment.options, Launch()) == 0
    records = rp.job_records("table1", segment)
    assert {(r.part, r.metric) for r in records} == {
        (p, m) for p in ("testA", "testB") for m in ("f1", "dice", "hausdorff")
    }


def test_the_default_runner_calls_each_commands_run_function(data, tmp_path, monkeypatch):
    import histodrl.downstream.classify
    import histodrl.downstream.probe
    import histodrl.downstream.segment
    import histodrl.pretext.task

    calls = []
    for module, name in (
        (histodrl.pretext.task, "run_pretrain"),
        (histodrl.downstream.segment, "run_segment"),
        (histodrl.downstream.classify, "run_classify"),
        (histodrl.downstream.probe, "run_probe"),
    ):
        monkeypatch.setattr(
            module, name, lambda options, launch, name=name: calls.append((name, options, launch))
        )
    jobs = {}
    for job in rp.plan(experiment("fig4"), _settings(data, tmp_path, seeds=1)):
        jobs.setdefault(job.kind, job)
    jobs["segment"] = rp.plan(experiment("table1"), _settings(data, tmp_path, seeds=1))[1]
    launch = Launch(overwrite=True)
    for kind in ("pretrain", "segment", "classify", "probe"):
        rp.run_command(kind, jobs[kind].options, launch)
    assert calls == [
        (f"run_{kind}", jobs[kind].options, launch)
        for kind in ("pretrain", "segment", "classify", "probe")
    ]
    with pytest.raises(ValueError, match="embed: not a command"):
        rp.run_command("embed", None, launch)
