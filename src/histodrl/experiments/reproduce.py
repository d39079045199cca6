"""``histodrl reproduce``: run every method x seed a table or figure needs, then report.

Layout of ``OUT/<name>/`` (``<name>`` is ``table1`` ... ``fig5``)::

    reproduce.json                         scale and data of this folder (checked on every call)
    runs/<variant>/seed<k>/pretrain-glas/  histodrl pretrain on GLaS (segmentation, Fig. 5)
    runs/<variant>/seed<k>/pretrain-pcam/  histodrl pretrain on PCam (classification, probes)
    runs/<variant>/seed<k>/segment/        histodrl segment
    runs/<variant>/seed<k>/classify-f<F>/  histodrl classify at label fraction F
    runs/<variant>/seed<k>/probe/          histodrl probe
    runs/<variant>/seed<k>/embed/          Fig. 5 descriptors (:mod:`histodrl.experiments.embedding`)
    logs/<variant>-seed<k>-<run>.log       everything a run printed
    runs.csv, report.md, figures/*.png     the results (:mod:`histodrl.experiments.report`)

A run is **finished** when its final artefact exists (pretraining: ``encoder.safetensors``;
every other run: ``metrics.json``) and is then reused, so an interrupted reproduction continues
where it stopped and a larger ``--seeds`` only adds seeds. An unfinished run folder is resumed
with ``--resume`` when it holds ``checkpoints/last.ckpt`` and replaced with ``--overwrite``
otherwise. Seed k drives the pretraining, the fine-tuning and the label subset of its runs.

Every run is an ordinary ``histodrl`` command, called in this process through
:func:`histodrl.cli.main`; each runs on one device (for multi-GPU pretraining run ``histodrl
pretrain --devices N --out OUT/<name>/runs/<variant>/seed<k>/pretrain-<data> ...`` by hand: the
reproduction then reuses it).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histodrl.errors import UserInputError
from histodrl.experiments.tables import (
    EXEMPLAR_CLASSES,
    EXPERIMENT_NAMES,
    PROBE_BLOCKS,
    SCALES,
    Experiment,
    Scale,
    Task,
    Variant,
    experiment,
    pretrain_options,
)
from histodrl.io import atomic_write_text

RUNS_DIR = "runs"
LOGS_DIR = "logs"
PLAN_FILE = "reproduce.json"
ENCODER_FILE = "encoder.safetensors"
METRICS_FILE = "metrics.json"

Runner = Callable[[list[str]], int]


def cli_runner(argv: list[str]) -> int:
    """Run one ``histodrl`` command in this process; returns its exit status."""
    from histodrl.cli import main

    return main(argv)


@dataclass(frozen=True)
class Settings:
    """What every run of a reproduction shares.

    Attributes:
        out: the ``--out`` folder (experiments write ``out/<name>/``).
        scale: the :class:`Scale`.
        seeds: number of seeds (seeds ``0 .. seeds-1``).
        glas: the GLaS folder, or ``None``.
        pcam: the PCam folder, or ``None``.
        imagenet: torchvision's ``vgg19_bn`` weight file, or ``None`` (no ImageNet arm).
        accelerator: ``auto``, ``cpu`` or ``gpu``.
        num_workers: DataLoader workers of every run (``None``: the scale's choice).
    """

    out: Path
    scale: Scale
    seeds: int
    glas: str | None = None
    pcam: str | None = None
    imagenet: str | None = None
    accelerator: str = "auto"
    num_workers: int | None = None

    def data(self, dataset: str) -> str:
        """``glas:DIR`` or ``pcam:DIR``."""
        path = self.glas if dataset == "glas" else self.pcam
        if path is None:
            raise ValueError(f"no {dataset} folder in the settings")
        return f"{dataset}:{path}"

    def workers(self) -> list[str]:
        n = self.num_workers if self.num_workers is not None else self.scale.num_workers
        return [] if n is None else ["--num-workers", str(n)]


@dataclass(frozen=True)
class Job:
    """One run of a reproduction.

    Attributes:
        variant: the arm's :class:`Variant`.
        seed: the seed.
        kind: ``pretrain``, ``segment``, ``classify``, ``probe`` or ``embed``.
        dataset: ``glas`` or ``pcam``.
        folder: the run folder.
        argv: the ``histodrl`` command line (without ``--resume`` / ``--overwrite``), or ``None``
            for an ``embed`` job.
        call: what an ``embed`` job runs, else ``None``.
        task: the downstream :class:`Task` (``None`` for pretraining).
        resumable: the command takes ``--resume``.
    """

    variant: Variant
    seed: int
    kind: str
    dataset: str
    folder: Path
    argv: tuple[str, ...] | None
    call: Callable[[], Any] | None = None
    task: Task | None = None
    resumable: bool = True

    @property
    def artefact(self) -> Path:
        """The file whose existence means the run is finished."""
        return self.folder / (ENCODER_FILE if self.kind == "pretrain" else METRICS_FILE)

    @property
    def finished(self) -> bool:
        return self.artefact.is_file()

    @property
    def log_name(self) -> str:
        return f"{self.variant.key}-seed{self.seed}-{self.folder.name}.log"

    def describe(self) -> str:
        """One line: what the run is."""
        what = {
            "pretrain": f"pretrain {self.variant.describe()} on {self.dataset}",
            "segment": "segment GLaS",
            "classify": f"classify PCam, label fraction {self.task.fraction:g}"
            if self.task
            else "",
            "probe": f"probe PCam blocks {','.join(PROBE_BLOCKS)}",
            "embed": "embed GLaS test crops and their deformations",
        }[self.kind]
        return f"{self.variant.key} seed {self.seed}: {what}"


def action(job: Job) -> str:
    """What running ``job`` means now: ``reuse``, ``resume``, ``overwrite`` or ``run``.

    ``reuse`` when the artefact exists; ``resume`` when the folder holds ``checkpoints/last.ckpt``
    and the command can resume; ``overwrite`` when the folder holds anything else; ``run`` when it is
    absent or empty.
    """
    if job.finished:
        return "reuse"
    if job.resumable and (job.folder / "checkpoints" / "last.ckpt").is_file():
        return "resume"
    if job.folder.is_dir() and any(job.folder.iterdir()):
        return "overwrite"
    return "run"


# ------------------------------------------------------------------------------------------------
# Planning: the jobs of an experiment
# ------------------------------------------------------------------------------------------------


def _exemplar_classes(settings: Settings, dataset: str, crop: int, seed: int) -> int:
    """The pretrain default (4000) or, on smaller data, one class per pretraining item."""
    from histodrl.data.sources import pretrain_dataset

    n = len(pretrain_dataset(settings.data(dataset), crop=crop, seed=seed))  # type: ignore[arg-type]
    return min(EXEMPLAR_CLASSES, n)


def _pretrain_job(
    settings: Settings, variant: Variant, seed: int, dataset: str, folder: Path
) -> Job:
    scale = settings.scale
    crop = scale.glas_crop if dataset == "glas" else scale.pcam_crop
    argv = [
        "pretrain",
        *pretrain_options(variant, dataset),
        *("--data", settings.data(dataset), "--out", str(folder), "--seed", str(seed)),
        *("--width", f"{scale.width:g}", "--crop", str(crop)),
        *scale.pretrain,
        *("--no-progress", "--accelerator", settings.accelerator, *settings.workers()),
    ]
    if variant.method == "exemplar" and not (folder / ENCODER_FILE).is_file():
        classes = _exemplar_classes(settings, dataset, crop, seed)
        argv += ["--exemplar-classes", str(classes)]
    return Job(variant, seed, "pretrain", dataset, folder, tuple(argv))


def _init(settings: Settings, variant: Variant, pretrain: Path | None) -> str:
    if variant.init == "random":
        return "random"
    if variant.init == "imagenet":
        return f"imagenet:{settings.imagenet}"
    return str(pretrain)


def _task_job(
    settings: Settings, variant: Variant, seed: int, task: Task, folder: Path, init: str
) -> Job:
    scale = settings.scale
    common = [
        "--init",
        init,
        "--out",
        str(folder),
        "--seed",
        str(seed),
        "--width",
        f"{scale.width:g}",
    ]
    runtime = ["--no-progress", "--accelerator", settings.accelerator, *settings.workers()]
    data = settings.data(task.dataset)
    if task.kind == "segment":
        argv = [
            *("segment", "--data", data, *common, "--crop", str(scale.glas_crop)),
            *("--label-fraction", f"{task.fraction:g}", *scale.segment, *runtime),
        ]
    elif task.kind == "classify":
        argv = [
            *("classify", "--data", data, *common, "--label-fraction", f"{task.fraction:g}"),
            *scale.classify,
            *runtime,
        ]
    elif task.kind == "probe":
        argv = [
            *("probe", "--data", data, *common, "--blocks", ",".join(PROBE_BLOCKS)),
            *scale.probe,
            *("--accelerator", settings.accelerator, *settings.workers()),
        ]
        return Job(variant, seed, "probe", "pcam", folder, tuple(argv), task=task, resumable=False)
    else:
        from functools import partial

        from histodrl.experiments.embedding import embed_run

        call = partial(
            embed_run,
            init,
            settings.glas,
            folder,
            count=scale.fig5_crops,
            seed=seed,
            accelerator=settings.accelerator,
        )
        return Job(variant, seed, "embed", "glas", folder, None, call, task, resumable=False)
    return Job(variant, seed, task.kind, task.dataset, folder, tuple(argv), task=task)


def plan(exp: Experiment, settings: Settings) -> list[Job]:
    """Every run of ``exp``, seed by seed (so that early seeds finish first), in dependency order.

    For each seed and arm: the pretraining run(s) the arm's tasks need (one per data set), then
    the tasks. Runs are not deduplicated across experiments: each table has its own folder.

    Raises:
        ValueError: two arms give the same run folder.
    """
    root = settings.out / exp.name / RUNS_DIR
    jobs: list[Job] = []
    seen: set[Path] = set()
    for seed in range(settings.seeds):
        for arm in exp.arms:
            base = root / arm.variant.key / f"seed{seed}"
            pretrain: dict[str, Path] = {}
            if arm.variant.init == "pretrain":
                for dataset in dict.fromkeys(t.dataset for t in arm.tasks):
                    folder = base / f"pretrain-{dataset}"
                    pretrain[dataset] = folder
                    jobs.append(_pretrain_job(settings, arm.variant, seed, dataset, folder))
            for task in arm.tasks:
                init = _init(settings, arm.variant, pretrain.get(task.dataset))
                jobs.append(_task_job(settings, arm.variant, seed, task, base / task.folder, init))
    for job in jobs:
        if job.folder in seen:
            raise ValueError(f"{job.folder}: two runs of {exp.name} share this folder")
        seen.add(job.folder)
    return jobs


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_job(job: Job, how: str, runner: Runner, log: Path) -> None:
    """Run ``job`` (``how`` from :func:`action`), its output appended to ``log``.

    Raises:
        UserInputError: the command failed (exit status != 0) or finished without its artefact;
            the message has the run's last output line and the log's path.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {how}: {job.describe()}\n")
        f.flush()
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            if job.argv is None:
                assert job.call is not None
                job.call()
                status = 0
            else:
                extra = {"resume": ["--resume"], "overwrite": ["--overwrite"]}.get(how, [])
                status = runner([*job.argv, *extra])
    if status != 0:
        raise UserInputError(
            f"{job.folder}: histodrl {job.kind} failed with status {status} "
            f"({_last_line(log)}); full output in {log}"
        )
    if not job.finished:
        raise UserInputError(
            f"{job.folder}: {job.kind} ended without {job.artefact.name}; see {log}"
        )


def run_jobs(
    jobs: Sequence[Job],
    logs: Path,
    runner: Runner | None = None,
    echo: Callable[..., None] = print,
    dry_run: bool = False,
) -> dict[str, int]:
    """Run (or reuse, resume, replace) every job in order, printing one line per job.

    Args:
        jobs: from :func:`plan`.
        logs: folder of the per-run logs.
        runner: runs a ``histodrl`` command line and returns its exit status (default:
            :func:`cli_runner`, looked up when called).
        echo: ``print`` or a replacement.
        dry_run: only print what would be done.

    Returns:
        How many jobs took each action (``reuse``, ``resume``, ``overwrite``, ``run``).
    """
    runner = runner or cli_runner
    counts = {"reuse": 0, "resume": 0, "overwrite": 0, "run": 0}
    width = len(str(len(jobs)))
    for i, job in enumerate(jobs, 1):
        how = action(job)
        counts[how] += 1
        head = f"[{i:>{width}}/{len(jobs)}] {job.describe()}"
        if how == "reuse":
            echo(f"{head}: reused", flush=True)
            continue
        verb = {"run": "run", "resume": "resume", "overwrite": "rerun (unfinished folder replaced)"}
        if dry_run:
            echo(f"{head}: would {verb[how]}", flush=True)
            continue
        echo(f"{head}: {verb[how]} ...", end="", flush=True)
        start = time.monotonic()
        try:
            run_job(job, how, runner, logs / job.log_name)
        except BaseException:
            echo(" failed", flush=True)
            raise
        echo(f" done in {time.monotonic() - start:.1f} s", flush=True)
    return counts


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One value of one finished run (a row of ``runs.csv``).

    ``part`` is ``testA``/``testB`` (segment), the label fraction (classify), the block (probe) or
    empty (embed). Segmentation values are the GLaS pooled (challenge) scores; accuracies are
    fractions (reports show percent).
    """

    experiment: str
    variant: str
    label: str
    seed: int
    task: str
    part: str
    metric: str
    value: float
    run: str


def job_records(experiment_name: str, job: Job, root: Path | None = None) -> list[Record]:
    """The values a finished downstream job wrote in its ``metrics.json`` (none for pretraining).

    ``Record.run`` is the run folder relative to ``root`` (the experiment's folder) when given.
    """
    if job.kind == "pretrain" or not job.finished:
        return []
    metrics = json.loads(job.artefact.read_text())
    rows: list[tuple[str, str, Any]] = []
    if job.kind == "segment":
        for part in ("testA", "testB"):
            if part in metrics:
                rows += [(part, m, metrics[part]["pooled"][m]) for m in ("f1", "dice", "hausdorff")]
    elif job.kind == "classify":
        part = f"{metrics['label_fraction']:g}"
        rows += [(part, "accuracy", metrics["test_accuracy"]), (part, "auc", metrics["test_auc"])]
    elif job.kind == "probe":
        for block in metrics["blocks"]:
            rows += [(block["block"], "accuracy", block["test_accuracy"])]
            rows += [(block["block"], "auc", block["test_auc"])]
    else:
        names = ("pair_retrieval_accuracy", "positive_cosine", "negative_cosine")
        rows += [("", m, metrics[m]) for m in names]
    v = job.variant
    run = str(job.folder.relative_to(root) if root is not None else job.folder)
    return [
        Record(experiment_name, v.key, v.label, job.seed, job.kind, part, m, float(x), run)
        for part, m, x in rows
        if x is not None
    ]


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


def _folder_option(value: str | None, kind: str) -> str | None:
    """``DIR`` or ``KIND:DIR`` -> ``DIR`` (checked to be a folder)."""
    if value is None:
        return None
    path = value.removeprefix(f"{kind}:")
    if not Path(path).is_dir():
        name = {"glas": "GLaS", "pcam": "PCam"}[kind]
        raise UserInputError(f"--{kind} {value}: expected the {name} folder (not found)")
    return str(Path(path).resolve())


def _check_data(exp: Experiment, settings: Settings) -> dict[str, str]:
    """One line per data set the experiment needs, after checking that it can be read.

    Raises:
        UserInputError: a missing ``--glas``/``--pcam`` or unreadable data (names the file).
    """
    described: dict[str, str] = {}
    if "glas" in exp.datasets:
        if settings.glas is None:
            raise UserInputError(f"--glas: {exp.name} needs the GLaS folder (--glas DIR)")
        from histodrl.data.glas import find_glas_records

        records = find_glas_records(settings.glas, ("train",))
        records += find_glas_records(settings.glas, ("testA", "testB"))
        counts = [f"{sum(r.part == p for r in records)} {p}" for p in ("train", "testA", "testB")]
        described["glas"] = f"GLaS `{settings.glas}` ({', '.join(counts)} images)"
    if "pcam" in exp.datasets:
        if settings.pcam is None:
            raise UserInputError(f"--pcam: {exp.name} needs the PCam folder (--pcam DIR)")
        from histodrl.downstream.classify import pcam_splits

        splits = pcam_splits(settings.data("pcam"))
        sizes = ", ".join(f"{len(d)} {name}" for name, d in splits.items())
        described["pcam"] = f"PCam `{settings.pcam}` ({sizes} patches)"
    return described


def _check_plan_file(folder: Path, settings: Settings, exp: Experiment) -> None:
    """Refuse a folder made with another scale or other data; record this call's otherwise."""
    current = {"scale": settings.scale.name}
    for dataset in exp.datasets:
        current[dataset] = settings.glas if dataset == "glas" else settings.pcam
    path = folder / PLAN_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(saved, dict):
            raise UserInputError(f"{path}: expected a JSON object (written by histodrl reproduce)")
        for key, value in current.items():
            if key in saved and saved[key] != value:
                raise UserInputError(
                    f"{path}: this reproduction used {key} {saved[key]!r}, not {value!r} "
                    f"(use another --out, or delete {folder} to start again)"
                )
    atomic_write_text(path, json.dumps({"experiment": exp.name, **current}, indent=2) + "\n")


def expand_names(names: Sequence[str]) -> list[str]:
    """Table and figure names with ``all`` expanded, duplicates dropped, each checked.

    Raises:
        UserInputError: an unknown name.
    """
    out: list[str] = []
    for name in names:
        for n in EXPERIMENT_NAMES if name == "all" else (name,):
            if n not in EXPERIMENT_NAMES:
                raise UserInputError(
                    f"{n}: unknown table or figure (expected one of "
                    f"{', '.join(EXPERIMENT_NAMES)}, or all)"
                )
            if n not in out:
                out.append(n)
    return out


def reproduce(
    names: Sequence[str],
    *,
    out: str | Path,
    glas: str | None = None,
    pcam: str | None = None,
    imagenet: str | None = None,
    seeds: int = 5,
    scale: str = "smoke",
    accelerator: str = "auto",
    num_workers: int | None = None,
    dry_run: bool = False,
    runner: Runner | None = None,
    echo: Callable[..., None] = print,
) -> int:
    """Reproduce tables and figures into ``out/<name>/``; returns the exit status (0).

    Every argument is checked before anything runs. See the module docstring for the layout and
    the reuse rules, :mod:`histodrl.experiments.tables` for what each experiment runs and
    :mod:`histodrl.experiments.report` for what it writes.

    Args:
        names: ``table1`` ... ``fig5`` or ``all``.
        out: the output folder.
        glas, pcam: the data folders (``DIR`` or ``glas:DIR`` / ``pcam:DIR``).
        imagenet: torchvision's ``vgg19_bn`` weights, for the ImageNet arm (``--scale paper``).
        seeds: seeds 0 .. seeds-1 per arm (>= 1).
        scale: ``smoke`` or ``paper``.
        accelerator: of every run.
        num_workers: DataLoader workers of every run (``None``: 0 at smoke scale, each command's
            default at paper scale).
        dry_run: print the plan (what would run, what is reused) and stop.
        runner: runs one ``histodrl`` command line (default: :func:`cli_runner`).
        echo: prints a line.

    Raises:
        UserInputError: an unknown name or scale, ``seeds < 1``, missing or unreadable data, an
            ImageNet file that does not exist or comes with ``--scale smoke``, an output folder
            made with another scale or data, or a failed run (with its log's path).
    """
    from histodrl.experiments.report import write_report

    if not isinstance(seeds, int) or seeds < 1:
        raise UserInputError(f"--seeds {seeds}: expected an integer >= 1")
    if scale not in SCALES:
        raise UserInputError(f"--scale {scale}: expected one of {', '.join(SCALES)}")
    if num_workers is not None and num_workers < 0:
        raise UserInputError(f"--num-workers {num_workers}: expected an integer >= 0")
    chosen = expand_names(names)
    if imagenet is not None:
        if not Path(imagenet).is_file():
            raise UserInputError(
                f"--imagenet {imagenet}: file not found (torchvision vgg19_bn .pth)"
            )
        if scale != "paper":
            raise UserInputError(
                f"--imagenet {imagenet}: needs --scale paper (the smoke trunk is 1/8 wide)"
            )
        imagenet = str(Path(imagenet).resolve())
    settings = Settings(
        # Absolute, so that run folders and --init paths do not depend on the working directory.
        out=Path(out).resolve(),
        scale=SCALES[scale],
        seeds=seeds,
        glas=_folder_option(glas, "glas"),
        pcam=_folder_option(pcam, "pcam"),
        imagenet=imagenet,
        accelerator=accelerator,
        num_workers=num_workers,
    )
    experiments = [experiment(name, imagenet=imagenet is not None) for name in chosen]
    data = {}
    for exp in experiments:
        data[exp.name] = _check_data(exp, settings)

    for exp in experiments:
        folder = settings.out / exp.name
        jobs = plan(exp, settings)
        echo(
            f"histodrl: {exp.name}: {len(jobs)} runs ({seeds} seed(s), {scale} scale) in {folder}; "
            f"each run's output goes to {folder / LOGS_DIR}"
        )
        if not dry_run:
            _check_plan_file(folder, settings, exp)
        counts = run_jobs(jobs, folder / LOGS_DIR, runner=runner, echo=echo, dry_run=dry_run)
        if dry_run:
            continue
        records = [r for job in jobs for r in job_records(exp.name, job, folder)]
        report, summary = write_report(exp, settings, jobs, records, data[exp.name])
        echo(summary)
        echo(
            f"histodrl: {exp.name}: {counts['reuse']} reused, "
            f"{len(jobs) - counts['reuse']} run; wrote {report}"
        )
    return 0
