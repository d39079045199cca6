"""Fig. 5: global descriptors of GLaS test crops and of their elastically deformed copies.

The descriptor is the one L_GCH acts on, ``F_G(x) = L2norm(GAP(FEM(X^Enc)))`` (eq. 7), taken from a
DRL pretraining run's last checkpoint; for a run without FEM it is ``L2norm(GAP(X^Enc))`` (E9).
Besides the t-SNE picture, two numbers say how close each image is to its own deformed copy:

* **pair retrieval accuracy**: the share of images ``i`` whose most similar deformed descriptor
  (largest ``g_i · ĝ_j``) is their own copy ``ĝ_i`` (chance: 1/N);
* **positive / negative cosine**: the mean of ``g_i · ĝ_i`` and of ``g_i · ĝ_j`` over ``i ≠ j``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histodrl.io import atomic_path, atomic_write_text

FEATURES_FILE = "features.npz"
METRICS_FILE = "metrics.json"


def glas_test_crops(glas_root: str | Path, crop: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random ``crop``-px crops of the GLaS test A and test B images.

    Crop ``i`` comes from image ``i mod n_images`` (images in :class:`GlasDataset` order), at a
    position drawn from ``item_rng(seed, 0, i)``; an image smaller than the crop is reflect-padded.

    Args:
        glas_root: the GLaS folder.
        crop: crop side in pixels (>= 1).
        count: number of crops (>= 2).
        seed: seed of the positions.

    Returns:
        uint8 tensor. Shape: (count, 3, crop, crop).

    Raises:
        ValueError: ``crop < 1`` or ``count < 2``.
        UserInputError: no test images in the folder (or a bad file).
    """
    from histodrl.data.crops import item_rng, random_crop_box
    from histodrl.data.glas import GlasDataset

    if crop < 1 or count < 2:
        raise ValueError(f"crop={crop}, count={count}: expected crop >= 1 and count >= 2")
    tests = GlasDataset(glas_root, parts=("testA", "testB"))
    images = [tests[i]["image"] for i in range(len(tests))]
    out = np.empty((count, crop, crop, 3), dtype=np.uint8)
    for i in range(count):
        image = images[i % len(images)]
        pad = ((0, max(0, crop - image.shape[0])), (0, max(0, crop - image.shape[1])), (0, 0))
        if pad[0][1] or pad[1][1]:
            image = np.pad(image, pad, mode="reflect")
        top, left = random_crop_box(image.shape[0], image.shape[1], crop, item_rng(seed, 0, i))
        out[i] = image[top : top + crop, left : left + crop]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def global_descriptors(
    module: Any, images: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, ĝ)``: F_G of the images and of fresh elastic deformations of them, in eval mode.

    The deformation uses the run's own settings (σ range, α factor, deformation size S, METHOD.md
    (d)); originals and deformed copies go through the encoder as one batch, as in training.

    Args:
        module: a DRL module (:func:`histodrl.pretext.base.load_module_from_checkpoint`).
        images: uint8 images on the module's device. Shape: (N, 3, S, S).
        generator: a ``torch.Generator`` on that device, for σ and the noise.

    Returns:
        Two float32 tensors of unit rows on the CPU. Shape: (N, C) each.
    """
    from histodrl.data.augment import to_float
    from histodrl.deform import elastic_deform, paper_sigma_alpha

    o = module.options
    x = to_float(images)
    n = x.shape[0]
    size = int(o.deform_size or min(x.shape[-2:]))
    lo, hi = o.sigma_range
    sigma, alpha = paper_sigma_alpha(
        size,
        n,
        generator=generator,
        sigma_range=(float(lo), float(hi)),
        alpha_factor=o.alpha_factor,
        device=x.device,
    )
    x_hat, _ = elastic_deform(x, sigma, alpha, generator=generator)
    module.eval()
    tap = module.tap
    maps = module.encoder.forward_taps(module.prepare(torch.cat([x, x_hat])), [tap])[tap]
    # F_G as in training: L2norm of the global vector h (DRL's pre-activation FEM output).
    _, h = module.context_and_global(maps)
    g_both = F.normalize(h.float(), dim=1).cpu()
    return g_both[:n], g_both[n:]


def pair_scores(g: torch.Tensor, g_hat: torch.Tensor) -> dict[str, float]:
    """How close each descriptor is to its own deformed copy's, compared with the others'.

    Args:
        g: descriptors of the originals (unit rows). Shape: (N, C), N >= 2.
        g_hat: descriptors of their deformed copies, row i of image i. Shape: (N, C).

    Returns:
        ``pair_retrieval_accuracy``: share of rows i with ``argmax_j g_i·ĝ_j == i`` (ties go to
        the lowest j); ``positive_cosine``: mean ``g_i·ĝ_i``; ``negative_cosine``: mean
        ``g_i·ĝ_j`` over ``i ≠ j``.

    Raises:
        ValueError: shapes that differ or fewer than 2 rows.
    """
    if g.ndim != 2 or g.shape != g_hat.shape or g.shape[0] < 2:
        raise ValueError(f"g {tuple(g.shape)}, g_hat {tuple(g_hat.shape)}: expected (N, C), N >= 2")
    sim = g.double() @ g_hat.double().T
    n = sim.shape[0]
    diagonal = torch.diagonal(sim)
    retrieved = sim.argmax(dim=1) == torch.arange(n)
    off = (sim.sum() - diagonal.sum()) / (n * (n - 1))
    return {
        "pair_retrieval_accuracy": float(retrieved.double().mean()),
        "positive_cosine": float(diagonal.mean()),
        "negative_cosine": float(off),
    }


def tsne_2d(points: np.ndarray, seed: int) -> np.ndarray:
    """A 2-D t-SNE of ``points`` (sklearn, PCA init, perplexity ``min(30, (P - 1) / 3)``).

    Args:
        points: one row per point. Shape: (P, C), P >= 4.
        seed: ``random_state`` of the optimisation.

    Returns:
        float64 coordinates. Shape: (P, 2).
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    p = points.shape[0]
    if points.ndim != 2 or p < 4:
        raise ValueError(f"points {points.shape}: expected (P, C) with P >= 4")
    perplexity = min(30.0, (p - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # A few hundred points take well under a second on one thread; OpenMP threads fighting over
    # busy cores made the same fit 100x slower.
    with threadpool_limits(limits=1):
        xy = tsne.fit_transform(np.asarray(points, dtype=np.float64))
    return np.asarray(xy, dtype=np.float64)


def embed_run(
    pretrain_run: str | Path,
    glas_root: str | Path,
    out: str | Path,
    *,
    count: int,
    seed: int,
    accelerator: str = "auto",
) -> dict[str, Any]:
    """Embed ``count`` GLaS test crops and their deformations with a pretraining run's encoder.

    Writes ``OUT/features.npz`` (``g``, ``g_hat``: (count, C) float32) and then ``OUT/metrics.json``
    (:func:`pair_scores` plus the run, crop and count), both atomically; ``metrics.json`` marks
    the run as finished.

    Args:
        pretrain_run: a DRL pretraining run folder (its ``checkpoints/last.ckpt`` is read).
        glas_root: the GLaS folder.
        out: the folder to write.
        count: number of crops (>= 2); the crop side is the run's pretraining crop.
        seed: seed of the crop positions and the deformations.
        accelerator: ``auto``, ``cpu`` or ``gpu``.

    Returns:
        The metrics written.
    """
    from histodrl.pretext.base import load_module_from_checkpoint
    from histodrl.runs.sampling import derive_seed
    from histodrl.runs.trainer import resolve_device

    device = resolve_device(accelerator)
    module = load_module_from_checkpoint(Path(pretrain_run)).to(device)
    crop = module.crop
    images = glas_test_crops(glas_root, crop, count, seed).to(device)
    generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "fig5-deform"))
    g, g_hat = global_descriptors(module, images, generator)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / FEATURES_FILE) as tmp, open(tmp, "wb") as f:
        np.savez(f, g=g.numpy().astype(np.float32), g_hat=g_hat.numpy().astype(np.float32))
    metrics: dict[str, Any] = {
        "task": "embed",
        "pretrain_run": str(pretrain_run),
        "crop": crop,
        "count": count,
        "seed": seed,
        "descriptor": "L2norm(GAP(FEM(tap)))"
        if getattr(module, "fem", None)
        else "L2norm(GAP(tap))",
        **pair_scores(g, g_hat),
    }
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return metrics
