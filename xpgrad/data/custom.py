"""Your own data in IDX format: any folder holding a train and a test split as four IDX files.

Kuzushiji-MNIST, EMNIST's splits, or digits of your own: ``--dataset idx
--data-dir DIR`` trains on them. The four files are found by name
(``…train-images-idx3-ubyte``, ``…train-labels-idx1-ubyte``, and the same
with ``t10k`` or ``test``; gzip or plain), so EMNIST's
``emnist-balanced-train-images-idx3-ubyte.gz`` works as it is. Any number of
images and any image size are accepted; the number of classes is the largest
label plus one. Every structural check of the registered datasets applies,
but no checksum: nothing is known to compare with.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .idx import read_file

_ROLE = re.compile(r"^(?:.*[-_.])?(train|t10k|test)-(images-idx3|labels-idx1)-ubyte(?:\.gz)?$", re.IGNORECASE)
_ROLES = (("train", "images"), ("train", "labels"), ("test", "images"), ("test", "labels"))


def find_files(folder: Path) -> dict:
    """The folder's four IDX files by (split, kind), or a DataError saying which is missing or doubled."""
    if not folder.is_dir():
        raise DataError(f"--data-dir {folder} is not a folder; pass the folder that holds your four IDX files")
    found: dict[tuple, list] = {role: [] for role in _ROLES}
    for path in sorted(folder.iterdir()):
        match = _ROLE.match(path.name)
        if match:
            split = "train" if match.group(1).lower() == "train" else "test"
            found[(split, match.group(2).split("-")[0].lower())].append(path)
    for (split, kind), paths in found.items():
        stem = "train" if split == "train" else "t10k (or test)"
        if not paths:
            raise DataError(f"--data-dir {folder} has no {split} {kind} file (looked for a name ending in "
                            f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte or .gz); "
                            "put your four IDX files there")
        if len(paths) > 1:
            raise DataError(f"--data-dir {folder} has {len(paths)} {split} {kind} files "
                            f"({', '.join(p.name for p in paths)}); keep one of them there")
    return {role: paths[0] for role, paths in found.items()}


def load_idx_folder(folder) -> tuple[list[np.ndarray], list[str], int]:
    """The four arrays (train images, train labels, test images, test labels), their payload sha256s,
    and the number of classes, from a folder of your own IDX files."""
    folder = Path(folder).expanduser()
    paths = find_files(folder)
    arrays, hashes = [], []
    for split, kind in _ROLES:
        array, payload_sha256, _ = read_file(paths[split, kind], kind, None, None, 256)
        arrays.append(array)
        hashes.append(payload_sha256)
    x_train, y_train, x_test, y_test = arrays
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) == 0:
            raise DataError(f"{paths[split, 'images']}: holds no images; the {split} split needs at least one")
        if len(y) != len(x):
            raise DataError(f"{paths[split, 'labels']}: holds {len(y)} labels for {len(x)} images "
                            f"in {paths[split, 'images'].name} (one per image); use matching files")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{folder}: train images are {'x'.join(map(str, x_train.shape[1:]))} but test images are "
                        f"{'x'.join(map(str, x_test.shape[1:]))}; both splits need one image size")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if num_classes < 2:
        raise DataError(f"{paths['train', 'labels']}: every label is 0, so there is nothing to learn; "
                        "labels must be 0, 1, ... one number per class")
    return arrays, hashes, num_classes


def combined_checksum(hashes) -> str:
    """The dataset checksum from the four payload sha256 hex digests (see ``Dataset``)."""
    return hashlib.sha256("".join(h + "\n" for h in hashes).encode()).hexdigest()
