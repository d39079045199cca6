"""``histodrl segment``: fine-tune a U-Net on labelled images and score its object instances.

The data is a labelled segmentation source (:func:`histodrl.data.labelled.segmentation_source`):
``glas:DIR`` (GLaS: train, test A, test B), ``masks:DIR`` (the user's own images with instance or
binary masks, :mod:`histodrl.data.masks`) or ``monuseg:DIR`` (MoNuSeg tiles with Aperio XML,
:mod:`histodrl.data.monuseg`). Sources without test folders are split by a seeded, name-based
draw of ``--test-fraction`` of the images with ``--split-seed`` (default 0, not ``--seed``: every
run on a source, pretraining included, must hold out the same images); GLaS has its own split.

This module is the command as a task of the run lifecycle (:class:`SegmentTask`,
:func:`run_segment`); its pieces live beside it:

==================================================  ==============================================
:mod:`histodrl.commands.segment`                    the options (:class:`SegmentOptions`)
:mod:`~histodrl.downstream.segment_data`            training images, random windows, augmentation
:mod:`~histodrl.downstream.segment_loss`            BCE + soft Dice
:mod:`~histodrl.downstream.segment_model`           the U-Net and its LightningModule
:mod:`~histodrl.downstream.segment_inference`       whole-image inference, instances, scores
:mod:`~histodrl.downstream.segment_report`          ``report.md`` and the overlay figures
==================================================  ==============================================

The network is :class:`histodrl.nn.UNet` on a ``--arch`` encoder (``vgg19_bn`` by default; skips
at conv1_2, conv2_2, conv3_4, conv4_4, conv5_4, centre at pool5; decoder blocks of x2 bilinear
upsampling, concatenation and two 3x3 conv-BN-ReLU). The encoder starts from ``--init`` (random, a
pretraining run, an encoder file, or torchvision's ImageNet file,
:func:`histodrl.downstream.init.load_init`; FEM and discriminators are never transferred), the
decoder from random weights, and everything is fine-tuned with SGD, lr 0.005, batch 2 (paper
IV-A.2; momentum 0.9 and weight decay 5e-4 are METHOD.md's assumptions). The learning rate follows
the "poly" decay ``lr (1 - t/T)^0.9`` by default (``--schedule constant`` keeps it fixed; the paper
gives only the initial value).

Training (choices the paper leaves open, also in the README):

* **Data**: a seeded (``--seed``) ``--label-fraction`` of the training split (stratified by benign
  / malignant grade when the records have grades, as GLaS's ``Grade.csv`` gives,
  :func:`~histodrl.downstream.subsets.subset_indices`), listed in ``RUN/train_images.txt``; every
  split of the source is listed in ``RUN/splits.json``. Test splits are never trained on (nor is
  a validation folder).
* **Length**: ``--epochs`` counts passes over the *full* training split's image count, one random
  crop per image: ``floor(epochs x (n_train // batch))`` steps, whatever the label fraction, so
  runs with different fractions get the same number of updates. Default 100 epochs = 4200 steps
  at batch 2 on GLaS's 85 images; ``--max-steps`` alone sets the length, and caps it when
  ``--epochs`` is given too.
* **Crops**: each item is a random ``1.25 crop`` square window of one image (images smaller than
  that are reflect-padded, labels too); on the device, a random flip / 90° turn, a random resized
  crop (area 50-100 % of the window, aspect 3/4-4/3, resized to ``crop``: a scale jitter of about
  0.8-1.1x around the native resolution, which inference uses) and colour jitter (brightness,
  contrast, saturation 0.2, hue 0.04, on the image only). Labels go through the same geometry with
  nearest sampling.
* **Targets and loss**: channel 0 is "object" (any instance label: a gland, a nucleus); with
  ``--contour`` channel 1 is the DCAN contour (:func:`~histodrl.downstream.glands.contour_target`,
  ``--contour-width`` px deep inside each object, computed from the instance labels before
  resizing). The loss is the mean binary cross-entropy with logits over all channels and pixels,
  plus ``--dice-weight`` x the soft Dice loss of the object channel.

Inference on whole test images of any size: overlapping ``crop`` tiles blended with a Gaussian
weight (:func:`~histodrl.downstream.sliding.sliding_window_logits`), sigmoid, then
:func:`~histodrl.downstream.glands.instances_from_probabilities`: object > threshold (and, with a
contour channel, contour <= threshold before the connected components, the contour band then
given back to the nearest object), holes filled, 8-connected components, objects under
``--min-object-area`` px removed (default: the source's, resolved into ``config.yaml``: 100 for
GLaS, 30 for MoNuSeg nuclei, derived from the training objects for masks). The instance maps are
written to ``RUN/predictions/<name>.png`` and scored per test part (GLaS: test A and test B) with
the GLaS object metrics and the pixel Dice, pooled (challenge definition) and per-image mean
(``RUN/metrics.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from histodrl.commands.segment import DEFAULT_EPOCHS, SegmentOptions
from histodrl.downstream.segment_data import SPLITS_FILE, TRAIN_IMAGES_FILE
from histodrl.errors import UserInputError
from histodrl.runs.layout import METRICS_FILE, REPORT_FILE
from histodrl.runs.lifecycle import Launch, LightningTask, run_task


def _hd(value: float | None) -> str:
    """An object Hausdorff for the console: 2 decimals, or ``skipped`` (``--skip-hausdorff``)."""
    return "skipped" if value is None else f"{value:.2f}"


def _budget(options: SegmentOptions) -> str:
    """``label fraction F`` or ``label count N``, as the options ask."""
    if options.label_count is not None:
        return f"label count {options.label_count}"
    return f"label fraction {options.label_fraction}"


class SegmentTask(LightningTask[SegmentOptions]):
    """``histodrl segment`` for :func:`histodrl.runs.lifecycle.run_task`: the source's training
    images of the label fraction, the U-Net, and the evaluation on each test part at the end."""

    options_class = SegmentOptions

    def __init__(self) -> None:
        self.source: Any = None  # the SegmentationSource
        self._source_key: tuple[Any, ...] | None = None
        self.train: Any = None  # the training split
        self.chosen: Any = None  # indices into self.train: the label-fraction subset

    def _load(self, options: SegmentOptions) -> Any:
        """The source of ``options`` (read once per data, split seed and test fraction)."""
        from histodrl.data.labelled import segmentation_source

        key = (options.data, options.split_seed, options.test_fraction)
        if self.source is None or self._source_key != key:
            self.source = segmentation_source(
                options.data,
                seed=options.split_seed,
                test_fraction=options.test_fraction,
                val_fraction=0.0,
            )
            self._source_key = key
        return self.source

    def resolve(self, options: SegmentOptions) -> SegmentOptions:
        if options.min_object_area is not None:
            return options.resolved()
        # The default smallest object is the source's (masks: derived from its training objects).
        return options.resolved(self._load(options).min_object_area)

    def prepare(self, options: SegmentOptions, resume: bool) -> None:
        from histodrl.downstream.segment_data import training_images

        source = self._load(options)
        self.train = source.train
        self.chosen = training_images(
            self.train, options.label_fraction, options.seed, count=options.label_count
        )

    def _names(self) -> list[str]:
        return [self.train.records[i].name for i in self.chosen]

    def description(self, options: SegmentOptions) -> str:
        return (
            f"{self.train.description}, {len(self.chosen)} used for training ({_budget(options)})"
        )

    def write_inputs(self, run: Path, options: SegmentOptions) -> None:
        from histodrl.io import atomic_write_text

        atomic_write_text(run / TRAIN_IMAGES_FILE, "".join(f"{n}\n" for n in self._names()))
        splits = json.dumps(self.source.split_lists(), indent=2)
        atomic_write_text(run / SPLITS_FILE, splits + "\n")

    def check_resumed(self, run: Path, options: SegmentOptions) -> None:
        path = run / TRAIN_IMAGES_FILE
        if path.is_file() and path.read_text().split() != self._names():
            raise UserInputError(
                f"{path}: lists other training images than the label-fraction subset of "
                f"{options.data} now gives (has the folder changed since the run started?)"
            )
        path = run / SPLITS_FILE
        if path.is_file() and json.loads(path.read_text()) != self.source.split_lists():
            raise UserInputError(
                f"{path}: lists other splits than {options.data} now gives with split seed "
                f"{options.split_seed} (has the folder changed since the run started?)"
            )

    def total_steps(self, options: SegmentOptions, world_size: int) -> int:
        from histodrl.runs.sampling import planned_steps

        epochs = options.epochs
        if epochs is None and options.max_steps is None:
            epochs = DEFAULT_EPOCHS
        # Counted on the full training set, whatever the label fraction (module docstring).
        per_epoch = len(self.train) // (options.batch_size * world_size)
        return planned_steps(per_epoch, epochs, options.max_steps)

    def module(self, options: SegmentOptions, total_steps: int) -> Any:
        from histodrl.downstream.segment_model import SegmentationModule

        return SegmentationModule(options, total_steps)

    def init_weights(self, module: Any, options: SegmentOptions) -> None:
        from histodrl.downstream.init import load_init

        load_init(module.model.encoder, options.init)

    def loader(self, module: Any, options: SegmentOptions, total_steps: int) -> Any:
        from histodrl.downstream.segment_data import SegmentationCrops, window_side
        from histodrl.runs.sampling import step_loader

        trainer = module.trainer
        dataset = SegmentationCrops(
            self.train,
            self.chosen,
            window_side(options.crop),
            seed=options.seed,
            contour_width=options.contour_width if options.contour else None,
            min_length=options.batch_size * trainer.world_size,
        )
        return step_loader(
            trainer,
            dataset,
            batch_size=options.batch_size,
            total_steps=total_steps,
            seed=options.seed,
            num_workers=int(options.num_workers or 0),
            epoch_indices=True,
        )

    def trained(
        self, run: Path, module: Any, trainer: Any, options: SegmentOptions, total_steps: int
    ) -> tuple[Any, int]:
        return module.model, int(trainer.global_step)

    def finish(self, run: Path, options: SegmentOptions, result: tuple[Any, int]) -> dict[str, Any]:
        """Segment and score the test images; write ``metrics.json``, figures and ``report.md``."""
        from histodrl.downstream.init import describe_init
        from histodrl.downstream.segment_inference import PREDICTIONS_DIR, evaluate_source
        from histodrl.downstream.segment_report import object_nouns, report_markdown, write_figures
        from histodrl.io import atomic_write_text
        from histodrl.runs.trainer import resolve_device

        model, steps = result
        model = model.to(resolve_device(options.accelerator)).eval()
        metrics, kept = evaluate_source(
            model,
            self.source,
            options,
            predictions_dir=run / PREDICTIONS_DIR,
            keep=options.figures,
        )
        atomic_write_text(run / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        figures = write_figures(run, kept, object_nouns(self.source.kind))
        report = report_markdown(
            options,
            metrics,
            figures=figures,
            init_description=describe_init(options.init),
            n_train=len(self.train),
            n_used=len(self.chosen),
            steps=steps,
            source=self.source,
        )
        atomic_write_text(run / REPORT_FILE, report)
        for part, values in metrics.items():
            s = values["pooled"]
            print(
                f"histodrl: {part} ({values['n_images']} images, pooled): F1 {s['f1']:.4f}, "
                f"object Dice {s['dice']:.4f}, object Hausdorff {_hd(s['hausdorff'])}, "
                f"pixel Dice {s['pixel_dice']:.4f}"
            )
        print(f"histodrl: wrote {run / REPORT_FILE}")
        return metrics


def run_segment(options: SegmentOptions, launch: Launch = Launch()) -> dict[str, Any]:
    """Fine-tune, segment the test images and write the run folder; returns ``metrics.json``.

    Writes ``RUN/config.yaml``, ``RUN/train_images.txt``, ``RUN/splits.json``,
    ``RUN/checkpoints/last.ckpt``,
    ``RUN/metrics.csv``, ``RUN/predictions/*.png``, ``RUN/metrics.json``, ``RUN/figures/*.png``
    and ``RUN/report.md`` (see :mod:`histodrl.runs.lifecycle`). With ``launch.resume``, training
    continues from the last checkpoint and the evaluation is redone.

    Returns:
        The metrics written to ``RUN/metrics.json`` (``{}`` in the extra processes of a
        multi-process run, which do not evaluate).
    """
    return run_task(SegmentTask(), options, launch) or {}
