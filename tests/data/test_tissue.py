import math

import numpy as np
import pytest

from histodrl.data.tissue import (
    EOSIN_OD,
    HEMATOXYLIN_OD,
    jitter_stains,
    jittered_grid,
    smooth_noise,
    stain_to_rgb,
    stamp_ellipses,
    star_radius,
)


def _bspline(t: float) -> float:
    t = abs(t)
    if t < 1:
        return 2 / 3 - t * t + t**3 / 2
    if t < 2:
        return (2 - t) ** 3 / 6
    return 0.0


def _reference_matrix(n: int, cell: float) -> np.ndarray:
    """Interpolation matrix written out pixel by pixel: node j sits at (j - 2) * cell."""
    m = math.ceil(n / cell) + 4
    out = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            out[i, j] = _bspline((i - (j - 2) * cell) / cell)
        out[i] /= math.sqrt((out[i] ** 2).sum())
    return out


@pytest.mark.parametrize(
    ("shape", "cell"),
    [
        ((2, 40, 50), 3.0),  # dense-matrix path, batched
        ((30, 300), 2.0),  # 154 coarse columns: the gather path along x
        ((7, 7), 0.7),  # cell below one pixel
    ],
)
def test_smooth_noise_matches_pixelwise_bspline_interpolation(shape, cell):
    got = smooth_noise(np.random.default_rng(3), shape, cell)
    *batch, h, w = shape
    my, mx = _reference_matrix(h, cell), _reference_matrix(w, cell)
    coarse = np.random.default_rng(3).standard_normal(
        (*batch, my.shape[1], mx.shape[1]), dtype=np.float32
    )
    expected = my @ coarse.astype(np.float64) @ mx.T
    assert got.shape == tuple(shape)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_smooth_noise_has_unit_variance_and_is_smooth():
    field = smooth_noise(np.random.default_rng(0), (16, 160, 160), 4.0)
    assert abs(field.mean()) < 0.05
    assert abs(field.std() - 1.0) < 0.05
    # Neighbouring pixels of a field smooth over 4 px are strongly correlated.
    assert np.corrcoef(field[:, :, :-1].ravel(), field[:, :, 1:].ravel())[0, 1] > 0.95


def test_smooth_noise_rejects_a_non_positive_cell():
    with pytest.raises(ValueError, match="cell=0"):
        smooth_noise(np.random.default_rng(0), (4, 4), 0)


def test_star_radius_matches_polar_formula():
    rng = np.random.default_rng(0)
    dy, dx = rng.normal(0, 10, (50, 1)), rng.normal(0, 10, (1, 60))
    amplitudes, phases = rng.normal(0, 0.1, 4), rng.uniform(0, 6, 4)
    got = star_radius(dy, dx, (9.0, 5.0), 0.7, amplitudes, phases)
    u = dx * math.cos(0.7) + dy * math.sin(0.7)
    v = -dx * math.sin(0.7) + dy * math.cos(0.7)
    phi = np.arctan2(v / 5.0, u / 9.0)
    outline = 1 + sum(amplitudes[k] * np.cos((k + 2) * phi + phases[k]) for k in range(4))
    np.testing.assert_allclose(got, np.hypot(u / 9.0, v / 5.0) / outline, rtol=1e-12)
    assert star_radius(np.array(0.0), np.array(4.0), (4.0, 2.0), 0.0) == pytest.approx(1.0)


def _reference_stamp(shape, centers, axes, angles, values, batch, amplitudes=None, phases=None):
    """Each shape evaluated on the whole canvas, then the maximum: no bounding boxes."""
    canvas = np.zeros(shape)
    h, w = shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for i in range(len(centers)):
        amp = None if amplitudes is None else amplitudes[i]
        pha = None if phases is None else phases[i]
        rho = star_radius(
            yy - centers[i, 0], xx - centers[i, 1], (axes[i, 0], axes[i, 1]), angles[i], amp, pha
        )
        cover = np.clip(0.5 + (1 - rho) * axes[i, 1], 0, 1) * values[i]
        target = canvas if batch is None else canvas[batch[i]]
        np.maximum(target, cover, out=target)
    return canvas


