"""``histodrl probe``: linear separability of frozen encoder features (the paper's Fig. 4(a)).

The trunk is frozen and in eval mode (BatchNorm uses and keeps its running statistics). For each
block named by ``--blocks`` (``conv2``, ``conv3``, ``conv4`` = the ends of VGG blocks 2, 3 and 4, taps
``conv2_2``, ``conv3_4``, ``conv4_4``; ``conv1`` and ``conv5`` are accepted too), the block's output is
globally average-pooled into one feature vector per patch, and one linear classifier per block is
trained on those features with Adam. Accuracy and ROC AUC per block are measured on the test split.

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
* **Training**: zero-initialised Linear(C -> 2), cross-entropy, Adam lr 1e-3, batch 256, 30 epochs
  of the labelled subset (``--label-fraction``, default all), shuffled from ``(seed, block)``. The
  epoch with the best validation accuracy is kept (ties go to the earlier epoch).
* Runs on one device (``--accelerator``), without Lightning: the trunk is only evaluated and
  the linear layers are tiny.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from histodrl.downstream.classify import (
    METRICS_FILE,
    REPORT_FILE,
    SUBSET_FILE,
    classification_scores,
    eval_loader,
    iterate_eval_batches,
    labelled_subset,
    markdown_table,
    pcam_splits,
    write_json,
    write_subset,
)
from histodrl.errors import UserInputError
from histodrl.io import atomic_path, atomic_write_text
from histodrl.training import autocast_for, resolve_device

PROBES_FILE = "probes.safetensors"

#: Block names of ``--blocks`` and the VGG tap at the end of each block (METHOD.md (c)).
BLOCK_TAPS: dict[str, str] = {
    "conv1": "conv1_2",
    "conv2": "conv2_2",
    "conv3": "conv3_4",
    "conv4": "conv4_4",
    "conv5": "conv5_4",
}
DEFAULT_BLOCKS = "conv2,conv3,conv4"
# Precisions of the frozen trunk (None: bf16-mixed on CUDA, 32-true elsewhere).
PROBE_PRECISIONS = (None, "32-true", "bf16-mixed", "16-mixed")


def parse_blocks(blocks: str | Sequence[str]) -> list[str]:
    """Block names from ``--blocks``: ``"conv2,conv3,conv4"`` or ``"2,3,4"`` (or a list of them).

    Returns:
        Canonical names (``conv2`` ...) in the order given, repeats dropped.

    Raises:
        UserInputError: an empty list or an unknown name (the message lists the known ones).
    """
    items = blocks.split(",") if isinstance(blocks, str) else [str(b) for b in blocks]
    names: list[str] = []
    for item in items:
        text = item.strip().lower()
        name = f"conv{text}" if text.isdigit() else text
        if name not in BLOCK_TAPS:
            raise UserInputError(
                f"--blocks {item.strip()!r}: unknown block (expected some of "
                f"{', '.join(BLOCK_TAPS)}, e.g. {DEFAULT_BLOCKS})"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise UserInputError(
            f"--blocks {blocks!r}: expected at least one block, e.g. {DEFAULT_BLOCKS}"
        )
    return names


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
        loader: batches of ``(uint8 patches, labels)`` (:func:`histodrl.downstream.classify.eval_loader`).
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
        weight: Shape: (2, C).
        bias: Shape: (2,).
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
        """Shape: (N, C) -> (N, 2)."""
        return features @ self.weight.T + self.bias

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax probability of class 1. Shape: (N, C) -> (N,)."""
        return torch.softmax(self.logits(features).float(), dim=1)[:, 1]


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
) -> LinearProbe:
    """Train Linear(C -> 2) on standardised features with Adam; keep the best validation epoch.

    Args:
        train_x: training features. Shape: (N, C).
        train_y: training labels 0/1. Shape: (N,).
        valid_x: validation features. Shape: (M, C).
        valid_y: validation labels. Shape: (M,).
        epochs: passes over the training features (>= 1).
        lr: Adam learning rate (> 0).
        batch_size: features per step (>= 1); the last batch of an epoch may be smaller.
        generator: CPU generator of the epoch orders (the weights start at zero, so it is the
            only random input); the same generator state gives the same probe.
        device: where to train.

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

    linear = nn.Linear(train_x.shape[1], 2).to(device)
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


def check_probe_options(c: dict[str, Any]) -> None:
    """Validate the options of ``probe`` once, with one-line errors naming the value."""
    if not 0 < float(c["label_fraction"]) <= 1:
        raise UserInputError(f"--label-fraction {c['label_fraction']}: expected a number in (0, 1]")
    if int(c["epochs"]) < 1:
        raise UserInputError(f"--epochs {c['epochs']}: expected an integer >= 1")
    if not float(c["lr"]) > 0:
        raise UserInputError(f"--lr {c['lr']}: expected a number > 0")
    if int(c["batch_size"]) < 1:
        raise UserInputError(f"--batch-size {c['batch_size']}: expected an integer >= 1")
    if not float(c["width"]) > 0:
        raise UserInputError(f"--width {c['width']}: expected a number > 0")
    if c.get("precision") not in PROBE_PRECISIONS:
        raise UserInputError(
            f"--precision {c['precision']}: expected one of "
            f"{', '.join(p for p in PROBE_PRECISIONS if p)}"
        )
    parse_blocks(c["blocks"])


def run_probe(options: dict[str, Any]) -> int:
    """``histodrl probe``: frozen-trunk features, one linear classifier per block, test accuracy.

    Writes ``RUN/config.yaml``, ``RUN/subset_indices.txt``, ``RUN/probes.safetensors`` (per block
    ``<block>.weight`` (2, C) and ``<block>.bias`` (2,), acting on raw pooled features),
    ``RUN/metrics.json`` and ``RUN/report.md``.

    Args:
        options: the command's options as a dict, plus ``overwrite``.

    Returns:
        The exit status (0).

    Raises:
        UserInputError: bad options or data, or an existing run folder without ``--overwrite``.
    """
    from safetensors.torch import save_file

    from histodrl.downstream.classify import build_encoder
    from histodrl.downstream.init import describe_init, load_init
    from histodrl.training import derive_seed, prepare_run_dir, write_config

    config = dict(options)
    overwrite = bool(config.pop("overwrite", False))
    if config.get("num_workers") is None:
        config["num_workers"] = min(4, os.cpu_count() or 1)
    check_probe_options(config)
    blocks = parse_blocks(config["blocks"])
    config["blocks"] = ",".join(blocks)
    device = resolve_device(str(config.get("accelerator", "auto")))
    seed = int(config["seed"])

    splits = pcam_splits(str(config["data"]), cache_ram=bool(config.get("cache_ram")))
    train = splits["train"]
    subset = labelled_subset(train.labels, float(config["label_fraction"]), seed)
    encoder = build_encoder(str(config["arch"]), float(config["width"]), seed)
    load_init(encoder, str(config["init"]))
    run = prepare_run_dir(Path(config["out"]), overwrite=overwrite, resume=False)
    config["data_description"] = train.description
    write_config(run, config)
    write_subset(run, subset)

    encoder.to(device=device, memory_format=torch.channels_last)
    taps = [BLOCK_TAPS[b] for b in blocks]
    batch = max(256, int(config["batch_size"]))
    workers = int(config["num_workers"])
    precision = config.get("precision")
    cached = {}
    for name, dataset, indices in (
        ("train", train, subset),
        ("valid", splits["valid"], np.arange(len(splits["valid"]))),
        ("test", splits["test"], np.arange(len(splits["test"]))),
    ):
        loader = eval_loader(dataset, indices, batch, workers)
        cached[name] = extract_pooled_features(encoder, loader, taps, device, precision)

    results = []
    tensors: dict[str, torch.Tensor] = {}
    for block, tap in zip(blocks, taps):
        gen = torch.Generator().manual_seed(derive_seed(seed, "probe", block))
        probe = train_linear_probe(
            cached["train"][0][tap],
            cached["train"][1],
            cached["valid"][0][tap],
            cached["valid"][1],
            epochs=int(config["epochs"]),
            lr=float(config["lr"]),
            batch_size=int(config["batch_size"]),
            generator=gen,
            device=device,
        )
        test_x, test_y = cached["test"][0][tap], cached["test"][1]
        scores = classification_scores(test_y.numpy(), probe.probabilities(test_x).double().numpy())
        tensors[f"{block}.weight"] = probe.weight.contiguous()
        tensors[f"{block}.bias"] = probe.bias.contiguous()
        results.append(
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
        print(
            f"histodrl: probe {block} ({tap}, {test_x.shape[1]} features): test accuracy "
            f"{scores['accuracy']:.4f}"
        )

    with atomic_path(run / PROBES_FILE) as tmp:
        save_file(
            tensors, str(tmp), metadata={"format": "histodrl-probes-1", "blocks": ",".join(blocks)}
        )
    metrics = {
        "task": "probe",
        "data": train.description,
        "init": str(config["init"]),
        "init_description": describe_init(str(config["init"])),
        "label_fraction": float(config["label_fraction"]),
        "seed": seed,
        "n_labelled": int(len(subset)),
        "n_valid": len(splits["valid"]),
        "n_test": len(splits["test"]),
        "blocks": results,
    }
    write_json(run / METRICS_FILE, metrics)
    atomic_write_text(run / REPORT_FILE, probe_report(metrics, config))
    print(f"histodrl: wrote {run / REPORT_FILE}")
    return 0


def probe_report(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """``RUN/report.md``: accuracy per block and how it was obtained."""
    table = markdown_table(
        ["block", "tap", "features", "val acc", "test acc", "test AUC"],
        [
            [
                r["block"],
                r["tap"],
                r["channels"],
                r["val_accuracy"],
                r["test_accuracy"],
                r["test_auc"],
            ]
            for r in metrics["blocks"]
        ],
    )
    lines = [
        "# Linear probes (frozen trunk)",
        "",
        f"Encoder: {metrics['init_description']}, `{config['arch']}` width "
        f"{float(config['width']):g}.",
        "",
        table,
        "",
        f"- Data: {metrics['data']}; {metrics['n_labelled']} labelled training patches (label "
        f"fraction {metrics['label_fraction']:g}, seed {metrics['seed']}, indices in "
        f"`{SUBSET_FILE}`), {metrics['n_valid']} validation and {metrics['n_test']} test patches.",
        "- Features: the trunk frozen in eval mode; each block's output globally average-pooled, "
        "computed once and cached; standardised with the training mean and deviation.",
        f"- Classifier: one zero-initialised Linear(C -> 2) per block, Adam lr "
        f"{float(config['lr']):g}, batch {int(config['batch_size'])}, {int(config['epochs'])} "
        "epochs; the epoch with the best validation accuracy is kept (ties: the earlier). "
        f"Weights in `{PROBES_FILE}`.",
        "",
    ]
    return "\n".join(lines)
