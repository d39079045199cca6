"""Evaluating two-class patch classifiers on PCam: the splits, the labelled subset, batched
predictions, scores and the report helpers shared by ``histodrl classify`` and ``histodrl probe``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from histodrl.errors import UserInputError
from histodrl.io import atomic_write_text
from histodrl.runs.trainer import autocast_for

#: The labelled training subset of a run, one training-split index per line.
SUBSET_FILE = "subset_indices.txt"


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
