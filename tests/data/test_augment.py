import colorsys
import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from histodrl.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    adjust_colors,
    color_jitter,
    draw_color_jitter,
    draw_crop_boxes,
    draw_flip_rot90,
    flip_rot90,
    normalize,
    random_flip_rot90,
    random_resized_crop,
    resized_crop,
    to_float,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.double() - b.double()).abs().max())


# --- flips and quarter turns ------------------------------------------------------------------


def loop_flip_rot90(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    out = []
    for image, (hflip, vflip, k) in zip(x, params.tolist()):
        if hflip:
            image = image.flip(-1)
        if vflip:
            image = image.flip(-2)
        out.append(torch.rot90(image, k, dims=(-2, -1)))
    return torch.stack(out)


ALL_SQUARE_PARAMS = torch.tensor(list(itertools.product((0, 1), (0, 1), range(4))))


def test_flip_rot90_equals_per_image_flip_and_rot90_for_every_combination():
    x = torch.rand(16, 3, 6, 6, generator=generator())
    assert torch.equal(flip_rot90(x, ALL_SQUARE_PARAMS), loop_flip_rot90(x, ALL_SQUARE_PARAMS))


def test_flip_rot90_moves_integer_label_maps_like_the_images():
    labels = torch.randint(0, 1000, (16, 5, 5), generator=generator(1))
    out = flip_rot90(labels, ALL_SQUARE_PARAMS)
    assert out.dtype == labels.dtype
    assert torch.equal(out, loop_flip_rot90(labels, ALL_SQUARE_PARAMS))


def test_flip_rot90_on_non_square_images_with_half_turns():
    params = torch.tensor(list(itertools.product((0, 1), (0, 1), (0, 2))))
    x = torch.rand(8, 2, 4, 7, generator=generator(2))
    assert torch.equal(flip_rot90(x, params), loop_flip_rot90(x, params))


def test_flip_rot90_rejects_a_quarter_turn_of_a_non_square_image():
    with pytest.raises(ValueError, match="square"):
        flip_rot90(torch.rand(1, 3, 4, 6), torch.tensor([[0, 0, 1]]))


def test_random_flip_rot90_reaches_all_eight_symmetries_uniformly():
    x = torch.arange(9.0).reshape(1, 1, 3, 3).expand(800, 1, 3, 3)
    out = random_flip_rot90(x, generator(3))
    _, counts = torch.unique(out.reshape(800, 9), dim=0, return_counts=True)
    assert len(counts) == 8
    assert counts.min() > 60 and counts.max() < 140  # 100 expected


def test_random_flip_rot90_keeps_the_shape_of_non_square_images():
    x = torch.arange(12.0).reshape(1, 1, 3, 4).expand(400, 1, 3, 4)
    out = random_flip_rot90(x, generator(4))
    assert out.shape == x.shape
    assert len(torch.unique(out.reshape(400, 12), dim=0)) == 4


def test_random_flip_rot90_is_draw_then_apply_and_reproducible():
    x = torch.rand(6, 3, 8, 8, generator=generator())
    params = draw_flip_rot90(6, generator=generator(5))
    assert torch.equal(random_flip_rot90(x, generator(5)), flip_rot90(x, params))
    assert torch.equal(random_flip_rot90(x, generator(5)), random_flip_rot90(x, generator(5)))


# --- random resized crop ----------------------------------------------------------------------


def loop_resized_crop_bilinear(x, boxes, size):
    out = []
    for image, (top, left, h, w) in zip(x, boxes.tolist()):
        crop = image[None, :, top : top + h, left : left + w]
        out.append(F.interpolate(crop, size=size, mode="bilinear", align_corners=False)[0])
    return torch.stack(out)


def loop_resized_crop_nearest(x, boxes, size):
    """Input index top + floor((p + 1/2) h / out), with exact fractions."""
    out_h, out_w = size
    out = []
    for image, (top, left, h, w) in zip(x, boxes.tolist()):
        rows = [top + min(int((p + Fraction(1, 2)) * h / out_h), h - 1) for p in range(out_h)]
        cols = [left + min(int((q + Fraction(1, 2)) * w / out_w), w - 1) for q in range(out_w)]
        out.append(image[..., rows, :][..., cols])
    return torch.stack(out)


# Boxes that enlarge, shrink, keep, touch every border, and are one pixel wide.
BOXES = torch.tensor([[0, 0, 12, 16], [3, 5, 6, 7], [0, 9, 12, 7], [11, 0, 1, 16], [4, 4, 3, 1]])


@pytest.mark.parametrize("size", [(8, 8), (9, 20), (12, 16)])
def test_bilinear_resized_crop_equals_per_image_crop_and_interpolate(size):
    x = torch.rand(5, 3, 12, 16, generator=generator(), dtype=torch.float64)
    expected = loop_resized_crop_bilinear(x, BOXES, size)
    assert max_abs_diff(resized_crop(x, BOXES, size), expected) < 1e-12
    single = resized_crop(x.float(), BOXES, size)
    assert single.dtype == torch.float32 and max_abs_diff(single, expected) < 1e-5


@pytest.mark.parametrize("size", [(8, 8), (9, 20), (24, 32)])
def test_nearest_resized_crop_of_labels_equals_exact_per_image_loop(size):
    labels = torch.randint(0, 5, (5, 12, 16), generator=generator(1), dtype=torch.uint8)
    out = resized_crop(labels, BOXES, size, mode="nearest")
    assert out.dtype == torch.uint8
    assert torch.equal(out, loop_resized_crop_nearest(labels, BOXES, size))


def test_image_and_label_crops_with_the_same_boxes_stay_aligned():
    height, width = 20, 30
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    ids = torch.arange(height * width).reshape(height, width)
    boxes = draw_crop_boxes(64, height, width, generator=generator(2))
    image_rows = resized_crop(rows.expand(64, 1, height, width), boxes, 16)
    label_ids = resized_crop(ids.expand(64, height, width), boxes, 16, mode="nearest")
    label_rows, label_cols = label_ids // width, label_ids % width
    top, left, box_h, box_w = boxes.unbind(1)
    assert torch.all(label_rows >= top[:, None, None])
    assert torch.all(label_rows < (top + box_h)[:, None, None])
    assert torch.all(label_cols >= left[:, None, None])
    assert torch.all(label_cols < (left + box_w)[:, None, None])
    # Bilinear and nearest sample the same point up to the rounding of one pixel.
    assert (image_rows[:, 0] - label_rows).abs().max() <= 1.0


def test_crop_boxes_follow_scale_and_ratio_and_fit_the_image():
    height, width = 64, 48
    boxes = draw_crop_boxes(2000, height, width, generator=generator(3))
    top, left, box_h, box_w = boxes.T
    assert torch.all((top >= 0) & (left >= 0))
    assert torch.all((top + box_h <= height) & (left + box_w <= width))
    area = (box_h * box_w).double() / (height * width)
    aspect = box_w.double() / box_h
    # Rounding the sides to pixels moves area and aspect a little past the bounds.
    assert area.min() > 0.5 * 0.93 and area.max() <= 1.0
    assert aspect.min() > 0.75 * 0.95 and aspect.max() < 4 / 3 * 1.05
    assert area.std() > 0.1 and len(torch.unique(top)) > 10  # really random


def test_crop_boxes_fall_back_to_the_centre_crop_when_nothing_fits():
    # Whole-area boxes with aspect 2 never fit a square: torchvision's fallback is the centre
    # crop with the ratio clamped to the range, here 32 x 16.
    boxes = draw_crop_boxes(4, 32, 32, scale=(1.0, 1.0), ratio=(2.0, 2.0), generator=generator())
    assert torch.equal(boxes, torch.tensor([[8, 0, 16, 32]] * 4))


def test_random_resized_crop_is_draw_then_resize_and_reproducible():
    x = torch.rand(4, 3, 20, 20, generator=generator())
    boxes = draw_crop_boxes(4, 20, 20, generator=generator(6))
    out = random_resized_crop(x, 10, generator=generator(6))
    assert out.shape == (4, 3, 10, 10)
    assert torch.equal(out, resized_crop(x, boxes, 10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scale=(0.0, 1.0)), "scale"),
        (dict(scale=(0.8, 0.5)), "scale"),
        (dict(ratio=(2, 1)), "ratio"),
    ],
)
def test_draw_crop_boxes_rejects_bad_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        draw_crop_boxes(2, 10, 10, **kwargs)


