import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d, map_coordinates

from histodrl.deform import (
    approximate_grid_shape,
    elastic_deform,
    fold_fraction,
    gaussian_radius,
    gaussian_smooth,
    paper_sigma_alpha,
    warp,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.double() - b.double()).abs().max())


def scipy_smooth(field: np.ndarray, sigmas) -> np.ndarray:
    """Reference: scipy's zero-padded Gaussian, one image and channel at a time."""
    return np.stack(
        [
            [
                gaussian_filter(field[b, c], float(sigmas[b]), mode="constant", truncate=4.0)
                for c in range(field.shape[1])
            ]
            for b in range(field.shape[0])
        ]
    )


def scipy_warp(images: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Reference: map_coordinates at (row + dy, col + dx). scipy's 'mirror' reflects about the
    border pixel centres, which is grid_sample's 'reflection' with align_corners=True (scipy's
    'reflect' repeats the border pixel and differs within one pixel of the border)."""
    _, channels, height, width = images.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    out = np.empty_like(images)
    for b in range(images.shape[0]):
        coords = [rows + displacement[b, 1], cols + displacement[b, 0]]
        for c in range(channels):
            out[b, c] = map_coordinates(images[b, c], coords, order=1, mode="mirror")
    return out


def numpy_fold_fraction(displacement: np.ndarray) -> np.ndarray:
    out = []
    for d in displacement:
        dx_dy, dx_dx = np.gradient(d[0])
        dy_dy, dy_dx = np.gradient(d[1])
        det = (1 + dx_dx) * (1 + dy_dy) - dx_dy * dy_dx
        out.append(np.mean(det <= 0))
    return np.array(out)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.5, 6.0, 40.0])
def test_gaussian_radius_is_scipys_support(sigma):
    impulse = np.zeros(401)
    impulse[200] = 1.0
    support = np.count_nonzero(gaussian_filter(impulse, sigma, mode="constant", truncate=4.0))
    assert 2 * gaussian_radius(sigma) + 1 == support


@pytest.mark.parametrize(
    "shape, sigmas",
    [
        ((1, 2, 32, 32), [0.2]),  # radius 1: a 3-tap kernel
        ((3, 2, 37, 53), [1.3, 4.0, 11.0]),  # per-image sigma, non-square
        ((2, 1, 20, 9), [3.0, 9.0]),  # radius 36 > both sides: the normaliser still counts it
    ],
)
def test_smoothing_equals_scipy_gaussian_filter_with_zero_padding(shape, sigmas):
    generator = torch.Generator().manual_seed(0)
    field = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
    sigma = torch.tensor(sigmas, dtype=torch.float64) if len(sigmas) > 1 else sigmas[0]
    expected = scipy_smooth(field.numpy(), sigmas * shape[0] if len(sigmas) == 1 else sigmas)
    np.testing.assert_allclose(gaussian_smooth(field, sigma).numpy(), expected, atol=1e-12)
    single = gaussian_smooth(field.float(), sigma).double().numpy()
    np.testing.assert_allclose(single, expected, atol=1e-5)


def test_rms_displacement_and_fold_fraction_match_method_statistics():
    # METHOD.md (d): S = 256, sigma = 0.04 S, alpha = 2 S -> RMS per axis ≈ 0.163 alpha / sigma
    # (7.8 px measured; zero padding halves the field at the border) and about 9 % folded pixels.
    size = 256
    sigma, alpha = 0.04 * size, 2.0 * size
    images = torch.zeros(8, 1, size, size)
    generator = torch.Generator().manual_seed(1)
    _, displacement = elastic_deform(images, sigma, alpha, generator=generator)
    closed_form = 0.163 * alpha / sigma
    for axis in range(2):
        rms = displacement[:, axis].pow(2).mean().sqrt().item()
        assert abs(rms / closed_form - 1) < 0.10, (axis, rms, closed_form)
    folded = fold_fraction(displacement).mean().item()
    assert 0.07 <= folded <= 0.11


@pytest.mark.parametrize("device", DEVICES)
def test_full_deform_equals_scipy_recipe_on_the_same_noise(device):
    # The noise is documented as uniform_(-1, 1) of a (B, 2, H, W) tensor, so the reference can
    # redraw it from the same seed and run scipy's gaussian_filter + map_coordinates.
    batch, height, width = 2, 48, 40
    sigma = torch.tensor([1.5, 2.4], dtype=torch.float64, device=device)
    alpha = torch.tensor([96.0, 80.0], dtype=torch.float64, device=device)
    images = torch.rand(batch, 3, height, width, dtype=torch.float64, device=device)
    generator = torch.Generator(device=device).manual_seed(5)
    deformed, displacement = elastic_deform(images, sigma, alpha, generator=generator)

    redraw = torch.Generator(device=device).manual_seed(5)
    noise = torch.empty(batch, 2, height, width, dtype=torch.float64, device=device)
    noise = noise.uniform_(-1.0, 1.0, generator=redraw).cpu().numpy()
    expected_disp = scipy_smooth(noise, sigma.tolist()) * alpha.cpu().numpy()[:, None, None, None]
    np.testing.assert_allclose(displacement.cpu().numpy(), expected_disp, atol=1e-9)
    expected = scipy_warp(images.cpu().numpy(), expected_disp)
    # Over the whole image, borders included: reflection is scipy's 'mirror'.
    np.testing.assert_allclose(deformed.cpu().numpy(), expected, atol=1e-9)


def test_deforming_a_coordinate_ramp_recovers_the_displacement():
    height, width = 40, 56  # non-square on purpose
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    ramp = torch.stack((cols, rows))[None].repeat(3, 1, 1, 1)
    generator = torch.Generator().manual_seed(2)
    deformed, displacement = elastic_deform(ramp, 3.0, 60.0, generator=generator)
    sample_x = cols + displacement[:, 0]
    sample_y = rows + displacement[:, 1]
    # Away from the border the ramp is linear, so bilinear interpolation is exact.
    inside = (sample_x >= 0) & (sample_x <= width - 1) & (sample_y >= 0) & (sample_y <= height - 1)
    assert inside.float().mean() > 0.8
    recovered = deformed[:, :2] - ramp[:, :2]
    assert max_abs_diff(recovered[:, 0][inside], displacement[:, 0][inside]) < 1e-9
    assert max_abs_diff(recovered[:, 1][inside], displacement[:, 1][inside]) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("approximate", [False, True])
def test_same_generator_seed_gives_the_same_output(device, approximate):
    images = torch.rand(2, 3, 64, 64, device=device)

    def run(seed):
        generator = torch.Generator(device=device).manual_seed(seed)
        return elastic_deform(images, 10.0, 128.0, generator=generator, approximate=approximate)

    first, second, other = run(3), run(3), run(4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_per_image_sigma_and_alpha_equal_single_value_runs():
    images = torch.rand(2, 3, 48, 48)
    sigmas, alphas = (1.5, 2.5), (96.0, 40.0)

    def run(sigma, alpha):
        generator = torch.Generator().manual_seed(9)
        return elastic_deform(images, sigma, alpha, generator=generator)

    mixed_images, mixed = run(torch.tensor(sigmas), torch.tensor(alphas))
    for b in range(2):
        single_images, single = run(sigmas[b], alphas[b])
        assert max_abs_diff(mixed[b], single[b]) < 1e-4
        assert max_abs_diff(mixed_images[b], single_images[b]) < 1e-5


def test_zero_alpha_is_the_identity():
    images = torch.rand(2, 3, 24, 30)
    deformed, displacement = elastic_deform(images, 2.0, 0.0)
    assert torch.count_nonzero(displacement) == 0
    assert max_abs_diff(deformed, images) < 1e-5


def test_dtypes_follow_the_images():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 16, 16, dtype=torch.bfloat16)
    deformed, displacement = elastic_deform(images, 1.0, 8.0, generator=generator)
    assert deformed.dtype == torch.bfloat16 and displacement.dtype == torch.float32
    deformed, displacement = elastic_deform(images.double(), 1.0, 8.0, generator=generator)
    assert deformed.dtype == displacement.dtype == torch.float64


def exact_operator(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of scipy's zero-padded 1-D Gaussian: column k is the response to pixel k."""
    return gaussian_filter1d(np.eye(n), sigma, axis=0, mode="constant", truncate=4.0)


