"""Throughput of the elastic deformation against scipy and albumentations, in one run.

Run: ``.venv/bin/python benchmarks/deform.py [--batch 8] [--size 256] [--seconds 4] [--device cpu]``
(albumentations rows need ``pip install -e .[bench]``; they are skipped without it).

Prints images/s of :func:`histodrl.deform.elastic_deform` (exact, and the approximate mode), of
the canonical scipy recipe (``gaussian_filter(mode="constant")`` + ``map_coordinates(order=1)``,
one image at a time) and, when installed, of albumentations' ``ElasticTransform`` (exact, and
``approximate=True``: a fixed 17x17 kernel), one float32 HWC image at a time, with sigma = 0.04 S
and alpha = 2 S, and the ratios against scipy and against our exact mode. The CPU baselines always
run on the CPU, so on a GPU the ratios mix devices; the images/s are what matters there.

Equal field statistics: albumentations is given the sigma and alpha whose expected interior RMS
displacement and correlation length (the lag where the field's autocorrelation falls to 1/e;
``2 sigma`` for ours) are ours, computed from its documented recipe (uniform noise, OpenCV's
normalised Gaussian kernel, ``alpha`` times the blurred noise). Both statistics are then measured
on displacement fields, ours as returned and albumentations' recovered by deforming a coordinate
image (``out[..., 0] - x`` where no sample leaves the image), over the interior (a ``2 sigma``
margin, where the border conventions do not matter), printed with their ratios to ours and
whether they are within 5 %. albumentations' approximate kernel has 17 taps whatever sigma is,
which caps its correlation length near 11 px: at S = 256 it cannot reach ours (20 px), and the
table says so.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from histodrl.deform import elastic_deform, gaussian_radius

# albumentations' approximate mode blurs with a fixed kernel of this many taps per axis.
ALBUMENTATIONS_APPROXIMATE_TAPS = 17
# Statistics are "equal" within this relative tolerance.
TOLERANCE = 0.05


def scipy_elastic_deform(
    images: np.ndarray, sigma: float, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """The canonical per-image recipe; ``mode="mirror"`` is ``grid_sample``'s reflection."""
    out = np.empty_like(images)
    _, channels, height, width = images.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    for b in range(images.shape[0]):
        dx = gaussian_filter(rng.uniform(-1, 1, (height, width)), sigma, mode="constant") * alpha
        dy = gaussian_filter(rng.uniform(-1, 1, (height, width)), sigma, mode="constant") * alpha
        coords = np.stack((rows + dy, cols + dx))
        for c in range(channels):
            out[b, c] = map_coordinates(images[b, c], coords, order=1, mode="mirror")
    return out


