import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from histodrl.data.folder import FolderImages, find_images, read_rgb_image
from histodrl.errors import UserInputError


def save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return array


def random_rgb(seed, height=40, width=50):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_images_are_found_recursively_sorted_and_hidden_files_skipped(tmp_path):
    for rel in ("b/x.PNG", "a.jpg", "b/c/y.tiff", "z.bmp", "w.jpeg", "v.tif"):
        save(tmp_path / rel, random_rgb(0))
    save(tmp_path / ".hidden.png", random_rgb(0))
    save(tmp_path / ".cache" / "q.png", random_rgb(0))
    (tmp_path / "notes.txt").write_text("not an image")
    rel = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert rel == ["a.jpg", "b/c/y.tiff", "b/x.PNG", "v.tif", "w.jpeg", "z.bmp"]


def test_crops_are_the_slices_drawn_from_seed_epoch_and_index(tmp_path):
    images = [save(tmp_path / f"{k}.png", random_rgb(k)) for k in range(3)]
    data = FolderImages(tmp_path, crop=16, seed=7)
    assert len(data) == 3
    for epoch in (0, 2):
        for i in range(3):
            rng = np.random.default_rng([7, epoch, i])
            top, left = rng.integers(0, 40 - 16 + 1), rng.integers(0, 50 - 16 + 1)
            expected = images[i][top : top + 16, left : left + 16].transpose(2, 0, 1)
            item = data[epoch * 3 + i]
            assert item.dtype == torch.uint8 and item.shape == (3, 16, 16)
            assert np.array_equal(item.numpy(), expected)
    data.set_epoch(2)
    assert torch.equal(data[1], FolderImages(tmp_path, crop=16, seed=7)[7])


def test_crops_do_not_depend_on_the_number_of_workers(tmp_path):
    for k in range(4):
        save(tmp_path / f"{k}.png", random_rgb(k))
    data = FolderImages(tmp_path, crop=8, seed=3, epoch_size=12)
    serial = torch.cat(list(DataLoader(data, batch_size=5, num_workers=0)))
    parallel = torch.cat(list(DataLoader(data, batch_size=5, num_workers=2)))
    assert torch.equal(serial, parallel)
    other_seed = torch.cat(list(DataLoader(FolderImages(tmp_path, 8, 4, 12), batch_size=12)))
    assert not torch.equal(serial, other_seed)


def test_epoch_size_visits_the_images_in_turn(tmp_path):
    for k in range(2):
        save(tmp_path / f"{k}.png", np.full((20, 20, 3), 10 * (k + 1), np.uint8))
    data = FolderImages(tmp_path, crop=4, epoch_size=5)
    assert len(data) == 5
    assert [int(data[i][0, 0, 0]) for i in range(5)] == [10, 20, 10, 20, 10]


def test_grayscale_rgba_and_16_bit_images_are_converted_and_counted_once(tmp_path, caplog):
    save(tmp_path / "rgb.png", random_rgb(0, 8, 8))
    grey = save(tmp_path / "grey.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 40
    rgba[:4, ..., 3] = 255  # top half opaque dark, bottom half transparent
    save(tmp_path / "rgba.png", rgba)
    deep = save(tmp_path / "deep.png", (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8))
    with caplog.at_level(logging.WARNING, logger="histodrl.data.folder"):
        data = FolderImages(tmp_path, crop=8)
    assert data.n_converted == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "3 of 4 images are not RGB" in messages[0]
    assert np.array_equal(read_rgb_image(tmp_path / "grey.png"), np.stack([grey] * 3, axis=2))
    composited = read_rgb_image(tmp_path / "rgba.png")
    assert (composited[:4] == 40).all() and (composited[4:] == 255).all()  # onto white
    assert np.array_equal(
        read_rgb_image(tmp_path / "deep.png")[..., 0], (deep >> 8).astype(np.uint8)
    )


def test_truncated_image_names_the_file_when_read(tmp_path):
    save(tmp_path / "a.png", random_rgb(0, 64, 64))
    path = tmp_path / "a.png"
    path.write_bytes(path.read_bytes()[:-2000])
    data = FolderImages(tmp_path, crop=8)
    with pytest.raises(UserInputError, match=r"a.png: cannot decode.*truncated"):
        data[0]


def test_unreadable_image_names_the_file_when_indexed(tmp_path):
    save(tmp_path / "a.png", random_rgb(0))
    (tmp_path / "b.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(UserInputError, match=r"b.jpg: not a readable image"):
        FolderImages(tmp_path, crop=8)


def test_image_smaller_than_the_crop_names_the_file_and_sizes(tmp_path):
    save(tmp_path / "ok.png", random_rgb(0, 64, 64))
    save(tmp_path / "small.png", random_rgb(0, 20, 30))
    with pytest.raises(
        UserInputError, match=r"small.png: image is 30x20, smaller than the crop 32x32"
    ):
        FolderImages(tmp_path, crop=32)


def test_empty_or_missing_folder_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(UserInputError, match="no images found"):
        FolderImages(tmp_path, crop=8)
    with pytest.raises(UserInputError, match="expected a folder"):
        FolderImages(tmp_path / "nope", crop=8)