def approximate_operator(n: int, coarse_n: int, sigma: float) -> np.ndarray:
    """(n, coarse_n) matrix of the approximate mode along one axis: smooth on the coarse grid,
    rescale by 1/sqrt(step), interpolate linearly with the corners on the corners."""
    step = (n - 1) / (coarse_n - 1)
    smooth = exact_operator(coarse_n, sigma / step)
    positions = np.arange(n) / step
    upsample = np.stack([np.interp(positions, np.arange(coarse_n), e) for e in np.eye(coarse_n)], 1)
    return upsample @ smooth / math.sqrt(step)


def expected_statistics(operator: np.ndarray, lags, margin: int):
    """RMS and interior autocorrelation of the field ``A u Aᵀ`` for u ~ U(-1, 1) (variance 1/3),
    in expectation: the covariance of a separable field is (A Aᵀ)[i, i'] (A Aᵀ)[j, j'] / 3."""
    cov = operator @ operator.T
    var = np.diag(cov)
    rms = math.sqrt(var.mean() ** 2 / 3)
    inner = np.arange(margin, len(cov) - margin)
    correlations = [
        cov[inner[:-lag], inner[:-lag] + lag].mean() / var[inner].mean() for lag in lags
    ]
    return rms, correlations


@pytest.mark.parametrize("fraction", [0.03, 0.04, 0.05])
def test_approximate_mode_matches_exact_rms_and_autocorrelation_within_5_percent(fraction):
    # Expected values, computed from the linear operators, so sampling noise cannot hide a bias.
    size = 256
    sigma = fraction * size
    coarse = approximate_grid_shape(size, size, sigma)[0]
    assert coarse < size / 2  # the approximation is in use
    lags = [round(k * sigma) for k in (0.5, 1.0, 1.5, 2.0)]
    margin = math.ceil(2 * sigma)
    rms_exact, ac_exact = expected_statistics(exact_operator(size, sigma), lags, margin)
    rms_approx, ac_approx = expected_statistics(
        approximate_operator(size, coarse, sigma), lags, margin
    )
    assert abs(rms_approx / rms_exact - 1) < 0.05
    np.testing.assert_allclose(ac_approx, ac_exact, rtol=0.05)
    # The exact field agrees with the closed form exp(-lag² / (4 sigma²)) in the interior.
    np.testing.assert_allclose(
        ac_exact, [math.exp(-(lag**2) / (4 * sigma**2)) for lag in lags], rtol=0.02
    )


