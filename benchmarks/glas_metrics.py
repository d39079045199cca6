"""Time the GLaS object metrics per image on GLaS-sized maps, against a brute-force Hausdorff.

Each image is 775x522 (the usual GLaS size) with about 20 elliptical glands; the prediction moves,
resizes, drops and adds objects. The brute force is the object Hausdorff written the obvious way:
explicit loops over objects and all pairwise pixel distances (``scipy.spatial.distance.cdist``, in
chunks to bound memory). Both run in this process, so the ratio is meaningful on any machine.

    .venv/bin/python benchmarks/glas_metrics.py [--images 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.spatial.distance import cdist

from histodrl.metrics.glas import object_dice, object_f1, object_hausdorff

HEIGHT, WIDTH = 522, 775


def paint_ellipses(centres: np.ndarray, radii: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    out = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    for (r, c), (a, b), label in zip(centres, radii, labels, strict=True):
        out[((rows - r) / a) ** 2 + ((cols - c) / b) ** 2 <= 1] = label
    return out


def make_pair(rng: np.random.Generator, n_objects: int = 20) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.uniform([40, 40], [HEIGHT - 40, WIDTH - 40], size=(n_objects, 2))
    radii = rng.uniform(15, 40, size=(n_objects, 2))
    gt = paint_ellipses(centres, radii, np.arange(1, n_objects + 1))
    keep = rng.random(n_objects) < 0.85  # some glands missed
    pred_centres = centres[keep] + rng.normal(0, 4, size=(int(keep.sum()), 2))
    pred_radii = radii[keep] * rng.uniform(0.8, 1.2, size=(int(keep.sum()), 2))
    n_false = 3  # false positives anywhere
    pred_centres = np.vstack(
        [pred_centres, rng.uniform([30, 30], [HEIGHT - 30, WIDTH - 30], (n_false, 2))]
    )
    pred_radii = np.vstack([pred_radii, rng.uniform(8, 20, size=(n_false, 2))])
    pred = paint_ellipses(pred_centres, pred_radii, np.arange(1, len(pred_centres) + 1) * 3)
    return pred, gt


def directed(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> float:
    return max(cdist(a[i : i + chunk], b).min(axis=1).max() for i in range(0, len(a), chunk))


def pairwise_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    return max(directed(a, b), directed(b, a))


def brute_force_object_hausdorff(pred: np.ndarray, gt: np.ndarray) -> float:
    s_labels = [int(v) for v in np.unique(pred) if v]
    g_labels = [int(v) for v in np.unique(gt) if v]
    s_pts = {s: np.argwhere(pred == s) for s in s_labels}
    g_pts = {g: np.argwhere(gt == g) for g in g_labels}
    halves = []
    for objects, other, pts, other_pts in (
        (s_labels, gt, s_pts, g_pts),
        (g_labels, pred, g_pts, s_pts),
    ):
        total, area = 0.0, 0
        for points in (pts[k] for k in objects):
            under = other[points[:, 0], points[:, 1]]
            under = under[under > 0]
            if under.size:
                values, counts = np.unique(under, return_counts=True)
                partners = [int(values[np.argmax(counts)])]
            else:
                partners = list(other_pts)
            h = min(pairwise_hausdorff(points, other_pts[k]) for k in partners)
            total += len(points) * h
            area += len(points)
        halves.append(total / area)
    return 0.5 * sum(halves)


def per_image_seconds(fn, pairs) -> tuple[float, list[float]]:
    values = []
    start = time.perf_counter()
    for pred, gt in pairs:
        values.append(fn(pred, gt))
    return (time.perf_counter() - start) / len(pairs), values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    pairs = [make_pair(rng) for _ in range(args.images)]
    n_gt = np.mean([len(np.unique(g)) - 1 for _, g in pairs])
    n_pred = np.mean([len(np.unique(p)) - 1 for p, _ in pairs])
    print(
        f"{args.images} images {WIDTH}x{HEIGHT}, {n_gt:.1f} GT / {n_pred:.1f} predicted objects each"
    )
    for name, fn in (("object_f1", object_f1), ("object_dice", object_dice)):
        seconds, _ = per_image_seconds(fn, pairs)
        print(f"{name:<34}{seconds * 1e3:10.1f} ms/image")
    fast, fast_values = per_image_seconds(object_hausdorff, pairs)
    slow, slow_values = per_image_seconds(brute_force_object_hausdorff, pairs)
    print(f"{'object_hausdorff (EDT, bbox crops)':<34}{fast * 1e3:10.1f} ms/image")
    print(f"{'brute force (cdist, all pixels)':<34}{slow * 1e3:10.1f} ms/image")
    print(
        f"speed-up {slow / fast:.1f}x; max |difference| {np.max(np.abs(np.subtract(fast_values, slow_values))):.2e}"
    )


if __name__ == "__main__":
    main()
