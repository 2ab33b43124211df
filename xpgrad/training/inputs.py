"""The dataset on the device: uint8 images normalized once, in the run's dtype."""

from __future__ import annotations

import math

import numpy

from .. import backend
from ..errors import XpgradError
from .config import Config


def normalization(config: Config, x_train_uint8) -> tuple[float, float]:
    """(shift, scale) so that inputs become (x/255 - shift) / scale."""
    if config.normalize == "scale":
        return 0.0, 1.0
    if config.normalize == "standardize":
        # From the histogram of the 256 pixel values: exact, and without the
        # float64 copy of the whole training set (376 MB for MNIST) that
        # x.astype(float).std() would make.
        counts = numpy.bincount(x_train_uint8.reshape(-1), minlength=256).astype(numpy.float64)
        values = numpy.arange(256) / 255.0
        mean = float(counts @ values / counts.sum())
        var = float(counts @ (values - mean) ** 2 / counts.sum())
        return mean, math.sqrt(var)
    raise XpgradError(f"unknown normalization {config.normalize!r}; use 'scale' or 'standardize'")


def to_device_inputs(x_uint8, shift, scale, dtype, device):
    """(N, H, W) uint8 images -> normalized (N, 1, H, W) arrays of ``dtype`` on ``device`` (one channel, as
    convolutions take them), converted on the host in chunks."""
    n = x_uint8.shape[0]
    out = numpy.empty((n, 1, *x_uint8.shape[1:]), dtype=dtype)
    step = 8192
    for start in range(0, n, step):
        chunk = x_uint8[start:start + step, None].astype(dtype)
        chunk *= dtype.type(1.0 / (255.0 * scale))
        chunk -= dtype.type(shift / scale)
        out[start:start + step] = chunk
    return backend.to_device(out, device)