def test_approximate_mode_equals_its_coarse_scipy_recipe_on_the_same_noise():
    # Ties elastic_deform(approximate=True) to the operators used in the statistics test above.
    batch, height, width = 2, 50, 70
    sigma = torch.tensor([7.0, 9.0], dtype=torch.float64)
    alpha = 100.0
    images = torch.rand(batch, 3, height, width, dtype=torch.float64)
    generator = torch.Generator().manual_seed(8)
    deformed, displacement = elastic_deform(
        images, sigma, alpha, generator=generator, approximate=True
    )
    coarse_h, coarse_w = approximate_grid_shape(height, width, 7.0)
    assert (coarse_h, coarse_w) == (22, 31)
    step_h, step_w = (height - 1) / (coarse_h - 1), (width - 1) / (coarse_w - 1)
    noise = torch.empty(batch, 2, coarse_h, coarse_w, dtype=torch.float64)
    noise = noise.uniform_(-1, 1, generator=torch.Generator().manual_seed(8)).numpy()
    rows, cols = np.meshgrid(np.arange(height) / step_h, np.arange(width) / step_w, indexing="ij")
    expected = np.empty((batch, 2, height, width))
    for b in range(batch):
        s = float(sigma[b])
        for c in range(2):
            smooth = gaussian_filter(
                noise[b, c], (s / step_h, s / step_w), mode="constant", truncate=4.0
            )
            smooth *= alpha / math.sqrt(step_h * step_w)
            expected[b, c] = map_coordinates(smooth, [rows, cols], order=1, mode="nearest")
    np.testing.assert_allclose(displacement.numpy(), expected, atol=1e-9)
    np.testing.assert_allclose(deformed.numpy(), scipy_warp(images.numpy(), expected), atol=1e-9)