def test_resized_crop_rejects_bilinear_on_integer_labels_and_unknown_modes():
    labels = torch.zeros(1, 8, 8, dtype=torch.int64)
    box = torch.tensor([[0, 0, 8, 8]])
    with pytest.raises(ValueError, match="floating"):
        resized_crop(labels, box, 4)
    with pytest.raises(ValueError, match="mode"):
        resized_crop(labels.float(), box, 4, mode="bicubic")


# --- colour jitter ----------------------------------------------------------------------------


def loop_adjust_colors(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Per image, torchvision's four functional ops in order; the hue step pixel by pixel."""
    weights = torch.tensor([0.2989, 0.587, 0.114], dtype=x.dtype)[:, None, None]
    out = []
    for image, (b, c, s, h) in zip(x, factors.tolist()):
        image = (image * b).clamp(0, 1)
        mean = (image * weights).sum(0).mean()
        image = (c * image + (1 - c) * mean).clamp(0, 1)
        gray = (image * weights).sum(0, keepdim=True)
        image = (s * image + (1 - s) * gray).clamp(0, 1)
        pixels = image.reshape(3, -1).T.tolist()
        shifted = []
        for r, g, bl in pixels:
            hh, ss, vv = colorsys.rgb_to_hsv(r, g, bl)
            shifted.append(colorsys.hsv_to_rgb((hh + h) % 1.0, ss, vv))
        out.append(torch.tensor(shifted, dtype=x.dtype).T.reshape(image.shape))
    return torch.stack(out)


def colour_test_images() -> torch.Tensor:
    """Random pixels plus the awkward ones: greys, black, white, primaries, hue-sector edges."""
    x = torch.rand(4, 3, 6, 7, generator=generator(), dtype=torch.float64)
    special = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [1.0, 1.0, 1.0],
            [0.5, 0.5, 0.5],
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [1.0, 1.0, 0.0],
            [0.0, 1.0, 1.0],
            [1.0, 0.0, 1.0],
            [0.3, 0.3, 0.9],
            [0.9, 0.3, 0.3],
        ],
        dtype=torch.float64,
    )
    x[0, :, 0, :7] = special[:7].T
    x[0, :, 1, :4] = special[7:].T
    return x


