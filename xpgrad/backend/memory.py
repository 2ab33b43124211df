"""How much memory a call allocates at its peak, on the CPU or a GPU: what sizes the evaluation's chunks.

On the CPU, NumPy reports every array it allocates to :mod:`tracemalloc`, so
the peak of the traced memory is the call's; on a GPU, a CuPy memory hook
adds up the blocks the call takes from the memory pool and gives back.
"""

from __future__ import annotations

import tracemalloc

from . import Device, cupy


def peak_allocation(fn, device: Device) -> int:
    """Run ``fn()`` and return the most bytes it held allocated at once (on ``device``), beyond what was
    allocated before it began."""
    if device.is_gpu:
        hook = _PeakHook()
        with device, hook:
            fn()
        return hook.peak
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - before)
    finally:
        if not tracing:
            tracemalloc.stop()


class _PeakHook(cupy.cuda.MemoryHook if cupy is not None else object):
    """Counts the bytes taken from CuPy's memory pool while it is installed (``with hook:``), and their peak."""

    name = "XpgradPeakHook"

    def __init__(self):
        self.current = self.peak = 0

    def malloc_postprocess(self, **kwargs):
        self.current += kwargs["mem_size"]
        self.peak = max(self.peak, self.current)

    def free_postprocess(self, **kwargs):
        self.current -= kwargs["mem_size"]
