"""``folder:DIR``: every image under a folder, as random crops for pretraining.

Images are found recursively by extension (:data:`IMAGE_EXTENSIONS`, any case); hidden files and
folders (names starting with ``.``, e.g. macOS ``._x.png`` resource forks) are skipped. Each file's
header is read once when the folder is indexed (size, colour mode), so an unreadable file or one
smaller than the crop is reported before training starts; a file whose pixel data is truncated is
reported when it is first decoded.

Colour: RGB images are used as they are. Grayscale, palette, CMYK and 16-bit grayscale images are
converted to RGB (16-bit by keeping the high byte), and images with an alpha channel are composited
onto white (the colour of an empty glass slide) rather than onto black. How many files are
converted is logged once, when the folder is indexed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from histodrl.data.crops import EpochSeeded, random_crop_box
from histodrl.errors import UserInputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Pillow modes holding 16-bit grayscale samples.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Pillow modes that cannot be turned into 8-bit RGB without choosing an intensity range.
_UNSUPPORTED_MODES = ("I", "F")


def find_images(root: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``root``, recursively, sorted by their path relative to ``root``.

    Args:
        root: a folder.

    Returns:
        Paths of files whose suffix (any case) is in :data:`IMAGE_EXTENSIONS`, hidden files and
        files in hidden folders excluded.

    Raises:
        UserInputError: ``root`` is not a folder, or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"{root}: expected a folder of images")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    if not found:
        raise UserInputError(
            f"{root}: no images found (expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def image_header(path: str | os.PathLike[str]) -> tuple[int, int, str]:
    """``(width, height, mode)`` of an image file, reading only its header.

    Raises:
        UserInputError: the file is missing or is not an image Pillow can read.
    """
    try:
        with Image.open(path) as im:
            return im.size[0], im.size[1], im.mode
    except FileNotFoundError as exc:
        raise UserInputError(f"{path}: file not found") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserInputError(f"{path}: not a readable image ({_first_line(exc)})") from exc


def to_rgb(image: Image.Image, path: str | os.PathLike[str] = "<image>") -> np.ndarray:
    """An already opened image as an RGB uint8 array, converted as the module docstring says.

    Args:
        image: a Pillow image (any mode except 32-bit integer ``I`` and float ``F``).
        path: the file name used in error messages.

    Returns:
        uint8 array. Shape: (H, W, 3).

    Raises:
        UserInputError: 32-bit integer or float images, whose intensity range is unknown.
    """
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode in _UNSUPPORTED_MODES:
        raise UserInputError(f"{path}: {mode!r} images are not supported (expected 8-bit colour)")
    if mode in _SIXTEEN_BIT_MODES:
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if "A" in image.getbands() or (mode in ("P", "L") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_rgb_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file into an RGB uint8 array (see :func:`to_rgb` for the conversion).

    Returns:
        uint8 array. Shape: (H, W, 3).

    Raises:
        UserInputError: missing, unreadable or truncated file, naming it.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im, path)
    except FileNotFoundError as exc:
        raise UserInputError(f"{path}: file not found") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserInputError(
            f"{path}: cannot decode the image, the file is truncated or corrupt ({_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class FolderImages(EpochSeeded, Dataset):
    """Random ``crop x crop`` crops of the images under a folder (``folder:DIR``).

    Item ``i`` (of epoch ``e``) is image ``i % n_images``, cropped at a position drawn from the
    generator :func:`histodrl.data.crops.item_rng` ``(seed, e, i)``: first the top row, then the
    left column, each uniform over the positions where the crop fits. The same (seed, epoch,
    index) gives the same crop in any worker and with any number of workers; a new epoch gives new
    crops (see :class:`histodrl.data.crops.EpochSeeded` for how the epoch is passed).

    Args:
        root: folder searched recursively (see :func:`find_images`).
        crop: side of the square crops in pixels (>= 1).
        seed: seed of the crop positions (>= 0).
        epoch_size: items per epoch; default: the number of images (one crop of each). With a
            larger value, each image is visited ``epoch_size / n_images`` times per epoch (images
            in turn, so every image is used equally often).

    Shape:
        item: uint8 tensor (3, crop, crop), RGB.

    Raises:
        UserInputError: ``root`` not a folder or empty, an unreadable image, an image smaller than
            the crop (naming it and both sizes); a truncated image when it is read.
        ValueError: ``crop``, ``seed`` or ``epoch_size`` out of range.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        crop: int,
        seed: int = 0,
        epoch_size: int | None = None,
    ) -> None:
        if crop < 1:
            raise ValueError(f"crop={crop}: expected a positive crop size")
        if seed < 0:
            raise ValueError(f"seed={seed}: expected a non-negative seed")
        if epoch_size is not None and epoch_size < 1:
            raise ValueError(f"epoch_size={epoch_size}: expected a positive number of items")
        self.root = Path(root)
        self.crop = int(crop)
        self.seed = int(seed)
        self.paths = find_images(self.root)
        self.sizes: list[tuple[int, int]] = []
        converted = 0
        for path in self.paths:
            width, height, mode = image_header(path)
            if width < crop or height < crop:
                raise UserInputError(
                    f"{path}: image is {width}x{height}, smaller than the crop {crop}x{crop}"
                )
            self.sizes.append((width, height))
            converted += mode != "RGB"
        self.n_converted = converted
        if converted:
            logger.warning(
                "%s: %d of %d images are not RGB (grayscale, palette, alpha or 16-bit) and are "
                "converted to RGB as they are read",
                self.root,
                converted,
                len(self.paths),
            )
        self.epoch_size = len(self.paths) if epoch_size is None else int(epoch_size)
        self.description = (
            f"folder:{self.root} ({len(self.paths)} images, {self.epoch_size} random crops "
            f"{crop}x{crop} per epoch)"
        )

    def __len__(self) -> int:
        return self.epoch_size

    def __getitem__(self, index: int) -> torch.Tensor:
        item, rng = self.rng(index)
        path = self.paths[item % len(self.paths)]
        image = read_rgb_image(path)
        height, width = image.shape[:2]
        if (width, height) != self.sizes[item % len(self.paths)]:
            raise UserInputError(f"{path}: changed on disk since the folder was indexed")
        top, left = random_crop_box(height, width, self.crop, rng)
        patch = image[top : top + self.crop, left : left + self.crop]
        return torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1)))
