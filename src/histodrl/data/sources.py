"""Data sources written ``KIND:PATH`` on the command line, and the pretraining dataset of each.

===========  ===========================================  ========================================
kind         PATH                                         pretraining items (uint8 (3, crop, crop))
===========  ===========================================  ========================================
``glas``     a GLaS folder                                sliding-window crops of the 85 train
                                                          images, stride ``crop // 4``
                                                          (:class:`~histodrl.data.glas.GlasCrops`)
``pcam``     a folder with the PCam HDF5 files            train-split patches, centre- or
                                                          randomly cropped when ``crop < 96``
                                                          (:class:`~histodrl.data.pcam.PCamPatches`)
``folder``   any folder of images (searched recursively)  random crops
                                                          (:class:`~histodrl.data.folder.FolderImages`)
``wsi``      a slide, a folder of slides or a glob        random tissue tiles
                                                          (:class:`~histodrl.data.wsi.WsiTiles`)
``masks``    image + mask pairs                           sliding-window crops of the images of
             (:mod:`~histodrl.data.masks`)                every split but test, stride
                                                          ``crop // 4``; masks are not read
                                                          (:class:`~histodrl.data.masks.ImageCrops`)
``monuseg``  the MoNuSeg layout                           the same, of the tissue tiles
             (:mod:`~histodrl.data.monuseg`)
===========  ===========================================  ========================================

For ``masks`` and ``monuseg`` the test images are those that
:func:`histodrl.data.labelled.segmentation_source` holds out with the same ``split_seed`` and
``test_fraction`` (a test folder when there is one; defaults 0 and 0.2 in both places), so that
pretraining never sees a downstream test image whatever the pretraining ``seed``.

Every dataset returned has a one-line ``description`` such as
``glas:/data/glas (85 train images, 5100 crops 256/64)``.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from histodrl.errors import UserInputError

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("glas", "pcam", "folder", "wsi", "masks", "monuseg")

# The options each kind takes in pretrain_dataset, with their defaults.
SOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    "glas": {"stride": None},
    "pcam": {"crop_mode": "center", "cache_ram": False},
    "folder": {"epoch_size": None},
    "wsi": {"level": None, "mpp": None, "min_tissue": 0.5, "tiles_per_epoch": 10_000},
    "masks": {"stride": None, "split_seed": 0, "test_fraction": 0.2},
    "monuseg": {"stride": None, "split_seed": 0, "test_fraction": 0.2},
}


def parse_source(spec: str) -> tuple[str, str]:
    """Split ``"KIND:PATH"`` into ``(kind, path)`` and check that the path exists.

    Only the first ``:`` separates (paths may contain colons); ``~`` is expanded. For ``wsi`` the
    path may be a glob, which must match at least one file.

    Raises:
        UserInputError: no ``KIND:`` prefix or an unknown kind (listing the kinds), an empty path,
            or a path (glob) that does not exist (match anything).
    """
    kinds = ", ".join(SOURCE_KINDS)
    if not isinstance(spec, str) or ":" not in spec:
        raise UserInputError(f"{spec!r}: expected KIND:PATH with KIND one of {kinds}")
    kind, path = spec.split(":", 1)
    if kind not in SOURCE_KINDS:
        raise UserInputError(f"{spec}: unknown data kind {kind!r} (expected one of {kinds})")
    if not path:
        raise UserInputError(f"{spec}: missing path after '{kind}:'")
    path = os.path.expanduser(path)
    if kind == "wsi" and glob.has_magic(path):
        if not glob.glob(path, recursive=True):
            raise UserInputError(f"{spec}: no file matches {path}")
    elif not Path(path).exists():
        raise UserInputError(f"{spec}: {path} does not exist")
    elif kind != "wsi" and not Path(path).is_dir():
        raise UserInputError(f"{spec}: {path} is not a folder ({kind}: expects one)")
    return kind, path


def pretrain_dataset(spec: str, crop: int, seed: int = 0, **opts: Any) -> Dataset:
    """The unlabelled pretraining dataset of a ``KIND:PATH`` source.

    Args:
        spec: ``KIND:PATH`` (:func:`parse_source`).
        crop: side of the returned images in pixels (pcam: at most 96).
        seed: seed of every random crop or tile draw (>= 0).
        **opts: options of the kind (:data:`SOURCE_OPTIONS`): glas ``stride`` (default
            ``crop // 4``); pcam ``crop_mode`` (``"center"`` / ``"random"``), ``cache_ram``;
            folder ``epoch_size``; wsi ``level``, ``mpp``, ``min_tissue``, ``tiles_per_epoch``;
            masks and monuseg ``stride`` (default ``crop // 4``), ``split_seed``,
            ``test_fraction`` (which images are held out, module docstring).
            ``None`` means the default. Options of other kinds are ignored (so one command line
            serves every kind); one set to a non-default value is logged as ignored.

    Returns:
        A map-style dataset of uint8 tensors (3, crop, crop) with a ``description`` string.

    Raises:
        UserInputError: a bad source (see :func:`parse_source` and each reader), or a crop
            larger than a PCam patch.
        ValueError: ``crop`` below 1, or an option no kind knows.
    """
    if crop < 1:
        raise ValueError(f"crop={crop}: expected a positive crop size")
    known = {name for options in SOURCE_OPTIONS.values() for name in options}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: unknown option(s) (known: {', '.join(sorted(known))})"
        )
    kind, path = parse_source(spec)
    own = dict(SOURCE_OPTIONS[kind])
    for name, value in opts.items():
        if name in own:
            if value is not None:
                own[name] = value
            continue
        default = next(o[name] for o in SOURCE_OPTIONS.values() if name in o)
        if value is not None and value != default:
            logger.warning("option %s=%r does not apply to %s: sources; ignored", name, value, kind)

    if kind == "glas":
        from histodrl.data.glas import GlasCrops

        stride = own["stride"] if own["stride"] is not None else max(1, crop // 4)
        return GlasCrops(path, crop=crop, stride=int(stride), parts=("train",))
    if kind == "pcam":
        from histodrl.data.pcam import PATCH_SHAPE, PCamPatches

        if crop > PATCH_SHAPE[0]:
            raise UserInputError(
                f"crop {crop}: PCam patches are {PATCH_SHAPE[0]}x{PATCH_SHAPE[1]}, "
                f"expected a crop of at most {PATCH_SHAPE[0]}"
            )
        return PCamPatches(
            path,
            crop=crop,
            crop_mode=str(own["crop_mode"]),
            seed=seed,
            split="train",
            cache_ram=bool(own["cache_ram"]),
        )
    if kind in ("masks", "monuseg"):
        if kind == "masks":
            from histodrl.data.masks import mask_pretrain_crops as crops
        else:
            from histodrl.data.monuseg import monuseg_pretrain_crops as crops

        stride = own["stride"] if own["stride"] is not None else max(1, crop // 4)
        return crops(
            path,
            crop=crop,
            stride=int(stride),
            split_seed=int(own["split_seed"]),
            test_fraction=float(own["test_fraction"]),
        )
    if kind == "folder":
        from histodrl.data.folder import FolderImages

        return FolderImages(path, crop=crop, seed=seed, epoch_size=own["epoch_size"])
    from histodrl.data.wsi import WsiTiles

    return WsiTiles(
        path,
        crop=crop,
        level=own["level"],
        mpp=own["mpp"],
        min_tissue=float(own["min_tissue"]),
        seed=seed,
        tiles_per_epoch=int(own["tiles_per_epoch"]),
    )
