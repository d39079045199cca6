"""Evaluating patch classifiers: the labelled splits (``pcam:`` or ``folder:``), the labelled
subset, batched predictions, scores and the report helpers shared by ``histodrl classify`` and
``histodrl probe``.

Scores (:func:`classification_scores`): accuracy at the argmax of the logits; per-class accuracy
(the recall of each class) and balanced accuracy (their mean over the classes present); ROC AUC of
the class-1 probability for two classes, and for more the one-vs-rest AUC of each class's
probability, macro-averaged (as ``sklearn.metrics.roc_auc_score(..., multi_class="ovr",
average="macro")``).
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

from histodrl.commands.classify import LabelledOptions
from histodrl.errors import UserInputError
from histodrl.io import atomic_write_text
from histodrl.runs.trainer import autocast_for

#: The labelled training subset of a run, one training-split index per line.
SUBSET_FILE = "subset_indices.txt"
#: The images of each split of a ``folder:`` source, ``{"train": [relative paths], ...}``.
SPLITS_FILE = "splits.json"


def labelled_source(options: LabelledOptions, command: str) -> Any:
    """The :class:`~histodrl.data.labelled.ClassificationSource` of ``--data`` for a command.

    ``folder:`` sources are split with ``--split-seed``, ``--val-fraction`` and
    ``--test-fraction`` and their tiles brought to ``--crop`` (:attr:`LabelledOptions.tile_size`);
    PCam keeps its official splits.

    Raises:
        UserInputError: a bad source (:func:`~histodrl.data.labelled.classification_source`:
            no class folders, an empty class folder, a single class, unreadable images ...), or
            no validation split (``command`` selects on it).
    """
    from histodrl.data.labelled import classification_source

    source = classification_source(
        options.data,
        options.split_seed,
        options.val_fraction,
        options.test_fraction,
        crop=options.tile_size,
        cache_ram=options.cache_ram,
    )
    if source.val is None or len(source.val) == 0:
        raise UserInputError(
            f"{options.data}: no validation split ({command} selects on it): set --val-fraction "
            "above 0 or add a val/ folder"
        )
    return source


def source_description(source: Any) -> str:
    """One line about the data: PCam's training split (as before), a folder's whole source."""
    return str(source.train.description if source.kind == "pcam" else source.description)


def class_counts(labels: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """``{class name: examples}`` in label order, classes without examples included."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    return {str(name): int(counts[k]) for k, name in enumerate(classes)}


def write_splits(run: Path, source: Any) -> Path:
    """Write ``RUN/splits.json``: the images of each split (:meth:`ClassificationSource.split_lists`)."""
    path = Path(run) / SPLITS_FILE
    lists = source.split_lists()
    data = {"classes": list(source.classes), "split_seed": int(source.seed), **lists}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def check_splits(run: Path, source: Any) -> None:
    """Refuse to resume a run whose ``splits.json`` differs from the splits of its data now.

    Raises:
        UserInputError: the classes or an image list differ (a missing file passes: older runs).
    """
    path = Path(run) / SPLITS_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc})") from exc
    now = {"classes": list(source.classes), **source.split_lists()}
    for key, value in now.items():
        if saved.get(key) != value:
            raise UserInputError(
                f"{path}: {key} differs from the data now (have images been added or removed?)"
            )


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


