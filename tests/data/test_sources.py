import logging

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from histodrl.data.folder import FolderImages
from histodrl.data.glas import GlasCrops
from histodrl.data.pcam import PCamPatches, pcam_path
from histodrl.data.sources import SOURCE_KINDS, parse_source, pretrain_dataset
from histodrl.data.wsi import WsiTiles
from histodrl.errors import UserInputError


def write_glas(root, width=80, height=72):
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("train_1", "train_2", "testA_1"):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            root / f"{name}.bmp"
        )
        Image.fromarray(np.zeros((height, width), np.uint8)).save(root / f"{name}_anno.bmp")
    return root


def write_pcam_x(root, n=8):
    root.mkdir(exist_ok=True)
    x = np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    with h5py.File(pcam_path(root, "train", "x"), "w") as f:
        f.create_dataset("x", data=x)
    return root


def write_slide(path):
    image = np.full((256, 256, 3), 236, np.uint8)
    image[32:224, 32:224] = (170, 70, 160)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=1, tile=(64, 64), photometric="rgb")
        tif.write(image[::4, ::4], subfiletype=1, tile=(64, 64), photometric="rgb")
    return path


def test_parse_source_splits_at_the_first_colon_and_checks_the_path(tmp_path):
    odd = tmp_path / "a:b"
    odd.mkdir()
    assert parse_source(f"folder:{odd}") == ("folder", str(odd))
    assert parse_source(f"glas:{tmp_path}") == ("glas", str(tmp_path))
    write_slide(tmp_path / "s.tif")
    assert parse_source(f"wsi:{tmp_path}/*.tif") == ("wsi", f"{tmp_path}/*.tif")
    assert parse_source(f"wsi:{tmp_path}/s.tif")[0] == "wsi"


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "imagenet:/data",
            r"unknown data kind 'imagenet' \(expected one of glas, pcam, folder, wsi, masks, monuseg\)",
        ),
        (
            "/data/glas",
            r"expected KIND:PATH with KIND one of glas, pcam, folder, wsi, masks, monuseg",
        ),
        ("glas:", r"glas:: missing path after 'glas:'"),
    ],
)
def test_bad_source_specs_say_what_was_expected(spec, message):
    with pytest.raises(UserInputError, match=message):
        parse_source(spec)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(UserInputError, match=r"does not exist"):
        parse_source(f"pcam:{tmp_path / 'nope'}")
    with pytest.raises(UserInputError, match=r"no file matches"):
        parse_source(f"wsi:{tmp_path}/*.svs")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserInputError, match=r"is not a folder"):
        parse_source(f"glas:{tmp_path / 'f.txt'}")
    assert SOURCE_KINDS == ("glas", "pcam", "folder", "wsi", "masks", "monuseg")


def assert_items(dataset, crop):
    for index in (0, len(dataset) - 1):
        item = dataset[index]
        assert item.dtype == torch.uint8 and item.shape == (3, crop, crop)


def test_glas_source_is_train_crops_at_a_quarter_crop_stride(tmp_path):
    root = write_glas(tmp_path / "glas")
    data = pretrain_dataset(f"glas:{root}", crop=32, min_tissue=0.5, mpp=None, level=None)
    assert isinstance(data, GlasCrops) and data.stride == 8 and data.parts == ("train",)
    assert len(data) == 2 * 6 * 7  # 72 rows: starts 0..40 step 8; 80 columns: 0..48
    assert data.description == f"glas:{root} (2 train images, 84 crops 32/8)"
    assert_items(data, 32)


def test_pcam_source_is_the_train_x_cropped(tmp_path):
    root = write_pcam_x(tmp_path / "pcam")
    data = pretrain_dataset(f"pcam:{root}", crop=64, seed=2, crop_mode="random")
    assert isinstance(data, PCamPatches) and data.crop_mode == "random" and data.seed == 2
    assert len(data) == 8 and "train x (8 patches 96x96, random crops 64x64)" in data.description
    assert_items(data, 64)
    with pytest.raises(UserInputError, match=r"crop 128: PCam patches are 96x96"):
        pretrain_dataset(f"pcam:{root}", crop=128)


def test_folder_and_wsi_sources(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    data = pretrain_dataset(f"folder:{tmp_path / 'imgs'}", crop=16, seed=1, epoch_size=5)
    assert isinstance(data, FolderImages) and len(data) == 5 and data.seed == 1
    assert data.description.startswith(f"folder:{tmp_path / 'imgs'} (1 images")
    assert_items(data, 16)
    write_slide(tmp_path / "s.tif")
    tiles = pretrain_dataset(f"wsi:{tmp_path}/*.tif", crop=16, level=1, tiles_per_epoch=6)
    assert isinstance(tiles, WsiTiles) and len(tiles) == 6 and tiles.plans[0].level == 1
    assert tiles.description.startswith(f"wsi:{tmp_path}/*.tif (1 slides")
    assert_items(tiles, 16)


def test_options_of_other_kinds_are_ignored_and_non_defaults_logged(tmp_path, caplog):
    root = write_glas(tmp_path / "glas")
    with caplog.at_level(logging.WARNING, logger="histodrl.data.sources"):
        pretrain_dataset(f"glas:{root}", crop=32, min_tissue=0.5, level=None)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="histodrl.data.sources"):
        pretrain_dataset(f"glas:{root}", crop=32, mpp=0.5)
    assert "mpp=0.5 does not apply to glas" in caplog.records[0].getMessage()
    with pytest.raises(ValueError, match="stirde"):
        pretrain_dataset(f"glas:{root}", crop=32, stirde=4)
