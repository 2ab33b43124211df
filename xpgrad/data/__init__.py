"""MNIST, Fashion-MNIST, Kuzushiji-MNIST, or your own IDX files: find, verify, download and read them.

``load_dataset(name)`` returns a :class:`Dataset` of uint8 NumPy arrays. Each of
the four files is taken from the first place that holds a valid copy:

1. with ``data_dir``: that folder only. A missing file is downloaded into it; a
   present file that fails a check is an error (never silently replaced: the
   folder is the user's, and a bad file there is something they should see).
2. without: the user cache, ``$XPGRAD_CACHE_DIR/<name>`` (default
   ``$XDG_CACHE_HOME/xpgrad/<name>``, i.e. ``~/.cache/xpgrad/<name>``); then the
   system folder ``$XPGRAD_SYSTEM_DATA_DIR/<name>`` (default
   ``/usr/share/datasets/<name>``, where Debian installs Fashion-MNIST); then a
   download into the cache. A bad copy in either place is skipped with a
   warning; a bad cache copy is replaced by the download (the cache is
   xpgrad's), a bad system copy is never touched.

A file is valid when it is a well-formed IDX file of the expected kind and size
and either its compressed bytes match the upstream checksum or its decompressed
payload does (so a recompressed copy, like Debian's, is accepted).

Downloads go through pooch's downloader (imported only when needed) into a
temporary file beside the target, stopped past the largest size the file can
have; the temporary file is checked by the same rule as a file on disk and
moved into place only then, so a failed, corrupt or interrupted download
leaves nothing behind.

``load_dataset("idx", data_dir=DIR)`` reads your own four IDX files instead
(:mod:`.custom`): any number of images, any image size, with every structural
check but no checksum, since there is none to compare with.

The modules: :mod:`.registry` (the known datasets), :mod:`.idx` (reading and
checking one IDX file), :mod:`.sources` (where files come from),
:mod:`.custom` (your own IDX files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .custom import combined_checksum, load_idx_folder
from .idx import IMAGE_SHAPE, NUM_CLASSES, read_idx
from .registry import DATASETS, SPLIT_SIZES, DatasetSpec, IdxFile, get_spec
from .sources import (
    CACHE_ENV,
    MIRROR_ENV,
    OFFLINE_ENV,
    SYSTEM_DATA_DIR,
    SYSTEM_ENV,
    cache_dir,
    obtain,
    system_dir,
)

#: ``--dataset idx``: your own four IDX files in ``--data-dir`` (not in DATASETS: nothing to verify them with).
CUSTOM = "idx"

__all__ = [
    "Dataset", "load_dataset", "CUSTOM", "read_idx", "DATASETS", "DatasetSpec", "IdxFile", "get_spec", "SPLIT_SIZES",
    "IMAGE_SHAPE", "NUM_CLASSES", "CACHE_ENV", "MIRROR_ENV", "OFFLINE_ENV", "SYSTEM_DATA_DIR", "SYSTEM_ENV",
    "cache_dir", "system_dir",
]


@dataclass
class Dataset:
    """The four arrays of a dataset, all uint8 NumPy arrays on the host.

    ``checksum`` identifies the data (e.g. in checkpoints): the sha256 of the four
    payload sha256 hex digests, each followed by a newline, in the order
    train images, train labels, test images, test labels. It is the same for any
    compression of the same data; from a shell:
    ``for f in train-images train-labels t10k-images t10k-labels; do
    zcat $f-*.gz | sha256sum | cut -c1-64; done | sha256sum``.
    """

    name: str  #: ``mnist``, ``fashion-mnist``, ``kmnist``, or ``idx`` for your own files
    x_train: np.ndarray  #: uint8 (60000, 28, 28); (N, rows, cols) for your own files
    y_train: np.ndarray  #: uint8 (60000,)
    x_test: np.ndarray  #: uint8 (10000, 28, 28)
    y_test: np.ndarray  #: uint8 (10000,)
    checksum: str
    num_classes: int = NUM_CLASSES  #: the largest label plus one for your own files, else 10
    verified: bool = True  #: False for your own files: no published checksum to check them against


def load_dataset(name: str, data_dir: str | None = None, progress: bool = True) -> Dataset:
    """Load dataset ``name`` (``mnist``, ``fashion-mnist``, ``kmnist``; or ``idx`` with ``data_dir``) as uint8 arrays.

    See the module docstring for where the files are looked for, how they are
    verified and when they are downloaded. Every problem raises
    :class:`DataError` with a one-line fix.
    """
    if name == CUSTOM:
        if data_dir is None:
            raise DataError("--dataset idx reads your own IDX files: pass --data-dir with the folder that holds them")
        arrays, hashes, num_classes = load_idx_folder(data_dir)
        return Dataset(CUSTOM, *arrays, combined_checksum(hashes), num_classes=num_classes, verified=False)
    spec = get_spec(name)
    arrays, hashes = [], []
    for file in spec.files:
        array, payload_sha256 = obtain(spec, file, data_dir, progress)
        arrays.append(array)
        hashes.append(payload_sha256)
    return Dataset(spec.name, *arrays, combined_checksum(hashes))
