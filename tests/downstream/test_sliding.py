"""Sliding-window inference against an explicit per-pixel numpy reference."""

import numpy as np
import pytest
import torch
from torch import nn

from histodrl.downstream.sliding import (
    gaussian_tile_weight,
    reflect_pad_to,
    sliding_window_logits,
    tile_corners,
)


def _conv_model(seed: int, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, k, padding=k // 2), nn.Tanh(), nn.Conv2d(4, 2, 1))
    return model.eval()


def _reference(model, image: np.ndarray, crop: int, overlap: float) -> np.ndarray:
    """Per-pixel weighted mean over every tile containing the pixel, one tile at a time."""
    c, h, w = image.shape
    padded = np.pad(image, ((0, 0), (0, max(0, crop - h)), (0, max(0, crop - w))), mode="reflect")
    ph, pw = padded.shape[1:]
    stride = max(1, round(crop * (1 - overlap)))

    def starts(length):
        s = list(range(0, length - crop + 1, stride))
        return s if s[-1] == length - crop else [*s, length - crop]

    sigma = crop / 8
    centre = (crop - 1) / 2
    num = np.zeros((2, ph, pw))
    den = np.zeros((ph, pw))
    for top in starts(ph):
        for left in starts(pw):
            tile = torch.from_numpy(padded[:, top : top + crop, left : left + crop].copy())
            with torch.no_grad():
                out = model(tile[None].float())[0].double().numpy()
            for y in range(crop):
                for x in range(crop):
                    wgt = np.exp(-((y - centre) ** 2 + (x - centre) ** 2) / (2 * sigma**2))
                    num[:, top + y, left + x] += wgt * out[:, y, x]
                    den[top + y, left + x] += wgt
    return (num / den)[:, :h, :w]


@pytest.mark.parametrize(
    "height, width, crop, overlap",
    [(40, 56, 16, 0.5), (23, 37, 16, 0.25), (9, 30, 16, 0.5), (16, 16, 16, 0.0)],
)
def test_blended_tiles_match_per_pixel_reference(height, width, crop, overlap):
    rng = np.random.default_rng(height * width)
    image = rng.standard_normal((3, height, width)).astype(np.float32)
    model = _conv_model(0)
    fast = sliding_window_logits(
        model, torch.from_numpy(image), crop=crop, overlap=overlap, tile_batch=3
    )
    assert fast.shape == (2, height, width) and fast.dtype == torch.float32
    np.testing.assert_allclose(fast.numpy(), _reference(model, image, crop, overlap), atol=1e-5)


def test_pointwise_model_gives_the_whole_image_result_exactly():
    # A 1x1 model sees no context, so the blended tiles must equal one pass over the whole image.
    torch.manual_seed(1)
    model = nn.Conv2d(3, 2, 1).eval()
    image = torch.randn(3, 50, 70)
    out = sliding_window_logits(model, image, crop=32, overlap=0.5, tile_batch=2)
    with torch.no_grad():
        whole = model(image[None])[0]
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=1e-5)


def test_reflect_padding_of_any_size_matches_numpy_reflect():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    out = reflect_pad_to(x, 17, 12)
    ref = np.pad(x.numpy(), ((0, 0), (0, 14), (0, 7)), mode="reflect")
    np.testing.assert_array_equal(out.numpy(), ref)
    assert reflect_pad_to(x, 2, 2) is x


def test_one_pixel_side_is_replicated_and_the_other_reflected():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    out = reflect_pad_to(x, 3, 4)
    np.testing.assert_array_equal(out.numpy(), np.array([[1.0, 2.0, 3.0, 2.0]] * 3))


def test_gaussian_weight_is_one_at_centre_positive_and_symmetric():
    w = gaussian_tile_weight(32).double()
    assert w.shape == (32, 32)
    assert w.max().item() == pytest.approx(1.0, abs=1e-6)
    assert (w > 0).all()
    torch.testing.assert_close(w, w.flip(0))
    torch.testing.assert_close(w, w.T)
    # At the middle of an edge the weight is exp(-(15.5)^2 / (2 * 4^2)) of the centre's.
    assert w[0, 15].item() / w[16, 15].item() == pytest.approx(np.exp(-(15.5**2 - 0.5**2) / 32))


def test_tiles_cover_every_pixel_with_the_last_flush_to_the_border():
    corners = tile_corners(70, 45, 32, 0.5)
    covered = np.zeros((70, 45), dtype=bool)
    for top, left in corners:
        covered[top : top + 32, left : left + 32] = True
    assert covered.all()
    assert max(t for t, _ in corners) == 70 - 32 and max(s for _, s in corners) == 45 - 32


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="overlap=1"):
        tile_corners(64, 64, 32, 1.0)
    with pytest.raises(ValueError, match="tile_batch=0"):
        sliding_window_logits(nn.Identity(), torch.zeros(3, 8, 8), crop=8, tile_batch=0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        sliding_window_logits(nn.Identity(), torch.zeros(1, 3, 8, 8), crop=8)