@pytest.mark.parametrize("batched", [False, True])
def test_stamp_ellipses_matches_whole_canvas_reference(batched):
    rng = np.random.default_rng(1)
    n = 40
    # Some shapes hang over the border or lie wholly outside the canvas.
    centers = rng.uniform(-8, 38, (n, 2))
    a = rng.uniform(1.5, 6.0, n)
    axes = np.stack([a, a * rng.uniform(0.3, 1.0, n)], axis=1)
    angles = rng.uniform(0, math.pi, n)
    values = rng.uniform(0.5, 2.0, n)
    amplitudes = rng.normal(0, 0.08, (n, 3))
    phases = rng.uniform(0, 2 * math.pi, (n, 3))
    batch = rng.integers(0, 3, n) if batched else None
    shape = (3, 30, 33) if batched else (30, 33)
    canvas = np.zeros(shape, dtype=np.float32)
    stamp_ellipses(
        canvas,
        centers,
        axes,
        angles,
        values,
        batch_index=batch,
        amplitudes=amplitudes,
        phases=phases,
    )
    expected = _reference_stamp(shape, centers, axes, angles, values, batch, amplitudes, phases)
    np.testing.assert_allclose(canvas, expected, atol=2e-5)


def test_stamp_ellipses_keeps_existing_larger_values_and_accepts_no_shapes():
    canvas = np.full((10, 10), 5.0, dtype=np.float32)
    stamp_ellipses(canvas, np.array([[5.0, 5.0]]), np.array([[3.0, 3.0]]), np.zeros(1), np.ones(1))
    assert (canvas == 5.0).all()
    stamp_ellipses(canvas, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    assert (canvas == 5.0).all()


def test_stamp_ellipses_rejects_a_batch_canvas_without_batch_index():
    with pytest.raises(ValueError, match="batch_index"):
        stamp_ellipses(
            np.zeros((2, 5, 5)), np.ones((1, 2)), np.ones((1, 2)), np.zeros(1), np.ones(1)
        )
    with pytest.raises(ValueError, match="C-contiguous"):
        stamp_ellipses(
            np.zeros((5, 6)).T, np.ones((1, 2)), np.ones((1, 2)), np.zeros(1), np.ones(1)
        )


def test_stain_to_rgb_is_beer_lambert():
    rng = np.random.default_rng(0)
    h, e = rng.uniform(0, 2, (2, 5, 7)), rng.uniform(0, 1, (2, 5, 7))
    h_od, e_od = jitter_stains(rng, 2)
    light = rng.uniform(200, 255, (2, 3))
    got = stain_to_rgb(h, e, hematoxylin_od=h_od, eosin_od=e_od, illumination=light)
    expected = np.stack(
        [
            light[i] * np.exp(-(h[i][..., None] * h_od[i] + e[i][..., None] * e_od[i]))
            for i in range(2)
        ]
    )
    assert got.dtype == np.uint8 and got.shape == (2, 5, 7, 3)
    # float32 arithmetic may round a value that sits on .5 the other way.
    assert np.abs(got.astype(float) - np.round(expected)).max() <= 1
    single = stain_to_rgb(h[0], -e[0], illumination=240.0)
    np.testing.assert_allclose(
        single, np.round(240.0 * np.exp(-h[0][..., None] * HEMATOXYLIN_OD)), atol=1
    )


def test_stain_colours_are_pink_for_eosin_and_purple_for_hematoxylin():
    eosin = stain_to_rgb(np.zeros((1, 1)), np.full((1, 1), 0.6))[0, 0].astype(int)
    nucleus = stain_to_rgb(np.full((1, 1), 1.5), np.full((1, 1), 0.2))[0, 0].astype(int)
    assert eosin[0] > eosin[2] > eosin[1]  # pink: red, then blue, green lowest
    assert nucleus[2] > nucleus[0] > nucleus[1]  # purple-blue
    assert nucleus.sum() < eosin.sum()
    assert np.allclose(np.linalg.norm(EOSIN_OD), 1, atol=1e-3)


def test_jitter_stains_is_seeded_and_returns_unit_vectors():
    h1, e1 = jitter_stains(np.random.default_rng(5), 4)
    h2, e2 = jitter_stains(np.random.default_rng(5), 4)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_allclose(np.linalg.norm(h1, axis=1), 1.0)
    assert (h1 >= 0).all() and (e1 >= 0).all()


def test_jittered_grid_points_stay_inside_and_apart():
    pts = jittered_grid(np.random.default_rng(0), 50, 70, spacing=5.0, jitter=0.3)
    assert ((pts >= 0) & (pts < [50, 70])).all()
    assert abs(len(pts) - 50 * 70 / 25) <= 5
    d = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 5.0 * (1 - 2 * 0.3) - 1e-9
