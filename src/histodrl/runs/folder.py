"""Owning a run folder: a lock while a process works in it, and replacing one only once the new
run has started.

- **Lock** (:class:`RunLock`): ``RUN/.lock`` held with ``flock`` for as long as the process works in
  the folder. A second process (a second ``--resume`` of the same run, say) gets a one-line error
  naming the holder's process id, host and command. The kernel releases the lock when the holder
  dies, even by SIGKILL, so a stale ``.lock`` file never blocks a run.
- **Opening** (:class:`OpenedRun`): a new folder is created, an existing one is refused unless
  ``--overwrite`` or ``--resume``. With ``--overwrite`` the old run is moved aside
  (``.RUN.replaced-PID``, same parent folder) and deleted only when :meth:`OpenedRun.commit` is
  called, i.e. once the new run has started successfully; on any failure before that,
  :meth:`OpenedRun.rollback` deletes the new folder and moves the old one back. A new folder that a
  failed run leaves without a checkpoint is removed, so the corrected rerun is not refused as
  "already exists".
- Temporary files of killed atomic writes are removed when a folder is opened.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import sys
from pathlib import Path

from histodrl.errors import UserInputError
from histodrl.io import remove_stale_temporaries

LOCK_FILE = ".lock"


def _os_error(path: Path, exc: OSError, what: str) -> UserInputError:
    return UserInputError(f"{path}: cannot {what} ({exc.strerror or exc})")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``RUN/.lock``."""

    def __init__(self, run: Path) -> None:
        self.run = Path(run)
        self.path = self.run / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise _os_error(self.path, exc, "create the run's lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserInputError(
                f"{self.run}: in use by {holder} (wait for it to finish, or stop it)"
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join(["histodrl", *sys.argv[1:]])[:200]
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} ({command})\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class OpenedRun:
    """A run folder this process works in (see the module docstring)."""

    def __init__(self, run: Path, *, created: bool, replaced: Path | None, lock: RunLock) -> None:
        self.run = run
        self.created = created
        self.replaced = replaced
        self.lock = lock
        self.committed = False

    def commit(self) -> None:
        """The new run has started: the run it replaces is deleted."""
        if self.committed:
            return
        self.committed = True
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def rollback(self) -> None:
        """Undo opening after a failure: restore a replaced run, remove an empty new folder."""
        self.lock.release()
        if self.committed:
            if self.created and not _has_checkpoint(self.run):
                shutil.rmtree(self.run, ignore_errors=True)
            return
        if self.created or self.replaced is not None:
            shutil.rmtree(self.run, ignore_errors=True)
        if self.replaced is not None:
            os.replace(self.replaced, self.run)
            self.replaced = None

    def close(self) -> None:
        self.commit()
        self.lock.release()


def _has_checkpoint(run: Path) -> bool:
    return (run / "checkpoints" / "last.ckpt").is_file()


def open_run(out: str | os.PathLike[str], *, overwrite: bool, resume: bool) -> OpenedRun:
    """Create, replace or reuse the run folder ``out`` and lock it.

    Raises:
        UserInputError: an existing run without ``--overwrite``/``--resume``, nothing to resume,
            a file where the folder should be, a folder that cannot be written, or a folder in
            use by another process.
    """
    run = Path(out)
    if resume and overwrite:
        raise UserInputError("--resume and --overwrite: choose one")
    if run.exists() and not run.is_dir():
        raise UserInputError(f"{run}: exists and is not a folder")
    if resume:
        if not _has_checkpoint(run):
            raise UserInputError(
                f"{run}: nothing to resume (expected {run / 'checkpoints' / 'last.ckpt'})"
            )
        lock = RunLock(run).acquire()
        remove_stale_temporaries(run)
        return OpenedRun(run, created=False, replaced=None, lock=lock)
    existing = run.is_dir() and any(p.name != LOCK_FILE for p in run.iterdir())
    if existing and not overwrite:
        raise UserInputError(
            f"{run}: run folder already exists (use --resume to continue it or --overwrite)"
        )
    replaced = None
    if existing:
        old_lock = RunLock(run).acquire()  # refuse to replace a run another process works in
        replaced = run.parent / f".{run.name}.replaced-{os.getpid()}"
        try:
            os.replace(run, replaced)
        except OSError as exc:
            old_lock.release()
            raise _os_error(run, exc, "move the old run aside") from None
        old_lock.release()
    created = not run.exists()
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        if replaced is not None:
            shutil.rmtree(run, ignore_errors=True)
            os.replace(replaced, run)
        raise _os_error(run, exc, "write the run folder") from None
    lock = RunLock(run).acquire()
    return OpenedRun(run, created=created or replaced is not None, replaced=replaced, lock=lock)
