"""``histodrl classify``: patch classification with few labels (the paper's Table III on PCam).

The data is ``pcam:DIR`` (the official splits, 96x96 patches, two classes) or ``folder:DIR`` with
one subfolder per class (:func:`histodrl.data.labelled.classification_source`: ``train/ val/
test/`` folders when present, else a class-stratified split seeded by ``--split-seed`` with
``--val-fraction`` and ``--test-fraction``; tiles of any size resized and centre-cropped to
``--crop``, default 224). A folder run writes its splits to ``RUN/splits.json``.

The network is :class:`histodrl.nn.PatchClassifier`: the VGG-19(-BN) trunk on 96x96 patches, global
average pooling of pool5 (3x3), dropout 0.5, Linear(512 -> 2) (a folder: one output per class). The trunk starts from ``--init``
(random, a pretraining run, an encoder file or torchvision's ImageNet file, through
:func:`histodrl.downstream.init.load_init`) and the whole network is fine-tuned with Adam, lr 0.001,
batch 128 (paper IV-B), on a seeded ``--label-fraction`` of the labelled training split. Training
batches are augmented on the device (random flip / 90° rotation, random resized crop back to 96,
colour jitter), with every random number a function of ``(seed, step)`` so that ``--resume`` is exact.

Choices the paper leaves open (also in the README):

* **Training length** is counted in optimizer steps: ``max(--min-steps, --epochs x steps per
  epoch of the labelled subset)``, capped by ``--max-steps``. Defaults: 30 epochs, at least 1000
  steps, so 0.01 % of PCam (26 patches, one step per epoch) still gets 1000 updates while 100 %
  gets 30 epochs (61,440 steps).
* **Batch size** is ``min(--batch-size, n_labelled // processes)``: a subset smaller than 128 is
  used whole in every step (in a new random order and with new augmentations each time), never
  sampled with replacement.
* **Random resized crop** keeps 60-100 % of the area with aspect ratio 3/4-4/3, so every crop
  contains the centre 32x32 square that defines the PCam label (a side of at least 64 px). Class
  folders use the same constants: their label is the whole tile's, which such a crop keeps.
* **Validation** on the whole validation split every ``--val-every`` steps (default: 20 times per
  run) and after the last step. The **selected model** is the one with the best validation
  accuracy; ties go to the earlier step. It is kept (in memory and in the checkpoints, so resuming
  keeps it) and written to ``RUN/classifier.safetensors``.
* **Test**: the selected model's accuracy and ROC AUC (softmax probability of class 1) on the test
  split, in ``RUN/metrics.json`` and ``RUN/report.md``. With more than two classes the AUC is the
  one-vs-rest AUC of each class's probability, macro-averaged; folder runs also report the
  accuracy of each class and their mean (balanced accuracy), with the class names.

Layout: the evaluation toolkit shared with ``histodrl probe`` (splits, subsets, batched
predictions, reports) is :mod:`histodrl.downstream.evaluation`; the network and its
LightningModule are :mod:`histodrl.downstream.classifier`; this module is the command, a task of
the run lifecycle (:mod:`histodrl.runs.lifecycle`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from histodrl.commands.classify import ClassifyOptions
from histodrl.downstream.classifier import (
    CROP_SCALE,
    ClassifierModule,
    ValidationCallback,
)
from histodrl.downstream.evaluation import (  # noqa: F401  (pcam_splits: experiments)
    SPLITS_FILE,
    SUBSET_FILE,
    check_splits,
    class_counts,
    classification_scores,
    eval_loader,
    labelled_source,
    labelled_subset,
    markdown_table,
    pcam_splits,
    predict_class_probabilities,
    read_subset,
    source_description,
    write_json,
    write_splits,
    write_subset,
)
from histodrl.errors import UserInputError
from histodrl.io import atomic_path, atomic_write_text
from histodrl.runs.layout import METRICS_FILE, REPORT_FILE
from histodrl.runs.lifecycle import Launch, LightningTask, run_task
from histodrl.runs.sampling import step_loader

CLASSIFIER_FILE = "classifier.safetensors"
#: Validations per run when ``--val-every`` is not given.
VALIDATIONS_PER_RUN = 20


# ------------------------------------------------------------------------------------------------
# The rules of a run: length, batch, validation interval
# ------------------------------------------------------------------------------------------------


def training_length(
    n_labelled: int,
    batch_size: int,
    world_size: int,
    epochs: float,
    min_steps: int,
    max_steps: int | None = None,
) -> int:
    """Optimizer steps of a run: ``max(min_steps, floor(epochs x steps per epoch))``, capped.

    A step per epoch is ``n_labelled // (batch_size x world_size)`` (incomplete batches are
    dropped), so 26 labelled patches at batch 26 make one step per epoch; ``min_steps`` keeps tiny
    subsets from stopping after a few updates.

    Args:
        n_labelled: examples in the labelled subset (>= batch_size x world_size).
        batch_size: examples per step and process.
        world_size: processes.
        epochs: passes over the subset (> 0).
        min_steps: least number of steps (>= 0).
        max_steps: cap (``None`` or 0: no cap).

    Returns:
        The number of steps, at least 1.
    """
    per_epoch = n_labelled // (batch_size * world_size)
    if per_epoch < 1:
        raise ValueError(
            f"batch_size={batch_size} x world_size={world_size} exceeds n_labelled={n_labelled}"
        )
    total = max(int(min_steps), math.floor(epochs * per_epoch), 1)
    if max_steps:
        total = min(total, int(max_steps))
    return max(1, total)


def classify_batch_size(requested: int, n_labelled: int, world_size: int) -> int:
    """``min(requested, n_labelled // world_size)``: a small subset is used whole in every step.

    Raises:
        UserInputError: fewer than 2 labelled examples per process (BatchNorm needs 2).
    """
    per_process = n_labelled // world_size
    if per_process < 2:
        raise UserInputError(
            f"{n_labelled} labelled patches for {world_size} process(es): expected at least 2 "
            "per process (raise --label-fraction or use fewer --devices)"
        )
    return min(int(requested), per_process)


def validation_interval(val_every: int | None, total_steps: int) -> int:
    """Steps between validations: ``--val-every``, or :data:`VALIDATIONS_PER_RUN` per run."""
    if val_every is not None:
        return int(val_every)
    return max(1, math.ceil(total_steps / VALIDATIONS_PER_RUN))


# ------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------


@dataclass
class Trained:
    """What training hands to :meth:`ClassifyTask.finish`."""

    module: ClassifierModule
    device: torch.device
    precision: str
    batch_size: int


class ClassifyTask(LightningTask[ClassifyOptions]):
    """``histodrl classify`` in the run lifecycle: the labelled splits and subset, the
    classifier, validation and model selection, then the test and the report."""

    options_class = ClassifyOptions

    def __init__(self) -> None:
        self.source: Any = None
        self.subset: np.ndarray = np.empty(0, dtype=np.int64)

    def resolve(self, options: ClassifyOptions) -> ClassifyOptions:
        """``--crop`` filled in for the data (96 for pcam, 224 for a folder)."""
        return options.resolved()  # type: ignore[return-value]

    def prepare(self, options: ClassifyOptions, resume: bool) -> None:
        self.source = labelled_source(options, "classify")
        labels = self.source.train.labels
        self.subset = labelled_subset(
            labels, options.label_fraction, options.seed, count=options.label_count
        )

    def description(self, options: ClassifyOptions) -> str:
        return source_description(self.source)

    def write_inputs(self, run: Path, options: ClassifyOptions) -> None:
        write_subset(run, self.subset)
        if self.source.kind != "pcam":
            write_splits(run, self.source)

    def check_resumed(self, run: Path, options: ClassifyOptions) -> None:
        check_splits(run, self.source)
        saved = read_subset(run / SUBSET_FILE)
        if not np.array_equal(saved, self.subset):
            raise UserInputError(
                f"{run / SUBSET_FILE}: differs from the subset drawn from {options.data} "
                "(has the training split changed?)"
            )

    def batch_size(self, options: ClassifyOptions, world_size: int) -> int:
        """The per-process batch of a run on ``world_size`` processes (:func:`classify_batch_size`)."""
        return classify_batch_size(options.batch_size, len(self.subset), world_size)

    def total_steps(self, options: ClassifyOptions, world_size: int) -> int:
        return training_length(
            len(self.subset),
            self.batch_size(options, world_size),
            world_size,
            options.epochs,
            options.min_steps,
            options.max_steps,
        )

    def callbacks(self, options: ClassifyOptions) -> list[Any]:
        return [ValidationCallback()]

    def module(self, options: ClassifyOptions, total_steps: int) -> ClassifierModule:
        val_every = validation_interval(options.val_every, total_steps)
        module = ClassifierModule(
            options,
            total_steps=total_steps,
            val_every=val_every,
            num_classes=len(self.source.classes),
        )
        module.val_dataset = self.source.val
        return module

    def init_weights(self, module: ClassifierModule, options: ClassifyOptions) -> None:
        from histodrl.downstream.init import load_init

        load_init(module.encoder, options.init)

    def loader(
        self, module: ClassifierModule, options: ClassifyOptions, total_steps: int
    ) -> DataLoader:
        batch_size = self.batch_size(options, module.trainer.world_size)
        module.val_batch_size = max(batch_size, 256)
        return step_loader(
            module.trainer,
            Subset(self.source.train, self.subset.tolist()),
            batch_size=batch_size,
            total_steps=total_steps,
            seed=options.seed,
            num_workers=int(options.num_workers or 0),
        )

    def trained(
        self,
        run: Path,
        module: ClassifierModule,
        trainer: Any,
        options: ClassifyOptions,
        total_steps: int,
    ) -> Trained:
        return Trained(
            module,
            device=trainer.strategy.root_device,
            precision=str(trainer.precision),
            batch_size=self.batch_size(options, trainer.world_size),
        )

    def finish(self, run: Path, options: ClassifyOptions, result: Trained) -> int:
        metrics = finish_classify(
            run, options, result, self.source, self.subset, self.description(options)
        )
        print(
            f"histodrl: selected step {metrics['selected_step']} (val accuracy "
            f"{metrics['val_accuracy']:.4f}); test accuracy {metrics['test_accuracy']:.4f}; "
            f"wrote {run / REPORT_FILE}"
        )
        return 0


def run_classify(options: ClassifyOptions, launch: Launch = Launch()) -> int:
    """``histodrl classify``: fine-tune, select on validation, test; write the run folder.

    Writes ``RUN/config.yaml``, ``RUN/subset_indices.txt`` (a folder: and ``RUN/splits.json``),
    ``RUN/checkpoints/last.ckpt``, ``RUN/metrics.csv``, ``RUN/classifier.safetensors``,
    ``RUN/metrics.json`` and ``RUN/report.md`` (see :mod:`histodrl.runs.lifecycle` for
    ``--resume`` and ``--overwrite``).

    Returns:
        The exit status (0).

    Raises:
        UserInputError: bad data (:func:`~histodrl.downstream.evaluation.labelled_source`), a
            subset too small for the processes, an existing run folder without ``--overwrite`` /
            ``--resume``, or a resumed run whose subset or splits file no longer matches its
            data.
    """
    return int(run_task(ClassifyTask(), options, launch) or 0)


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


def finish_classify(
    run: Path,
    options: ClassifyOptions,
    trained: Trained,
    source: Any,
    subset: np.ndarray,
    description: str,
) -> dict[str, Any]:
    """Test the selected model; write ``classifier.safetensors``, ``metrics.json``, ``report.md``.

    Args:
        source: the :class:`~histodrl.data.labelled.ClassificationSource` trained on.

    Returns:
        The metrics written to ``RUN/metrics.json``.
    """
    from safetensors.torch import save_file

    from histodrl.downstream.init import describe_init

    module = trained.module
    if module.best_state is None:
        raise RuntimeError("no validation was run: nothing to select")
    model = module.model
    model.load_state_dict(module.best_state)
    model.to(trained.device)
    workers = int(options.num_workers or 0)
    test = source.test
    loader = eval_loader(test, np.arange(len(test)), max(trained.batch_size, 256), workers)
    labels, probs = predict_class_probabilities(model, loader, trained.device, trained.precision)
    scores = classification_scores(labels, probs)

    state = {k: v.contiguous() for k, v in module.best_state.items()}
    meta = {
        "format": "histodrl-classifier-1",
        "arch": options.arch,
        "width": str(options.width),
        "init": options.init,
        "selected_step": str(module.best_step),
    }
    if source.kind != "pcam":
        meta["classes"] = ",".join(source.classes)
        meta["crop"] = str(options.tile_size)
    with atomic_path(run / CLASSIFIER_FILE) as tmp:
        save_file(state, str(tmp), metadata=meta)

    train_labels = source.train.labels[subset]
    if source.kind == "pcam":  # as before folders: keyed by label
        per_class = {str(c): int((train_labels == c).sum()) for c in np.unique(train_labels)}
    else:
        per_class = class_counts(train_labels, source.classes)
    metrics: dict[str, Any] = {
        "task": "classify",
        "data": description,
        "init": options.init,
        "init_description": describe_init(options.init),
        "label_fraction": options.label_fraction,
        **({} if options.label_count is None else {"label_count": options.label_count}),
        "seed": options.seed,
        "n_labelled": int(len(subset)),
        "labelled_per_class": per_class,
        "batch_size": int(trained.batch_size),
        "total_steps": int(module.total_steps),
        "val_every": int(module.val_every),
        "selected_step": int(module.best_step),
        "val_accuracy": float(module.best_accuracy),
        "test_accuracy": float(scores["accuracy"]),
        "test_auc": scores["auc"],
        "n_valid": len(source.val),
        "n_test": len(test),
        "val_history": [{"step": s, "accuracy": a} for s, a in module.val_history],
    }
    if source.kind != "pcam":
        metrics.update(folder_metrics(source, scores, options))
    write_json(run / METRICS_FILE, metrics)
    atomic_write_text(run / REPORT_FILE, classify_report(metrics, options))
    return metrics


def folder_metrics(source: Any, scores: dict[str, Any], options: Any) -> dict[str, Any]:
    """What a ``folder:`` run adds to ``metrics.json``: the classes, their counts per split, the
    split and the test accuracy of each class (PCam runs keep their keys)."""
    classes = list(source.classes)
    return {
        "classes": classes,
        "n_classes": len(classes),
        "crop": int(options.tile_size),
        "split_seed": int(source.seed),
        "splits_file": SPLITS_FILE,
        "n_train": len(source.train),
        "train_per_class": class_counts(source.train.labels, classes),
        "valid_per_class": class_counts(source.val.labels, classes),
        "test_per_class": class_counts(source.test.labels, classes),
        "test_auc_kind": "class-1 probability" if len(classes) == 2 else "one-vs-rest macro",
        "test_balanced_accuracy": scores["balanced_accuracy"],
        "test_per_class_accuracy": dict(zip(classes, scores["per_class_accuracy"])),
    }


def classify_report(metrics: dict[str, Any], options: ClassifyOptions) -> str:
    """``RUN/report.md``: the result table and how it was obtained."""
    folder = "classes" in metrics
    header = ["init", "label fraction", "n labelled", "val acc", "test acc", "test AUC"]
    row = [
        metrics["init_description"],
        f"{metrics['label_fraction']:g}"
        if "label_count" not in metrics
        else f"count {metrics['label_count']}",
        metrics["n_labelled"],
        metrics["val_accuracy"],
        metrics["test_accuracy"],
        metrics["test_auc"],
    ]
    if folder:
        header.append("test balanced acc")
        row.append(metrics["test_balanced_accuracy"])
    table = markdown_table(header, [row])
    crop = options.tile_size
    n_out = metrics.get("n_classes", 2)
    if folder:
        per_class = ", ".join(f"{c}: {n}" for c, n in metrics["labelled_per_class"].items())
        title = f"# Patch classification ({n_out} classes: {', '.join(metrics['classes'])})"
        data = (
            f"- Data: {metrics['data']}; split seed {metrics['split_seed']}, the images of each "
            f"split in `{SPLITS_FILE}`."
        )
        what = "tiles"
        if n_out == 2:
            test_line = (
                "- Test: accuracy at the argmax of the two logits; ROC AUC of the "
                f"{metrics['classes'][1]} (class-1) probability; balanced accuracy: the mean "
                "of the per-class accuracies."
            )
        else:
            test_line = (
                f"- Test: accuracy at the argmax of the {n_out} logits; ROC AUC one-vs-rest of "
                "each class's probability, macro-averaged; balanced accuracy: the mean of the "
                "per-class accuracies."
            )
    else:
        per_class = ", ".join(f"class {c}: {n}" for c, n in metrics["labelled_per_class"].items())
        title = "# PCam patch classification"
        data = (
            f"- Data: {metrics['data']}; {metrics['n_valid']} validation and {metrics['n_test']} "
            "test patches."
        )
        what = "patches"
        test_line = (
            "- Test: accuracy at the argmax of the two logits; ROC AUC of the class-1 probability."
        )
    lines = [
        title,
        "",
        table,
        "",
        data,
        f"- Labelled subset: {metrics['n_labelled']} training {what} ({per_class}), seed "
        f"{metrics['seed']}, indices in `{SUBSET_FILE}`.",
        f"- Network: `{options.arch}` trunk (width {options.width:g}) on {crop}x{crop} "
        f"{what} -> global average pooling -> dropout {options.dropout:g} -> "
        f"Linear(-> {n_out}); whole network fine-tuned.",
        f"- Training: Adam lr {options.lr:g}, batch {metrics['batch_size']}, "
        f"{metrics['total_steps']} steps; random resized crop {crop} (area {CROP_SCALE[0]:g}-"
        f"{CROP_SCALE[1]:g}), flips and 90° rotations, colour jitter.",
        f"- Model selection: validation accuracy every {metrics['val_every']} steps and after the "
        f"last; selected step {metrics['selected_step']} (best, ties to the earlier). Weights in "
        f"`{CLASSIFIER_FILE}`.",
        test_line,
        "",
    ]
    if folder:
        lines += [
            "## Per class",
            "",
            markdown_table(
                ["label", "class", "labelled", "validation", "test", "test acc"],
                [
                    [
                        k,
                        name,
                        metrics["labelled_per_class"][name],
                        metrics["valid_per_class"][name],
                        metrics["test_per_class"][name],
                        metrics["test_per_class_accuracy"][name],
                    ]
                    for k, name in enumerate(metrics["classes"])
                ],
            ),
            "",
        ]
    return "\n".join(lines)
