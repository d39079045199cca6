"""``histodrl embed`` and ``histodrl wsi-preview``: their options (torch-free).

The work is :mod:`histodrl.downstream.embed` (features of every tile of a source in one HDF5 file)
and :mod:`histodrl.experiments.wsi_preview` (what a ``wsi:`` source draws from a slide).
"""

from __future__ import annotations

from histodrl.commands.classify import PROBE_PRECISIONS, parse_blocks
from histodrl.commands.common import ACCELERATORS, EncoderOptions, source_kind
from histodrl.commands.options import at_least, greater, option, options_class, within
from histodrl.errors import UserInputError

#: Blocks pooled by default: the deepest two, whose features suit slide-level models.
DEFAULT_EMBED_BLOCKS = "conv4,conv5"
#: Tile side of each data kind when ``--crop`` is not given (PCam patches are 96 px).
DEFAULT_EMBED_CROP = {"pcam": 96}
FALLBACK_EMBED_CROP = 256
_DATA = "data and tiles"
_RUN = "running"
_WSI = "wsi: sources"


def _one_of(first: str, second: str, a: object, b: object) -> None:
    """Refuse two exclusive options given together (a value other than None and False)."""

    def given(value: object) -> bool:
        return value is not None and value is not False

    if given(a) and given(b):
        raise UserInputError(f"{first}, {second}: give one of them, not both")


@options_class
class EmbedOptions(EncoderOptions):
    data: str = option(
        help="KIND:PATH with KIND in folder, wsi, glas, masks, monuseg, pcam: every image (tiled "
        "on a grid) or every tissue tile of every slide",
        metavar="KIND:PATH",
        group=_DATA,
    )
    out: str = option(
        help="the HDF5 file to write (FILE.h5.partial until it is complete)",
        metavar="FILE.h5",
        runtime=True,
        group=_DATA,
    )
    blocks: str = option(
        DEFAULT_EMBED_BLOCKS,
        help="blocks to pool: conv1..conv5 or 1..5, comma-separated (default: conv4,conv5)",
        group="encoder",
    )
    crop: int | None = option(
        None,
        help="tile side in pixels (default: 256; pcam: 96): larger images are cut into a centred "
        "grid of tiles without overlap, a side shorter than it is padded with white",
        check=at_least(32),
        group=_DATA,
    )
    batch_size: int = option(
        64, help="tiles per batch", check=at_least(1), runtime=True, group=_RUN
    )
    accelerator: str = option(
        "auto", help="cpu, gpu or auto (one device)", choices=ACCELERATORS, runtime=True, group=_RUN
    )
    precision: str | None = option(
        None,
        help="encoder precision (default: bf16-mixed on GPU, else 32-true)",
        choices=PROBE_PRECISIONS,
        group=_RUN,
    )
    num_workers: int | None = option(
        None,
        help="DataLoader workers reading tiles (default: min(4, CPUs))",
        check=at_least(0),
        runtime=True,
        group=_RUN,
    )
    no_progress: bool = option(False, help="no progress bar", runtime=True, group=_RUN)
    overwrite: bool = option(
        False, help="replace FILE.h5 (and an unfinished FILE.h5.partial)", runtime=True, group=_RUN
    )
    resume: bool = option(
        False,
        help="continue FILE.h5.partial from its last recorded tile (same settings required)",
        runtime=True,
        group=_RUN,
    )
    mpp: float | None = option(
        None, help="target microns per pixel of the tiles", check=greater(0), group=_WSI
    )
    level: int | None = option(
        None, help="pyramid level to read (default: 0 unless --mpp)", check=at_least(0), group=_WSI
    )
    min_tissue: float = option(
        0.5, help="least tissue share of a tile", check=within(0, 1), group=_WSI
    )
    max_tiles_per_slide: int | None = option(
        None,
        help="at most this many tiles per slide, evenly spread over its tissue tiles "
        "(default: all)",
        check=at_least(1),
        group=_WSI,
    )

    def check_options(self) -> None:
        parse_blocks(self.blocks)
        _one_of("--mpp", "--level", self.mpp, self.level)
        _one_of("--resume", "--overwrite", self.resume, self.overwrite)

    @property
    def block_list(self) -> list[str]:
        return parse_blocks(self.blocks)

    @property
    def tile_side(self) -> int:
        """``--crop``, or the default of the data kind."""
        if self.crop is not None:
            return self.crop
        return DEFAULT_EMBED_CROP.get(source_kind(self.data), FALLBACK_EMBED_CROP)


@options_class
class WsiPreviewOptions:
    slide: str = option(
        help="one whole-slide image (SVS, pyramidal TIFF, ...)", positional=True, metavar="SLIDE"
    )
    out: str = option(help="the PNG file to write", metavar="PNG")
    crop: int = option(256, help="tile side in pixels, as pretrain --crop", check=at_least(8))
    level: int | None = option(
        None, help="pyramid level of the tiles (default: 0 unless --mpp)", check=at_least(0)
    )
    mpp: float | None = option(None, help="target microns per pixel of the tiles", check=greater(0))
    min_tissue: float = option(0.5, help="least tissue share of a tile", check=within(0, 1))
    max_tiles: int = option(
        2000, help="outline at most this many tiles (a seeded sample)", check=at_least(1)
    )
    seed: int = option(0, help="seed of that sample", check=at_least(0))

    def check_options(self) -> None:
        _one_of("--mpp", "--level", self.mpp, self.level)