def test_approximate_grid_shape_keeps_the_corners_and_the_spacing():
    assert approximate_grid_shape(256, 256, 10.24) == (76, 76)  # spacing 3.41 px
    assert approximate_grid_shape(40, 300, 30.0) == (5, 31)
    assert approximate_grid_shape(64, 48, 2.0) == (64, 48)  # sigma < 3 px: exact


def test_approximate_mode_is_exact_when_sigma_is_small():
    images = torch.rand(2, 3, 32, 32)
    runs = [
        elastic_deform(images, 2.0, 64.0, generator=torch.Generator().manual_seed(0), approximate=a)
        for a in (False, True)
    ]
    assert torch.equal(runs[0][1], runs[1][1])


def test_fold_fraction_matches_numpy_gradient_reference():
    generator = torch.Generator().manual_seed(4)
    displacement = (torch.rand(3, 2, 9, 13, generator=generator, dtype=torch.float64) - 0.5) * 3
    expected = numpy_fold_fraction(displacement.numpy())
    np.testing.assert_allclose(fold_fraction(displacement).numpy(), expected, atol=1e-12)
    assert 0 < expected.min() and expected.max() < 1  # the case is not trivial


def test_fold_fraction_is_zero_for_a_shift_and_one_for_a_mirror():
    height, width = 8, 10
    cols = torch.arange(width, dtype=torch.float32).expand(height, width)
    shift = torch.full((1, 2, height, width), 3.5)
    mirror = torch.stack((-2 * cols + width - 1, torch.zeros(height, width)))[None]
    assert fold_fraction(shift).item() == 0.0
    assert fold_fraction(mirror).item() == 1.0


def test_warp_with_the_identity_grid_returns_the_images():
    images = torch.rand(2, 3, 11, 7, dtype=torch.float64)
    out = warp(images, torch.zeros(2, 2, 11, 7, dtype=torch.float64))
    assert max_abs_diff(out, images) < 1e-12


def test_paper_sigma_alpha_draws_the_papers_range_reproducibly():
    sigma, alpha = paper_sigma_alpha(256, 1000, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == alpha.shape == (1000,)
    assert sigma.min() >= 0.03 * 256 and sigma.max() <= 0.05 * 256
    assert sigma.std() > 1.0  # spread over the range, not a constant
    assert torch.all(alpha == 512.0)
    again, _ = paper_sigma_alpha(256, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigma, again)
    fixed, _ = paper_sigma_alpha(96, 4, sigma_range=(0.04, 0.04), alpha_factor=1.0)
    assert max_abs_diff(fixed, torch.full((4,), 0.04 * 96)) < 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=1, batch=2), "size"),
        (dict(size=64, batch=0), "batch"),
        (dict(size=64, batch=2, sigma_range=(0.05, 0.03)), "sigma_range"),
        (dict(size=64, batch=2, alpha_factor=-1.0), "alpha_factor"),
    ],
)
def test_paper_sigma_alpha_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paper_sigma_alpha(**kwargs)


@pytest.mark.parametrize(
    "images, sigma, alpha, match",
    [
        (torch.rand(3, 16, 16), 1.0, 1.0, "images"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1.0, 1.0, "images"),
        (torch.rand(1, 3, 1, 16), 1.0, 1.0, "images"),
        (torch.rand(2, 3, 16, 16), 0.0, 1.0, "sigma"),
        (torch.rand(2, 3, 16, 16), 17.0, 1.0, "sigma"),
        (torch.rand(2, 3, 16, 16), torch.ones(3), 1.0, "sigma"),
        (torch.rand(2, 3, 16, 16), 1.0, -2.0, "alpha"),
        (torch.rand(2, 3, 16, 16), 1.0, torch.tensor([1.0, float("nan")]), "alpha"),
    ],
)
def test_elastic_deform_rejects_bad_arguments(images, sigma, alpha, match):
    with pytest.raises(ValueError, match=match):
        elastic_deform(images, sigma, alpha)


