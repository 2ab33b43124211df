"""Where a dataset's files come from: ``--data-dir``, the user cache, the system folder, a download."""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .. import faults
from ..errors import DataError, one_line
from ..files import atomic_write, remove_stale_temps
from .idx import read_verified
from .registry import DATASETS, DatasetSpec, IdxFile

#: The user cache's root, in place of ``~/.cache/xpgrad`` (each dataset in a folder of its name).
CACHE_ENV = "XPGRAD_CACHE_DIR"
#: The system folder's root, in place of :data:`SYSTEM_DATA_DIR`.
SYSTEM_ENV = "XPGRAD_SYSTEM_DATA_DIR"
#: A mirror's base URL, tried before the registry's mirrors.
MIRROR_ENV = "XPGRAD_MIRROR"
#: "1": never download, only use files already on disk.
OFFLINE_ENV = "XPGRAD_OFFLINE"
#: Where Debian's packages put datasets (``dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist``).
SYSTEM_DATA_DIR = "/usr/share/datasets"
#: requests' (connect, read) timeouts in seconds; the read one is per chunk, not total.
DOWNLOAD_TIMEOUT = (10.0, 30.0)
#: the slowest average download accepted, in bytes per second (a 10 MB file may take 4 minutes)
MIN_SPEED = 50_000


def cache_dir(name: str) -> Path:
    """The user cache folder for dataset ``name``."""
    root = os.environ.get(CACHE_ENV, "").strip()  # empty or blank: not set
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        root = base / "xpgrad"
    return Path(root).expanduser() / name


def system_dir(name: str) -> Path:
    """The system-wide folder for dataset ``name`` (e.g. Debian's)."""
    return Path(os.environ.get(SYSTEM_ENV, "").strip() or SYSTEM_DATA_DIR) / name


def obtain(spec: DatasetSpec, file: IdxFile, data_dir: str | None, progress: bool) -> tuple[np.ndarray, str]:
    """One file's array and payload sha256, from the first place with a valid copy."""
    if data_dir is not None:
        path = Path(data_dir).expanduser() / file.fname
        if not os.path.lexists(path):
            return _download(spec, file, path.parent, progress, skipped=[])
        return read_verified(path, file)

    skipped = []
    for folder in (cache_dir(spec.name), system_dir(spec.name)):
        path = folder / file.fname
        if path.is_file():
            try:
                return read_verified(path, file)
            except DataError as exc:
                skipped.append(str(exc))
                warnings.warn(f"skipping a bad copy: {exc}", stacklevel=3)
    return _download(spec, file, cache_dir(spec.name), progress, skipped)


def _download(spec: DatasetSpec, file: IdxFile, folder: Path, progress: bool,
              skipped: list[str]) -> tuple[np.ndarray, str]:
    """Download ``file`` into ``folder`` from the first mirror that serves a good copy; return it read."""
    where = f"{spec.name} {file.fname}"
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        found_bad = f" (bad copies skipped: {' | '.join(skipped)})" if skipped else ""
        raise DataError(f"{where} is missing from {folder}{found_bad} and downloads are off ({OFFLINE_ENV} is set); "
                        f"put the file there, pass --data-dir to a folder that has it, or unset {OFFLINE_ENV}")
    try:
        import pooch
    except ImportError:
        raise DataError(f"{where} is not on this machine and downloading it needs pooch: "
                        "pip install pooch (or xpgrad[train]), or pass --data-dir to a folder that has it") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder} to download {where} ({exc.strerror}); "
                        f"set {CACHE_ENV} or pass --data-dir to a writable folder") from None
    remove_stale_temps(folder, file.fname)
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    mirrors = ([mirror] if mirror else []) + list(spec.mirrors)
    tried = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + file.fname
        try:
            return _fetch(pooch, url, folder / file.fname, file, progress)
        except (OSError, ValueError, DataError) as exc:  # requests' errors are OSErrors
            tried.append((url, exc))
    raise DataError(_not_downloaded(spec, where, folder, tried, skipped))


def _not_downloaded(spec: DatasetSpec, where: str, folder: Path, tried: list, skipped: list[str]) -> str:
    """Why no mirror gave a good copy, in words, and the ways to train without a download: one line."""
    hosts = [urlparse(url).hostname for url, exc in tried if _caught(exc, socket.gaierror)]
    if tried and len(hosts) == len(tried):  # not one name resolved: this machine has no network (or no DNS)
        what = f"no network: could not resolve {' or '.join(dict.fromkeys(hosts))} to download {where}"
    else:
        attempts = "; ".join(f"{url} ({_in_words(url, exc)})" for url, exc in tried) or "no mirror"
        what = f"could not download {where} into {folder}: tried {attempts}"
    found_bad = f"; bad copies skipped: {' | '.join(skipped)}" if skipped else ""
    return f"{what}{found_bad}; {_ways_forward(spec, folder)}"


