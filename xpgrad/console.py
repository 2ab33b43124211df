"""stdout and stderr that a closed pipe or terminal cannot turn into a crash.

``xpgrad train … | head -1`` closes stdout after one line; writing more raises
BrokenPipeError (Python ignores SIGPIPE). Training must go on: its outputs are
the run folder, not the log. :func:`guard` wraps both streams so that once
writing fails (EPIPE, EIO from a hung-up terminal, ENOSPC, a closed file), the
stream is pointed at /dev/null and later writes are dropped.
:func:`stop_when_stdout_closes` makes commands whose only output is stdout
(``info``, ``gradcheck``) stop instead, with :class:`StdoutClosed`, which the CLI
turns into a quiet exit 141 (128 + SIGPIPE), the status of a Unix tool killed
by SIGPIPE. A closed stderr loses messages but never changes the exit status.
"""

from __future__ import annotations

import os
import sys

EXIT_STDOUT_CLOSED = 141


class StdoutClosed(Exception):
    """stdout's reader went away while a command that only prints was printing."""


class GuardedStream:
    """A text stream whose writes never raise: after the first failure they go nowhere."""

    def __init__(self, stream, fd: int):
        self._stream = stream
        self._fd = fd
        self.lost = stream is None
        self.stop = False  # raise StdoutClosed instead of dropping

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                self._stream.write(text)
                self._stream.flush()  # fail here, where it can be handled, not at exit
            except (OSError, ValueError):  # ValueError: the file object was closed
                self._lose()
        if self.lost and self.stop:
            raise StdoutClosed
        return len(text)

    def flush(self) -> None:
        if self.lost:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._lose()

    def _lose(self) -> None:
        self.lost = True
        # Point the descriptor at /dev/null so that the interpreter's own final
        # flush of the real stream succeeds instead of printing "Exception ignored".
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._fd)
            os.close(null)
        except OSError:
            pass

    def isatty(self) -> bool:
        return not self.lost and self._stream.isatty()

    def fileno(self) -> int:
        return self._fd

    def __getattr__(self, name):  # encoding, errors, buffer, ...
        return getattr(self._stream if self._stream is not None else sys.__stdout__, name)


def _ensure_open(fd: int) -> bool:
    """Open /dev/null on ``fd`` if it is closed, so no file we open later lands there; True if it was open."""
    try:
        os.fstat(fd)
        return True
    except OSError:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        return False


def guard() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`GuardedStream` (idempotent)."""
    for fd in (0, 1, 2):
        _ensure_open(fd)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if not isinstance(stream, GuardedStream):
            setattr(sys, name, GuardedStream(stream, fd))


def stop_when_stdout_closes() -> None:
    """From now on a closed stdout raises :class:`StdoutClosed` at the next write."""
    if isinstance(sys.stdout, GuardedStream):
        sys.stdout.stop = True
