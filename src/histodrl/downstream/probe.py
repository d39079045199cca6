"""``histodrl probe``: linear separability of frozen encoder features (the paper's Fig. 4(a)).

The trunk is frozen and in eval mode (BatchNorm uses and keeps its running statistics). For each
block named by ``--blocks`` (``conv2``, ``conv3``, ``conv4`` = the ends of VGG blocks 2, 3 and 4, taps
``conv2_2``, ``conv3_4``, ``conv4_4``; ``conv1`` and ``conv5`` are accepted too), the block's output is
globally average-pooled into one feature vector per patch, and one linear classifier per block is
trained on those features with Adam. Accuracy and ROC AUC per block are measured on the test split.
The data is ``pcam:DIR`` or ``folder:DIR`` with class subfolders, read as by ``histodrl classify``
(:func:`histodrl.downstream.evaluation.labelled_source`); with K classes each probe is a
Linear(C -> K), and a folder run also reports each class's accuracy and their mean.

Choices the paper leaves open (also in the README):

* **Features are computed once**: one pass of the frozen trunk over the labelled training subset,
  the validation split and the test split gives every requested block at once; the pooled
  features stay in memory (float32, on the CPU; 262,144 patches x (128 + 256 + 512) channels is
  0.94 GB) for all epochs of the linear classifiers. Hence no augmentation: a probe measures the
  features of the patches as they are.
* **Standardisation**: each feature is centred and scaled by its training mean and standard
  deviation before the linear layer (constant features are only centred). This changes nothing
  a linear classifier can express, only how well Adam is conditioned; the saved weights are folded
  back to act on the raw pooled features.
* **Training**: zero-initialised Linear(C -> classes), cross-entropy, Adam lr 1e-3, batch 256, 30 epochs
  of the labelled subset (``--label-fraction``, default all), shuffled from ``(seed, block)``. The
  epoch with the best validation accuracy is kept (ties go to the earlier epoch).
* Runs on one device (``--accelerator``), without Lightning: the trunk is only evaluated and
  the linear layers are tiny.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from histodrl.commands.classify import ProbeOptions
from histodrl.downstream.evaluation import (
    SPLITS_FILE,
    SUBSET_FILE,
    class_counts,
    classification_scores,
    eval_loader,
    iterate_eval_batches,
    labelled_source,
    labelled_subset,
    markdown_table,
    source_description,
    write_json,
    write_splits,
    write_subset,
)
from histodrl.io import atomic_path, atomic_write_text
from histodrl.runs.layout import METRICS_FILE, REPORT_FILE
from histodrl.runs.lifecycle import Launch, Task, run_task
from histodrl.runs.sampling import derive_seed
from histodrl.runs.trainer import autocast_for, resolve_device

PROBES_FILE = "probes.safetensors"

#: Block names of ``--blocks`` (:data:`histodrl.commands.classify.PROBE_BLOCKS`) and the VGG tap at
#: the end of each block (METHOD.md (c)).
BLOCK_TAPS: dict[str, str] = {
    "conv1": "conv1_2",
    "conv2": "conv2_2",
    "conv3": "conv3_4",
    "conv4": "conv4_4",
    "conv5": "conv5_4",
}


@torch.no_grad()
def extract_pooled_features(
    encoder: nn.Module,
    loader: DataLoader,
    taps: Sequence[str],
    device: torch.device,
    precision: str | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Globally average-pooled maps of the frozen ``encoder`` at ``taps``, for a whole loader.

    The encoder runs in eval mode without gradients, so BatchNorm normalises with its running
    statistics and never updates them; its previous train/eval mode is restored afterwards. The
    trunk runs once per batch, as far as the deepest tap (:func:`histodrl.nn.pooled_taps`).

    Args:
        encoder: a :class:`histodrl.nn.VGG` trunk on ``device``.
        loader: batches of ``(uint8 patches, labels)`` (:func:`histodrl.downstream.evaluation.eval_loader`).
        taps: tap names, e.g. ``["conv2_2", "conv3_4", "conv4_4"]``.
        device: where the encoder is.
        precision: ``"bf16-mixed"`` runs the trunk under bfloat16 autocast, ``"32-true"`` in
            float32; ``None``: bf16 on CUDA, float32 otherwise. Features are stored as float32.

    Returns:
        ``(features, labels)``: ``features[tap]`` float32 on the CPU, shape
        (N, encoder.tap_channels(tap)); labels int64, shape (N,), in the loader's order.
    """
    from histodrl.nn import pooled_taps

    was_training = encoder.training
    encoder.eval()
    chunks: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    labels: list[torch.Tensor] = []
    try:
        for x, y in iterate_eval_batches(loader, device):
            with autocast_for(device, precision):
                pooled = pooled_taps(encoder, x, list(taps))
            for tap in taps:
                chunks[tap].append(pooled[tap].float().cpu())
            labels.append(y.cpu())
    finally:
        encoder.train(was_training)
    features = {
        tap: torch.cat(parts)
        if parts
        else torch.empty(0, encoder.tap_channels(tap), dtype=torch.float32)
        for tap, parts in chunks.items()
    }
    return features, torch.cat(labels).long() if labels else torch.empty(0, dtype=torch.long)