def images_per_second(
    methods: dict[str, Callable[[], object]],
    batch: int,
    seconds: float,
    sync: Callable,
    rounds: int,
) -> dict[str, float]:
    """Time the methods in interleaved bursts, so a change of machine load hits them all alike."""
    for fn in methods.values():
        fn()  # warm-up: first-call allocations and kernel selection
    sync()
    elapsed = dict.fromkeys(methods, 0.0)
    done = dict.fromkeys(methods, 0)
    for _ in range(rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            while True:
                fn()
                done[name] += batch
                sync()
                if time.perf_counter() - start >= seconds / rounds:
                    break
            elapsed[name] += time.perf_counter() - start
    return {name: done[name] / elapsed[name] for name in methods}


# ---------------------------------------------------------------------------------------------
# Field statistics
# ---------------------------------------------------------------------------------------------


def field_statistics(fields: np.ndarray, margin: int, max_lag: int) -> tuple[float, float]:
    """(RMS displacement, correlation length) of fields over their interior; NaN = unknown.

    RMS over both axes' shifts; the correlation length is the lag (px, linearly interpolated)
    at which the autocorrelation along rows and columns, averaged, first falls below 1/e.

    Shape: fields (N, 2, H, W).
    """
    inner = fields[:, :, margin:-margin, margin:-margin].astype(np.float64)
    power = np.nanmean(inner**2)
    correlation = [1.0]
    for lag in range(1, max_lag + 1):
        along_x = np.nanmean(inner[..., :, :-lag] * inner[..., :, lag:])
        along_y = np.nanmean(inner[..., :-lag, :] * inner[..., lag:, :])
        correlation.append(0.5 * (along_x + along_y) / power)
    return math.sqrt(power), _one_over_e_lag(np.array(correlation))


def _one_over_e_lag(correlation: np.ndarray) -> float:
    below = np.nonzero(correlation < math.exp(-1.0))[0]
    if len(below) == 0:
        return float("inf")
    k = int(below[0])
    c0, c1 = correlation[k - 1], correlation[k]
    return k - 1 + (c0 - math.exp(-1.0)) / (c0 - c1)


def kernel_statistics(kernel: np.ndarray, alpha: float) -> tuple[float, float]:
    """Expected interior (RMS, correlation length) of ``alpha * (k x k) * U(-1, 1)`` noise.

    A separable field's variance is ``alpha^2 / 3 * (sum k^2)^2`` and its autocorrelation along
    an axis is the kernel's normalised autocorrelation.
    """
    kernel = np.asarray(kernel, dtype=np.float64).ravel()
    energy = float(np.sum(kernel**2))
    correlation = np.correlate(kernel, kernel, mode="full")[len(kernel) - 1 :] / energy
    return alpha / math.sqrt(3.0) * energy, _one_over_e_lag(np.append(correlation, 0.0))


def our_kernel(sigma: float) -> np.ndarray:
    taps = np.arange(-gaussian_radius(sigma), gaussian_radius(sigma) + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    return kernel / kernel.sum()


def opencv_kernel(sigma: float, taps: int | None) -> np.ndarray:
    """The kernel of ``cv2.GaussianBlur(float32, (taps, taps) or (0, 0), sigma)``."""
    import cv2

    if taps is None:  # OpenCV's automatic size for floating images: 4 sigma each side
        taps = int(round(sigma * 4 * 2 + 1)) | 1
    return cv2.getGaussianKernel(taps, sigma, cv2.CV_64F).ravel()


@dataclass
class AlbumentationsSetting:
    """albumentations' ElasticTransform parameters that match our field statistics."""

    name: str
    approximate: bool
    sigma: float
    alpha: float
    expected: tuple[float, float]


def match_albumentations(sigma: float, alpha: float, approximate: bool) -> AlbumentationsSetting:
    """The sigma and alpha giving our expected interior RMS and correlation length.

    sigma by bisection on the correlation length (it grows with sigma; with the fixed 17-tap
    kernel it saturates, and the largest sigma tried is kept), then alpha from the RMS, which is
    linear in alpha.
    """
    target_rms, target_length = kernel_statistics(our_kernel(sigma), alpha)
    taps = ALBUMENTATIONS_APPROXIMATE_TAPS if approximate else None

    def length(s: float) -> float:
        return kernel_statistics(opencv_kernel(s, taps), 1.0)[1]

    low, high = 1.0, 1000.0  # albumentations requires sigma >= 1
    if length(high) < target_length:
        chosen = high  # unreachable: the nearest albumentations can get
    else:
        for _ in range(60):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if length(mid) < target_length else (low, mid)
        chosen = 0.5 * (low + high)
    unit_rms = kernel_statistics(opencv_kernel(chosen, taps), 1.0)[0]
    alpha_a = target_rms / unit_rms
    expected = kernel_statistics(opencv_kernel(chosen, taps), alpha_a)
    name = f"albumentations ElasticTransform {'approximate' if approximate else 'exact'}"
    return AlbumentationsSetting(name, approximate, chosen, alpha_a, expected)


def albumentations_transform(setting: AlbumentationsSetting, border_mode: int, fill: float = 0.0):
    import albumentations as A

    return A.ElasticTransform(
        alpha=setting.alpha,
        sigma=setting.sigma,
        approximate=setting.approximate,
        noise_distribution="uniform",
        border_mode=border_mode,
        fill=fill,
        p=1.0,
    )


def albumentations_fields(
    setting: AlbumentationsSetting, size: int, count: int, seed: int
) -> tuple[np.ndarray, float]:
    """albumentations' displacement fields, and how well they explain its output.

    The fields are the sampling maps its ElasticTransform draws (``map - pixel``; all pixels, so
    the statistics are not biased by dropping large shifts near the border). The check deforms a
    coordinate image with those maps through the transform's own ``apply`` and returns the
    largest ``|out - map|`` where no sample leaves the image (cv2.remap's bilinear weights are
    quantised to 1/32 px).
    """
    import cv2

    transform = albumentations_transform(setting, cv2.BORDER_CONSTANT, fill=-1e4)
    transform.set_random_seed(seed)
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    ramp = np.stack([cols, rows, np.zeros_like(cols)], axis=-1)
    fields = np.empty((count, 2, size, size), dtype=np.float64)
    deviation = 0.0
    for n in range(count):
        params = transform.get_params_dependent_on_data({"shape": ramp.shape}, {"image": ramp})
        maps = np.stack([params["map_x"], params["map_y"]]).astype(np.float64)
        fields[n] = maps - np.stack([cols, rows])
        out = transform.apply(ramp, **params)[..., :2].transpose(2, 0, 1).astype(np.float64)
        inside = ((maps >= 0) & (maps <= size - 1)).all(axis=0)
        deviation = max(deviation, float(np.abs(out - maps)[:, inside].max()))
    return fields, deviation


def print_statistics(
    rows: list[tuple[str, float, float, tuple[float, float], tuple[float, float], str]],
    reference: tuple[float, float],
    margin: int,
    count: int,
) -> None:
    print(
        f"field statistics over the interior (margin {margin} px), {count} fields each; "
        "correlation length = lag of autocorrelation 1/e"
    )
    print(
        f"  {'method':42s} {'sigma':>7s} {'alpha':>7s} {'RMS px':>7s} {'corr px':>7s} "
        f"{'RMS/ours':>8s} {'corr/ours':>9s}  {'expected RMS, corr':18s} within 5 %"
    )
    for name, sigma, alpha, measured, expected, note in rows:
        rms_ratio, corr_ratio = measured[0] / reference[0], measured[1] / reference[1]
        ok = abs(rms_ratio - 1) <= TOLERANCE and abs(corr_ratio - 1) <= TOLERANCE
        verdict = "yes" if ok else f"NO{f' ({note})' if note else ''}"
        print(
            f"  {name:42s} {sigma:7.2f} {alpha:7.1f} {measured[0]:7.2f} {measured[1]:7.2f} "
            f"{rms_ratio:8.3f} {corr_ratio:9.3f}  {expected[0]:6.2f}, {expected[1]:6.2f}      "
            f"{verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per method")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved bursts per method")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--stats-fields", type=int, default=32, help="fields per method for the statistics"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: all)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    size, batch = args.size, args.batch
    sigma, alpha = 0.04 * size, 2.0 * size
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand((batch, 3, size, size), generator=generator, device=device)
    images_np = images.cpu().numpy()
    rng = np.random.default_rng(0)

    try:
        import albumentations  # noqa: F401
        import cv2
    except ImportError:
        cv2 = None
    settings = (
        [match_albumentations(sigma, alpha, approximate) for approximate in (False, True)]
        if cv2 is not None
        else []
    )

    # Statistics first: our fields as returned, albumentations' recovered from a coordinate ramp.
    count, margin = args.stats_fields, math.ceil(2 * sigma)
    max_lag = math.ceil(4 * sigma)
    zeros = torch.zeros((count, 1, size, size), device=device)
    stats_rows = []
    for name, approximate in (
        ("elastic_deform exact", False),
        ("elastic_deform approximate", True),
    ):
        stats_gen = torch.Generator(device=device).manual_seed(1)
        _, field = elastic_deform(zeros, sigma, alpha, generator=stats_gen, approximate=approximate)
        measured = field_statistics(field.cpu().numpy(), margin, max_lag)
        expected = kernel_statistics(our_kernel(sigma), alpha) if not approximate else measured
        stats_rows.append((name, sigma, alpha, measured, expected, ""))
    deviations = {}
    for setting in settings:
        fields, deviations[setting.name] = albumentations_fields(setting, size, count, seed=1)
        cap = (
            "17-tap kernel caps corr"
            if setting.approximate and setting.expected[1] < 0.95 * stats_rows[0][3][1]
            else ""
        )
        stats_rows.append(
            (
                setting.name,
                setting.sigma,
                setting.alpha,
                field_statistics(fields, margin, max_lag),
                setting.expected,
                cap,
            )
        )

    methods = {
        "scipy gaussian_filter + map_coordinates": lambda: scipy_elastic_deform(
            images_np, sigma, alpha, rng
        ),
        "elastic_deform exact": lambda: elastic_deform(images, sigma, alpha, generator=generator),
        "elastic_deform approximate": lambda: elastic_deform(
            images, sigma, alpha, generator=generator, approximate=True
        ),
    }
    if cv2 is not None:
        cv2.setNumThreads(torch.get_num_threads())
        images_hwc = [np.ascontiguousarray(image.transpose(1, 2, 0)) for image in images_np]
        for setting in settings:
            transform = albumentations_transform(setting, cv2.BORDER_REFLECT_101)
            transform.set_random_seed(0)
            methods[setting.name] = functools.partial(_apply_each, transform, images_hwc)
    rates = images_per_second(methods, batch, args.seconds, sync, args.rounds)
    baseline = rates["scipy gaussian_filter + map_coordinates"]
    exact = rates["elastic_deform exact"]
    print(
        f"elastic deformation, {batch}x3x{size}x{size}, sigma={sigma:g} alpha={alpha:g}, "
        f"device={device}, torch threads={torch.get_num_threads()}"
        + (f", cv2 threads={cv2.getNumThreads()}" if cv2 is not None else "")
    )
    for name, rate in rates.items():
        print(
            f"  {name:42s} {rate:8.1f} img/s   {rate / baseline:5.2f}x scipy   "
            f"{rate / exact:5.2f}x ours exact"
        )
    if cv2 is None:
        print("  albumentations: not installed (pip install -e .[bench]), skipped")
    print()
    print_statistics(stats_rows, stats_rows[0][3], margin, count)
    for name, deviation in deviations.items():
        print(
            f"  check: {name} applied to a coordinate image reproduces its field within "
            f"{deviation:.2g} px (where no sample leaves the image)"
        )


def _apply_each(transform, images_hwc: list[np.ndarray]) -> list[np.ndarray]:
    """albumentations works on one HWC image at a time (reflect-101 borders, like ours)."""
    return [transform(image=image)["image"] for image in images_hwc]


if __name__ == "__main__":
    main()
