"""The dataset on the device: uint8 images, normalized to the run's dtype a batch at a time.

The images stay uint8 on the device (a quarter of float32's memory, an eighth
of float64's), as (N, 1, H, W): one channel, as convolutions take them. A
batch is normalized as it is gathered, ``x * (1 / (255 * scale)) - shift /
scale`` in the run's dtype (two roundings, whichever the device), so the
whole training set never exists in floating point.
"""

from __future__ import annotations

import math

import numpy

from .. import backend
from ..errors import DataError, XpgradError
from .config import Config


def normalization(config: Config, x_train_uint8) -> tuple[float, float]:
    """(shift, scale) so that inputs become (x/255 - shift) / scale."""
    if config.normalize == "scale":
        return 0.0, 1.0
    if config.normalize == "standardize":
        # From the histogram of the 256 pixel values: exact, and without the
        # float64 copy of the whole training set (376 MB for MNIST) that
        # x.astype(float).std() would make.
        counts = _histogram(x_train_uint8).astype(numpy.float64)
        values = numpy.arange(256) / 255.0
        mean = float(counts @ values / counts.sum())
        var = float(counts @ (values - mean) ** 2 / counts.sum())
        if var == 0:
            # torchvision's Normalize would divide by zero and train on NaN; nothing can be learned from
            # blank images, so say so rather than invent a scale.
            raise DataError(
                f"every pixel of the {config.dataset} training images has the value {int(numpy.argmax(counts))}, "
                f"so their standard deviation is 0 and the {config.recipe} recipe cannot standardize them "
                "((x - mean) / std); check that the image files hold the images, or use --recipe notebook, "
                "which only scales pixels to [0, 1]")
        return mean, math.sqrt(var)
    raise XpgradError(f"unknown normalization {config.normalize!r}; use 'scale' or 'standardize'")


def _histogram(x_uint8, chunk: int = 1 << 20):
    """How many times each of the 256 values occurs, a chunk at a time: ``bincount`` widens its input to
    int64, which for the whole of MNIST's training set would be a 376 MB temporary."""
    flat = x_uint8.reshape(-1)
    counts = numpy.zeros(256, dtype=numpy.int64)
    for start in range(0, flat.size, chunk):
        counts += numpy.bincount(flat[start:start + chunk], minlength=256)
    return counts


class Inputs:
    """How uint8 images become the model's input: ``x * multiplier - offset`` in ``dtype``.

    ``multiplier`` is ``1 / (255 * scale)`` and ``offset`` ``shift / scale``, both of ``dtype``.
    """

    def __init__(self, shift: float, scale: float, dtype):
        self.dtype = numpy.dtype(dtype)
        self.multiplier = self.dtype.type(1.0 / (255.0 * scale))
        self.offset = self.dtype.type(shift / scale)

    def to_device(self, images_uint8, device):
        """(N, H, W) uint8 host images as (N, 1, H, W) uint8 on ``device``."""
        return backend.to_device(images_uint8[:, None], device)

    def normalize(self, x_uint8, out=None):
        """uint8 images (any shape, on any device) as normalized floats of ``dtype``, into ``out`` if given."""
        xp = backend.get_array_module(x_uint8)
        out = xp.multiply(x_uint8, self.multiplier, out=out, dtype=self.dtype)
        return xp.subtract(out, self.offset, out=out)
