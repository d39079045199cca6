"""The network ``histodrl classify`` fine-tunes and its LightningModule: seeded initialisation,
seeded dropout and augmentation, periodic validation and model selection.

The network is :class:`histodrl.nn.PatchClassifier`: the VGG-19(-BN) trunk, global average pooling
of pool5, dropout, Linear(-> number of classes). Every random number of a training step is a function of
``(seed, step, process)`` (:func:`histodrl.runs.sampling.step_generator`), so ``--resume`` is
exact. The selected model (best validation accuracy, ties to the earlier step) is kept in memory
and in the checkpoints, so a resumed run keeps it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histodrl.commands.classify import ClassifyOptions
from histodrl.commands.options import to_config
from histodrl.downstream.evaluation import (
    eval_loader,
    predict_class_probabilities,
    predicted_classes,
)
from histodrl.runs.lifecycle import LoaderFromTask
from histodrl.runs.sampling import derive_seed, step_generator

# Random resized crop: area and aspect ranges that keep the label-defining centre 32x32 inside
# every crop (min side = sqrt(0.6 * 3/4) * 96 = 64.4 px >= 64, see histodrl.downstream.classify).
# Class folders keep them: a folder's label is the whole tile's, and a crop of at least 60 % of
# the area (any tile size) keeps most of it while the augmentation stays that of PCam.
CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
# Colour jitter strengths (the paper says "color jittering" only); mild, as H&E stain variation.
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.04}
#: Key of the model-selection state in a checkpoint.
SELECTION_KEY = "histodrl_selection"


def build_classifier(
    arch: str, width: float, dropout: float, seed: int, num_classes: int = 2
) -> nn.Module:
    """A :class:`histodrl.nn.PatchClassifier` with ``num_classes`` outputs on a fresh trunk,
    initialised from ``seed``.

    The trunk (``classifier.encoder``) is drawn from ``derive_seed(seed, "encoder-init")``, the
    Linear layer from ``derive_seed(seed, "head-init")``; load ``--init`` weights into the trunk
    with :func:`histodrl.downstream.init.load_init`.

    Raises:
        ValueError: an unknown ``arch`` (:func:`histodrl.nn.build_encoder`).
    """
    from histodrl.nn import PatchClassifier, build_encoder

    encoder = build_encoder(
        arch, width, generator=torch.Generator().manual_seed(derive_seed(seed, "encoder-init"))
    )
    gen = torch.Generator().manual_seed(derive_seed(seed, "head-init"))
    return PatchClassifier(encoder, num_classes=num_classes, dropout=dropout, generator=gen)


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


class ClassifierModule(LoaderFromTask, L.LightningModule):
    """Fine-tunes a patch classifier, validates it periodically and keeps the best one.

    Args:
        options: the resolved options of ``histodrl classify`` (saved in checkpoints).
        total_steps: optimizer steps of the run.
        val_every: steps between validations (there is always one after the last step).
        num_classes: outputs of the Linear layer (the classes of the data).

    Attributes:
        val_dataset: the validation split (set by the task before training).
        val_batch_size: batch of the validation passes (set by the task).
        best_accuracy: best validation accuracy so far (``-1`` before the first validation).
        best_step: the step at which it was reached (``-1`` before).
        best_state: CPU copy of ``model.state_dict()`` at ``best_step``.
        val_history: ``[(step, accuracy), ...]`` of every validation.
    """

    def __init__(
        self, options: ClassifyOptions, total_steps: int, val_every: int, num_classes: int = 2
    ) -> None:
        super().__init__()
        self.options = options
        self.save_hyperparameters(to_config(options))
        self.seed = options.seed
        self.total_steps = int(total_steps)
        self.val_every = int(val_every)
        self.num_classes = int(num_classes)
        self.model = build_classifier(
            options.arch, options.width, options.dropout, self.seed, self.num_classes
        )
        self.model.to(memory_format=torch.channels_last)
        self.best_accuracy = -1.0
        self.best_step = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.val_history: list[tuple[int, float]] = []
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
        if self.options.compile and self._compiled is None:
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
        accuracy = (logits.detach().argmax(dim=1) == y).float().mean()
        self.log_dict(
            {"train/loss": loss.detach(), "train/accuracy": accuracy},
            on_step=True,
            on_epoch=False,
            batch_size=x.shape[0],
        )
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=False)
        self._step_gen = None
        return loss  # the run's FiniteWatch checks it on the device

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.options.lr)

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
            workers = int(self.options.num_workers or 0)
            self._val_loader = eval_loader(self.val_dataset, shard, self.val_batch_size, workers)
        labels, probs = predict_class_probabilities(
            self.model, self._val_loader, self.device, str(self.trainer.precision)
        )
        correct = (predicted_classes(probs) == labels).sum() if len(labels) else 0
        counts = torch.tensor(
            [float(correct), float(len(labels))],
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
        checkpoint[SELECTION_KEY] = {
            "best_accuracy": self.best_accuracy,
            "best_step": self.best_step,
            "history": [[s, a] for s, a in self.val_history],
            "state": self.best_state,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        selection = checkpoint.get(SELECTION_KEY) or {}
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
