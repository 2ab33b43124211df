"""NCCL through CuPy (``cupy.cuda.nccl``): what the data-parallel GPU path needs of it, and nothing else.

The rest of xpgrad gets NCCL here, as it gets CuPy from :mod:`xpgrad.backend`.
"""

from __future__ import annotations

import warnings

from ..errors import DeviceError
from . import cupy, require_cupy

_HINT = "pip install nvidia-nccl-cu12 (CUDA 12) or nvidia-nccl-cu13 (CUDA 13), or your system's libnccl2"


def module():
    """``cupy.cuda.nccl``, or DeviceError saying why it cannot be used."""
    require_cupy()
    try:
        with warnings.catch_warnings():  # CuPy warns when libnccl is missing; the error below says it once
            warnings.simplefilter("ignore")
            import cupy.cuda.nccl as nccl  # noqa: PLC0415 - loads libnccl, only for a distributed GPU run
    except ImportError as exc:
        raise DeviceError(f"data parallelism on GPUs needs NCCL, which CuPy cannot load ({exc}); {_HINT}") from None
    if not getattr(nccl, "available", True):
        raise DeviceError(f"data parallelism on GPUs needs NCCL, which CuPy cannot load; {_HINT}")
    return nccl


def current_stream_pointer() -> int:
    """The current CUDA stream (a graph step records on its own), for NCCL to queue its work on."""
    return cupy.cuda.get_current_stream().ptr


def record_event():
    """A CUDA event recorded on the current stream: ``.done`` tells, without blocking, whether the work queued
    so far has finished."""
    event = cupy.cuda.Event(block=False, disable_timing=True)
    event.record()
    return event