def _ways_forward(spec: DatasetSpec, folder: Path) -> str:
    """The ways to train without this download, the one that needs nothing else first."""
    fashion = system_dir("fashion-mnist")
    debian = all((fashion / f.fname).is_file() for f in DATASETS["fashion-mnist"].files)
    if spec.name != "fashion-mnist":
        ways = ["--dataset fashion-mnist " + (f"(Debian's dataset-fashion-mnist is installed here, in {fashion})"
                                              if debian else "(after apt-get install dataset-fashion-mnist)")]
    else:
        ways = [] if debian else ["apt-get install dataset-fashion-mnist (Debian's copy, found without a download)"]
    ways.append(f"--data-dir DIR (a folder holding the four {spec.name} files)" if folder == cache_dir(spec.name)
                else f"the four {spec.name} files put in {folder}")
    ways.append(f"{MIRROR_ENV}=URL (a mirror you can reach)")
    return "to train without this download: " + ", ".join(ways[:-1]) + ", or " + ways[-1]


def _in_words(url: str, exc: BaseException) -> str:
    """What went wrong with one mirror, in words (requests wraps the reason in three exceptions)."""
    host = urlparse(url).hostname
    if isinstance(exc, DataError):
        return str(exc)
    if _caught(exc, socket.gaierror):
        return f"could not resolve {host}"
    if _caught(exc, ConnectionRefusedError):
        return f"{host} refused the connection"
    if _caught(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return f"{host} did not answer in time"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return f"{host} answered HTTP {status}"
    return one_line(exc, 200)


def _caught(exc: BaseException, kind: type) -> bool:
    """Whether ``exc`` is, or was caused by, a ``kind`` (through causes, contexts and urllib3's ``reason``)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return False


def _fetch(pooch, url: str, target: Path, file: IdxFile, progress: bool) -> tuple[np.ndarray, str]:
    """Stream ``url`` into a temp file beside ``target`` through pooch's downloader, check it as a file
    on disk is checked (upstream .gz hash or IDX payload hash), and only then move it into place."""
    verified = []

    def check(tmp):
        verified.append(read_verified(Path(tmp), file, label=url))

    bar = _progress_bar(file.fname) if progress else None
    try:
        with atomic_write(target, check=check) as f:
            sink = _BoundedSink(f, file.max_download, url)
            downloader = pooch.HTTPDownloader(progressbar=bar or False, timeout=DOWNLOAD_TIMEOUT)
            downloader(url, sink, None)
    finally:
        if bar is not None:
            bar.close()
    return verified[0]


class _BoundedSink:
    """Where pooch writes a download: the temp file, up to ``limit`` bytes and a time budget.

    An endless or slow-dripping mirror is cut off: no copy of the file can be
    larger than ``limit``, and none takes longer than ``limit`` bytes at
    ``MIN_SPEED`` bytes per second plus a minute.
    """

    def __init__(self, f, limit: int, url: str):
        self.f, self.limit, self.url, self.size = f, limit, url, 0
        self.deadline = time.monotonic() + 60 + limit / MIN_SPEED

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise DataError(f"sent more than {self.limit} bytes, more than any copy of the file can be; stopped there")
        if time.monotonic() > self.deadline:
            raise DataError(f"too slow: {self.size} bytes in {60 + self.limit / MIN_SPEED:.0f} s; stopped there")
        self.f.write(chunk)
        faults.reached("download:chunk")

    def flush(self) -> None:
        self.f.flush()


class _DownloadBar:
    """The progress bar pooch's downloader drives, shown once pooch knows the size (it sets ``total`` first)."""

    def __init__(self, name: str):
        self.name, self.bar = name, None

    def __bool__(self) -> bool:  # pooch asks "is there a progress bar?" before any size is known
        return True

    @property
    def total(self):
        return self.bar.total if self.bar is not None else None

    @total.setter
    def total(self, size):
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional extra

        self.close()
        self.bar = tqdm(total=size or None, desc=f"downloading {self.name}", unit="B", unit_scale=True,
                        leave=False, dynamic_ncols=True)

    def update(self, n) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def reset(self) -> None:
        if self.bar is not None:
            self.bar.reset()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(name: str):
    try:
        import tqdm  # noqa: F401, PLC0415 - optional extra
    except ImportError:
        return None
    return _DownloadBar(name)
