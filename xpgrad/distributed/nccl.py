"""NCCL between the ranks' GPUs, for device arrays; MPI for everything else.

As ChainerMN's ``pure_nccl`` communicator: rank 0 makes the NCCL id, MPI
broadcasts it, and every rank joins the NCCL communicator on the GPU of its
local rank. Gradients and parameters go from GPU to GPU on the current CUDA
stream (a graph step's own, while it records), never through the host; the
small host sums of the metrics go through MPI.

A collective on a GPU is queued, not waited for: a rank only waits where it
reads a result on the host (:meth:`NcclCommunicator.settle`), and that wait is
polled on a CUDA event the way :mod:`.mpi` polls its requests, so signals,
fault notes and the timeout end it. A wait that times out aborts the NCCL
communicator, so no kernel is left waiting for a rank that is gone.
"""

from __future__ import annotations

import numpy

from ..backend import nccl as _nccl
from ..errors import XpgradError


class NcclCommunicator:
    """Rank ``mpi.rank`` of ``mpi.size`` on ``device`` (a GPU): NCCL for device arrays, ``mpi`` (an
    :class:`~xpgrad.distributed.mpi.MPICommunicator`) for the rest.

    ``nccl`` and ``stream``/``event`` (tests pass stand-ins) default to
    CuPy's NCCL module, the current stream's pointer and a recorded CUDA event.
    """

    def __init__(self, mpi, device, nccl=None, stream=None, event=None):
        self.mpi, self.device = mpi, device
        self.rank, self.size, self.local_rank = mpi.rank, mpi.size, mpi.local_rank
        self.host, self.peers = mpi.host, mpi.peers
        self.nccl = _nccl.module() if nccl is None else nccl
        self._stream = _nccl.current_stream_pointer if stream is None else stream
        self._event = _nccl.record_event if event is None else event
        self._types = {numpy.dtype(numpy.float16): self.nccl.NCCL_FLOAT16,
                       numpy.dtype(numpy.float32): self.nccl.NCCL_FLOAT32,
                       numpy.dtype(numpy.float64): self.nccl.NCCL_FLOAT64}
        uid = self.nccl.get_unique_id() if mpi.rank == 0 else None
        uid = mpi.broadcast_object(uid)
        with device:
            self.comm = self.nccl.NcclCommunicator(mpi.size, uid, mpi.rank)

    def _buffer(self, array) -> tuple[int, int, int]:
        """``(pointer, count, NCCL type)`` of a contiguous device array; host arrays are refused (they would
        have to be copied, which this path never does)."""
        data = getattr(array, "data", None)
        if not hasattr(data, "ptr"):
            raise TypeError(f"the NCCL communicator takes GPU arrays, got {type(array).__name__}")
        if not array.flags.c_contiguous:
            raise ValueError("the NCCL communicator takes contiguous arrays (a flat buffer)")
        kind = self._types.get(numpy.dtype(array.dtype))
        if kind is None:
            raise TypeError(f"the NCCL communicator sums float16, float32 or float64 arrays, got {array.dtype}")
        return data.ptr, array.size, kind

    def allreduce(self, array, what: str) -> None:
        """Sum ``array`` over every rank's GPU, in place, queued on the current stream."""
        pointer, count, kind = self._buffer(array)
        self.comm.allReduce(pointer, pointer, count, kind, self.nccl.NCCL_SUM, self._stream())

    def broadcast(self, array, what: str, root: int = 0) -> None:
        """Copy rank ``root``'s ``array`` into every rank's, in place, queued on the current stream."""
        pointer, count, kind = self._buffer(array)
        self.comm.bcast(pointer, count, kind, root, self._stream())

    def settle(self, what: str) -> None:
        """Wait, polled, until this rank's queued GPU work (collectives included) is done."""
        event = self._event()
        try:
            self.mpi.poll(lambda: event.done, what)
        except XpgradError:
            self.comm.abort()  # no NCCL kernel may wait forever for a rank that is gone
            raise

    def sum(self, values):
        return self.mpi.sum(values)

    def barrier(self, what: str, timeout: float | None = None) -> None:
        self.mpi.barrier(what, timeout)

    def __getattr__(self, name):  # the fault notes and the rest of the set-up: MPI's
        return getattr(self.mpi, name)
