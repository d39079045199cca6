"""``histodrl classify``: PCam patch classification with few labels (the paper's Table III).

The network is :class:`histodrl.nn.PatchClassifier`: the VGG-19(-BN) trunk on 96x96 patches, global
average pooling of pool5 (3x3), dropout 0.5, Linear(512 -> 2). The trunk starts from ``--init``
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
  contains the centre 32x32 square that defines the PCam label (a side of at least 64 px).
* **Validation** on the whole validation split every ``--val-every`` steps (default: 20 times per
  run) and after the last step. The **selected model** is the one with the best validation
  accuracy; ties go to the earlier step. It is kept (in memory and in the checkpoints, so resuming
  keeps it) and written to ``RUN/classifier.safetensors``.
* **Test**: the selected model's accuracy and ROC AUC (softmax probability of class 1) on the test
  split, in ``RUN/metrics.json`` and ``RUN/report.md``.

The functions shared with ``histodrl probe`` (splits, subsets, batched evaluation, reports) live
here too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histodrl.errors import UserInputError
from histodrl.io import atomic_path, atomic_write_text
from histodrl.training import autocast_for

SUBSET_FILE = "subset_indices.txt"
CLASSIFIER_FILE = "classifier.safetensors"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"

# Random resized crop: area and aspect ranges that keep the label-defining centre 32x32 inside
# every crop (min side = sqrt(0.6 * 3/4) * 96 = 64.4 px >= 64, see the module docstring).
CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# Colour jitter strengths (the paper says "color jittering" only); mild, as H&E stain variation.
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.04}

# ------------------------------------------------------------------------------------------------
# Shared with histodrl probe: data, subsets, evaluation, reports
# ------------------------------------------------------------------------------------------------


def pcam_splits(data: str, cache_ram: bool = False) -> dict[str, Any]:
    """The labelled ``train``, ``valid`` and ``test`` splits of a ``pcam:DIR`` source.

    Args:
        data: ``pcam:DIR`` (:func:`histodrl.data.sources.parse_source`).
        cache_ram: read every split into memory first (:class:`histodrl.data.pcam.PCamDataset`).

    Returns:
        ``{"train": PCamDataset, "valid": ..., "test": ...}``, each with ``labels``.

    Raises:
        UserInputError: not a ``pcam:`` source, a missing split file (named), a wrong HDF5 layout,
            or a training split with a single class.
    """
    from histodrl.data.pcam import PCamDataset
    from histodrl.data.sources import parse_source

    kind, path = parse_source(data)
    if kind != "pcam":
        raise UserInputError(f"{data}: expected a pcam:DIR source (labelled PCam HDF5 files)")
    splits = {s: PCamDataset(path, s, cache_ram=cache_ram) for s in ("train", "valid", "test")}
    if len(np.unique(splits["train"].labels)) < 2:
        raise UserInputError(
            f"{splits['train'].y_path}: all labels are equal (expected both classes 0 and 1)"
        )
    return splits


def labelled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified ``fraction`` of a labelled split.

    Every class present keeps ``round(fraction x its size)`` examples, and at least one
    (:func:`histodrl.downstream.subsets.subset_indices`): 0.01 % of PCam's 262,144 training
    patches is 26 patches, 13 of each class. The same ``(labels, fraction, seed)`` always gives the
    same subset, so runs with different ``--init`` and the same ``--seed`` train on the same patches.

    Args:
        labels: class of each example. Shape: (N,).
        fraction: share of the examples to keep, in (0, 1].
        seed: seed of the draw.

    Returns:
        int64 indices, strictly increasing. Shape: (n_labelled,).

    Raises:
        UserInputError: ``fraction`` outside (0, 1] or an empty split.
    """
    from histodrl.downstream.subsets import subset_indices

    labels = np.asarray(labels)
    return subset_indices(len(labels), fraction, seed, labels=labels).astype(np.int64)


def write_subset(run: Path, indices: np.ndarray) -> Path:
    """Write ``RUN/subset_indices.txt`` (one training-split index per line), atomically."""
    path = Path(run) / SUBSET_FILE
    atomic_write_text(path, "".join(f"{int(i)}\n" for i in indices))
    return path


