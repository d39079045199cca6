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

Every run is an ordinary ``histodrl`` run: the plan builds the command's options object
(:class:`~histodrl.commands.pretrain.PretrainOptions`, ...) and :func:`run_command` calls the
command's run function in this process (:func:`histodrl.pretext.task.run_pretrain`, ...); each runs
on one device (for multi-GPU pretraining run ``histodrl pretrain --devices N --out
OUT/<name>/runs/<variant>/seed<k>/pretrain-<data> ...`` by hand: the reproduction then reuses it).
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from histodrl.commands.classify import ClassifyOptions, ProbeOptions
from histodrl.commands.options import with_values
from histodrl.commands.pretrain import PretrainOptions
from histodrl.commands.segment import SegmentOptions
from histodrl.errors import UserInputError
from histodrl.experiments.jobs import Job, Record, Settings, action, job_records
from histodrl.experiments.report import write_report
from histodrl.experiments.tables import (
    EXEMPLAR_CLASSES,
    EXPERIMENT_NAMES,
    PROBE_BLOCKS,
    SCALES,
    Experiment,
    Task,
    Variant,
    experiment,
    pretrain_values,
)
from histodrl.io import atomic_write_text
from histodrl.pretext.options import PRESETS
from histodrl.runs.layout import ENCODER_FILE, read_run_config
from histodrl.runs.lifecycle import Launch

__all__ = [
    "Job",
    "Record",
    "Runner",
    "Settings",
    "action",
    "expand_names",
    "job_records",
    "plan",
    "reproduce",
    "run_command",
    "run_job",
    "run_jobs",
]

RUNS_DIR = "runs"
LOGS_DIR = "logs"
PLAN_FILE = "reproduce.json"

#: Runs one job: ``runner(command, options, launch)``, ``command`` one of ``pretrain``,
#: ``segment``, ``classify``, ``probe`` and ``options`` that command's options object.
Runner = Callable[[str, Any, Launch], Any]

OPTIONS_CLASSES: dict[str, type] = {
    "pretrain": PretrainOptions,
    "segment": SegmentOptions,
    "classify": ClassifyOptions,
    "probe": ProbeOptions,
}


def run_command(command: str, options: Any, launch: Launch) -> Any:
    """Run one command's run function in this process (what ``histodrl COMMAND`` runs)."""
    if command == "pretrain":
        from histodrl.pretext.task import run_pretrain

        return run_pretrain(options, launch)
    if command == "segment":
        from histodrl.downstream.segment import run_segment

        return run_segment(options, launch)
    if command == "classify":
        from histodrl.downstream.classify import run_classify

        return run_classify(options, launch)
    if command == "probe":
        from histodrl.downstream.probe import run_probe

        return run_probe(options, launch)
    raise ValueError(f"{command}: not a command the reproduction runs")


# ------------------------------------------------------------------------------------------------
# Planning: the jobs of an experiment
# ------------------------------------------------------------------------------------------------


def _command_job(
    variant: Variant,
    seed: int,
    kind: str,
    dataset: str,
    folder: Path,
    values: Mapping[str, Any],
    task: Task | None = None,
) -> Job:
    """A job that runs command ``kind`` with ``values`` (the rest: the command's defaults)."""
    options = OPTIONS_CLASSES[kind](**values)
    return Job(
        variant,
        seed,
        kind,
        dataset,
        folder,
        options=options,
        given=frozenset(values),
        task=task,
        resumable=kind != "probe",
    )


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
    values: dict[str, Any] = {
        **pretrain_values(variant, dataset, settings.preset),
        **{"data": settings.data(dataset), "out": str(folder), "seed": seed},
        **{"width": scale.width, "crop": crop},
        **dict(scale.pretrain),
        **{"no_progress": True, "accelerator": settings.accelerator, **settings.workers()},
    }
    if variant.method == "exemplar" and not (folder / ENCODER_FILE).is_file():
        values["exemplar_classes"] = _exemplar_classes(settings, dataset, crop, seed)
    return _command_job(variant, seed, "pretrain", dataset, folder, values)


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
    if task.kind == "embed":
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
        return Job(variant, seed, "embed", "glas", folder, call=call, task=task, resumable=False)
    values: dict[str, Any] = {
        "data": settings.data(task.dataset),
        **{"init": init, "out": str(folder), "seed": seed, "width": scale.width},
    }
    runtime: dict[str, Any] = {"accelerator": settings.accelerator, **settings.workers()}
    if task.kind == "segment":
        values |= {"crop": scale.glas_crop, "label_fraction": task.fraction}
        values |= {**dict(scale.segment), "no_progress": True, **runtime}
    elif task.kind == "classify":
        values |= {"label_fraction": task.fraction, **dict(scale.classify)}
        values |= {"no_progress": True, **runtime}
    else:
        values |= {"blocks": ",".join(PROBE_BLOCKS), **dict(scale.probe), **runtime}
    return _command_job(variant, seed, task.kind, task.dataset, folder, values, task)


