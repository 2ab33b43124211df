"""A test hook: die, get a signal or fail at a named point. Inert unless ``XPGRAD_FAULT`` is set.

``XPGRAD_FAULT=POINT[#N]=ACTION`` makes ACTION happen the N-th time (default:
the first) the process reaches POINT:

* ``kill``: SIGKILL, so nothing is cleaned up (a power cut, the OOM killer);
* ``int``, ``term``, ``hup``: that signal, sent to the process itself;
* ``stop``: SIGSTOP, so a test can change the world (remove ``--out``, say)
  and then let the process go on with SIGCONT;
* an errno name such as ``ENOSPC`` or ``EIO``: an OSError raised there.

The points are ``<file>:<stage>`` inside :func:`xpgrad.files.atomic_write`
(``checkpoint.npz:opened``, ``:written``, ``:synced``, ``:replaced``, likewise
for ``metrics.jsonl``, ``curves.png`` and downloaded files), ``epoch:trained``
(an epoch trained, nothing written yet), ``epoch:saved`` (its checkpoint
written, its metrics not yet), ``step:done`` (a training step done, mid-epoch)
and ``download:chunk`` (a downloaded chunk written). Tests use it to stop a run at every instant that matters and check
that what is left can be resumed. In a distributed run every rank reaches the points;
``XPGRAD_FAULT_RANK=R`` makes only rank R act.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "XPGRAD_FAULT"
RANK_ENV = "XPGRAD_FAULT_RANK"
_SIGNALS = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM, "hup": signal.SIGHUP,
            "stop": signal.SIGSTOP}
_seen: dict[str, int] = {}


def reached(point: str) -> None:
    """Mark ``point`` as reached; act if ``XPGRAD_FAULT`` names it (and this is its turn)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, action = spec.partition("=")
    name, _, nth = target.partition("#")
    if name != point or not _this_rank(os.environ.get(RANK_ENV)):
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] != int(nth or 1):
        return
    if action in _SIGNALS:
        os.kill(os.getpid(), _SIGNALS[action])
        return
    code = getattr(errno, action, None)
    if code is None:
        raise ValueError(f"{ENV}={spec}: unknown action {action!r}")
    raise OSError(code, f"{os.strerror(code)} (injected by {ENV})")


def _this_rank(wanted: str | None) -> bool:
    """Whether this process is rank ``wanted`` of its launcher's job (any process when None)."""
    if wanted is None:
        return True
    from .distributed.launch import rank_from_env  # noqa: PLC0415

    return str(rank_from_env()) == wanted.strip()
