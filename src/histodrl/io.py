"""Atomic file writes: a file is written under a temporary name in the same folder and renamed.

A reader therefore sees either the old file or the complete new one, never a half-written file,
even when the process is killed mid-write. Temporary files are named ``.NAME.XXXX.tmp``; those a
killed write left behind are removed by :func:`remove_stale_temporaries` (the run lifecycle calls
it on the run folder). Written files get the usual permissions (``0666`` less the umask), not the
``0600`` of a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[Any]], None], mode: str = "w"
) -> None:
    """Call ``write(fileobj)`` on a temporary file and rename it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    atomic_write(path, lambda f: f.write(text))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of killed atomic writes in ``folder`` and its subfolders.

    Only names of the form :func:`atomic_path` creates (``.NAME.XXXXXXXX.tmp``) are removed; call
    it only while no other process writes there (the run folder's lock guarantees that).

    Returns:
        The paths removed.
    """
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for path in root.rglob(".*.tmp"):
        if path.is_file() and _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
