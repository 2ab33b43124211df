"""A run's folder (``--out``): who may write it, what it holds, and its metrics file and curves.

``--out`` holds ``checkpoint.npz`` (see :mod:`xpgrad.checkpoint`), ``metrics.jsonl``
(one JSON line per epoch, rewritten from the checkpoint) and ``curves.png``,
each written atomically. The rules, kept by :class:`RunFolder`:

* one process at a time: a lock (``fcntl.flock`` on ``.xpgrad.lock``, which
  holds the owner's PID) is taken before anything else and held for the run's
  lifetime; a second process stops at once and names the first;
* a folder that holds a run (a checkpoint, or metrics without one) is never
  replaced by a new run unless asked (``overwrite``); it is continued by
  resuming from its checkpoint;
* what killed processes left (temp files) is removed once the lock is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile

from ..checkpoint import METRIC_KEYS, check_metrics_row, peek_epoch
from ..errors import CheckpointError, XpgradError
from ..files import atomic_write, kind_of, open_regular, remove_stale_temps
from ..interrupts import shielded

METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.npz"
CURVES = "curves.png"
LOCK = ".xpgrad.lock"
OUTPUTS = (CHECKPOINT, METRICS, CURVES)


class RunFolderError(XpgradError):
    """``--out`` cannot be used: not writable, in use by another process, or holding a run."""


class RunFolder:
    """``--out`` while a run owns it: created, locked, checked; :meth:`close` releases it.

    Use :meth:`open`, as a context manager. ``fresh`` (a new run, not a resumed
    one) refuses a folder that holds a run unless ``overwrite``; the old
    outputs are then removed by :meth:`clear_for_new_run` once training starts.

    ``path`` is the folder; ``checkpoint``, ``metrics`` and ``curves`` the paths
    of its three outputs. ``replacing``: an earlier run's outputs are still to
    be removed (``overwrite``); ``created``: the folders this run made (the
    folder and its missing parents, leaf first), removed again if the run
    ends having written nothing.
    """

    #: This process writes the run's files (in a distributed run, rank 0 only: xpgrad.distributed.job.Bystander).
    writes = True

    def __init__(self, path):
        self.path = os.fspath(path)
        self.checkpoint = os.path.join(self.path, CHECKPOINT)
        self.metrics = os.path.join(self.path, METRICS)
        self.curves = os.path.join(self.path, CURVES)
        self.replacing = False
        self.created = []  # made by this run: removed again if the run ends having written nothing
        self._lock_fd = None

    @classmethod
    def open(cls, path, *, fresh: bool, overwrite: bool = False) -> "RunFolder":
        """``path`` created if needed, locked and checked by the rules above; RunFolderError says why not."""
        folder = cls(path)
        folder._create()
        try:
            with shielded():  # a signal now would leave the lock file behind
                folder._lock()
            for name in OUTPUTS:
                remove_stale_temps(folder.path, name)
            folder._check_outputs()
            if fresh:
                folder._check_no_run(overwrite)
        except BaseException:
            folder.close()
            raise
        return folder

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- opening -------------------------------------------------------------

    def _create(self) -> None:
        out = self.path
        if os.path.exists(out) and not os.path.isdir(out):
            what = "a file" if os.path.isfile(out) else kind_of(os.stat(out).st_mode)
            raise RunFolderError(f"--out {out} is {what}, not a folder; pass a folder for the run's outputs")
        try:
            self.created = _make_folders(out)  # out and the parents it needed, leaf first
            with tempfile.TemporaryFile(dir=out):  # unnamed (O_TMPFILE): nothing to leave behind
                pass
        except OSError as exc:
            raise RunFolderError(f"--out {out} is not writable ({exc.strerror or exc}); "
                                 "pass a folder you can write to") from None

    def _lock(self) -> None:
        try:
            self._lock_fd = self._take_lock(os.path.join(self.path, LOCK))
        except OSError as exc:
            raise RunFolderError(f"cannot lock --out {self.path} ({LOCK}: {exc.strerror or exc}); "
                                 f"remove {os.path.join(self.path, LOCK)} if it is not a file, or pass another --out") from None

    def _take_lock(self, path) -> int:
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(0, "not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderError(f"--out {self.path} is in use by another xpgrad process (pid {holder}); "
                                     "wait for it to finish, or pass another --out") from None
            # The last owner removes the lock file on its way out; if it did so
            # between our open and our lock, we hold a lock on a removed file.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def close(self) -> None:
        """Release the lock (and remove the lock file while still holding it)."""
        with shielded():
            fd, self._lock_fd = self._lock_fd, None
            if fd is None:
                return
            path = os.path.join(self.path, LOCK)
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.unlink(path)
            os.close(fd)
            for folder in self.created:  # a run that never wrote anything leaves no folder behind (nor runs/)
                try:
                    os.rmdir(folder)
                except OSError:  # not empty: something was written there, by this run or another process
                    break

    def _check_outputs(self) -> None:
        """Every output is absent or a file, so no epoch of work is lost to a write that cannot succeed."""
        for path in (self.checkpoint, self.metrics, self.curves):
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(mode):
                raise RunFolderError(f"{path} is {kind_of(mode)}, not a file, so the run could not write it; "
                                     "move it out of --out, or pass another --out")

    def _check_no_run(self, overwrite: bool) -> None:
        has_checkpoint = os.path.lexists(self.checkpoint)
        has_metrics = os.path.exists(self.metrics) and os.path.getsize(self.metrics) > 0
        if overwrite:
            self.replacing = has_checkpoint or has_metrics or os.path.lexists(self.curves)
            return
        if has_checkpoint:
            try:
                found = f"a run whose checkpoint is at epoch {peek_epoch(self.checkpoint)}"
            except CheckpointError as exc:
                found = f"a checkpoint.npz that cannot be read ({str(exc).split('; ')[0]})"
            raise RunFolderError(f"--out {self.path} already holds {found}; continue it with "
                                 f"--resume {self.checkpoint}, or pass --overwrite to replace it")
        if has_metrics:
            raise RunFolderError(f"--out {self.path} holds the metrics.jsonl of an earlier run (without its "
                                 "checkpoint); pass --overwrite to replace it, or another --out")

    # -- during the run ----------------------------------------------------

    def clear_for_new_run(self) -> None:
        """``--overwrite``: remove the earlier run's outputs, as the new run starts training."""
        if not self.replacing:
            return
        # What is derived from the checkpoint goes first, so a kill halfway leaves a resumable run.
        with shielded():
            for path in (self.curves, self.metrics, self.checkpoint):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self.replacing = False

    def write_metrics(self, rows) -> None:
        """Write ``rows`` as this folder's metrics.jsonl, atomically (see :func:`write_metrics`)."""
        write_metrics(self.metrics, rows)

    def kept(self, hint: bool = False) -> str:
        """What a stopped run leaves, in words that are true now (the checkpoint on disk is looked at).

        ``hint`` adds how to continue (after an interruption).
        """
        try:
            epoch = peek_epoch(self.checkpoint)
        except CheckpointError:
            return f"no checkpoint is kept in {self.path}"
        words = f"the checkpoint of epoch {epoch} is kept in {self.path}"
        return words + (f" (continue with --resume {self.checkpoint})" if hint else "")