def read_subset(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``subset_indices.txt`` written by :func:`write_subset`.

    Raises:
        UserInputError: a missing file or a line that is not a non-negative integer.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: subset file not found")
    values = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(int(line))
        except ValueError as exc:
            raise UserInputError(f"{path} line {line_no}: {line!r} is not an index") from exc
    out = np.asarray(values, dtype=np.int64)
    if out.size and out.min() < 0:
        raise UserInputError(f"{path}: negative index {out.min()}")
    return out


def eval_loader(
    dataset: Dataset,
    indices: Sequence[int] | np.ndarray,
    batch_size: int,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset[indices]`` in the given order, whole batches at a time.

    Sorted indices make each batch one contiguous HDF5 read. Workers are persistent, so a loader
    used for repeated validations starts its processes once.
    """
    indices = [int(i) for i in indices]
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def eval_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 patches -> the network's input: float in [0, 1], ImageNet-normalised, channels_last.

    Shape: (N, 3, H, W) uint8 -> (N, 3, H, W) float32.
    """
    from histodrl.data.augment import normalize, to_float

    return normalize(to_float(x)).contiguous(memory_format=torch.channels_last)


def iterate_eval_batches(
    loader: DataLoader, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(network input, labels)`` on ``device`` for each batch of an :func:`eval_loader`."""
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        yield eval_input(x), y.to(device, non_blocking=True)


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-1 probabilities of a two-class ``model`` in eval mode, and the true labels.

    The model's train/eval mode is restored afterwards; BatchNorm statistics do not change.

    Args:
        model: maps the :func:`eval_input` batch (N, 3, H, W) to logits (N, 2).
        loader: batches of ``(uint8 patches, labels)`` (:func:`eval_loader`).
        device: where to run the model (it must already be there).
        precision: Lightning precision name (autocast for ``bf16-mixed``); ``None``: bf16 on CUDA.

    Returns:
        ``(labels, probabilities)``: int64 (N,) and float64 (N,) softmax probabilities of class 1.
    """
    was_training = model.training
    model.eval()
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    try:
        for x, y in iterate_eval_batches(loader, device):
            with autocast_for(device, precision):
                logits = model(x)
            probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not labels:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    return (
        torch.cat(labels).numpy().astype(np.int64),
        torch.cat(probs).double().numpy(),
    )


def classification_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float | None]:
    """Accuracy (threshold 0.5, i.e. the argmax of two logits) and ROC AUC of class-1 scores.

    ``auc`` is ``None`` when the labels hold one class only (the AUC is undefined then).
    """
    from histodrl.metrics import accuracy, roc_auc

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities > 0.5).astype(np.int64)
    auc = roc_auc(labels, probabilities) if len(np.unique(labels)) == 2 else None
    return {"accuracy": accuracy(labels, predicted), "auc": auc}


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats with 4 decimals, ``None`` as ``n/a``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------------------------------
# Configuration
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


def check_options(c: dict[str, Any]) -> None:
    """Validate the numeric options of ``classify`` once, with one-line errors naming the value."""
    if not 0 < float(c["label_fraction"]) <= 1:
        raise UserInputError(f"--label-fraction {c['label_fraction']}: expected a number in (0, 1]")
    checks: list[tuple[str, bool, str]] = [
        ("--epochs", float(c["epochs"]) > 0, "a number > 0"),
        ("--min-steps", int(c["min_steps"]) >= 0, "an integer >= 0"),
        ("--batch-size", int(c["batch_size"]) >= 2, "an integer >= 2 (BatchNorm needs 2)"),
        ("--lr", float(c["lr"]) > 0, "a number > 0"),
        ("--dropout", 0 <= float(c["dropout"]) < 1, "a probability in [0, 1)"),
        ("--width", float(c["width"]) > 0, "a number > 0"),
    ]
    if c.get("val_every") is not None:
        checks.append(("--val-every", int(c["val_every"]) >= 1, "an integer >= 1"))
    if c.get("max_steps") is not None:
        checks.append(("--max-steps", int(c["max_steps"]) >= 1, "an integer >= 1"))
    for name, ok, expected in checks:
        if not ok:
            key = name.removeprefix("--").replace("-", "_")
            raise UserInputError(f"{name} {c[key]}: expected {expected}")


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


# ------------------------------------------------------------------------------------------------
# The LightningModule
# ------------------------------------------------------------------------------------------------


def dropout_with_generator(
    x: torch.Tensor, p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Inverted dropout whose mask comes from ``generator`` (``nn.Dropout`` uses the global RNG).

    Each element is zeroed with probability ``p`` and the others are scaled by ``1 / (1 - p)``,
    as ``torch.nn.functional.dropout`` in training mode.

    Shape: any; the output has the shape of ``x``.
    """
    if p == 0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


def build_encoder(arch: str, width: float, seed: int) -> nn.Module:
    """A fresh VGG-19(-BN) trunk whose initial weights are drawn from ``seed``.

    Raises:
        UserInputError: an unknown ``arch``.
    """
    from histodrl.nn import vgg19, vgg19_bn
    from histodrl.training import derive_seed

    builders = {"vgg19_bn": vgg19_bn, "vgg19": vgg19}
    if arch not in builders:
        raise UserInputError(f"--arch {arch!r}: expected vgg19_bn or vgg19")
    gen = torch.Generator().manual_seed(derive_seed(seed, "encoder-init"))
    return builders[arch](width=width, generator=gen)


def build_classifier(arch: str, width: float, dropout: float, seed: int) -> nn.Module:
    """A :class:`histodrl.nn.PatchClassifier` on a fresh trunk, initialised from ``seed``.

    The trunk is ``classifier.encoder`` (load ``--init`` weights into it with
    :func:`histodrl.downstream.init.load_init`).

    Raises:
        UserInputError: an unknown ``arch``.
    """
    from histodrl.nn import PatchClassifier
    from histodrl.training import derive_seed

    encoder = build_encoder(arch, width, seed)
    gen = torch.Generator().manual_seed(derive_seed(seed, "head-init"))
    return PatchClassifier(encoder, num_classes=2, dropout=dropout, generator=gen)


class ClassifierModule(L.LightningModule):
    """Fine-tunes a patch classifier, validates it periodically and keeps the best one.

    Args:
        config: the resolved options of ``histodrl classify`` (saved in checkpoints).
        total_steps: optimizer steps of the run.
        val_every: steps between validations (there is always one after the last step).

    Attributes:
        best_accuracy: best validation accuracy so far (``-1`` before the first validation).
        best_step: the step at which it was reached (``-1`` before).
        best_state: CPU copy of ``model.state_dict()`` at ``best_step``.
        val_history: ``[(step, accuracy), ...]`` of every validation.
    """

    def __init__(self, config: dict[str, Any], total_steps: int, val_every: int) -> None:
        super().__init__()
        self.save_hyperparameters(config)
        self.config = config
        self.seed = int(config["seed"])
        self.total_steps = int(total_steps)
        self.val_every = int(val_every)
        self.model = build_classifier(
            str(config["arch"]), float(config["width"]), float(config["dropout"]), self.seed
        )
        self.model.to(memory_format=torch.channels_last)
        self.best_accuracy = -1.0
        self.best_step = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.val_history: list[tuple[int, float]] = []
        self.loader_factory: Callable[[ClassifierModule], DataLoader] | None = None
        self.val_dataset: Dataset | None = None
        self.val_batch_size = 256
        self._val_loader: DataLoader | None = None
        self._step_gen: torch.Generator | None = None
        self._compiled: Any = None

    # -- model -------------------------------------------------------------------------------------

    @property
    def encoder(self) -> nn.Module:
        """The trunk, ``model.encoder`` (not registered twice, so state dict keys stay unique)."""
        return self.model.encoder

    def configure_model(self) -> None:
        if self.config.get("compile") and self._compiled is None:
            # Compiled separately so that the state dict keeps the plain trunk's key names.
            self._compiled = torch.compile(self.encoder.forward)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled pool5 features. Shape: (N, 3, H, W) -> (N, C)."""
        trunk = self._compiled if self._compiled is not None else self.encoder
        return trunk(x).mean(dim=(2, 3))

    # -- training ----------------------------------------------------------------------------------

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment a training batch on the device: resized crop, flip/rot90, colour jitter.

        Every random number comes from the generator of ``(seed, step, process)``.
        """
        from histodrl.data.augment import (
            color_jitter,
            normalize,
            random_flip_rot90,
            random_resized_crop,
            to_float,
        )
        from histodrl.training import step_generator

        x, y = batch
        gen = step_generator(self.seed, self.global_step, self.global_rank, self.device)
        self._step_gen = gen
        x = to_float(x)
        x = random_resized_crop(x, x.shape[-1], scale=CROP_SCALE, ratio=CROP_RATIO, generator=gen)
        x = random_flip_rot90(x, generator=gen)
        x = color_jitter(x, generator=gen, **JITTER)
        x = normalize(x).contiguous(memory_format=torch.channels_last)
        return x, y.long()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        features = self.features(x)
        p = float(self.model.dropout.p)
        logits = self.model.fc(dropout_with_generator(features, p, self._step_gen))
        loss = F.cross_entropy(logits.float(), y)
        if self.global_step % max(1, int(self.config.get("log_every", 10))) == 0:
            from histodrl.training import check_finite

            check_finite(loss.detach(), "loss", self.global_step)
        accuracy = (logits.detach().argmax(dim=1) == y).float().mean()
        self.log_dict(
            {"train/loss": loss.detach(), "train/accuracy": accuracy},
            on_step=True,
            on_epoch=False,
            batch_size=x.shape[0],
        )
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=False)
        self._step_gen = None
        return loss

    def train_dataloader(self) -> DataLoader:
        # Built after the processes are launched, when this process's rank is known.
        if self.loader_factory is None:
            raise RuntimeError("set module.loader_factory before trainer.fit")
        return self.loader_factory(self)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=float(self.config["lr"]))

    # -- validation and model selection ------------------------------------------------------------

    def validation_due(self, step: int) -> bool:
        """Validate after every ``val_every``-th step and after the last one."""
        return step % self.val_every == 0 or step == self.total_steps

    def validate(self, step: int) -> float:
        """Accuracy on the validation split; keeps the model if it is the best so far.

        Each process evaluates every ``world_size``-th patch and the counts are summed, so every
        process gets the same accuracy and makes the same choice. Ties keep the earlier model.
        """
        if self.val_dataset is None:
            raise RuntimeError("set module.val_dataset before trainer.fit")
        if self._val_loader is None:
            world, rank = self.trainer.world_size, self.global_rank
            shard = np.arange(len(self.val_dataset))[rank::world]
            workers = int(self.config.get("num_workers") or 0)
            self._val_loader = eval_loader(self.val_dataset, shard, self.val_batch_size, workers)
        labels, probs = predict_probabilities(
            self.model, self._val_loader, self.device, str(self.trainer.precision)
        )
        counts = torch.tensor(
            [float(((probs > 0.5) == labels).sum()), float(len(labels))],
            dtype=torch.float64,
            device=self.device,
        )
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        accuracy = float(counts[0] / counts[1].clamp_min(1))
        self.val_history.append((int(step), accuracy))
        self.log("val/accuracy", accuracy, on_step=True, on_epoch=False, batch_size=1)
        if accuracy > self.best_accuracy:
            self.best_accuracy = accuracy
            self.best_step = int(step)
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
        return accuracy

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["histodrl_selection"] = {
            "best_accuracy": self.best_accuracy,
            "best_step": self.best_step,
            "history": [[s, a] for s, a in self.val_history],
            "state": self.best_state,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        selection = checkpoint.get("histodrl_selection") or {}
        self.best_accuracy = float(selection.get("best_accuracy", -1.0))
        self.best_step = int(selection.get("best_step", -1))
        self.val_history = [(int(s), float(a)) for s, a in selection.get("history", [])]
        self.best_state = selection.get("state")


class ValidationCallback(L.Callback):
    """Runs :meth:`ClassifierModule.validate` when due, before the step's checkpoint is written.

    Lightning runs ``ModelCheckpoint`` after the other callbacks, so a checkpoint of step ``t``
    already holds the validation of step ``t`` and a resumed run never repeats or skips one.
    """

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if pl_module.validation_due(step):
            pl_module.validate(step)


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


def resolve_config(options: dict[str, Any]) -> dict[str, Any]:
    """Fill the machine-dependent defaults and validate the options (before any file is touched)."""
    c = dict(options)
    c.pop("resume", None)
    c.pop("overwrite", None)
    if c.get("num_workers") is None:
        c["num_workers"] = min(4, os.cpu_count() or 1)
    check_options(c)
    return c


def run_classify(options: dict[str, Any]) -> int:
    """``histodrl classify``: fine-tune, select on validation, test; write the run folder.

    Args:
        options: the command's options as a dict (:func:`histodrl.training.config_dict`) plus
            ``resume`` and ``overwrite``.

    Returns:
        The exit status (0).

    Raises:
        UserInputError: bad options or data (see :func:`check_options`, :func:`pcam_splits`), an
            existing run folder without ``--overwrite``/``--resume``, or a resumed run whose subset
            file no longer matches its data.
    """
    import lightning as L

    from histodrl.downstream.init import load_init
    from histodrl.pretext.train import is_launcher_process
    from histodrl.training import (
        prepare_run_dir,
        resumed_config,
        step_loader,
        trainer_from_config,
    )

    run = Path(options["out"])
    resume = bool(options.get("resume"))
    launcher = is_launcher_process()
    if resume:
        config = resumed_config(run, options, launcher=launcher)
        check_options(config)
    else:
        config = resolve_config(options)

    # Read and check the data before the run folder is created or emptied.
    splits = pcam_splits(str(config["data"]), cache_ram=bool(config.get("cache_ram")))
    train = splits["train"]
    subset = labelled_subset(train.labels, float(config["label_fraction"]), int(config["seed"]))
    if resume:
        saved_subset = read_subset(run / SUBSET_FILE)
        if not np.array_equal(saved_subset, subset):
            raise UserInputError(
                f"{run / SUBSET_FILE}: differs from the subset drawn from {config['data']} "
                "(has the training split changed?)"
            )
    if launcher:
        prepare_run_dir(run, overwrite=bool(options.get("overwrite")), resume=resume)

    trainer = trainer_from_config(run, config, extra_callbacks=[ValidationCallback()])
    world = trainer.world_size
    batch_size = classify_batch_size(int(config["batch_size"]), len(subset), world)
    if resume:
        total = int(config["total_steps"])
    else:
        total = training_length(
            len(subset),
            batch_size,
            world,
            float(config["epochs"]),
            int(config["min_steps"]),
            config.get("max_steps"),
        )
        config["total_steps"] = total
        config["data_description"] = train.description
    val_every = int(config.get("val_every") or max(1, math.ceil(total / 20)))
    trainer.fit_loop.epoch_loop.max_steps = total
    if launcher and not resume:
        from histodrl.training import write_config

        write_config(run, config)
        write_subset(run, subset)

    L.seed_everything(int(config["seed"]), workers=True, verbose=False)
    torch.use_deterministic_algorithms(bool(config.get("deterministic")), warn_only=True)
    module = ClassifierModule(config, total_steps=total, val_every=val_every)
    if not resume:
        load_init(module.encoder, str(config["init"]))
    module.val_dataset = splits["valid"]
    module.val_batch_size = max(batch_size, 256)
    labelled = torch.utils.data.Subset(train, subset.tolist())

    def loader(m: ClassifierModule) -> DataLoader:
        return step_loader(
            m.trainer,
            labelled,
            batch_size=batch_size,
            total_steps=total,
            seed=int(config["seed"]),
            num_workers=int(config["num_workers"]),
        )

    module.loader_factory = loader
    ckpt = str(run / "checkpoints" / "last.ckpt") if resume else None
    trainer.fit(module, ckpt_path=ckpt)
    if trainer.is_global_zero:
        metrics = finish_classify(
            run,
            module,
            splits,
            subset,
            device=trainer.strategy.root_device,
            precision=str(trainer.precision),
            batch_size=batch_size,
            val_every=val_every,
        )
        print(
            f"histodrl: selected step {metrics['selected_step']} (val accuracy "
            f"{metrics['val_accuracy']:.4f}); test accuracy {metrics['test_accuracy']:.4f}; "
            f"wrote {run / REPORT_FILE}"
        )
    return 0


def finish_classify(
    run: Path,
    module: ClassifierModule,
    splits: dict[str, Any],
    subset: np.ndarray,
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    val_every: int,
) -> dict[str, Any]:
    """Test the selected model; write ``classifier.safetensors``, ``metrics.json``, ``report.md``.

    Returns:
        The metrics written to ``RUN/metrics.json``.
    """
    from safetensors.torch import save_file

    from histodrl.downstream.init import describe_init

    config = module.config
    if module.best_state is None:
        raise RuntimeError("no validation was run: nothing to select")
    model = module.model
    model.load_state_dict(module.best_state)
    model.to(device)
    workers = int(config.get("num_workers") or 0)
    test = splits["test"]
    loader = eval_loader(test, np.arange(len(test)), max(batch_size, 256), workers)
    labels, probs = predict_probabilities(model, loader, device, precision)
    scores = classification_scores(labels, probs)

    state = {k: v.contiguous() for k, v in module.best_state.items()}
    meta = {
        "format": "histodrl-classifier-1",
        "arch": str(config["arch"]),
        "width": str(float(config["width"])),
        "init": str(config["init"]),
        "selected_step": str(module.best_step),
    }
    with atomic_path(run / CLASSIFIER_FILE) as tmp:
        save_file(state, str(tmp), metadata=meta)

    train_labels = splits["train"].labels[subset]
    per_class = {str(c): int((train_labels == c).sum()) for c in np.unique(train_labels)}
    metrics: dict[str, Any] = {
        "task": "classify",
        "data": config.get("data_description", config["data"]),
        "init": str(config["init"]),
        "init_description": describe_init(str(config["init"])),
        "label_fraction": float(config["label_fraction"]),
        "seed": int(config["seed"]),
        "n_labelled": int(len(subset)),
        "labelled_per_class": per_class,
        "batch_size": int(batch_size),
        "total_steps": int(module.total_steps),
        "val_every": int(val_every),
        "selected_step": int(module.best_step),
        "val_accuracy": float(module.best_accuracy),
        "test_accuracy": float(scores["accuracy"]),
        "test_auc": scores["auc"],
        "n_valid": len(splits["valid"]),
        "n_test": len(test),
        "val_history": [{"step": s, "accuracy": a} for s, a in module.val_history],
    }
    write_json(run / METRICS_FILE, metrics)
    atomic_write_text(run / REPORT_FILE, classify_report(metrics, config))
    return metrics


def classify_report(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """``RUN/report.md``: the result table and how it was obtained."""
    table = markdown_table(
        ["init", "label fraction", "n labelled", "val acc", "test acc", "test AUC"],
        [
            [
                metrics["init_description"],
                f"{metrics['label_fraction']:g}",
                metrics["n_labelled"],
                metrics["val_accuracy"],
                metrics["test_accuracy"],
                metrics["test_auc"],
            ]
        ],
    )
    per_class = ", ".join(f"class {c}: {n}" for c, n in metrics["labelled_per_class"].items())
    lines = [
        "# PCam patch classification",
        "",
        table,
        "",
        f"- Data: {metrics['data']}; {metrics['n_valid']} validation and {metrics['n_test']} "
        "test patches.",
        f"- Labelled subset: {metrics['n_labelled']} training patches ({per_class}), seed "
        f"{metrics['seed']}, indices in `{SUBSET_FILE}`.",
        f"- Network: `{config['arch']}` trunk (width {float(config['width']):g}) on 96x96 "
        f"patches -> global average pooling -> dropout {float(config['dropout']):g} -> "
        "Linear(-> 2); whole network fine-tuned.",
        f"- Training: Adam lr {float(config['lr']):g}, batch {metrics['batch_size']}, "
        f"{metrics['total_steps']} steps; random resized crop 96 (area {CROP_SCALE[0]:g}-"
        f"{CROP_SCALE[1]:g}), flips and 90° rotations, colour jitter.",
        f"- Model selection: validation accuracy every {metrics['val_every']} steps and after the "
        f"last; selected step {metrics['selected_step']} (best, ties to the earlier). Weights in "
        f"`{CLASSIFIER_FILE}`.",
        "- Test: accuracy at the argmax of the two logits; ROC AUC of the class-1 probability.",
        "",
    ]
    return "\n".join(lines)