def test_fold_fraction_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="displacement"):
        fold_fraction(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("approximate", [False, True])
def test_bf16_autocast_gives_the_float32_field_and_image(approximate):
    # Under bf16-mixed the banded-matrix smoothing would run in bf16 and quantise the field
    # (a few thousand distinct values, errors up to 0.2 px); the deformation turns autocast off.
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([3.8, 4.6])

    def run():
        generator = torch.Generator().manual_seed(11)
        return elastic_deform(
            images, sigma, 192.0, generator=generator, approximate=approximate, sigma_min=3.8
        )

    deformed, displacement = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        deformed_amp, displacement_amp = run()
        smoothed_amp = gaussian_smooth(displacement, 2.0)
        warped_amp = warp(images, displacement)
    assert displacement_amp.dtype == deformed_amp.dtype == torch.float32
    assert max_abs_diff(displacement_amp, displacement) <= 1e-5
    assert max_abs_diff(deformed_amp, deformed) <= 1e-6
    assert displacement_amp.unique().numel() > 0.9 * displacement.numel()
    assert smoothed_amp.dtype == warped_amp.dtype == torch.float32
    assert max_abs_diff(smoothed_amp, gaussian_smooth(displacement, 2.0)) <= 1e-5
    assert max_abs_diff(warped_amp, warp(images, displacement)) <= 1e-6


def test_bf16_fields_are_smoothed_in_float32_and_returned_in_bf16():
    field = torch.rand(1, 2, 40, 40, generator=torch.Generator().manual_seed(3)) * 2 - 1
    smoothed = gaussian_smooth(field.bfloat16(), 2.0)
    assert smoothed.dtype == torch.bfloat16
    expected = gaussian_smooth(field.bfloat16().float(), 2.0).bfloat16()
    assert torch.equal(smoothed, expected)


def _explain(fn, *args, **kwargs):
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    try:
        return dynamo.explain(fn)(*args, **kwargs)
    finally:
        dynamo.reset()


@pytest.mark.parametrize("approximate", [False, True])
def test_elastic_deform_traces_without_graph_breaks(approximate):
    # Dynamo stops (graph break) at every host read-back, .item() or branch on a tensor value, so
    # no break means no host synchronisation on the device path (explain does not compile).
    images = torch.rand(2, 3, 64, 64)
    sigma, alpha = paper_sigma_alpha(64, 2, sigma_range=(0.05, 0.08))
    explanation = _explain(
        elastic_deform, images, sigma, alpha, approximate=approximate, sigma_min=0.05 * 64
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("approximate", [False, True])
def test_no_host_synchronisation_on_cuda(approximate):
    generator = torch.Generator(device="cuda").manual_seed(0)
    images = torch.rand(4, 3, 128, 128, device="cuda", generator=generator)

    def step():
        sigma, alpha = paper_sigma_alpha(128, 4, generator=generator, device="cuda")
        return elastic_deform(
            images, sigma, alpha, generator=generator, approximate=approximate, sigma_min=0.03 * 128
        )

    step()  # first-call initialisation (cuBLAS handles) is not part of the step
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            deformed, displacement = step()
            warp(images, displacement)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert deformed.dtype == displacement.dtype == torch.float32


def test_approximate_mode_needs_a_host_side_sigma_min_for_sigma_on_an_accelerator():
    images = torch.rand(2, 3, 32, 32, device="meta")
    on_device = torch.full((2,), 6.0, device="meta")
    with pytest.raises(ValueError, match="sigma_min"):
        elastic_deform(images, on_device, 64.0, approximate=True)
    cpu_images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="sigma_min"):
        elastic_deform(cpu_images, torch.tensor([6.0, 9.0]), 64.0, approximate=True, sigma_min=7.0)
    with pytest.raises(ValueError, match="sigma_min"):
        elastic_deform(cpu_images, 6.0, 64.0, approximate=True, sigma_min=0.0)


def test_sigma_min_sizes_the_coarse_grid():
    images = torch.rand(2, 3, 64, 64)
    sigma = torch.tensor([9.0, 12.0])

    def run(**kwargs):
        generator = torch.Generator().manual_seed(1)
        return elastic_deform(images, sigma, 128.0, generator=generator, approximate=True, **kwargs)

    default = run()
    assert torch.equal(run(sigma_min=9.0)[1], default[1])  # the default is min(sigma)
    finer = run(sigma_min=6.0)[1]  # a lower bound: a finer grid, the same statistics
    assert not torch.equal(finer, default[1])
    ratio = finer.pow(2).mean().sqrt() / default[1].pow(2).mean().sqrt()
    assert 0.7 < float(ratio) < 1.3