def prepare_out_dir(out) -> str:
    """Create ``out`` if needed and make sure files can be written there (no lock; see :class:`RunFolder`)."""
    RunFolder(out)._create()
    return os.fspath(out)


def read_metrics(path, limit: int = 64 << 20) -> list[dict]:
    """The rows of a metrics.jsonl (at most ``limit`` bytes); ValueError or OSError if it is damaged."""
    if not os.path.exists(path):
        return []
    with open_regular(path) as f:
        text = f.read(limit + 1)
    if len(text) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return [json.loads(line) for line in text.decode("utf-8").splitlines() if line.strip()]


def recover_metrics(path, epochs: int) -> tuple[list[dict], str | None]:
    """Rows 1..``epochs`` from a metrics.jsonl, for a checkpoint that does not hold them (format 1).

    Returns the rows that are whole, in order and not past ``epochs`` (a later
    run's rows are dropped), and what was missing (None if nothing).
    """
    try:
        rows = read_metrics(path)
    except (OSError, ValueError) as exc:
        return [], f"{path} cannot be read ({type(exc).__name__}: {exc})"
    good = []
    for row in rows:
        try:
            number = check_metrics_row(row)
        except ValueError:
            continue
        if (good[-1]["epoch"] if good else 0) < number <= epochs:
            good.append(row)
    if len(good) < epochs:
        return good, f"{path} holds whole rows for {len(good)} of the {epochs} epochs"
    return good, None


def write_metrics(path, rows) -> None:
    """Write ``rows`` as ``path`` (one JSON line each, keys in METRIC_KEYS order), atomically."""
    with atomic_write(path, "w") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in METRIC_KEYS}) + "\n")


def append_metrics(path, row) -> None:
    """Add ``row`` to the metrics.jsonl at ``path``: the whole file rewritten atomically."""
    # Rewriting the (small) file atomically keeps it whole even if the run is killed mid-write.
    write_metrics(path, read_metrics(path) + [row])


def plot_curves(metrics, path) -> bool:
    """Draw loss and accuracy curves to ``path`` (PNG); False when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: PLC0415 - optional extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [m[f"{split}_loss"] for m in metrics], marker="o", label=split)
        ax_acc.plot(epochs, [m[f"{split}_accuracy"] for m in metrics], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return True


def _make_folders(path) -> list:
    """Create ``path``'s missing folders, root first, as ``os.makedirs`` does (``new/../x`` makes ``new``, which
    the path goes through); return those this call created, leaf first, so that they can be removed again."""
    prefixes, p = [], os.fspath(path)
    while True:
        head, tail = os.path.split(p)
        if not tail:  # a trailing separator
            head, tail = os.path.split(head)
        prefixes.append((p, tail))
        if not head or head == p:
            break
        p = head
    created = []
    for folder, tail in reversed(prefixes):
        if tail in (os.curdir, os.pardir) or os.path.lexists(folder):
            continue
        try:
            os.mkdir(folder)
        except FileExistsError:  # made meanwhile by another process: not ours to remove
            continue
        created.append(folder)
    return created[::-1]
