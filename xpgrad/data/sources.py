"""Where a dataset's files come from: ``--data-dir``, the user cache, the system folder, a download."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, one_line
from .idx import read_verified
from .registry import DatasetSpec, IdxFile

CACHE_ENV = "XPGRAD_CACHE_DIR"
SYSTEM_ENV = "XPGRAD_SYSTEM_DATA_DIR"
MIRROR_ENV = "XPGRAD_MIRROR"
OFFLINE_ENV = "XPGRAD_OFFLINE"  # "1": never download, only use files already on disk
SYSTEM_DATA_DIR = "/usr/share/datasets"
#: requests' (connect, read) timeouts in seconds; the read one is per chunk, not total.
DOWNLOAD_TIMEOUT = (10.0, 30.0)


def cache_dir(name: str) -> Path:
    """The user cache folder for dataset ``name``."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        root = base / "xpgrad"
    return Path(root).expanduser() / name


def system_dir(name: str) -> Path:
    """The system-wide folder for dataset ``name`` (e.g. Debian's)."""
    return Path(os.environ.get(SYSTEM_ENV) or SYSTEM_DATA_DIR) / name


def obtain(spec: DatasetSpec, file: IdxFile, data_dir: str | None, progress: bool) -> tuple[np.ndarray, str]:
    """One file's array and payload sha256, from the first place with a valid copy."""
    if data_dir is not None:
        path = Path(data_dir).expanduser() / file.fname
        if not path.exists():
            _download(spec, file, path.parent, progress, skipped=[])
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
    target = cache_dir(spec.name)
    _download(spec, file, target, progress, skipped)
    return read_verified(target / file.fname, file)


def _download(spec: DatasetSpec, file: IdxFile, folder: Path, progress: bool, skipped: list[str]) -> None:
    """Download ``file`` into ``folder`` from the first mirror that serves a good copy."""
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
    mirrors = ([os.environ[MIRROR_ENV]] if os.environ.get(MIRROR_ENV) else []) + list(spec.mirrors)
    tried = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + file.fname
        try:
            downloader = pooch.HTTPDownloader(progressbar=progress and _have_tqdm(), timeout=DOWNLOAD_TIMEOUT)
            pooch.retrieve(url, known_hash=file.gz_hash, fname=file.fname, path=folder, downloader=downloader)
            return
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors; pooch's hash mismatch a ValueError
            tried.append(f"{url} ({one_line(exc, 200)})")
    found_bad = f"; bad copies skipped: {' | '.join(skipped)}" if skipped else ""
    raise DataError(f"could not download {where} into {folder}: tried {'; '.join(tried) or 'no mirror'}{found_bad}; "
                    f"check the network, set {MIRROR_ENV} to a reachable mirror, or pass --data-dir "
                    "to a folder with the files")


def _have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True