def labelled_subset(
    labels: np.ndarray, fraction: float, seed: int, count: int | None = None
) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified ``fraction`` (or ``count``) of a labelled split.

    Every class present keeps ``round(fraction x its size)`` examples, and at least one
    (:func:`histodrl.downstream.subsets.subset_indices`): 0.01 % of PCam's 262,144 training
    patches is 26 patches, 13 of each class. The same ``(labels, fraction, seed)`` always gives the
    same subset, so runs with different ``--init`` and the same ``--seed`` train on the same patches.
    With ``count`` (``--label-count``) the subset has exactly ``count`` examples instead
    (:func:`count_subset_indices`), ``fraction`` is then not used.

    Args:
        labels: class of each example. Shape: (N,).
        fraction: share of the examples to keep, in (0, 1].
        seed: seed of the draw.
        count: number of examples to keep, or ``None`` (use ``fraction``).

    Returns:
        int64 indices, strictly increasing. Shape: (n_labelled,).

    Raises:
        UserInputError: ``fraction`` outside (0, 1], an empty split, or a ``count`` larger than
            the split or smaller than its number of classes.
    """
    from histodrl.downstream.subsets import subset_indices

    labels = np.asarray(labels)
    if count is not None:
        return count_subset_indices(
            len(labels), count, seed, labels=labels, what="labelled training examples"
        )
    return subset_indices(len(labels), fraction, seed, labels=labels).astype(np.int64)


def count_subset_indices(
    n: int,
    count: int,
    seed: int,
    labels: np.ndarray | None = None,
    what: str = "labelled examples",
) -> np.ndarray:
    """Sorted indices of a seeded subset of exactly ``count`` of ``n`` examples (``--label-count``).

    Without ``labels`` the draw is the one :func:`histodrl.downstream.subsets.subset_indices`
    makes for the fraction ``count / n`` (the first ``count`` of a seeded permutation), so a count
    and the fraction it stands for give the same subset. With ``labels`` it is stratified: every
    class present gets its share ``count x n_c / n`` rounded by largest remainders, at least one
    example each, and the shares sum to ``count``; each class's examples are then the first of a
    seeded permutation of its members, drawn class by class in label order. The same
    ``(n, count, seed, labels)`` always gives the same subset, whatever the ``--init``.

    Args:
        n: size of the split.
        count: number of examples to keep, ``1 <= count <= n``.
        seed: seed of the draw.
        labels: class (or grade) of each example, or ``None`` (no stratification). Shape: (n,).
        what: how the examples are named in messages ("training images", "training tiles").

    Returns:
        int64 indices, strictly increasing. Shape: (count,).

    Raises:
        UserInputError: ``count`` below 1 or above ``n``, or (stratified) below the number of
            classes present.
    """
    count = int(count)
    if count < 1:
        raise UserInputError(f"--label-count {count}: expected a number >= 1")
    if count > n:
        raise UserInputError(
            f"--label-count {count}: expected at most {n}, the number of {what} in the training "
            "split"
        )
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.permutation(n)[:count]).astype(np.int64)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape}, expected ({n},)")
    classes = np.unique(labels)
    if count < len(classes):
        raise UserInputError(
            f"--label-count {count}: expected at least {len(classes)}, one per class of the "
            f"training split (a stratified subset)"
        )
    members = [np.flatnonzero(labels == c) for c in classes]
    sizes = np.array([len(m) for m in members])
    quota = count * sizes / n
    take = np.maximum(1, np.floor(quota)).astype(np.int64)
    # Largest remainders first (ties: the lower class), then give back from the largest excess.
    while take.sum() < count:
        room = np.where(take < sizes, quota - take, -np.inf)
        take[int(np.argmax(room))] += 1
    while take.sum() > count:
        excess = np.where(take > 1, take - quota, -np.inf)
        take[int(np.argmax(excess))] -= 1
    chosen = [rng.permutation(m)[:k] for m, k in zip(members, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


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
def predict_class_probabilities(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities of every class from ``model`` in eval mode, and the true labels.

    The model's train/eval mode is restored afterwards; BatchNorm statistics do not change.

    Args:
        model: maps the :func:`eval_input` batch (N, 3, H, W) to logits (N, K).
        loader: batches of ``(uint8 patches, labels)`` (:func:`eval_loader`).
        device: where to run the model (it must already be there).
        precision: Lightning precision name (autocast for ``bf16-mixed``); ``None``: bf16 on CUDA.

    Returns:
        ``(labels, probabilities)``: int64 (N,) and float64 (N, K) (softmax in float32).
    """
    was_training = model.training
    model.eval()
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    try:
        for x, y in iterate_eval_batches(loader, device):
            with autocast_for(device, precision):
                logits = model(x)
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not labels:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float64)
    return (
        torch.cat(labels).numpy().astype(np.int64),
        torch.cat(probs).double().numpy(),
    )