def plan(exp: Experiment, settings: Settings) -> list[Job]:
    """Every run of ``exp``, seed by seed (so that early seeds finish first), in dependency order.

    For each seed and arm: the pretraining run(s) the arm's tasks need (one per data set), then
    the tasks. Runs are not deduplicated across experiments: each table has its own folder.

    Raises:
        ValueError: two arms give the same run folder.
        UserInputError: a setting no run accepts (e.g. an unknown ``--accelerator``).
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


def resume_options(job: Job) -> Any:
    """The options a resumed run continues with: its ``config.yaml``'s, with the options the plan
    sets taken from the plan (what ``histodrl COMMAND --resume`` does with typed options).

    Raises:
        UserInputError: the folder has no readable ``config.yaml``.
    """
    saved, _ = read_run_config(job.folder, type(job.options))
    return with_values(saved, **{name: getattr(job.options, name) for name in job.given})


def _one_line(exc: BaseException) -> str:
    """The message of an error in one line (a DataLoader worker re-raises with a traceback)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    prefix = f"{UserInputError.__module__}.{UserInputError.__name__}: "
    return lines[-1].removeprefix(prefix)


def run_job(job: Job, how: str, runner: Runner, log: Path) -> None:
    """Run ``job`` (``how`` from :func:`action`), its output appended to ``log``.

    Raises:
        UserInputError: the run raised one, or finished without its artefact; the message (one
            line) names the run folder, the run's own message and the log's path, and the run's
            error is its cause (``--debug`` shows its traceback).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {how}: {job.describe()}\n")
        f.flush()
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                if job.options is None:
                    assert job.call is not None
                    job.call()
                else:
                    resume = how == "resume"
                    options = resume_options(job) if resume else job.options
                    runner(job.kind, options, Launch(resume=resume, overwrite=how == "overwrite"))
        except UserInputError as exc:
            message = _one_line(exc)
            f.write(f"histodrl: error: {message}\n")
            raise UserInputError(
                f"{job.folder}: {job.kind} failed: {message}; full output in {log}"
            ) from exc
        except Exception:
            f.write(traceback.format_exc())
            raise
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
        runner: runs one command's options (default: :func:`run_command`, looked up when
            called).
        echo: ``print`` or a replacement.
        dry_run: only print what would be done.

    Returns:
        How many jobs took each action (``reuse``, ``resume``, ``overwrite``, ``run``).
    """
    runner = runner or run_command
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
    current = {"scale": settings.scale.name, "preset": settings.preset}
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
    preset: str = "histodrl",
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
        preset: ``pretrain --preset`` of every pretraining run: ``histodrl`` (λ = 0.5, the
            pre-activation global vector) or ``paper`` (the paper's λ = 0.01 on GLaS, 0.5 on
            PCam, post-ReLU); the report names it.
        accelerator: of every run.
        num_workers: DataLoader workers of every run (``None``: 0 at smoke scale, each command's
            default at paper scale).
        dry_run: print the plan (what would run, what is reused) and stop.
        runner: runs one job's command with its options (default: :func:`run_command`).
        echo: prints a line.

    Raises:
        UserInputError: an unknown name or scale, ``seeds < 1``, missing or unreadable data, an
            ImageNet file that does not exist or comes with ``--scale smoke``, an unknown preset,
            an output folder made with another scale, preset or data, or a failed run (with its log's path).
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise UserInputError(f"--seeds {seeds}: expected an integer >= 1")
    if scale not in SCALES:
        raise UserInputError(f"--scale {scale}: expected one of {', '.join(SCALES)}")
    if num_workers is not None and num_workers < 0:
        raise UserInputError(f"--num-workers {num_workers}: expected an integer >= 0")
    if preset not in PRESETS:
        raise UserInputError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
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
        preset=preset,
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