def standardization(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (population, ``unbiased=False``) of training features.

    A constant feature gets a scale of 1 (it is only centred), so no division by zero happens.

    Shape: (N, C) -> ``(mean (C,), scale (C,))``.
    """
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))


@dataclass
class LinearProbe:
    """A linear classifier on one block's raw pooled features.

    Attributes:
        weight: Shape: (K, C), K classes.
        bias: Shape: (K,).
        best_epoch: the epoch (1-based) whose weights these are.
        val_accuracy: validation accuracy at ``best_epoch``.
        val_history: validation accuracy after each epoch.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    best_epoch: int
    val_accuracy: float
    val_history: list[float] = field(default_factory=list)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Shape: (N, C) -> (N, K)."""
        return features @ self.weight.T + self.bias

    def class_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of every class. Shape: (N, C) -> (N, K)."""
        return torch.softmax(self.logits(features).float(), dim=1)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax probability of class 1. Shape: (N, C) -> (N,)."""
        return self.class_probabilities(features)[:, 1]


def fold_standardization(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights acting on raw features from weights acting on ``(features - mean) / scale``.

    ``W (x - m) / s + b = (W / s) x + (b - (W / s) m)``.

    Shape: weight (K, C), bias (K,), mean (C,), scale (C,) -> ``(weight (K, C), bias (K,))``.
    """
    raw_weight = weight / scale
    return raw_weight, bias - raw_weight @ mean


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).double().mean()) if len(labels) else 0.0


