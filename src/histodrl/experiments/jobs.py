"""What a reproduction is made of: its :class:`Settings`, its :class:`Job`\\ s (one run each) and the
:class:`Record`\\ s of their values.

:mod:`histodrl.experiments.reproduce` plans and runs the jobs; :mod:`histodrl.experiments.report`
writes what their records say. Both import this module and not each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histodrl.commands.classify import ClassifyOptions
from histodrl.experiments.tables import PROBE_BLOCKS, Scale, Task, Variant
from histodrl.runs.layout import ENCODER_FILE, METRICS_FILE, last_checkpoint, read_run_config


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
        preset: ``pretrain --preset`` of every pretraining run (``histodrl`` or ``paper``).
    """

    out: Path
    scale: Scale
    seeds: int
    glas: str | None = None
    pcam: str | None = None
    imagenet: str | None = None
    accelerator: str = "auto"
    num_workers: int | None = None
    preset: str = "histodrl"

    def data(self, dataset: str) -> str:
        """``glas:DIR`` or ``pcam:DIR``."""
        path = self.glas if dataset == "glas" else self.pcam
        if path is None:
            raise ValueError(f"no {dataset} folder in the settings")
        return f"{dataset}:{path}"

    def workers(self) -> dict[str, int]:
        """``{"num_workers": N}``, or nothing when each command's default is used."""
        n = self.num_workers if self.num_workers is not None else self.scale.num_workers
        return {} if n is None else {"num_workers": n}


@dataclass(frozen=True)
class Job:
    """One run of a reproduction.

    Attributes:
        variant: the arm's :class:`Variant`.
        seed: the seed.
        kind: ``pretrain``, ``segment``, ``classify``, ``probe`` or ``embed``; for all but
            ``embed`` the command whose run function runs it.
        dataset: ``glas`` or ``pcam``.
        folder: the run folder.
        options: the command's options object (``PretrainOptions``, ``SegmentOptions``, ...), or
            ``None`` for an ``embed`` job.
        given: the options the plan sets; the others are the command's defaults (and, for a
            resumed run, come from its ``config.yaml``, as for ``histodrl ... --resume``).
        call: what an ``embed`` job runs, else ``None``.
        task: the downstream :class:`Task` (``None`` for pretraining).
        resumable: the command takes ``--resume``.
    """

    variant: Variant
    seed: int
    kind: str
    dataset: str
    folder: Path
    options: Any = None
    given: frozenset[str] = frozenset()
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
    if job.resumable and last_checkpoint(job.folder).is_file():
        return "resume"
    if job.folder.is_dir() and any(job.folder.iterdir()):
        return "overwrite"
    return "run"


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

    A classification run's part is its label fraction, read from its ``config.yaml`` through
    :class:`~histodrl.commands.classify.ClassifyOptions`. ``Record.run`` is the run folder relative
    to ``root`` (the experiment's folder) when given.
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
        options, _ = read_run_config(job.folder, ClassifyOptions)
        part = f"{options.label_fraction:g}"
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
