"""A live view of the representation while it pretrains: ``histodrl pretrain --monitor SOURCE``.

Every ``--monitor-every`` optimizer steps (and before the first step and after the last) the
encoder being pretrained is probed, frozen, on a small labelled sample. **The monitor is only a
probe**: its images come from ``--monitor`` alone and never reach the pretext task, and it changes
no weight, no BatchNorm statistic and no random draw of the training (a run with and without it
trains to the same weights). Point it at labelled data held out from pretraining; on the data the
encoder is pretrained on it still measures the representation, just not on unseen images.

**Sample** (drawn once, when the run starts; :func:`load_monitor_sample`). It is a function of
the source and ``--monitor-images`` only (seed :data:`SAMPLE_SEED`, not ``--seed``), so runs of
different methods or seeds are probed on the same images. It comes from the source's *training*
split, read with split seed 0 and the default fractions, the split that downstream runs use by
default, so the monitor never looks at a downstream test image.

* ``folder:DIR`` / ``pcam:DIR`` (classes): ``--monitor-images`` images, stratified by class
  (largest remainder, at least two per class where a class has them), each class halved into a
  *fit* part and a *score* part. Folder tiles are resized to the pretraining crop as
  ``histodrl classify`` reads them; PCam patches stay 96 px.
* ``glas:DIR`` / ``masks:DIR`` / ``monuseg:DIR`` (masks): ``--monitor-images`` crops of the
  pretraining crop size at seeded positions; the training images are split in two halves
  (seeded), the fit crops come from one, the score crops from the other.

**Evaluation** (:func:`evaluate`): a copy of the encoder whose BatchNorm running statistics are
re-estimated on the fit images (:func:`calibrated_copy`; the encoder being trained keeps its own),
in eval mode (every submodule's train/eval flag is restored after),
without gradients, under the autocast of the run's precision, straight through the uncompiled
trunk. Blocks (:func:`monitor_blocks`): ``conv3_4``, the method's tap (the deepest map it trains:
DRL/DIM ``--tap``, default ``conv4_4``; ``pool5`` for the baselines) and ``pool5`` (for DRL the
blocks after the tap are frozen at their initialisation, so pool5 shows what the trained features
look like through untrained layers).

* classes: the globally average-pooled features of each block, standardised with the fit part's
  mean and standard deviation. **kNN accuracy** (:func:`knn_predict`): cosine similarity, the
  ``k = 10`` nearest fit images vote, ties go to the class with the larger summed similarity.
  **Linear-probe accuracy** (:func:`fit_logistic`): multinomial logistic regression, zero start,
  full-batch L-BFGS (at most 100 iterations) on mean cross-entropy + ``l2 / 2 * |W|^2``
  (``l2 = 1e-2``; the bias is not penalised), i.e. scikit-learn's ``LogisticRegression(C=1 / (l2
  * n))``.
* masks: a **pixel probe**, a 1x1 convolution on the block's map upsampled (bilinear) to the crop,
  i.e. logistic regression per pixel (foreground = instance label > 0), fitted on
  :data:`PIXELS_PER_CROP` seeded pixels of each fit crop (``l2 = 1e-4``); scored by **foreground
  Dice** over every pixel of the score crops (``2 TP / (2 TP + FP + FN)``). Bilinear upsampling
  is linear with weights summing to one, so the probe is applied at the map's resolution and its
  logits upsampled, which is the same as upsampling the features (and much smaller).

**Logged** (:class:`RepresentationMonitor`, through the trainer's loggers with the step = the
number of optimizer steps done, so into ``metrics.csv`` and TensorBoard): ``monitor/knn_acc``
and ``monitor/linear_acc`` (classes) or ``monitor/pixel_dice`` (masks) at the method's tap, and
the same per block as ``monitor/knn_acc_<block>`` etc. On a multi-process run only global rank 0
evaluates. :func:`write_monitor_figure` draws the curves into ``RUN/figures/monitor.png``.

**Cost** (``benchmarks/monitor_overhead.py``, the demo's settings: width 0.25, 96 px crops, batch
8, 2-core CPU, BatchNorm calibration included): one evaluation at the defaults (256 images or
crops) took 2.1-2.5 s, about ten DRL training steps. ``python benchmarks/monitor_overhead.py
--steps 1000`` (default ``--monitor-every 500``, 3 evaluations): 7.3 s of evaluations, 3.4 % of the
rest of the monitored run; runs without / with the monitor 213.2 s / 222.3 s (+4.3 %). With the
earlier default of 200, a 400-step run spent 7.5 % in evaluations. A run shorter than
``--monitor-every`` still has two evaluations.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from histodrl.data.labelled import CLASSIFICATION_KINDS, SEGMENTATION_KINDS
from histodrl.errors import UserInputError
from histodrl.runs.layout import FIGURES_DIR, METRICS_CSV
from histodrl.runs.sampling import derive_seed

#: Seed of the monitor's sample: the same images whatever the run's ``--seed``.
SAMPLE_SEED = derive_seed(0, "monitor")
#: The split seed the monitor reads its source with (the downstream commands' default).
SPLIT_SEED = 0
KNN_K = 10
CLASS_L2 = 1e-2
PIXEL_L2 = 1e-4
PROBE_ITERATIONS = 100
PIXELS_PER_CROP = 128
EVAL_BATCH = 64
FIGURE_FILE = "monitor.png"
PREFIX = "monitor/"
HEADLINES = ("knn_acc", "linear_acc", "pixel_dice")


# ------------------------------------------------------------------------------------------------
# The sample
# ------------------------------------------------------------------------------------------------


@dataclass
class MonitorSample:
    """The monitor's fixed labelled sample.

    Attributes:
        task: ``"classes"`` or ``"masks"``.
        fit_images, score_images: uint8 tensors. Shape: (N, 3, S, S).
        fit_labels, score_labels: classes: int64 (N,); masks: bool foreground (N, S, S).
        num_classes: classes (2 for masks: background, foreground).
        fit_pixels: masks only: int64 (N, P, 2) ``(row, column)`` of the pixels each fit crop
            contributes to the pixel probe.
        description: one line.
    """

    task: str
    fit_images: torch.Tensor
    fit_labels: torch.Tensor
    score_images: torch.Tensor
    score_labels: torch.Tensor
    num_classes: int
    description: str
    fit_pixels: torch.Tensor | None = None


def _stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[list, list]:
    """Indices of about ``n`` items stratified by label, each class halved into (fit, score)."""
    classes, counts = np.unique(labels, return_counts=True)
    total = int(counts.sum())
    if n >= total:
        take = counts.copy()
    else:
        share = counts * n / total
        take = np.floor(share).astype(int)
        for k in np.argsort(-(share - take), kind="stable")[: n - int(take.sum())]:
            take[k] += 1
        take = np.minimum(np.maximum(take, np.minimum(2, counts)), counts)
    fit: list[int] = []
    score: list[int] = []
    for cls, m in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        chosen = rng.permutation(members)[: int(m)]
        half = (len(chosen) + 1) // 2
        fit += chosen[:half].tolist()
        score += chosen[half:].tolist()
    return sorted(fit), sorted(score)


def _stack_items(dataset: Any, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for i in indices:
        image, label = dataset[int(i)]
        images.append(torch.as_tensor(image))
        labels.append(int(label))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def class_sample(spec: str, crop: int, images: int) -> MonitorSample:
    """The sample of a ``folder:`` or ``pcam:`` source (module docstring)."""
    from histodrl.data.labelled import classification_source

    source = classification_source(spec, SPLIT_SEED, crop=crop)
    labels = np.asarray(source.train.labels)
    rng = np.random.default_rng(SAMPLE_SEED)
    fit, score = _stratified(labels, images, rng)
    if len(np.unique(labels[fit])) < 2 or not score:
        raise UserInputError(
            f"{spec}: too few training images for the monitor ({len(labels)}; expected at least "
            "two of each of two classes)"
        )
    fit_x, fit_y = _stack_items(source.train, fit)
    score_x, score_y = _stack_items(source.train, score)
    return MonitorSample(
        task="classes",
        fit_images=fit_x,
        fit_labels=fit_y,
        score_images=score_x,
        score_labels=score_y,
        num_classes=len(source.classes),
        description=f"{len(fit)} fit + {len(score)} score images of the training split of "
        f"{source.description}",
    )


def _crops(
    dataset: Any, indices: Sequence[int], count: int, crop: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` crops spread round-robin over the images ``indices`` at seeded positions."""
    per_image = [count // len(indices) + (k < count % len(indices)) for k in range(len(indices))]
    images, masks = [], []
    for index, n in zip(indices, per_image, strict=True):
        if n == 0:
            continue
        item = dataset[int(index)]
        image, label = np.asarray(item["image"]), np.asarray(item["label"])
        height, width = image.shape[:2]
        if height < crop or width < crop:
            raise UserInputError(
                f"{item.get('name', index)}: image is {width}x{height}, smaller than the crop "
                f"{crop}x{crop} the monitor takes"
            )
        for _ in range(n):
            top = int(rng.integers(0, height - crop + 1))
            left = int(rng.integers(0, width - crop + 1))
            window = image[top : top + crop, left : left + crop]
            images.append(torch.from_numpy(np.ascontiguousarray(window.transpose(2, 0, 1))))
            masks.append(torch.from_numpy(label[top : top + crop, left : left + crop] > 0))
    return torch.stack(images), torch.stack(masks)


def mask_sample(spec: str, crop: int, images: int) -> MonitorSample:
    """The sample of a ``glas:``, ``masks:`` or ``monuseg:`` source (module docstring)."""
    from histodrl.data.labelled import segmentation_source

    source = segmentation_source(spec, SPLIT_SEED)
    train = source.train
    if len(train) < 2:
        raise UserInputError(
            f"{spec}: {len(train)} training image(s); the monitor needs at least 2 (one to fit "
            "its probe, one to score it)"
        )
    rng = np.random.default_rng(SAMPLE_SEED)
    order = rng.permutation(len(train)).tolist()
    half = len(order) // 2
    n_fit = (images + 1) // 2
    fit_x, fit_y = _crops(train, order[:half], n_fit, crop, rng)
    score_x, score_y = _crops(train, order[half:], images - n_fit, crop, rng)
    pixels = torch.from_numpy(rng.integers(0, crop, size=(len(fit_x), PIXELS_PER_CROP, 2)))
    return MonitorSample(
        task="masks",
        fit_images=fit_x,
        fit_labels=fit_y,
        score_images=score_x,
        score_labels=score_y,
        num_classes=2,
        fit_pixels=pixels.long(),
        description=f"{len(fit_x)} fit crops of {half} images + {len(score_x)} score crops of "
        f"{len(order) - half} images ({crop} px) of the training split of {source.description}",
    )


def load_monitor_sample(spec: str, crop: int, images: int) -> MonitorSample:
    """The monitor's sample of the source ``spec`` (``--monitor``) at the pretraining crop.

    Raises:
        UserInputError: a bad or unlabelled source (the message starts with ``--monitor``),
            too few images, or an image smaller than the crop.
    """
    kind = spec.split(":", 1)[0] if ":" in spec else ""
    try:
        if kind in CLASSIFICATION_KINDS:
            return class_sample(spec, crop, images)
        if kind in SEGMENTATION_KINDS:
            return mask_sample(spec, crop, images)
        raise UserInputError(
            f"{spec}: expected a labelled source "
            f"({', '.join(k + ':DIR' for k in (*CLASSIFICATION_KINDS, *SEGMENTATION_KINDS))})"
        )
    except UserInputError as exc:
        raise UserInputError(f"--monitor {exc}") from None


# ------------------------------------------------------------------------------------------------
# Probes (plain torch, on whatever device the features are)
# ------------------------------------------------------------------------------------------------


def standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and population std of ``x`` (N, C); a constant feature gets scale 1."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))


def knn_predict(
    fit_x: torch.Tensor,
    fit_y: torch.Tensor,
    query_x: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
) -> torch.Tensor:
    """Cosine kNN: the class most of the ``k`` most similar fit points have (ties: the class
    with the larger summed similarity among them).

    Shape: fit_x (N, C), fit_y (N,), query_x (M, C) -> (M,) int64.
    """
    k = max(1, min(int(k), len(fit_x)))
    sims = F.normalize(query_x.float(), dim=1) @ F.normalize(fit_x.float(), dim=1).T
    top, idx = sims.topk(k, dim=1)
    # one-hot sums rather than scatter_add_ (deterministic on CUDA too)
    onehot = F.one_hot(fit_y.to(idx.device)[idx], num_classes).to(top.dtype)  # (M, k, K)
    votes = onehot.sum(dim=1)
    summed = (onehot * top[..., None]).sum(dim=1)
    # |summed| <= votes <= k, so the tie-break never outweighs one vote.
    return (votes + summed / (2 * k + 1)).argmax(dim=1)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float = CLASS_L2,
    iterations: int = PROBE_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS from zero weights (deterministic).

    Minimises ``mean cross-entropy + l2 / 2 * |W|^2`` (bias not penalised), the objective of
    scikit-learn's ``LogisticRegression(C=1 / (l2 * N))`` with K >= 3 classes (with K = 2,
    scikit-learn's one weight vector is the difference of the two rows here, ``l2`` halved).

    Shape: x (N, C), y (N,) int -> ``(weight (K, C), bias (K,))`` in ``x``'s dtype and device.
    """
    x = x.detach()
    y = y.to(x.device).long()
    weight = torch.zeros(
        num_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True
    )
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=int(iterations),
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_thread(x.device):
        optimizer.step(closure)
    return weight.detach(), bias.detach()


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """One intra-op CPU thread (restored after): the probe's ops are tiny, and on a busy machine
    every multi-threaded op waits for all its threads to be scheduled (about 10x slower)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def class_scores(
    fit_x: torch.Tensor,
    fit_y: torch.Tensor,
    score_x: torch.Tensor,
    score_y: torch.Tensor,
    num_classes: int,
) -> dict[str, float]:
    """``{"knn_acc", "linear_acc"}`` of pooled features (standardised with the fit part's)."""
    mean, scale = standardisation(fit_x.float())
    fx, sx = (fit_x.float() - mean) / scale, (score_x.float() - mean) / scale
    fit_y, score_y = fit_y.to(fx.device), score_y.to(fx.device)
    knn = knn_predict(fx, fit_y, sx, num_classes)
    weight, bias = fit_logistic(fx, fit_y, num_classes)
    linear = (sx @ weight.T + bias).argmax(dim=1)
    return {
        "knn_acc": float((knn == score_y).float().mean()),
        "linear_acc": float((linear == score_y).float().mean()),
    }


def pixel_grid(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """``grid_sample`` coordinates of pixel centres ``(row, col)`` of a ``size``-px crop, such
    that sampling a map with ``align_corners=False`` and border padding gives the pixel of the
    map upsampled to ``size`` by ``F.interpolate(mode="bilinear", align_corners=False)``.

    Shape: (N, P, 2) -> (N, P, 1, 2) as ``(x, y)`` in [-1, 1].
    """
    xy = pixels.flip(-1).float()
    return ((2 * xy + 1) / size - 1)[:, :, None, :]


def dice(tp: float, fp: float, fn: float) -> float:
    """Foreground Dice ``2 TP / (2 TP + FP + FN)`` (1 when there is neither)."""
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2 * tp / denominator


# ------------------------------------------------------------------------------------------------
# Evaluating an encoder
# ------------------------------------------------------------------------------------------------


def monitor_blocks(tap: str) -> list[str]:
    """The blocks probed: conv3_4, the method's tap and pool5, in trunk order, without repeats."""
    from histodrl.nn.vgg import TAP_NAMES

    wanted = {"conv3_4", tap, "pool5"}
    return [name for name in TAP_NAMES if name in wanted]


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """``module`` in eval mode without gradients; every submodule's mode is restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _batches(images: torch.Tensor, device: torch.device, batch: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch):
        yield images[start : start + batch].to(device, non_blocking=True)


def _prepare_default(x: torch.Tensor) -> torch.Tensor:
    from histodrl.data.augment import normalize

    return normalize(x).contiguous(memory_format=torch.channels_last)


def evaluate(
    encoder: torch.nn.Module,
    sample: MonitorSample,
    taps: Sequence[str],
    *,
    prepare: Any = None,
    precision: str | None = "32-true",
    batch: int = EVAL_BATCH,
    calibrate: bool = True,
) -> dict[str, dict[str, float]]:
    """The monitor's scores of ``encoder`` on ``sample``: ``{tap: {metric: value}}``.

    Args:
        encoder: a :class:`histodrl.nn.VGG` (``forward_taps``), left in the modes it had, its
            BatchNorm statistics untouched (:func:`frozen`).
        sample: :func:`load_monitor_sample`'s.
        taps: the blocks to probe (:func:`monitor_blocks`).
        prepare: float images in [0, 1] -> encoder input (the module's ``prepare``; default
            ImageNet normalisation, channels_last).
        precision: the run's Lightning precision (autocast as :func:`histodrl.runs.trainer.
            autocast_for`); features and probes are float32.
        batch: images per forward pass.
        calibrate: probe a copy whose BatchNorm running statistics are re-estimated on the fit
            images (:func:`calibrated_copy`), so that every evaluation, the random
            initialisation's at step 0 included, normalises with statistics of the same images;
            ``False``: the encoder's own statistics (a fresh trunk's are 0 / 1).
    """
    from histodrl.data.augment import to_float
    from histodrl.runs.trainer import autocast_for

    prepare = prepare or _prepare_default
    param = next(encoder.parameters())
    device, dtype = param.device, param.dtype
    taps = list(taps)

    def inputs(images: torch.Tensor) -> Iterator[torch.Tensor]:
        for x in _batches(images, device, batch):
            x = prepare(to_float(x))
            yield x.to(dtype) if dtype != torch.float32 else x

    if calibrate:
        encoder = calibrated_copy(encoder, inputs(sample.fit_images), precision)

    def maps(images: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        for x in inputs(images):
            with autocast_for(device, precision):
                out = encoder.forward_taps(x, taps)
            yield {tap: out[tap].float() for tap in taps}

    with frozen(encoder):
        if sample.task == "classes":
            fit = _pooled(maps(sample.fit_images), taps)
            score = _pooled(maps(sample.score_images), taps)
            return {
                tap: class_scores(
                    fit[tap], sample.fit_labels, score[tap], sample.score_labels, sample.num_classes
                )
                for tap in taps
            }
        return _pixel_scores(sample, maps, taps, device, batch)


def calibrated_copy(
    encoder: torch.nn.Module, batches: Iterator[torch.Tensor], precision: str | None
) -> torch.nn.Module:
    """A copy of ``encoder`` whose BatchNorm running statistics are the average over ``batches``
    (cumulative: ``momentum=None``), in eval mode; ``encoder`` itself is not touched.

    Without it the monitor's first point would not be comparable with the others: a fresh trunk's
    running statistics are mean 0 / variance 1, so in eval mode its BatchNorm layers do not
    normalise at all, while a trained one normalises with its pretraining data's statistics. With
    it every point normalises as fine-tuning on these images would (batch statistics of the same
    images). It matters: on 16 MoNuSeg training tiles (width 1/4, 128 px crops, 256 crops) the
    conv4_4 pixel probe of two random trunks scored 0.49 / 0.43 with fresh statistics and
    0.29 / 0.18 calibrated (conv3_4: 0.59 / 0.51 and 0.46 / 0.49).
    """
    import copy

    from histodrl.runs.trainer import autocast_for

    twin = copy.deepcopy(encoder)
    norms = [m for m in twin.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    twin.train()
    with torch.no_grad():
        for x in batches:
            with autocast_for(x.device, precision):
                twin(x)
    return twin.eval()


def _pooled(batches: Iterator[dict[str, torch.Tensor]], taps: list[str]) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    for out in batches:
        for tap in taps:
            parts[tap].append(out[tap].mean(dim=(2, 3)))
    return {tap: torch.cat(p) for tap, p in parts.items()}


def _pixel_scores(
    sample: MonitorSample, maps: Any, taps: list[str], device: torch.device, batch: int
) -> dict[str, dict[str, float]]:
    assert sample.fit_pixels is not None
    size = sample.fit_images.shape[-1]
    pixels = sample.fit_pixels.to(sample.fit_labels.device)
    grid = pixel_grid(pixels, size)
    rows = torch.arange(len(pixels), device=pixels.device)[:, None]
    targets = sample.fit_labels[rows, pixels[..., 0], pixels[..., 1]]
    feats: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    for k, out in enumerate(maps(sample.fit_images)):
        g = grid[k * batch : (k + 1) * batch].to(device)
        for tap in taps:
            picked = F.grid_sample(
                out[tap], g, mode="bilinear", padding_mode="border", align_corners=False
            )  # (B, C, P, 1)
            feats[tap].append(picked[..., 0].permute(0, 2, 1).reshape(-1, picked.shape[1]))
    y = targets.reshape(-1).long().to(device)
    probes = {}
    for tap in taps:
        x = torch.cat(feats[tap])
        mean, scale = standardisation(x)
        weight, bias = fit_logistic((x - mean) / scale, y, 2, l2=PIXEL_L2)
        weight = weight / scale  # folded: acts on raw features
        probes[tap] = (weight, bias - weight @ mean)
    counts = {tap: torch.zeros(3, dtype=torch.float64, device=device) for tap in taps}
    for k, out in enumerate(maps(sample.score_images)):
        truth = sample.score_labels[k * batch : (k + 1) * batch].to(device)
        for tap in taps:
            weight, bias = probes[tap]
            logits = torch.einsum("kc,nchw->nkhw", weight, out[tap]) + bias[:, None, None]
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
            pred = logits[:, 1] > logits[:, 0]
            counts[tap] += torch.stack(
                [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]
            ).double()
    return {tap: {"pixel_dice": dice(*counts[tap].tolist())} for tap in taps}


def monitor_metrics(scores: dict[str, dict[str, float]], headline_tap: str) -> dict[str, float]:
    """``{"monitor/<metric>": value at the headline tap, "monitor/<metric>_<tap>": ...}``."""
    out: dict[str, float] = {}
    for metric, value in scores.get(headline_tap, {}).items():
        out[PREFIX + metric] = value
    for tap, values in scores.items():
        for metric, value in values.items():
            out[f"{PREFIX}{metric}_{tap}"] = value
    return out


# ------------------------------------------------------------------------------------------------
# The callback
# ------------------------------------------------------------------------------------------------


class RepresentationMonitor(L.Callback):
    """Probe ``pl_module.encoder`` on ``sample`` at the first step, every ``every`` steps and
    after the last step (module docstring); global rank 0 only. Consumes no random number."""

    def __init__(self, sample: MonitorSample, every: int) -> None:
        self.sample = sample
        self.every = max(1, int(every))
        self.last_step: int | None = None
        self._device_sample: MonitorSample | None = None

    def _on_device(self, device: torch.device) -> MonitorSample:
        s = self._device_sample
        if s is None or s.fit_images.device != device:
            fields = {k: getattr(self.sample, k) for k in self.sample.__dataclass_fields__}
            for k in ("fit_images", "fit_labels", "score_images", "score_labels", "fit_pixels"):
                if fields[k] is not None:
                    fields[k] = fields[k].to(device)
            self._device_sample = s = MonitorSample(**fields)
        return s

    def evaluate_now(self, trainer: Any, pl_module: Any) -> dict[str, float] | None:
        step = int(trainer.global_step)
        if step == self.last_step:
            return None
        self.last_step = step
        if not trainer.is_global_zero:
            return None
        sample = self._on_device(pl_module.device)
        scores = evaluate(
            pl_module.encoder,
            sample,
            monitor_blocks(pl_module.tap),
            prepare=pl_module.prepare,
            precision=str(trainer.precision),
        )
        metrics = monitor_metrics(scores, pl_module.tap)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        return metrics

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            print(
                f"histodrl: monitor: {self.sample.description}; every {self.every} steps",
                flush=True,
            )
        self.evaluate_now(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self.evaluate_now(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # After the last step; not when a signal stopped the run early (it should stop quickly).
        if trainer.global_step >= trainer.max_steps:
            self.evaluate_now(trainer, pl_module)


# ------------------------------------------------------------------------------------------------
# The figure
# ------------------------------------------------------------------------------------------------


def read_monitor_curves(run: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{"monitor/...": (steps, values)}`` from ``RUN/metrics.csv`` (or a metrics.csv path);
    empty when the run has no monitor columns. A step logged twice keeps its last value."""
    path = Path(run)
    path = path / METRICS_CSV if path.is_dir() else path
    if not path.is_file():
        return {}
    by_key: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if step in (None, ""):
                continue
            for key, value in row.items():
                if key and key.startswith(PREFIX) and value not in ("", None):
                    by_key.setdefault(key, {})[int(float(step))] = float(value)
    return {
        key: (sorted(points), [points[s] for s in sorted(points)])
        for key, points in sorted(by_key.items())
    }


def plot_monitor(
    curves: dict[str, tuple[list[int], list[float]]],
    path: str | Path,
    title: str | None = None,
    tap: str | None = None,
) -> Path:
    """Draw the monitor's curves against the step into ``path`` (PNG, atomic, matplotlib Agg).

    One panel per metric (kNN accuracy, linear-probe accuracy, pixel Dice), one line per probed
    block; the method's tap (the headline ``monitor/<metric>``) thick and black. ``tap``: the
    method's tap when known (its block line is the headline); otherwise the headline is drawn as
    a line of its own. Reusable by reports: pass :func:`read_monitor_curves`'s result.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from histodrl.io import atomic_path

    names = {"knn_acc": "kNN accuracy", "linear_acc": "linear-probe accuracy",
             "pixel_dice": "pixel-probe Dice"}  # fmt: skip
    metrics = [m for m in HEADLINES if any(k.startswith(PREFIX + m) for k in curves)]
    if not metrics:
        metrics = ["knn_acc"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        blocks = {
            key.removeprefix(PREFIX + metric + "_"): curve
            for key, curve in curves.items()
            if key.startswith(PREFIX + metric + "_")
        }
        for block, (steps, values) in blocks.items():
            if block == tap:
                ax.plot(steps, values, "o-", color="black", lw=2, ms=3, zorder=3,
                        label=f"{block} (method's tap)")  # fmt: skip
            else:
                ax.plot(steps, values, ".-", lw=1, alpha=0.8, label=block)
        headline = curves.get(PREFIX + metric)
        if headline is not None and tap not in blocks:
            ax.plot(*headline, "o-", color="black", lw=2, ms=3, zorder=3, label="method's tap")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(names[metric])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def run_tap(run: str | Path) -> str | None:
    """The method's tap of a pretraining run, from its ``encoder.safetensors`` metadata."""
    from histodrl.runs.layout import ENCODER_FILE

    path = Path(run) / ENCODER_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("trained_tap")
    except Exception:  # a foreign or damaged file: the figure does without the name
        return None


def write_monitor_figure(
    run: str | Path, title: str | None = None, tap: str | None = None
) -> Path | None:
    """``RUN/figures/monitor.png`` from the run's metrics.csv (``tap`` default: the run's, from
    :func:`run_tap`); ``None`` when the run has no monitor rows."""
    run = Path(run)
    curves = read_monitor_curves(run)
    if not curves:
        return None
    tap = tap or run_tap(run)
    return plot_monitor(curves, run / FIGURES_DIR / FIGURE_FILE, title=title, tap=tap)


__all__ = [
    "MonitorSample",
    "RepresentationMonitor",
    "class_scores",
    "evaluate",
    "fit_logistic",
    "knn_predict",
    "load_monitor_sample",
    "monitor_blocks",
    "plot_monitor",
    "read_monitor_curves",
    "run_tap",
    "write_monitor_figure",
]