def predict_probabilities(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-1 probabilities of a two-class ``model`` (:func:`predict_class_probabilities`).

    Returns:
        ``(labels, probabilities)``: int64 (N,) and float64 (N,) softmax probabilities of class 1.
    """
    labels, probs = predict_class_probabilities(model, loader, device, precision)
    return labels, (probs[:, 1] if len(labels) else np.empty(0, dtype=np.float64))


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """The predicted class of each row: class-1 probability above 0.5 for a (N,) vector or two
    columns (the argmax of two logits), the argmax of more columns (ties: the lower class).

    Shape: (N,) or (N, K) -> (N,) int64.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 2 and probabilities.shape[1] == 2:
        probabilities = probabilities[:, 1]
    if probabilities.ndim == 1:
        return (probabilities > 0.5).astype(np.int64)
    return probabilities.argmax(axis=1).astype(np.int64)


def roc_auc_ovr(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One-vs-rest ROC AUC, macro-averaged: the mean over classes ``k`` of the binary AUC of
    ``labels == k`` against ``probabilities[:, k]`` (``sklearn.metrics.roc_auc_score`` with
    ``multi_class="ovr", average="macro"``).

    Shape: labels (N,), probabilities (N, K).

    Raises:
        ValueError: a class in ``0..K-1`` without examples (its AUC is undefined), or a label
            outside that range.
    """
    from histodrl.metrics import roc_auc

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = probabilities.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"labels: expected classes 0..{k - 1}, found {labels.min()}..{labels.max()}"
        )
    missing = [c for c in range(k) if not (labels == c).any()]
    if missing:
        raise ValueError(f"labels: class {missing[0]} has no examples (its ROC AUC is undefined)")
    return float(np.mean([roc_auc(labels == c, probabilities[:, c]) for c in range(k)]))


def classification_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy, ROC AUC, per-class and balanced accuracy of predicted probabilities.

    Args:
        labels: true classes. Shape: (N,).
        probabilities: class-1 probabilities of a two-class model (N,), or the probabilities of
            all K classes (N, K).

    Returns:
        ``accuracy`` (argmax; two classes: class-1 probability above 0.5); ``auc``: two classes:
        the ROC AUC of the class-1 probability, ``None`` when the labels hold one class only;
        more: :func:`roc_auc_ovr`, ``None`` when a class has no examples; ``per_class_accuracy``:
        one entry per class (K; a (N,) input: 2), ``None`` for a class without examples;
        ``balanced_accuracy``: their mean over the classes with examples.
    """
    from histodrl.metrics import accuracy, roc_auc

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = predicted_classes(probabilities)
    n_classes = 2 if probabilities.ndim == 1 else int(probabilities.shape[1])
    if n_classes == 2:
        scores = probabilities if probabilities.ndim == 1 else probabilities[:, 1]
        auc = roc_auc(labels, scores) if len(np.unique(labels)) == 2 else None
    else:
        present = np.unique(labels)
        auc = roc_auc_ovr(labels, probabilities) if len(present) == n_classes else None
    per_class: list[float | None] = []
    for c in range(n_classes):
        of_class = labels == c
        per_class.append(float((predicted[of_class] == c).mean()) if of_class.any() else None)
    known = [a for a in per_class if a is not None]
    return {
        "accuracy": accuracy(labels, predicted),
        "auc": auc,
        "per_class_accuracy": per_class,
        "balanced_accuracy": float(np.mean(known)) if known else None,
    }


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
