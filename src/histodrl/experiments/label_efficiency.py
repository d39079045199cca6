"""``histodrl label-efficiency``: pretraining methods against random init at several label budgets.

For each seed k and method m: pretrain m on the source's images without labels (``random``: no
pretraining), fine-tune at each label budget (a count of labelled training images / tiles, or a
fraction of them) and score on the source's test split(s); then the report compares the methods,
budget by budget, over the seeds.

Layout of ``OUT/``::

    label_efficiency.json                    data, split and scale of this folder (checked)
    pretrain-data/                           links to the images pretraining may see, when the
                                             source cannot hold out the test split by itself
    runs/<method>/seed<k>/pretrain/          histodrl pretrain --method <method> --seed k
    runs/<method>/seed<k>/segment-n<N>/      histodrl segment --label-count N --seed k (or -f<F>:
    runs/<method>/seed<k>/classify-n<N>/     --label-fraction F; classify for class data)
    logs/<method>-seed<k>-<run>.log          everything a run printed
    runs.csv, report.md, figures/*.png       the results

**Pairing.** Seed k gives every method the same label subset (the subset depends only on the
training split, the budget and the seed, never on ``--init``) and the same fine-tuning seed, so the
runs of two methods at seed k differ only in the encoder's initial weights; the report gives the
paired t-test over seeds beside the Welch test.

**Test images are never pretrained on.** ``glas:`` pretraining reads the train part only and
``pcam:`` the train split; ``masks:`` and ``monuseg:`` pretraining holds out the test split of the
default split seed and test fraction, which is checked image by image against the test split the
fine-tuning runs score on: when they differ (another ``--split-seed`` or ``--test-fraction``),
``pretrain-data/`` is the source laid out with ``train/`` and ``test/`` folders (links), so that
pretraining holds out exactly the scored images. A ``folder:`` source's pretraining data is a
folder of links to its train and validation images. ``--pretrain-data`` replaces all of this; it
is refused when it visibly holds a test image (glas, masks, monuseg, folder sources).

**Reuse.** As ``histodrl reproduce`` (:mod:`histodrl.experiments.reproduce`): a run folder with
its final artefact (``encoder.safetensors`` for pretraining, ``metrics.json`` otherwise) is
reused, an interrupted one is resumed from its last checkpoint, so a second call with more seeds
or budgets runs only what is new.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histodrl.commands.classify import ClassifyOptions
from histodrl.commands.label_efficiency import RANDOM, Budget, LabelEfficiencyOptions
from histodrl.commands.pretrain import PretrainOptions
from histodrl.commands.segment import SegmentOptions
from histodrl.errors import UserInputError
from histodrl.experiments.jobs import Job, action
from histodrl.experiments.reproduce import Runner, run_jobs
from histodrl.experiments.stats import (
    PairedTest,
    Summary,
    WelchTest,
    format_p,
    format_summary,
    paired_t_test,
    summarize,
    welch_t_test,
)
from histodrl.experiments.tables import EXEMPLAR_CLASSES, Variant, pretrain_values
from histodrl.io import atomic_write_text
from histodrl.pretext.options import PRESET_TEXT
from histodrl.runs.layout import ENCODER_FILE, FIGURES_DIR, METRICS_FILE, REPORT_FILE

RUNS_DIR = "runs"
LOGS_DIR = "logs"
SETTINGS_FILE = "label_efficiency.json"
VIEW_DIR = "pretrain-data"
VIEW_LIST = "SOURCES.txt"
CSV_FILE = "runs.csv"

#: Row labels of the methods in reports.
METHOD_LABELS = {
    "drl": "DRL",
    "dim": "DIM",
    "rotation": "Rotation",
    "colorization": "Colorization",
    "inpainting": "Inpainting",
    "exemplar": "Exemplar",
    "vae": "VAE",
    "genesis": "Genesis",
    RANDOM: "random init",
}

#: (key, name in reports, decimals) of the scores of each task; segmentation scores are pooled
#: over the images of a test part (the GLaS challenge's definition).
SEGMENT_METRICS: tuple[tuple[str, str, int], ...] = (
    ("f1", "Object F1", 3),
    ("dice", "Object Dice", 3),
    ("pixel_dice", "Pixel Dice", 3),
)
CLASSIFY_METRICS: tuple[tuple[str, str, int], ...] = (
    ("accuracy", "Accuracy", 3),
    ("balanced_accuracy", "Balanced accuracy", 3),
    ("auc", "AUC", 3),
)
_CLASSIFY_KEYS = {
    "accuracy": "test_accuracy",
    "balanced_accuracy": "test_balanced_accuracy",
    "auc": "test_auc",
}


# ------------------------------------------------------------------------------------------------
# Scales
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyScale:
    """How big every run of the study is.

    Attributes:
        name: ``smoke``, ``cpu`` or ``paper``.
        width: channel multiplier of the trunk (``None``: the commands' default, 1).
        segment_crop: crop of segmentation pretraining and fine-tuning (``None``: 256).
        folder_crop: tile side of ``folder:`` classification and its pretraining crop
            (``None``: 224, classify's default).
        pcam_crop: PCam pretraining crop (``None``: 96; classification always sees 96 px).
        pretrain, segment, classify: extra option values of those commands, as ``(field name,
            value)`` pairs.
        num_workers: DataLoader workers of every run (``None``: each command's default).
        seconds: per-run time estimates in seconds on the machine they were measured on:
            ``pretrain`` (``pretrain-<method>`` for a method of its own), ``segment`` plus
            ``segment-per-mpx`` (per megapixel of test images), ``classify`` plus
            ``classify-per-1000`` (per 1000 validation and test tiles); empty: no estimate.
        description: one line for the report.
    """

    name: str
    width: float | None
    segment_crop: int | None
    folder_crop: int | None
    pcam_crop: int | None
    pretrain: tuple[tuple[str, Any], ...]
    segment: tuple[tuple[str, Any], ...]
    classify: tuple[tuple[str, Any], ...]
    num_workers: int | None
    seconds: tuple[tuple[str, float], ...]
    description: str


SCALES: dict[str, StudyScale] = {
    "smoke": StudyScale(
        name="smoke",
        width=0.125,
        segment_crop=64,
        folder_crop=32,
        pcam_crop=32,
        pretrain=(("max_steps", 3), ("batch_size", 4), ("log_every", 1)),
        segment=(("max_steps", 3), ("log_every", 1), ("figures", 0), ("overlap", 0.0)),
        classify=(
            *(("max_steps", 3), ("min_steps", 1), ("batch_size", 8)),
            *(("val_every", 3), ("log_every", 1)),
        ),
        num_workers=0,
        # Scoring untrained (noisy) predictions costs more per megapixel than at cpu scale.
        seconds=(("pretrain", 3.0), ("segment", 3.0), ("segment-per-mpx", 5.0), ("classify", 3.0)),
        description=(
            "smoke: trunk width 1/8, 64 px segmentation crops (32 px tiles for class folders), 3 "
            "steps of pretraining (batch 4) and of fine-tuning; this tests the harness and says "
            "nothing about the methods"
        ),
    ),
    "cpu": StudyScale(
        name="cpu",
        width=0.25,
        segment_crop=128,
        folder_crop=96,
        pcam_crop=96,
        pretrain=(
            *(("max_steps", 200), ("batch_size", 8), ("lr", 3e-4)),
            *(("log_every", 5), ("checkpoint_every", 100)),
        ),
        segment=(
            *(("max_steps", 120), ("batch_size", 4), ("log_every", 5)),
            *(("checkpoint_every", 60), ("figures", 0), ("overlap", 0.0), ("tile_batch", 16)),
        ),
        classify=(
            *(("max_steps", 60), ("min_steps", 1), ("batch_size", 32)),
            *(("val_every", 20), ("log_every", 5), ("checkpoint_every", 20)),
        ),
        num_workers=0,
        # Per-run times on 2 idle cores (benchmarks/label_efficiency.py, MoNuSeg, measured at 80
        # pretraining / 40 fine-tuning steps: DRL 23-30 s, DIM 12-17 s, segmentation 18-23 s with
        # scoring, object Hausdorff skipped), scaled to these step counts; scoring about 1 s per
        # megapixel of test images (inference, F1, object and pixel Dice).
        seconds=(
            ("pretrain", 50.0),
            ("pretrain-drl", 65.0),
            ("pretrain-dim", 35.0),
            ("segment", 38.0),
            ("segment-per-mpx", 1.0),
            ("classify", 25.0),
            ("classify-per-1000", 20.0),
        ),
        description=(
            "cpu: trunk width 1/4, 128 px crops (96 px tiles for class folders), 200 steps of "
            "pretraining (batch 8, Adam 3e-4), 120 steps of segmentation fine-tuning (batch 4, SGD "
            "0.005, poly; inference with 128 px tiles without overlap) or 60 of classification "
            "(batch 32 or the labelled subset, Adam 1e-3, 3 validations), sized so that drl, dim "
            "and random x 5 seeds x 2-4 label counts on the 30 MoNuSeg training tiles (20 train, "
            "10 test) take half an hour to an hour on 2 CPU cores "
            "(`benchmarks/label_efficiency.py`)"
        ),
    ),
    "paper": StudyScale(
        name="paper",
        width=None,
        segment_crop=None,
        folder_crop=None,
        pcam_crop=None,
        pretrain=(),
        segment=(),
        classify=(),
        num_workers=None,
        seconds=(),
        description=(
            "paper: every command's defaults (full VGG-19-BN; pretraining 200 epochs, 20 on "
            "PCam, Adam 1e-4, batch 8; segmentation 100 epochs of the full training set, SGD "
            "0.005, batch 2, 256 px crops; classification 30 epochs and at least 1000 steps, "
            "Adam 1e-3, batch 128), for a GPU"
        ),
    ),
}


# ------------------------------------------------------------------------------------------------
# The source: its splits, what pretraining sees
# ------------------------------------------------------------------------------------------------


@dataclass
class SourceFacts:
    """What the study needs to know about ``--data`` (read once, before anything runs).

    Attributes:
        spec: ``KIND:ABSOLUTE_PATH``.
        kind: the source kind.
        task: ``segment`` or ``classify``.
        source: the :class:`~histodrl.data.labelled.SegmentationSource` or
            :class:`~histodrl.data.labelled.ClassificationSource`, split as the runs split it.
        n_train: labelled training images (tiles).
        classes: classification: class names; segmentation: empty.
        parts: names of the test parts scored.
        test_images: resolved paths of the test images (empty for PCam).
        test_megapixels: segmentation: pixels of every test image, in millions.
        n_eval: classification: validation + test tiles.
        description: one line.
    """

    spec: str
    kind: str
    task: str
    source: Any
    n_train: int
    classes: tuple[str, ...]
    parts: tuple[str, ...]
    test_images: frozenset[Path]
    test_megapixels: float
    n_eval: int
    description: str


def _labelled_kind(spec: str) -> tuple[str, str]:
    """``(kind, task)`` of a labelled source, refusing any other."""
    from histodrl.data.labelled import CLASSIFICATION_KINDS, SEGMENTATION_KINDS
    from histodrl.data.sources import parse_source

    kind, path = parse_source(spec)
    if kind in SEGMENTATION_KINDS:
        return kind, "segment"
    if kind in CLASSIFICATION_KINDS:
        return kind, "classify"
    raise UserInputError(
        f"--data {spec}: {kind}: sources have no labels (expected a labelled source: glas:, "
        "masks:, monuseg: for segmentation, or folder: with class folders, pcam: for "
        "classification)"
    )


def _resolved_spec(spec: str) -> str:
    from histodrl.data.sources import parse_source

    kind, path = parse_source(spec)
    if kind == "wsi":
        return f"{kind}:{path}"  # may be a glob
    return f"{kind}:{Path(path).resolve()}"


def inspect_source(options: LabelEfficiencyOptions, scale: StudyScale) -> SourceFacts:
    """Read ``--data`` with the split the runs use, and check every budget against it.

    Raises:
        UserInputError: a source without labels, unreadable data (the reader names the file), a
            label count above the number of training images (tiles), a classification count
            below the number of classes, or a budget that leaves no training image.
    """
    kind, task = _labelled_kind(options.data)
    spec = _resolved_spec(options.data)
    if task == "segment":
        from histodrl.data.labelled import segmentation_source

        source: Any = segmentation_source(
            spec, seed=options.split_seed, test_fraction=options.test_fraction, val_fraction=0.0
        )
        train = source.train
        tests = source.tests
        paths = frozenset(Path(r.image_path).resolve() for d in tests.values() for r in d.records)
        megapixels = sum(r.width * r.height for d in tests.values() for r in d.records) / 1e6
        facts = SourceFacts(
            spec, kind, task, source, len(train), (), tuple(tests), paths, megapixels, 0,
            str(source.description),
        )  # fmt: skip
    else:
        from histodrl.data.labelled import classification_source

        source = classification_source(
            spec,
            options.split_seed,
            options.val_fraction,
            options.test_fraction,
            crop=(scale.folder_crop or 224) if kind == "folder" else 96,
        )
        if source.val is None or len(source.val) == 0:
            raise UserInputError(
                f"--data {options.data}: no validation split (classify selects on it): set "
                "--val-fraction above 0 or add a val/ folder"
            )
        paths = frozenset()
        if kind == "folder":
            paths = frozenset(Path(im.path).resolve() for im in source.test.images)
        facts = SourceFacts(
            spec, kind, task, source, len(source.train), tuple(source.classes), ("test",),
            paths, 0.0, len(source.val) + len(source.test), str(source.description),
        )  # fmt: skip
    what = "training images" if task == "segment" else "labelled training tiles"
    for budget in options.budgets:
        if budget.kind == "count":
            if budget.value > facts.n_train:
                raise UserInputError(
                    f"--labels {budget.text}: expected at most {facts.n_train}, the number of "
                    f"{what} of {options.data} (its test images held out)"
                )
            if task == "classify" and budget.value < len(facts.classes):
                raise UserInputError(
                    f"--labels {budget.text}: expected at least {len(facts.classes)}, one "
                    f"labelled tile per class ({', '.join(facts.classes)})"
                )
    return facts


def _seen_by_pretraining(spec: str) -> frozenset[Path] | None:
    """The images ``histodrl pretrain --data spec`` reads (resolved paths), or ``None`` when the
    source is not made of image files this can list (pcam, wsi)."""
    from histodrl.data.sources import SOURCE_OPTIONS, parse_source

    kind, path = parse_source(spec)
    if kind == "glas":
        from histodrl.data.glas import find_glas_records

        return frozenset(Path(r.image_path).resolve() for r in find_glas_records(path, ("train",)))
    if kind in ("masks", "monuseg"):
        from histodrl.data.masks import find_mask_splits, pretrain_records, split_records

        if kind == "masks":
            found = find_mask_splits(path)
        else:
            from histodrl.data.monuseg import find_monuseg_splits

            found = find_monuseg_splits(path, read_polygons=False)
        defaults = SOURCE_OPTIONS[kind]
        splits = split_records(
            found, int(defaults["split_seed"]), float(defaults["test_fraction"]), 0.0, str(path)
        )
        return frozenset(Path(r.image_path).resolve() for r in pretrain_records(splits))
    if kind == "folder":
        from histodrl.data.folder import find_images

        return frozenset(p.resolve() for p in find_images(path))
    return None


@dataclass(frozen=True)
class PretrainData:
    """Where pretraining reads its images.

    Attributes:
        spec: the ``--data`` of every pretraining run.
        how: one line for the report.
        links: ``{relative path in the view: target}`` when the view folder is used, else empty.
    """

    spec: str
    how: str
    links: Mapping[str, Path] = field(default_factory=dict)


def _record_links(records: Sequence[Any], split: str, kind: str) -> dict[str, Path]:
    """Links laying out ``records`` as split folder ``split`` of a ``masks:`` / ``monuseg:`` source."""
    from histodrl.data.monuseg import ANNOTATIONS_FOLDER, IMAGES_FOLDER, MASKS_FOLDER

    links: dict[str, Path] = {}
    for r in records:
        image = Path(r.image_path)
        if kind == "monuseg":
            links[f"{split}/{IMAGES_FOLDER}/{r.name}{image.suffix}"] = image
            note = Path(r.annotation_path)
            where = ANNOTATIONS_FOLDER if r.annotation_kind == "xml" else MASKS_FOLDER
            links[f"{split}/{where}/{r.name}{note.suffix}"] = note
        else:
            mask = Path(r.mask_path)
            links[f"{split}/images/{r.name}{image.suffix}"] = image
            links[f"{split}/masks/{r.name}{mask.suffix}"] = mask
    return links


def pretrain_data(options: LabelEfficiencyOptions, facts: SourceFacts, out: Path) -> PretrainData:
    """The pretraining source of the study (module docstring: test images are never seen).

    Raises:
        UserInputError: a ``--pretrain-data`` that holds test images of ``--data``.
    """
    if options.pretrain_data is not None:
        spec = _resolved_spec(options.pretrain_data)
        seen = _seen_by_pretraining(spec)
        if seen is not None and facts.test_images:
            common = sorted(seen & facts.test_images)
            if common:
                raise UserInputError(
                    f"--pretrain-data {options.pretrain_data}: holds {len(common)} test image(s) "
                    f"of --data, e.g. {common[0]} (pretraining must not see them)"
                )
        checked = "checked to hold no test image" if seen is not None else "not checked"
        return PretrainData(spec, f"`{spec}` (--pretrain-data; {checked})")
    source = facts.source
    if facts.kind == "glas":
        return PretrainData(facts.spec, "the GLaS train images (test A and B never)")
    if facts.kind == "pcam":
        return PretrainData(facts.spec, "the PCam train split without its labels")
    view = out / VIEW_DIR
    if facts.kind in ("masks", "monuseg"):
        seen = _seen_by_pretraining(facts.spec)
        assert seen is not None
        if not seen & facts.test_images:
            return PretrainData(
                facts.spec,
                f"the non-test images of `{facts.spec}` (its default split holds out the scored "
                "test images: checked image by image)",
            )
        records = list(source.train.records)
        links = _record_links(records, "train", facts.kind)
        for name, dataset in source.tests.items():
            links |= _record_links(list(dataset.records), name, facts.kind)
        n_test = sum(len(d) for d in source.tests.values())
        return PretrainData(
            f"{facts.kind}:{view}",
            f"`{view}`: links to the {len(records)} training images in train/ and the {n_test} "
            f"test images in test/ (held out), since the default split of `{facts.spec}` holds "
            "out other images than the scored ones",
            links,
        )
    images = list(source.train.images) + (list(source.val.images) if source.val else [])
    links = {f"{k:05d}-{Path(im.name).name}": Path(im.path) for k, im in enumerate(images)}
    return PretrainData(
        f"folder:{view}",
        f"`{view}`: links to the {len(images)} train and validation tiles of `{facts.spec}` "
        "(labels unused, test tiles never)",
        links,
    )


def write_view(folder: Path, links: Mapping[str, Path]) -> None:
    """Make ``folder`` hold exactly ``links`` (symbolic links; copies where links fail).

    An existing view with the same list is kept; another one is replaced.
    """
    listing = "".join(f"{name}\t{target}\n" for name, target in sorted(links.items()))
    marker = folder / VIEW_LIST
    if marker.is_file() and marker.read_text() == listing:
        return
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    for name, target in links.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(target, path)
        except OSError:
            shutil.copyfile(target, path)
    (tmp / VIEW_LIST).write_text(listing)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _check_view(study: Study) -> None:
    """After :func:`write_view`: pretraining on the view must see no scored test image."""
    seen = _seen_by_pretraining(study.pretrain.spec)
    if seen is not None and seen & study.facts.test_images:  # pragma: no cover - a bug guard
        raise RuntimeError(f"{study.pretrain.spec}: pretraining would see test images")


# ------------------------------------------------------------------------------------------------
# Planning
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyJob(Job):
    """A :class:`~histodrl.experiments.jobs.Job` of the study: ``what`` describes it, ``budget``
    is its label budget (``None`` for pretraining)."""

    what: str = ""
    budget: Budget | None = None

    def describe(self) -> str:
        return f"{self.variant.key} seed {self.seed}: {self.what}"


@dataclass(frozen=True)
class Study:
    """The resolved settings of one call (what every run shares)."""

    options: LabelEfficiencyOptions
    out: Path
    scale: StudyScale
    facts: SourceFacts
    pretrain: PretrainData

    @property
    def methods(self) -> tuple[str, ...]:
        return self.options.method_list

    @property
    def budgets(self) -> tuple[Budget, ...]:
        return self.options.budgets

    def runtime(self) -> dict[str, Any]:
        values: dict[str, Any] = {"accelerator": self.options.accelerator}
        workers = self.options.num_workers
        if workers is None:
            workers = self.scale.num_workers
        if workers is not None:
            values["num_workers"] = workers
        return values


def variant(method: str) -> Variant:
    label = METHOD_LABELS.get(method, method)
    if method == RANDOM:
        return Variant(RANDOM, label, init="random")
    return Variant(method, label, method=method)


def _pretrain_crop(study: Study) -> int | None:
    scale, kind = study.scale, study.facts.kind
    if study.facts.task == "segment":
        return scale.segment_crop
    return scale.pcam_crop if kind == "pcam" else scale.folder_crop


def _pretrain_job(study: Study, method: str, seed: int, folder: Path) -> StudyJob:
    scale = study.scale
    v = variant(method)
    # --preset paper reads segmentation encoders as GLaS ones (lambda 0.01), classification ones as
    # PCam ones (0.5), paper IV-B, as the reproduction does.
    dataset = "glas" if study.facts.task == "segment" else "pcam"
    values: dict[str, Any] = {
        **pretrain_values(v, dataset, study.options.preset),
        **{"data": study.pretrain.spec, "out": str(folder), "seed": seed},
        **dict(scale.pretrain),
        **{"no_progress": True, **study.runtime()},
    }
    crop = _pretrain_crop(study)
    if scale.width is not None:
        values["width"] = scale.width
    if crop is not None:
        values["crop"] = crop
    readable = study.pretrain.spec.split(":", 1)[1]
    if method == "exemplar" and not (folder / ENCODER_FILE).is_file() and Path(readable).exists():
        # One class per pretraining item on small data (the view of a dry run is not written).
        from histodrl.data.sources import pretrain_dataset

        options = PretrainOptions(**values).resolved()
        n = len(pretrain_dataset(study.pretrain.spec, crop=int(options.crop), seed=seed))  # type: ignore[arg-type]
        values["exemplar_classes"] = min(EXEMPLAR_CLASSES, n)
    options = PretrainOptions(**values)
    steps = values.get("max_steps")
    what = f"pretrain {v.describe()} on {study.pretrain.spec.split(':', 1)[0]}"
    what += f" ({steps} steps)" if steps is not None else ""
    return StudyJob(
        v, seed, "pretrain", study.facts.kind, folder, options=options, given=frozenset(values),
        what=what,
    )  # fmt: skip


def _task_job(
    study: Study, method: str, seed: int, budget: Budget, folder: Path, init: str
) -> StudyJob:
    scale, facts, o = study.scale, study.facts, study.options
    values: dict[str, Any] = {"data": facts.spec, "init": init, "out": str(folder), "seed": seed}
    if budget.kind == "count":
        values["label_count"] = int(budget.value)
    else:
        values["label_fraction"] = float(budget.value)
    if scale.width is not None:
        values["width"] = scale.width
    if facts.kind != "glas" and facts.kind != "pcam":
        values |= {"split_seed": o.split_seed, "test_fraction": o.test_fraction}
    values |= {"no_progress": True, **study.runtime()}
    if facts.task == "segment":
        if scale.segment_crop is not None:
            values["crop"] = scale.segment_crop
        values |= dict(scale.segment)
        # The study reports F1, object Dice and pixel Dice; the object Hausdorff is most of the
        # scoring time when predictions are poor (distance transforms per matched pair).
        values["skip_hausdorff"] = True
        options: Any = SegmentOptions(**values)
    else:
        if facts.kind == "folder":
            values["val_fraction"] = o.val_fraction
            if scale.folder_crop is not None:
                values["crop"] = scale.folder_crop
        values |= dict(scale.classify)
        options = ClassifyOptions(**values)
    v = variant(method)
    return StudyJob(
        v, seed, facts.task, facts.kind, folder, options=options, given=frozenset(values),
        what=f"{facts.task} {facts.kind}: from {v.describe()}, {budget.label}", budget=budget,
    )  # fmt: skip


def plan(study: Study) -> list[StudyJob]:
    """Every run, seed by seed (early seeds finish first): per method its pretraining run (none
    for random init), then one fine-tuning run per budget."""
    root = study.out / RUNS_DIR
    jobs: list[StudyJob] = []
    for seed in range(study.options.seeds):
        for method in study.methods:
            base = root / method / f"seed{seed}"
            init = "random"
            if method != RANDOM:
                folder = base / "pretrain"
                jobs.append(_pretrain_job(study, method, seed, folder))
                init = str(folder)
            for budget in study.budgets:
                folder = base / f"{study.facts.task}-{budget.folder}"
                jobs.append(_task_job(study, method, seed, budget, folder, init))
    return jobs


def estimate_seconds(study: Study, jobs: Sequence[StudyJob]) -> float | None:
    """Estimated time of the jobs still to run (reused ones cost nothing), or ``None`` when the
    scale has no estimate (paper)."""
    seconds = dict(study.scale.seconds)
    if not seconds:
        return None
    total = 0.0
    for job in jobs:
        if action(job) == "reuse":
            continue
        if job.kind == "pretrain":
            total += seconds.get(f"pretrain-{job.variant.key}", seconds["pretrain"])
        elif job.kind == "segment":
            total += seconds["segment"]
            total += seconds.get("segment-per-mpx", 0.0) * study.facts.test_megapixels
        else:
            total += seconds["classify"]
            total += seconds.get("classify-per-1000", 0.0) * study.facts.n_eval / 1000
    return total


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min"


# ------------------------------------------------------------------------------------------------
# Values of the finished runs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """One score of one finished fine-tuning run (a row of ``runs.csv``)."""

    method: str
    seed: int
    budget: str
    n_labelled: int
    part: str
    metric: str
    value: float
    run: str


def job_values(job: StudyJob, root: Path) -> list[Value]:
    """The scores a finished fine-tuning job wrote (none for pretraining or an unfinished run).

    Segmentation: per test part, the pooled object F1, object Dice and pixel Dice;
    classification: test accuracy, balanced accuracy (``folder:`` sources) and ROC AUC.
    """
    if job.kind == "pretrain" or not job.finished or job.budget is None:
        return []
    metrics = json.loads((job.folder / METRICS_FILE).read_text())
    rows: list[tuple[str, str, Any]] = []
    if job.kind == "segment":
        from histodrl.downstream.segment_data import TRAIN_IMAGES_FILE

        names = (job.folder / TRAIN_IMAGES_FILE).read_text().split()
        n_labelled = len(names)
        for part, values in metrics.items():
            if isinstance(values, dict) and "pooled" in values:
                rows += [(part, m, values["pooled"].get(m)) for m, _, _ in SEGMENT_METRICS]
    else:
        n_labelled = int(metrics["n_labelled"])
        rows += [("test", m, metrics.get(_CLASSIFY_KEYS[m])) for m, _, _ in CLASSIFY_METRICS]
    run = str(job.folder.relative_to(root))
    budget = job.budget.text
    return [
        Value(job.variant.key, job.seed, budget, n_labelled, part, m, float(x), run)
        for part, m, x in rows
        if x is not None
    ]


def write_values_csv(path: Path, values: Sequence[Value]) -> None:
    names = list(Value.__dataclass_fields__)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for v in values:
        writer.writerow([getattr(v, n) for n in names])
    atomic_write_text(path, buffer.getvalue())


class Scores:
    """Per-seed scores by ``(method, budget, part, metric)``."""

    def __init__(self, values: Sequence[Value]) -> None:
        self._by: dict[tuple[str, str, str, str], dict[int, float]] = {}
        for v in values:
            self._by.setdefault((v.method, v.budget, v.part, v.metric), {})[v.seed] = v.value

    def seeds(self, method: str, budget: str, part: str, metric: str) -> dict[int, float]:
        return dict(self._by.get((method, budget, part, metric), {}))

    def summary(self, method: str, budget: str, part: str, metric: str) -> Summary | None:
        values = self.seeds(method, budget, part, metric)
        return summarize([values[k] for k in sorted(values)]) if values else None

    def welch(self, a: str, b: str, budget: str, part: str, metric: str) -> WelchTest | None:
        x, y = self.seeds(a, budget, part, metric), self.seeds(b, budget, part, metric)
        if not x or not y:
            return None
        return welch_t_test([x[k] for k in sorted(x)], [y[k] for k in sorted(y)])

    def paired(self, a: str, b: str, budget: str, part: str, metric: str) -> PairedTest | None:
        """The paired test over the seeds both methods finished (seed k pairs the runs)."""
        x, y = self.seeds(a, budget, part, metric), self.seeds(b, budget, part, metric)
        common = sorted(set(x) & set(y))
        if not x or not y:
            return None
        return paired_t_test([x[k] for k in common], [y[k] for k in common])

    def any(self, part: str, metric: str) -> bool:
        return any(k[2] == part and k[3] == metric for k in self._by)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


def comparisons(methods: Sequence[str]) -> list[tuple[str, str]]:
    """``(method, reference)`` pairs: every method against random init and against DIM."""
    pairs = []
    for reference in (RANDOM, "dim"):
        if reference not in methods:
            continue
        for m in methods:
            if m != reference and m != RANDOM and (m, reference) not in pairs:
                pairs.append((m, reference))
    return pairs


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metric_table(study: Study, scores: Scores, part: str, metric: str, digits: int) -> str:
    """Mean ± sd (seeds) per method and budget, then the p-values of :func:`comparisons`."""
    budgets = study.budgets
    header = ["Method", *(b.label for b in budgets)]
    rows = [
        [METHOD_LABELS.get(m, m)]
        + [format_summary(scores.summary(m, b.text, part, metric), digits) for b in budgets]
        for m in study.methods
    ]
    for m, ref in comparisons(study.methods):
        name = f"{METHOD_LABELS.get(m, m)} vs {METHOD_LABELS.get(ref, ref)}"
        rows.append(
            [f"p, {name} (Welch)"]
            + [format_p(scores.welch(m, ref, b.text, part, metric)) for b in budgets]
        )
        rows.append(
            [f"p, {name} (paired)"]
            + [format_p(scores.paired(m, ref, b.text, part, metric)) for b in budgets]
        )
    return _markdown_table(header, rows)


def _metrics(study: Study) -> tuple[tuple[str, str, int], ...]:
    return SEGMENT_METRICS if study.facts.task == "segment" else CLASSIFY_METRICS


def write_figures(study: Study, scores: Scores) -> list[tuple[str, str]]:
    """One PNG per metric (a panel per test part): the score against the budget, mean ± sd over
    seeds per method. Returns ``(file name, caption)`` pairs."""
    from matplotlib.figure import Figure

    from histodrl.experiments.report import save_figure

    budgets = study.budgets
    x = np.array([b.value for b in budgets], dtype=float)
    log_x = len(x) > 1 and x.max() / x.min() >= 8
    unit = "labelled images" if study.facts.task == "segment" else "labelled tiles"
    xlabel = f"{unit} (count)" if budgets[0].kind == "count" else f"share of the {unit}"
    out = []
    parts = study.facts.parts
    for metric, name, _ in _metrics(study):
        if not any(scores.any(part, metric) for part in parts):
            continue
        figure = Figure(figsize=(5.0 * len(parts), 3.8), layout="constrained")
        axes = np.atleast_1d(figure.subplots(1, len(parts), squeeze=False)).reshape(-1)
        for ax, part in zip(axes, parts):
            n = len(study.methods)
            for i, m in enumerate(study.methods):
                summaries = [scores.summary(m, b.text, part, metric) for b in budgets]
                mean = np.array([s.mean if s else np.nan for s in summaries])
                std = np.array([s.std if s and s.n > 1 else 0.0 for s in summaries])
                # A small horizontal offset per method keeps the error bars apart.
                shift = (i - (n - 1) / 2) * 0.02
                xs = x * (1 + shift) if log_x else x + shift * (x.max() - x.min() + 1)
                ax.errorbar(
                    xs, mean, yerr=np.nan_to_num(std), marker="o", capsize=3,
                    label=METHOD_LABELS.get(m, m), color=f"C{i % 10}",
                )  # fmt: skip
            if log_x:
                ax.set_xscale("log")
            ax.set_xticks(list(x), [b.text if b.kind == "count" else b.label for b in budgets])
            ax.minorticks_off()
            ax.set_xlabel(xlabel)
            ax.set_ylabel(name)
            title = name if len(parts) == 1 and part == "test" else f"{name}, {part}"
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=7)
        file = f"{metric}.png"
        save_figure(figure, study.out / FIGURES_DIR / file)
        out.append((file, f"{name} by label budget: mean ± sd over seeds"))
    return out


def _command_line(study: Study) -> str:
    o = study.options
    parts = ["histodrl label-efficiency", f"--data {study.facts.spec}"]
    parts += [f"--methods {','.join(study.methods)}", f"--labels {o.labels}"]
    parts += [f"--seeds {o.seeds}", f"--scale {o.scale}", f"--out {study.out}"]
    if o.preset != "histodrl":
        parts.append(f"--preset {o.preset}")
    if o.pretrain_data:
        parts.append(f"--pretrain-data {o.pretrain_data}")
    if study.facts.kind in ("masks", "monuseg", "folder"):
        parts += [f"--split-seed {o.split_seed}", f"--test-fraction {o.test_fraction:g}"]
    if study.facts.kind == "folder":
        parts.append(f"--val-fraction {o.val_fraction:g}")
    return " ".join(parts)


def write_report(
    study: Study, jobs: Sequence[StudyJob], values: Sequence[Value]
) -> tuple[Path, str]:
    """Write ``report.md``, ``runs.csv`` and ``figures/*.png``.

    Returns:
        ``(path of report.md, the result tables as markdown, for the console)``.
    """
    from histodrl.experiments.report import git_commit

    scores = Scores(values)
    write_values_csv(study.out / CSV_FILE, values)
    figures = write_figures(study, scores)
    facts, o = study.facts, study.options
    tables = []
    for metric, name, digits in _metrics(study):
        for part in facts.parts:
            if not scores.any(part, metric):
                continue
            title = name if part == "test" and len(facts.parts) == 1 else f"{name}, {part}"
            tables.append(f"### {title}\n\n" + metric_table(study, scores, part, metric, digits))
    finished = sum(j.finished for j in jobs)
    n_labelled = sorted({(v.budget, v.n_labelled) for v in values})
    counts = "; ".join(
        f"{b.label}: {', '.join(str(n) for bb, n in n_labelled if bb == b.text) or '—'}"
        for b in study.budgets
    )
    task = (
        f"segmentation, scored on {', '.join(facts.parts)} (pooled over the images of a part)"
        if facts.task == "segment"
        else f"classification of {len(facts.classes)} classes ({', '.join(facts.classes)})"
    )
    seeds = ", ".join(str(k) for k in range(o.seeds))
    lines = [
        "# Label efficiency",
        "",
        f"- **Task**: {task}.",
        f"- **Data**: {facts.description}.",
        f"- **Pretraining data**: {study.pretrain.how}.",
        f"- **Methods**: {', '.join(METHOD_LABELS.get(m, m) for m in study.methods)} "
        "(random init: no pretraining).",
        f"- **Label budgets**: {', '.join(b.label for b in study.budgets)} "
        f"(labelled training {'images' if facts.task == 'segment' else 'tiles'} per run: "
        f"{counts}).",
        f"- **Seeds**: {seeds}; seed k is the pretraining seed, the fine-tuning seed and the seed "
        "of the label subset, so at seed k every method fine-tunes on the same labelled images "
        "with the same seed.",
        f"- **Scale**: {study.scale.description}.",
        f"- **Preset**: `--preset {o.preset}` for DRL and DIM pretraining "
        f"({PRESET_TEXT[o.preset]}).",
        f"- **Command**: `{_command_line(study)}`.",
        f"- **Commit**: {git_commit()}.",
        f"- **Runs**: {finished} of {len(jobs)} finished, under `{RUNS_DIR}/<method>/seed<k>/`; "
        f"`{CSV_FILE}` has every score with its run folder.",
        "- **Statistics**: mean ± sample standard deviation (ddof = 1) over seeds, with the number "
        "of seeds in brackets; p-values are two-sided: Welch's t-test (unequal variances, the "
        "seeds of the two methods as independent samples) and the paired t-test over the seeds "
        'both methods finished (seed k pairs their runs). "n/a (fewer than 2 seeds)": too few '
        'seeds; "n/a (zero variance)": constant values (Welch) or constant differences '
        "(paired).",
    ]
    if facts.task == "classify" and facts.kind == "pcam":
        lines.append(
            "- Balanced accuracy is not recorded by `histodrl classify` for PCam (its table is "
            "left out)."
        )
    lines += ["", "## Results", "", *(t + "\n" for t in tables)]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{caption}]({FIGURES_DIR}/{name})\n\n{caption}\n" for name, caption in figures]
    lines += [
        "## How these numbers were made",
        "",
        "- Every run is an ordinary `histodrl pretrain`, `histodrl segment` or `histodrl "
        "classify` run (its options in its `config.yaml`, its output in `logs/`); a run with its "
        "final artefact is reused by the next call, an interrupted one resumed.",
        "- Fine-tuning: the whole network (encoder and decoder / head) from the method's encoder; "
        "a label count is exactly that many training images (tiles), a seeded subset "
        "(stratified by grade or class when the source has them); a label fraction is "
        "`--label-fraction`. The test split is the same for every run and never trained or "
        "pretrained on.",
        "",
    ]
    report = study.out / REPORT_FILE
    atomic_write_text(report, "\n".join(lines))
    return report, "\n\n".join(tables)


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


def _settings(study: Study) -> dict[str, Any]:
    o, facts = study.options, study.facts
    settings: dict[str, Any] = {"data": facts.spec, "scale": study.scale.name}
    settings["preset"] = o.preset
    settings["pretrain_data"] = study.pretrain.spec
    if facts.kind in ("masks", "monuseg", "folder"):
        settings |= {"split_seed": o.split_seed, "test_fraction": o.test_fraction}
    if facts.kind == "folder":
        settings["val_fraction"] = o.val_fraction
    return settings


def check_settings_file(study: Study) -> None:
    """Refuse a folder made with other data, split or scale; record this call's otherwise."""
    current = _settings(study)
    path = study.out / SETTINGS_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(saved, dict):
            raise UserInputError(
                f"{path}: expected a JSON object (written by histodrl label-efficiency)"
            )
        for key, value in current.items():
            if key in saved and saved[key] != value:
                raise UserInputError(
                    f"{path}: this study used {key} {saved[key]!r}, not {value!r} (use another "
                    f"--out, or delete {study.out} to start again)"
                )
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")


def prepare(options: LabelEfficiencyOptions) -> Study:
    """Check every option and read the data; nothing is written.

    Raises:
        UserInputError: as :func:`inspect_source` and :func:`pretrain_data`.
    """
    scale = SCALES[options.scale]
    out = Path(options.out).resolve()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {options.out}: exists and is not a folder")
    facts = inspect_source(options, scale)
    return Study(options, out, scale, facts, pretrain_data(options, facts, out))


def label_efficiency(
    options: LabelEfficiencyOptions,
    runner: Runner | None = None,
    echo: Callable[..., None] = print,
) -> int:
    """Run (or reuse) every run of the study, then write ``OUT/report.md``; returns 0.

    Args:
        options: the command's options.
        runner: runs one job's command (default:
            :func:`histodrl.experiments.reproduce.run_command`).
        echo: prints a line.

    Raises:
        UserInputError: bad options or data (before anything runs), an output folder made with
            other data, or a failed run (with its log's path).
    """
    study = prepare(options)
    if not options.dry_run:
        study.out.mkdir(parents=True, exist_ok=True)
        check_settings_file(study)
        if study.pretrain.links:
            write_view(study.out / VIEW_DIR, study.pretrain.links)
            _check_view(study)
    jobs = plan(study)
    seconds = estimate_seconds(study, jobs)
    todo = sum(action(j) != "reuse" for j in jobs)
    guess = "" if seconds is None else f", about {_duration(seconds)} at {study.scale.name} scale"
    echo(
        f"histodrl: label-efficiency: {len(jobs)} runs ({len(study.methods)} method(s) x "
        f"{options.seeds} seed(s) x {len(study.budgets)} budget(s), {todo} to run{guess}) in "
        f"{study.out}; each run's output goes to {study.out / LOGS_DIR}",
        flush=True,
    )
    echo(f"histodrl: data: {study.facts.description}; pretraining: {study.pretrain.how}")
    counts = run_jobs(jobs, study.out / LOGS_DIR, runner=runner, echo=echo, dry_run=options.dry_run)
    if options.dry_run:
        if seconds is not None:
            echo(
                f"histodrl: estimated time of the {todo} run(s) to do: {_duration(seconds)} "
                f"({study.scale.name} scale: per-run times of 2 idle CPU cores; a busy machine is slower)"
            )
        return 0
    values = [v for job in jobs for v in job_values(job, study.out)]
    report, tables = write_report(study, jobs, values)
    echo(tables)
    echo(
        f"histodrl: label-efficiency: {counts['reuse']} reused, {len(jobs) - counts['reuse']} "
        f"run; wrote {report}"
    )
    return 0
