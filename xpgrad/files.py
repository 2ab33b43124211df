"""Files that are never seen half-written, and never read when they are not plain files.

* :func:`atomic_write`: a temp file in the same folder, then a rename; the temp
  file is removed on any error, signal included.
* :func:`open_regular`: opens a file for reading only if it is a regular file,
  without blocking first (a FIFO or a device given as a data file would
  otherwise hang, or never end).
* :func:`remove_stale_temps`: removes what a killed process (SIGKILL, power
  loss) left of its temp files, and only those no live process is writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile

from . import faults
from .interrupts import shielded


class NotRegularFileError(OSError):
    """A path that had to be a regular file is a folder, a FIFO, a device or a socket."""


_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def kind_of(mode: int) -> str:
    """``"a folder"``, ``"a FIFO (named pipe)"``, ... for an ``st_mode`` that is not a regular file."""
    return next((words for test, words in _KINDS.items() if test(mode)), "not a regular file")


def open_regular(path):
    """Open ``path`` for binary reading, or raise :class:`NotRegularFileError` if it is not a regular file.

    The file is opened with O_NONBLOCK, which opens a FIFO at once instead of
    waiting for a writer, and then checked with ``fstat``, so what is checked
    is what is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(0, f"is {kind_of(mode)}, not a regular file", os.fspath(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def atomic_write(path, mode="wb", *, check=None):
    """Open a temp file next to ``path``; on success fsync it and rename it over ``path``.

    ``check(temp_path)``, if given, runs once the data is on disk and before the
    rename; if it raises, ``path`` is never touched. On any error (or signal)
    the temp file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    tmp = None
    try:
        with shielded():  # no signal between creating the temp file and knowing its name
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            # Held while the file is written, so remove_stale_temps never takes a live one.
            fcntl.flock(fd, fcntl.LOCK_EX)
            f = os.fdopen(fd, mode)
        with f:
            # mkstemp creates the file 0600; give it the mode a plain open() would.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            faults.reached(f"{name}:opened")
            yield f
            faults.reached(f"{name}:written")
            f.flush()
            os.fsync(f.fileno())
            if check is not None:
                check(tmp)
            faults.reached(f"{name}:synced")
            os.replace(tmp, path)  # still open (and locked) until renamed
        _fsync_folder(folder)
        faults.reached(f"{name}:replaced")
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (a crash right after it must not bring the old file back)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(folder, name: str) -> list[str]:
    """Remove the temp files :func:`atomic_write` left for ``name`` in ``folder`` when its process was killed.

    A temp file is removed only if no process holds its lock, i.e. no live
    :func:`atomic_write` is writing it. Returns the names removed.
    """
    pattern = re.compile(rf"^\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if not pattern.match(entry):
            continue
        path = os.path.join(folder, entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
                removed.append(entry)
        except OSError:  # BlockingIOError: a live writer holds it
            pass
        finally:
            os.close(fd)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