def test_adjust_colors_equals_per_image_torchvision_ops_and_colorsys():
    x = colour_test_images()
    factors = torch.tensor(
        [
            [1.3, 0.7, 1.4, 0.05],
            [0.6, 1.4, 0.6, -0.05],
            [1.0, 1.0, 1.0, 0.5],
            [1.2, 1.2, 0.0, -0.3],
        ],
        dtype=torch.float64,
    )
    out = adjust_colors(x, factors)
    assert max_abs_diff(out, loop_adjust_colors(x, factors)) < 1e-9
    assert out.min() >= 0 and out.max() <= 1


def test_color_jitter_is_draw_then_adjust_and_reproducible():
    x = colour_test_images()
    factors = draw_color_jitter(4, generator=generator(7))
    out = color_jitter(x, generator=generator(7))
    assert max_abs_diff(out, loop_adjust_colors(x, factors.double())) < 1e-6
    assert torch.equal(out, color_jitter(x, generator=generator(7)))


def test_color_jitter_factors_span_torchvisions_ranges():
    factors = draw_color_jitter(
        4000, brightness=0.4, contrast=0.2, saturation=1.5, hue=0.05, generator=generator(8)
    )
    low = torch.tensor([0.6, 0.8, 0.0, -0.05])
    high = torch.tensor([1.4, 1.2, 2.5, 0.05])
    assert torch.all(factors >= low) and torch.all(factors <= high)
    spread = (factors.amax(0) - factors.amin(0)) / (high - low)
    assert torch.all(spread > 0.98)


