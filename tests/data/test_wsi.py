import colorsys

import numpy as np
import pytest
import tifffile
import torch
from torch.utils.data import DataLoader

from histodrl.data.wsi import (
    MIN_SATURATION,
    ReadPlan,
    WsiTiles,
    read_plan,
    resolve_slide_paths,
    saturation,
    tile_positions,
    tissue_mask,
)
from histodrl.errors import UserInputError

HEIGHT, WIDTH = 512, 768
PINK = (180, 60, 150)


def blob_slide(height=HEIGHT, width=WIDTH, radius=150, seed=0):
    """White glass with a little noise and one pink tissue disc; returns (image, disc mask)."""
    rng = np.random.default_rng(seed)
    image = np.clip(235 + rng.integers(-4, 5, (height, width, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height // 2) ** 2 + (xx - 300) ** 2 < radius**2
    image[disc] = PINK
    return image, disc


def write_pyramid(path, image, levels=3, mpp=0.5):
    """A tiled pyramidal TIFF as tiffslide reads it: level 0 with its reductions as SubIFDs."""
    options = dict(tile=(64, 64), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            image,
            subifds=levels - 1,
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
            **options,
        )
        for k in range(1, levels):
            tif.write(image[:: 2**k, :: 2**k], subfiletype=1, **options)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    image, disc = blob_slide()
    path = tmp_path_factory.mktemp("wsi") / "blob.tif"
    write_pyramid(path, image)
    return path, image, disc


def test_saturation_matches_colorsys():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    rgb[0, 0] = 0
    expected = np.array(
        [[colorsys.rgb_to_hsv(*(rgb[i, j] / 255.0))[1] for j in range(7)] for i in range(6)]
    )
    assert np.allclose(saturation(rgb), expected, atol=1e-6)


def test_tissue_mask_finds_the_stained_disc_not_the_glass(slide):
    _, image, disc = slide
    small, small_disc = image[::4, ::4], disc[::4, ::4]
    mask = tissue_mask(small)
    assert (mask == small_disc).mean() > 0.99
    assert not tissue_mask(np.full((20, 20, 3), 240, np.uint8)).any()
    black_padding = np.zeros((20, 20, 3), np.uint8)
    black_padding[:, 10:] = PINK
    assert np.array_equal(tissue_mask(black_padding)[:, :10], np.zeros((20, 10), bool))
    assert MIN_SATURATION > 0


def reference_positions(mask, base_size, footprint, min_tissue):
    """Explicit loops over the half-tile grid, coverage over the touched mask pixels."""
    width, height = base_size
    h, w = mask.shape
    sx, sy = width / w, height / h
    out = []
    y = 0.0
    while y + footprint <= height + 1e-9:
        x = 0.0
        while x + footprint <= width + 1e-9:
            xi, yi = int(np.floor(x)), int(np.floor(y))
            c0 = min(int(np.floor(xi / sx)), w - 1)
            c1 = min(max(c0 + 1, int(np.ceil((xi + footprint) / sx - 1e-9))), w)
            r0 = min(int(np.floor(yi / sy)), h - 1)
            r1 = min(max(r0 + 1, int(np.ceil((yi + footprint) / sy - 1e-9))), h)
            if mask[r0:r1, c0:c1].mean() >= min_tissue:
                out.append((xi, yi))
            x += footprint / 2
        y += footprint / 2
    return out


@pytest.mark.parametrize(
    "footprint,min_tissue", [(64.0, 0.5), (100.0, 0.3), (24.0, 1.0), (7.0, 0.5)]
)
def test_tile_positions_match_the_loop_reference(footprint, min_tissue):
    mask = np.random.default_rng(1).random((30, 45)) < 0.6
    got = tile_positions(mask, (450, 300), footprint, min_tissue)
    assert [tuple(p) for p in got.tolist()] == reference_positions(
        mask, (450, 300), footprint, min_tissue
    )


def tissue_share(disc, x, y, side):
    return disc[y : y + side, x : x + side].mean()


def test_tiles_come_only_from_the_tissue(slide):
    path, image, disc = slide
    tiles = WsiTiles(path, crop=64, level=0, min_tissue=0.5, seed=1, tiles_per_epoch=40)
    assert len(tiles) == 40 and len(tiles.positions) > 10
    shares = [tissue_share(disc, x, y, 64) for _, x, y in tiles.positions]
    assert min(shares) > 0.35  # the mask is 4x coarser than level 0: coverage is approximate
    for index in range(0, 40, 7):
        k, x, y = tiles.draw(index)
        item = tiles[index]
        assert item.dtype == torch.uint8 and item.shape == (3, 64, 64)
        assert np.array_equal(item.numpy(), image[y : y + 64, x : x + 64].transpose(2, 0, 1))
    full = WsiTiles(path, crop=64, level=0, min_tissue=1.0, tiles_per_epoch=5)
    assert min(tissue_share(disc, x, y, 64) for _, x, y in full.positions) > 0.95
    everywhere = WsiTiles(path, crop=64, level=0, min_tissue=0.0, tiles_per_epoch=5)
    assert len(everywhere.positions) == 15 * 23  # the whole half-tile grid of a 768x512 slide


def test_tiles_at_a_coarser_level_and_at_a_target_mpp(slide):
    path, image, _ = slide
    level1 = image[::2, ::2]
    tiles = WsiTiles(path, crop=32, level=1, tiles_per_epoch=3)
    assert tiles.plans[0] == ReadPlan(level=1, read_size=32, footprint=64.0)
    _, x, y = tiles.draw(0)
    assert np.array_equal(
        tiles[0].numpy(), level1[y // 2 : y // 2 + 32, x // 2 : x // 2 + 32].transpose(2, 0, 1)
    )
    by_mpp = WsiTiles(path, crop=32, mpp=1.0, tiles_per_epoch=3)  # level 0 is 0.5 um/px
    assert by_mpp.plans[0] == ReadPlan(level=1, read_size=32, footprint=64.0)
    resized = WsiTiles(path, crop=32, mpp=1.5, tiles_per_epoch=3)
    assert resized.plans[0] == ReadPlan(level=1, read_size=48, footprint=96.0)
    assert resized[0].shape == (3, 32, 32)


def test_read_plan_chooses_the_coarsest_level_not_above_the_wanted_downsample():
    ds = (1.0, 4.0003, 16.001)
    assert read_plan(ds, 256) == ReadPlan(0, 256, 256.0)
    assert read_plan(ds, 256, mpp=1.0, base_mpp=0.25) == ReadPlan(1, 256, 1024.0)
    assert read_plan(ds, 256, mpp=2.0, base_mpp=0.25) == ReadPlan(1, 512, 2048.0)
    assert read_plan(ds, 256, mpp=8.0, base_mpp=0.25) == ReadPlan(2, 512, 8192.0)
    assert read_plan(ds, 100, level=2).footprint == pytest.approx(1600.1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(level=3), "level 3 does not exist"),
        (dict(mpp=1.0), "does not record its microns per pixel"),
        (dict(mpp=0.1, base_mpp=0.25), "finer than the slide's level 0"),
        (dict(level=0, mpp=1.0, base_mpp=0.25), "not both"),
    ],
)
def test_read_plan_refuses_what_the_slide_cannot_give(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        read_plan((1.0, 4.0, 16.0), 256, name="s.svs", **kwargs)


def test_draws_depend_on_seed_and_epoch_only_also_in_workers(slide):
    path, _, _ = slide
    tiles = WsiTiles(path, crop=32, level=1, seed=3, tiles_per_epoch=8)
    again = WsiTiles(path, crop=32, level=1, seed=3, tiles_per_epoch=8)
    assert [tiles.draw(i) for i in range(16)] == [again.draw(i) for i in range(16)]
    assert [tiles.draw(i) for i in range(8)] != [tiles.draw(i) for i in range(8, 16)]
    tiles[0]  # a handle opened here must not be used by forked workers
    serial = torch.cat(list(DataLoader(tiles, batch_size=4, num_workers=0)))
    parallel = torch.cat(list(DataLoader(tiles, batch_size=4, num_workers=2)))
    assert torch.equal(serial, parallel)


def test_slides_are_found_by_glob_folder_or_list(slide, tmp_path):
    path, _, _ = slide
    folder = path.parent
    assert resolve_slide_paths(str(folder / "*.tif")) == [path]
    assert resolve_slide_paths(folder) == [path]
    assert resolve_slide_paths([path, str(path)]) == [path]
    with pytest.raises(UserInputError, match="no file matches"):
        resolve_slide_paths(str(tmp_path / "*.svs"))
    with pytest.raises(UserInputError, match="no such slide"):
        resolve_slide_paths(tmp_path / "missing.svs")
    with pytest.raises(UserInputError, match="no slides found"):
        resolve_slide_paths(tmp_path)


def test_a_slide_without_tissue_is_an_error(tmp_path):
    write_pyramid(tmp_path / "blank.tif", np.full((256, 256, 3), 238, np.uint8), levels=2)
    with pytest.raises(
        UserInputError, match=r"blank.tif: no tile of 64x64 with at least 50% tissue"
    ):
        WsiTiles(tmp_path / "blank.tif", crop=64)


def test_an_unreadable_slide_names_the_file(tmp_path):
    (tmp_path / "bad.svs").write_bytes(b"not a tiff at all")
    with pytest.raises(UserInputError, match=r"bad.svs: not a readable whole-slide image"):
        WsiTiles(tmp_path / "bad.svs", crop=64)
