"""histodrl deform-preview on small generated images and on bad input."""

import numpy as np
import pytest
from PIL import Image

from histodrl.cli import main


def write_image(path, width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Stripes and noise, so a deformation is visible in the preview.
    stripes = (np.arange(width)[None, :, None] // 4 % 2) * 180
    pixels = np.clip(stripes + rng.integers(0, 60, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_preview_writes_a_png_grid_and_leaves_no_temporary_file(tmp_path, capsys):
    image = write_image(tmp_path / "tile.png", 60, 50)
    out = tmp_path / "figures" / "grid.png"
    assert main(["deform-preview", str(image), "--out", str(out), "--size", "40"]) == 0
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 600 and png.height > 300
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]
    stdout = capsys.readouterr().out
    assert "centre crop 40x40 of 60x50" in stdout
    assert stdout.count("folded") == 3


def test_preview_is_reproducible_for_a_seed_and_keeps_a_small_image_whole(tmp_path, capsys):
    image = write_image(tmp_path / "small.png", 24, 20)  # smaller than the default --size 256
    outputs = []
    for name, seed in (("a.png", 3), ("b.png", 3), ("c.png", 4)):
        out = tmp_path / name
        assert main(["deform-preview", str(image), "--out", str(out), "--seed", str(seed)]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
    assert "whole image 24x20" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make_input, extra, expected",
    [
        (lambda d: d / "missing.png", [], "missing.png: file not found"),
        (lambda d: _write_bytes(d / "broken.png", b"not an image"), [], "broken.png"),
        (lambda d: write_image(d / "tiny.png", 6, 20), [], "tiny.png: image is 6x20"),
        (lambda d: write_image(d / "ok.png", 20, 20), ["--size", "4"], "--size 4"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_status_2(
    tmp_path, capsys, make_input, extra, expected
):
    image = make_input(tmp_path)
    out = tmp_path / "grid.png"
    assert main(["deform-preview", str(image), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert expected in err
    assert not out.exists()


def test_out_must_not_be_a_folder(tmp_path, capsys):
    image = write_image(tmp_path / "ok.png", 20, 20)
    assert main(["deform-preview", str(image), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path