def test_color_jitter_with_zero_strengths_is_the_identity():
    x = torch.rand(3, 3, 8, 8, generator=generator())
    out = color_jitter(x, 0.0, 0.0, 0.0, 0.0, generator=generator())
    assert max_abs_diff(out, x) < 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(brightness=-0.1), "brightness"),
        (dict(hue=0.6), "hue"),
        (dict(saturation=float("nan")), "saturation"),
    ],
)
def test_draw_color_jitter_rejects_bad_strengths(kwargs, match):
    with pytest.raises(ValueError, match=match):
        draw_color_jitter(2, **kwargs)


def test_adjust_colors_rejects_non_rgb_images():
    with pytest.raises(ValueError, match="RGB"):
        adjust_colors(torch.rand(2, 1, 4, 4), torch.ones(2, 4))


# --- conversion and normalisation -------------------------------------------------------------


def test_to_float_maps_uint8_to_unit_interval():
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    out = to_float(x)
    assert out.dtype == torch.float32
    assert max_abs_diff(out, torch.tensor([[0.0, 0.2, 1.0]])) < 1e-7
    with pytest.raises(ValueError, match="uint8"):
        to_float(out)


def test_normalize_uses_imagenet_statistics_per_channel():
    x = torch.rand(2, 3, 4, 5, generator=generator(), dtype=torch.float64)
    expected = torch.stack(
        [(x[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)], dim=1
    )
    assert max_abs_diff(normalize(x), expected) < 1e-12
    with pytest.raises(ValueError, match="mean"):
        normalize(torch.rand(1, 1, 4, 4))


def test_a_generator_on_another_device_is_rejected():
    with pytest.raises(ValueError, match="generator"):
        draw_flip_rot90(2, generator=generator(), device="meta")


def test_augmentations_never_mix_images_of_a_batch():
    # Batched code must not leak one image's parameters or pixels into another: each image of a
    # batch equals the same image run alone with the same parameters.
    x = torch.rand(3, 3, 16, 16, generator=generator(9))
    flips = draw_flip_rot90(3, generator=generator(1))
    boxes = draw_crop_boxes(3, 16, 16, generator=generator(2))
    colours = draw_color_jitter(3, generator=generator(3))
    batch_out = adjust_colors(resized_crop(flip_rot90(x, flips), boxes, 12), colours)
    for b in range(3):
        alone = adjust_colors(
            resized_crop(flip_rot90(x[b : b + 1], flips[b : b + 1]), boxes[b : b + 1], 12),
            colours[b : b + 1],
        )
        assert max_abs_diff(batch_out[b : b + 1], alone) < 1e-6
    assert not np.allclose(batch_out[0].numpy(), batch_out[1].numpy())


def test_normalize_backpropagates_after_a_first_call_in_inference_mode():
    # Lightning validates under torch.inference_mode; cached constants must stay usable after.
    with torch.inference_mode():
        normalize(torch.rand(1, 3, 4, 4, dtype=torch.float64))
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    normalize(x).sum().backward()
    expected = (1 / torch.tensor(IMAGENET_STD, dtype=torch.float64))[:, None, None].expand(3, 4, 4)
    assert max_abs_diff(x.grad[0], expected) < 1e-12
