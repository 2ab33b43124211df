"""Signals as exceptions, so that SIGINT, SIGTERM and SIGHUP end a command cleanly.

:func:`install` (the CLI calls it first thing) turns each of these signals into
:class:`Interrupted`, raised in the main thread, so ``finally`` blocks and
context managers run: a temp file being written is removed, a lock released.
The CLI then exits with the shell's code for the signal, 128 + its number
(130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).

A few steps must not be split by a signal, e.g. creating a temp file and
taking note of it so that it can be removed. They run under :func:`shielded`:
a signal arriving there is held and delivered again as the block ends.
Without :func:`install` (xpgrad used as a library) Python's own handling
applies and :func:`shielded` changes nothing.
"""

from __future__ import annotations

import contextlib
import signal

#: The signals that end a command; SIGPIPE is not among them (Python ignores it,
#: so a closed pipe is an OSError where it is written, see xpgrad.console).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The process received ``signum``; a subclass of KeyboardInterrupt, so ``except KeyboardInterrupt`` sees it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal."""
        return 128 + self.signum


_state = {"depth": 0, "held": [], "raised": False, "settled": False}


def _handle(signum, frame):
    if _state["raised"] or _state["settled"]:
        # Already unwinding from the first signal (a second Ctrl-C must not cut the cleanup
        # short), or the command's work is done and the process is only exiting.
        return
    if _state["depth"]:
        if signum not in _state["held"]:
            _state["held"].append(signum)
        return
    _state["raised"] = True
    raise Interrupted(signum)


def install() -> dict:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` (main thread only); returns the handlers replaced."""
    _state.update(depth=0, held=[], raised=False, settled=False)
    return {signum: signal.signal(signum, _handle) for signum in SIGNALS}


def settle(previous: dict | None = None) -> None:
    """The command is done: put back ``previous`` handlers (xpgrad called from Python), or, for the
    process that is the command, ignore these signals from now on.

    Ignoring them (SIG_IGN, which the interpreter keeps while it shuts down,
    unlike a Python handler) means a signal arriving as the process exits can
    neither print a traceback nor turn the status of finished work into a kill.
    """
    _state["settled"] = True
    for signum in SIGNALS:
        signal.signal(signum, previous[signum] if previous else signal.SIG_IGN)


@contextlib.contextmanager
def shielded():
    """Hold signals for the duration of the block, then deliver them."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if not _state["depth"] and _state["held"]:
            held, _state["held"] = _state["held"], []
            # raise_signal runs the handler before it returns, so Interrupted starts here.
            for signum in held:
                signal.raise_signal(signum)
