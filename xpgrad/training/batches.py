"""An epoch's batches and sums on the device, so that a training step needs no host: what changes per step is there.

* the epoch's batch order, drawn on the host (so CPU and GPU runs, and
  resumed runs, see the same batches) and copied in once per epoch;
* a batch counter, which each gather reads and advances;
* fixed buffers for each batch shape, which a recorded step reads, filled by
  the gather with the batch's uint8 images normalized (:mod:`.inputs`);
* the sums of the loss and of correct predictions, which the loss head adds
  to and the host reads only at the logging interval.
"""

from __future__ import annotations

import numpy

from .. import backend
from ..backend import get_ops


class Batches:
    """Batches of ``batch_size`` rows of uint8 images ``x`` (N, ...) and labels ``t`` (N,), both on ``device``,
    normalized by ``inputs`` (an :class:`.inputs.Inputs`)."""

    def __init__(self, x, t, batch_size: int, device, inputs):
        self.x, self.t, self.batch_size, self.device, self.inputs = x, t, batch_size, device, inputs
        xp = device.xp
        n = x.shape[0]
        self.shuffled = batch_size < n
        with device:
            self.order = xp.zeros(n, dtype=numpy.int64) if self.shuffled else None
            self.counter = xp.zeros((), dtype=numpy.int64)
            self.loss_sum = xp.zeros((), dtype=inputs.dtype)
            self.correct = xp.zeros((), dtype=numpy.int64)

    @property
    def stats(self) -> tuple:
        """``(loss_sum, correct)``, what a loss head adds to."""
        return self.loss_sum, self.correct

    def begin_epoch(self, order) -> None:
        """Copy in the epoch's host ``order`` (None when not shuffled), and zero the counter and the sums."""
        if self.shuffled:
            backend.copy_from_host(self.order, order)
        for array in (self.counter, self.loss_sum, self.correct):
            array.fill(0)

    def batch(self, rows: int) -> Batch:
        """Fixed buffers for batches of ``rows`` rows (the data itself when not shuffled)."""
        return Batch(self, rows)

    def counted(self) -> int:
        """The batch counter (a host sync on a GPU): the batches gathered this epoch."""
        return int(self.counter)


class Batch:
    """Input buffers ``x`` and ``t`` of one batch shape, and :meth:`load`, which gathers the next batch into them."""

    def __init__(self, batches: Batches, rows: int):
        self.batches = batches
        if not batches.shuffled:  # every batch is the whole set, in order: normalized once, here
            with batches.device:
                self.x, self.t = batches.inputs.normalize(batches.x), batches.t
            return
        xp = batches.device.xp
        with batches.device:
            self.x = xp.empty((rows, *batches.x.shape[1:]), dtype=batches.inputs.dtype)
            self.t = xp.zeros(rows, dtype=batches.t.dtype)
        self._x_rows, self._source_rows = self.x.reshape(rows, -1), batches.x.reshape(batches.x.shape[0], -1)

    def load(self) -> None:
        """Gather the epoch's next batch into ``x`` and ``t`` on the device, advancing the counter."""
        b = self.batches
        if b.shuffled:
            get_ops(b.device.xp).gather_batch(self._source_rows, b.t, b.order, b.counter, b.batch_size, self._x_rows,
                                              self.t, b.inputs.multiplier, b.inputs.offset)