def train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    valid_x: torch.Tensor,
    valid_y: torch.Tensor,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    num_classes: int = 2,
) -> LinearProbe:
    """Train Linear(C -> K) on standardised features with Adam; keep the best validation epoch.

    Args:
        train_x: training features. Shape: (N, C).
        train_y: training labels in ``0..num_classes-1``. Shape: (N,).
        valid_x: validation features. Shape: (M, C).
        valid_y: validation labels. Shape: (M,).
        epochs: passes over the training features (>= 1).
        lr: Adam learning rate (> 0).
        batch_size: features per step (>= 1); the last batch of an epoch may be smaller.
        generator: CPU generator of the epoch orders (the weights start at zero, so it is the
            only random input); the same generator state gives the same probe.
        device: where to train.
        num_classes: K, the outputs of the linear layer (>= 2).

    Returns:
        The probe of the epoch with the best validation accuracy (ties: the earlier), acting on
        raw features (:func:`fold_standardization`), on the CPU.

    Raises:
        ValueError: an argument out of range, mismatched lengths, or no training features.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: expected an integer >= 1")
    if not lr > 0:
        raise ValueError(f"lr={lr}: expected a number > 0")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected an integer >= 1")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: expected an integer >= 2")
    if train_x.ndim != 2 or len(train_x) == 0 or len(train_x) != len(train_y):
        raise ValueError(
            f"train_x {tuple(train_x.shape)} / train_y {tuple(train_y.shape)}: expected (N, C) "
            "and (N,) with N >= 1"
        )
    if valid_x.ndim != 2 or len(valid_x) != len(valid_y) or valid_x.shape[1] != train_x.shape[1]:
        raise ValueError(
            f"valid_x {tuple(valid_x.shape)} / valid_y {tuple(valid_y.shape)}: expected (M, "
            f"{train_x.shape[1]}) and (M,)"
        )
    device = torch.device(device)
    mean, scale = standardization(train_x.float())
    tx = ((train_x.float() - mean) / scale).to(device)
    ty = train_y.long().to(device)
    vx = ((valid_x.float() - mean) / scale).to(device)
    vy = valid_y.long().to(device)

    if len(train_y) and int(train_y.max()) >= num_classes:
        raise ValueError(f"train_y: label {int(train_y.max())} for num_classes={num_classes}")
    linear = nn.Linear(train_x.shape[1], num_classes).to(device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
    best: tuple[float, int, torch.Tensor, torch.Tensor] | None = None
    history: list[float] = []
    n = len(tx)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(linear(tx[idx]), ty[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = _accuracy(linear(vx), vy)
        history.append(accuracy)
        if best is None or accuracy > best[0]:
            best = (
                accuracy,
                epoch,
                linear.weight.detach().cpu().clone(),
                linear.bias.detach().cpu().clone(),
            )
    assert best is not None  # epochs >= 1
    weight, bias = fold_standardization(best[2], best[3], mean, scale)
    return LinearProbe(weight, bias, best_epoch=best[1], val_accuracy=best[0], val_history=history)


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """What :meth:`ProbeTask.execute` hands to :meth:`ProbeTask.finish`.

    Attributes:
        blocks: one row of ``metrics.json`` per block.
        tensors: ``<block>.weight`` (K, C) and ``<block>.bias`` (K,) of every probe.
    """

    blocks: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]


class ProbeTask(Task[ProbeOptions]):
    """``histodrl probe`` in the run lifecycle: no Lightning training, the work is
    :meth:`execute` (features of the frozen trunk, one linear classifier per block)."""

    options_class = ProbeOptions

    def __init__(self) -> None:
        self.source: Any = None
        self.subset: np.ndarray = np.empty(0, dtype=np.int64)
        self.encoder: nn.Module | None = None
        self.device = torch.device("cpu")

    def resolve(self, options: ProbeOptions) -> ProbeOptions:
        """The blocks written canonically (``2,3`` -> ``conv2,conv3``), as ``config.yaml`` holds
        them, and ``--crop`` filled in for the data."""
        from histodrl.commands.options import with_values

        return with_values(options, blocks=",".join(options.block_list), crop=options.tile_size)

    def prepare(self, options: ProbeOptions, resume: bool) -> None:
        """The device, the splits, the subset and the trunk with its ``--init`` weights."""
        from histodrl.downstream.init import load_init
        from histodrl.nn import build_encoder

        self.device = resolve_device(options.accelerator)
        self.source = labelled_source(options, "probe")
        labels = self.source.train.labels
        self.subset = labelled_subset(labels, options.label_fraction, options.seed)
        gen = torch.Generator().manual_seed(derive_seed(options.seed, "encoder-init"))
        self.encoder = build_encoder(options.arch, options.width, generator=gen)
        load_init(self.encoder, options.init)

    def description(self, options: ProbeOptions) -> str:
        return source_description(self.source)

    def write_inputs(self, run: Path, options: ProbeOptions) -> None:
        write_subset(run, self.subset)
        if self.source.kind != "pcam":
            write_splits(run, self.source)

    def execute(self, run: Path, options: ProbeOptions) -> ProbeResult:
        """Features of the three splits (one pass each), then one probe per block."""
        assert self.encoder is not None, "prepare first"
        device = self.device
        encoder = self.encoder.to(device=device, memory_format=torch.channels_last)
        blocks = options.block_list
        taps = [BLOCK_TAPS[b] for b in blocks]
        batch = max(256, options.batch_size)
        workers = int(options.num_workers or 0)
        train, valid, test = self.source.train, self.source.val, self.source.test
        n_classes = len(self.source.classes)
        cached = {}
        for name, dataset, indices in (
            ("train", train, self.subset),
            ("valid", valid, np.arange(len(valid))),
            ("test", test, np.arange(len(test))),
        ):
            loader = eval_loader(dataset, indices, batch, workers)
            cached[name] = extract_pooled_features(encoder, loader, taps, device, options.precision)

        rows: list[dict[str, Any]] = []
        tensors: dict[str, torch.Tensor] = {}
        for block, tap in zip(blocks, taps):
            gen = torch.Generator().manual_seed(derive_seed(options.seed, "probe", block))
            probe = train_linear_probe(
                cached["train"][0][tap],
                cached["train"][1],
                cached["valid"][0][tap],
                cached["valid"][1],
                epochs=options.epochs,
                lr=options.lr,
                batch_size=options.batch_size,
                generator=gen,
                device=device,
                num_classes=n_classes,
            )
            test_x, test_y = cached["test"][0][tap], cached["test"][1]
            probabilities = probe.class_probabilities(test_x).double().numpy()
            scores = classification_scores(test_y.numpy(), probabilities)
            tensors[f"{block}.weight"] = probe.weight.contiguous()
            tensors[f"{block}.bias"] = probe.bias.contiguous()
            rows.append(
                {
                    "block": block,
                    "tap": tap,
                    "channels": int(test_x.shape[1]),
                    "best_epoch": probe.best_epoch,
                    "val_accuracy": probe.val_accuracy,
                    "test_accuracy": float(scores["accuracy"]),
                    "test_auc": scores["auc"],
                    "val_history": probe.val_history,
                }
            )
            if self.source.kind != "pcam":
                rows[-1]["test_balanced_accuracy"] = scores["balanced_accuracy"]
                rows[-1]["test_per_class_accuracy"] = dict(
                    zip(self.source.classes, scores["per_class_accuracy"])
                )
            print(
                f"histodrl: probe {block} ({tap}, {test_x.shape[1]} features): test accuracy "
                f"{scores['accuracy']:.4f}"
            )
        return ProbeResult(rows, tensors)

    def finish(self, run: Path, options: ProbeOptions, result: ProbeResult) -> int:
        """Write ``probes.safetensors``, ``metrics.json`` and ``report.md``."""
        from safetensors.torch import save_file

        from histodrl.downstream.init import describe_init

        blocks = ",".join(options.block_list)
        with atomic_path(run / PROBES_FILE) as tmp:
            save_file(
                result.tensors, str(tmp), metadata={"format": "histodrl-probes-1", "blocks": blocks}
            )
        metrics = {
            "task": "probe",
            "data": self.description(options),
            "init": options.init,
            "init_description": describe_init(options.init),
            "label_fraction": options.label_fraction,
            "seed": options.seed,
            "n_labelled": int(len(self.subset)),
            "n_valid": len(self.source.val),
            "n_test": len(self.source.test),
            "blocks": result.blocks,
        }
        if self.source.kind != "pcam":  # PCam runs keep their keys
            classes = list(self.source.classes)
            metrics.update(
                {
                    "classes": classes,
                    "n_classes": len(classes),
                    "crop": int(options.tile_size),
                    "split_seed": int(self.source.seed),
                    "splits_file": SPLITS_FILE,
                    "n_train": len(self.source.train),
                    "labelled_per_class": class_counts(
                        self.source.train.labels[self.subset], classes
                    ),
                    "train_per_class": class_counts(self.source.train.labels, classes),
                    "valid_per_class": class_counts(self.source.val.labels, classes),
                    "test_per_class": class_counts(self.source.test.labels, classes),
                    "test_auc_kind": (
                        "class-1 probability" if len(classes) == 2 else "one-vs-rest macro"
                    ),
                }
            )
        write_json(run / METRICS_FILE, metrics)
        atomic_write_text(run / REPORT_FILE, probe_report(metrics, options))
        print(f"histodrl: wrote {run / REPORT_FILE}")
        return 0


def run_probe(options: ProbeOptions, launch: Launch = Launch()) -> int:
    """``histodrl probe``: frozen-trunk features, one linear classifier per block, test accuracy.

    Writes ``RUN/config.yaml``, ``RUN/subset_indices.txt`` (a folder: and ``RUN/splits.json``),
    ``RUN/probes.safetensors`` (per block ``<block>.weight`` (K, C) and ``<block>.bias`` (K,) for
    K classes, acting on raw pooled features), ``RUN/metrics.json`` and ``RUN/report.md``.

    Args:
        options: the command's options.
        launch: ``overwrite`` replaces an existing run folder (a probe is not resumed).

    Returns:
        The exit status (0).

    Raises:
        UserInputError: bad data or ``--init``, or an existing run folder without
            ``--overwrite``.
    """
    return int(run_task(ProbeTask(), options, launch) or 0)


def probe_report(metrics: dict[str, Any], options: ProbeOptions) -> str:
    """``RUN/report.md``: accuracy per block and how it was obtained."""
    folder = "classes" in metrics
    header = ["block", "tap", "features", "val acc", "test acc", "test AUC"]
    rows = [
        [r["block"], r["tap"], r["channels"], r["val_accuracy"], r["test_accuracy"], r["test_auc"]]
        for r in metrics["blocks"]
    ]
    if folder:
        header.append("test balanced acc")
        for row, r in zip(rows, metrics["blocks"]):
            row.append(r["test_balanced_accuracy"])
    table = markdown_table(header, rows)
    n_out = metrics.get("n_classes", 2)
    what = "tiles" if folder else "patches"
    lines = [
        "# Linear probes (frozen trunk)",
        "",
        f"Encoder: {metrics['init_description']}, `{options.arch}` width {options.width:g}.",
        "",
        table,
        "",
        f"- Data: {metrics['data']}; {metrics['n_labelled']} labelled training {what} (label "
        f"fraction {metrics['label_fraction']:g}, seed {metrics['seed']}, indices in "
        f"`{SUBSET_FILE}`), {metrics['n_valid']} validation and {metrics['n_test']} test {what}.",
    ]
    if folder:
        classes = ", ".join(
            f"{name} ({metrics['labelled_per_class'][name]} labelled, "
            f"{metrics['test_per_class'][name]} test)"
            for name in metrics["classes"]
        )
        lines.append(
            f"- Classes (label order): {classes}; split seed {metrics['split_seed']}, lists in "
            f"`{SPLITS_FILE}`; tiles resized and centre-cropped to {metrics['crop']}x"
            f"{metrics['crop']}."
        )
    lines += [
        "- Features: the trunk frozen in eval mode; each block's output globally average-pooled, "
        "computed once and cached; standardised with the training mean and deviation.",
        f"- Classifier: one zero-initialised Linear(C -> {n_out}) per block, Adam lr "
        f"{options.lr:g}, batch {options.batch_size}, {options.epochs} "
        "epochs; the epoch with the best validation accuracy is kept (ties: the earlier). "
        f"Weights in `{PROBES_FILE}`.",
    ]
    if folder:
        auc = (
            "ROC AUC of the class-1 probability"
            if n_out == 2
            else "ROC AUC one-vs-rest of each class's probability, macro-averaged"
        )
        lines.append(
            f"- Test: accuracy at the argmax of the {n_out} logits; {auc}; balanced accuracy: "
            "the mean of the per-class accuracies."
        )
    lines.append("")
    return "\n".join(lines)
