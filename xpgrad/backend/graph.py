"""Matrix products that work while a CUDA graph is being recorded, and the recording itself.

CuPy refuses every cuBLAS call while a stream is being captured into a CUDA
graph (NotImplementedError: "calling cuBLAS API during stream capture is
currently unsupported"; cupy/cupy#6290), its low-level cuBLAS wrappers
included, although cuBLAS's gemm itself can be captured. So while
:func:`capture_graph` records, :func:`matmul` calls cuBLAS's C API directly
(ctypes, on the library CuPy has already loaded) with CuPy's own handle, and
:func:`gemm`, the product of the device-resident training step, always does.
The call is ``cublasGemmEx`` with the compute type and algorithm CuPy's own
``matmul`` passes, so both give the same numbers.

Each call hands cuBLAS a workspace of its own, allocated once per device
and kept (``cublasSetWorkspace`` after ``cublasSetStream``, which resets it):
on its default pool, cuBLAS allocates the scratch of a split-K product inside
a recording, as MEM_ALLOC/MEM_FREE nodes. ``$XPGRAD_CUBLAS_WORKSPACE``
(bytes) and ``$XPGRAD_GEMM_ALGO`` (a ``cublasGemmAlgo_t``) override the
workspace's size and the algorithm, read at each call (so a recording keeps
the values it was recorded with): ``bench.steps`` compares them on a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os

import numpy

from ..errors import GraphCaptureError, one_line
from . import cupy, gpu_available, require_cupy

_capture_handle = None  # CuPy's cuBLAS handle while capture_graph() records, else None
#: True while a CUDA graph records: the tape then names each op it runs, so an op
#: that cannot be recorded is named in the error (see :func:`recording_op`).
recording = False
_CUBLAS_OP_N, _CUBLAS_OP_T, _CUBLAS_POINTER_MODE_HOST = 0, 1, 0
# cudaDataType and cublasComputeType_t of float32 and float64 (library_types.h, cublas_api.h)
_GEMM_TYPES = {numpy.float32: (0, 68), numpy.float64: (1, 70)}
_CUBLAS_GEMM_DEFAULT, _CUBLAS_GEMM_DEFAULT_TENSOR_OP = -1, 99
WORKSPACE_ENV, ALGO_ENV = "XPGRAD_CUBLAS_WORKSPACE", "XPGRAD_GEMM_ALGO"
_MIB = 2**20
_workspaces = {}  # (device id, bytes) -> the cuBLAS workspace, a CuPy array kept as long as the process

_int, _pointer = ctypes.c_int, ctypes.c_void_p
#: The cuBLAS functions called here and their parameters' C types, as cublas_api.h declares them (handles,
#: streams and data are pointers, enums are ints); each returns a cublasStatus_t.
CUBLAS_SIGNATURES = {
    "cublasSetStream_v2": (_pointer, _pointer),
    "cublasSetWorkspace_v2": (_pointer, _pointer, ctypes.c_size_t),
    "cublasSetPointerMode_v2": (_pointer, _int),
    "cublasGetPointerMode_v2": (_pointer, ctypes.POINTER(_int)),
    "cublasGemmEx": (_pointer, _int, _int, _int, _int, _int, _pointer,  # handle, transa, transb, m, n, k, alpha
                     _pointer, _int, _int, _pointer, _int, _int,  # A, Atype, lda, B, Btype, ldb
                     _pointer, _pointer, _int, _int, _int, _int),  # beta, C, Ctype, ldc, computeType, algo
}


def matmul(xp, a, b, out=None):
    """``xp.matmul(a, b, out=out)``, which also works inside :func:`capture_graph`."""
    if _capture_handle is None or xp is numpy:
        return xp.matmul(a, b, out=out)
    return cublas_gemm(a, b, out, handle=_capture_handle)


def gemm(xp, a, b, out):
    """``a @ b`` into ``out`` for the device-resident step: NumPy's matmul, or one cuBLAS call on a GPU.

    On a GPU it is the same call whether or not a graph is being recorded, so
    a step computes the same numbers eagerly and replayed.
    """
    if xp is numpy:
        return numpy.matmul(a, b, out=out)
    return cublas_gemm(a, b, out, handle=_capture_handle)


@functools.lru_cache(maxsize=1)
def _libcublas():
    """cuBLAS's shared library, as CuPy loaded it (dlopen by soname finds the loaded copy)."""
    cupy.cuda.device.get_cublas_handle()  # makes CuPy load libcublas
    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    return declare(ctypes.CDLL(f"libcublas.so.{major}"))


def declare(lib):
    """Give ``lib``'s functions of :data:`CUBLAS_SIGNATURES` their argument and return types; return ``lib``."""
    for name, argtypes in CUBLAS_SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = list(argtypes), ctypes.c_int
    return lib


def _cublas_check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed with cuBLAS status {status}")


def cublas_gemm(a, b, out=None, *, handle=None):
    """``a @ b`` for 2-D (or 2-D by 1-D) float32/float64 CuPy arrays, by one cuBLAS gemm call.

    cuBLAS is column-major: a C-ordered (r, c) array is its (c, r) transpose
    there, so the row-major product ``C = A @ B`` is computed as
    ``C^T = B^T A^T``; an operand that is a transposed view (F-ordered) is
    passed with the transpose flag instead of being copied.
    """
    if b.ndim == 1:
        return cublas_gemm(a, b[:, None], None if out is None else out[:, None], handle=handle)[:, 0]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"cublas_gemm needs (m, k) @ (k, n) arrays, got {a.shape} @ {b.shape}")
    if a.dtype != b.dtype or a.dtype.type not in (numpy.float32, numpy.float64):
        raise TypeError(f"cublas_gemm needs two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = cupy.empty((m, n), dtype=a.dtype)
    elif out.shape != (m, n) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {a.dtype} array of shape {(m, n)}")
    if m == 0 or n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out

    def operand(x):  # (array, transpose flag, leading dimension) in cuBLAS's column-major terms
        if x.flags.c_contiguous:
            return x, _CUBLAS_OP_N, x.shape[1]
        if x.flags.f_contiguous:
            return x, _CUBLAS_OP_T, x.shape[0]
        x = cupy.ascontiguousarray(x)
        return x, _CUBLAS_OP_N, x.shape[1]

    a, op_a, lda = operand(a)
    b, op_b, ldb = operand(b)
    lib = _libcublas()
    handle = cupy.cuda.device.get_cublas_handle() if handle is None else handle
    # Host scalars, read when the call is made (and so baked into a captured graph).
    one, zero = numpy.ones(1, dtype=a.dtype), numpy.zeros(1, dtype=a.dtype)
    data_type, compute_type = _GEMM_TYPES[a.dtype.type]
    device = cupy.cuda.Device().id
    workspace, workspace_size = _workspace(device)
    _cublas_check(lib.cublasSetStream_v2(handle, cupy.cuda.get_current_stream().ptr), "cublasSetStream")
    # After SetStream, which puts cuBLAS back on its default pool: a recording then has no memory nodes.
    _cublas_check(lib.cublasSetWorkspace_v2(handle, workspace, workspace_size), "cublasSetWorkspace")
    _cublas_check(lib.cublasSetPointerMode_v2(handle, _CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode")
    _cublas_check(lib.cublasGemmEx(handle, op_b, op_a, n, m, k, one.ctypes.data,
                                   b.data.ptr, data_type, ldb, a.data.ptr, data_type, lda,
                                   zero.ctypes.data, out.data.ptr, data_type, n,
                                   compute_type, gemm_algorithm(_compute_capability(device))), "cublasGemmEx")
    return out


@functools.lru_cache(maxsize=None)
def _compute_capability(device_id: int) -> int:
    return int(cupy.cuda.Device(device_id).compute_capability)


def _env_int(name: str) -> int | None:
    """The integer in ``$name``, None when it is unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None


def gemm_algorithm(compute_capability: int) -> int:
    """The ``algo`` of cublasGemmEx: ``$XPGRAD_GEMM_ALGO``, else the hint CuPy's matmul passes, "tensor op"
    (99) from compute capability 8.0 on and the default (-1) before.

    With the plain float32/float64 compute types cuBLAS still computes in
    full precision (no TF32) either way. cuBLAS's documentation of
    cublasGemmAlgo_t notes that the explicit algorithms (0-23, 100-115)
    have no effect from Ampere on; bench.steps records one to see.
    """
    algo = _env_int(ALGO_ENV)
    if algo is not None:
        return algo
    return _CUBLAS_GEMM_DEFAULT_TENSOR_OP if compute_capability >= 80 else _CUBLAS_GEMM_DEFAULT


def workspace_bytes(compute_capability: int) -> int:
    """The cuBLAS workspace's size: ``$XPGRAD_CUBLAS_WORKSPACE`` bytes, else what cuBLAS's documentation of
    cublasSetWorkspace recommends, 32 MiB from Hopper (compute capability 9.0) on and 4 MiB before."""
    size = _env_int(WORKSPACE_ENV)
    if size is None:
        return 32 * _MIB if compute_capability >= 90 else 4 * _MIB
    if size < 0:
        raise ValueError(f"{WORKSPACE_ENV}={size} is negative")
    return size


def _workspace(device_id: int) -> tuple[int, int]:
    """(address, bytes) of the cuBLAS workspace on the current device ``device_id``, allocated on first use.

    :func:`capture_graph` makes sure of it before it records, so a recording
    never allocates it.
    One workspace serves every stream of the device, which is safe while the
    products that use it run in order: xpgrad runs its steps, and replays
    them, on one stream at a time.
    """
    size = workspace_bytes(_compute_capability(device_id))
    buffer = _workspaces.get((device_id, size))
    if buffer is None:  # at least 256 bytes, so that even a 0-byte workspace has an aligned, non-null address
        buffer = _workspaces[device_id, size] = cupy.empty(max(size, 256), dtype=numpy.uint8)
    return buffer.data.ptr, size


@contextlib.contextmanager
def recording_session():
    """Around the recording of a graph: :data:`recording` is True inside."""
    global recording
    previous, recording = recording, True
    try:
        yield
    finally:
        recording = previous


@contextlib.contextmanager
def recording_op(name: str):
    """Around one op while a graph records: an error it raises becomes a :class:`GraphCaptureError` naming it."""
    try:
        yield
    except GraphCaptureError:
        raise
    except Exception as exc:
        raise GraphCaptureError(f"{name} cannot be recorded in a CUDA graph ({one_line(exc, 300)})") from exc


@contextlib.contextmanager
def on_stream(stream):
    """Run the block on ``stream``, after the work queued on the current stream, and order the current
    stream's later work after the block's (no host sync). A stream that is not CuPy's is simply entered."""
    if cupy is None or not isinstance(stream, cupy.cuda.Stream):
        with stream:
            yield
        return
    current = cupy.cuda.get_current_stream()
    stream.wait_event(current.record())
    with stream:
        yield
    current.wait_event(stream.record())


def launch(graph) -> None:
    """Replay a recorded graph on the current stream."""
    graph.launch(cupy.cuda.get_current_stream() if gpu_available() else None)


def refuse_while_recording(what: str) -> None:
    """Raise :class:`GraphCaptureError` saying ``what`` cannot be recorded, if a graph is recording now."""
    if recording:
        raise GraphCaptureError(f"{what}, which a CUDA graph cannot record; keep it out of the recorded step")


def capture_graph(fn, stream, keep=None):
    """Record ``fn()`` on ``stream`` (a non-blocking CuPy stream) as a CUDA graph and return it.

    Nothing runs while recording; ``graph.launch(stream)`` replays the work.
    Run ``fn`` eagerly on the same stream first, so that kernels are compiled
    and the memory pool already holds every block ``fn`` allocates: a capture
    cannot allocate device memory or copy to or from the host.

    A replay writes to the addresses recorded, so memory that ``fn`` allocates
    while recording must stay reserved while the graph is in use, even after
    the arrays holding it are gone; give a list as ``keep`` and every such
    block is appended to it, for the caller to hold as long as the graph.
    """
    global _capture_handle
    require_cupy()
    lib = _libcublas()
    handle = cupy.cuda.device.get_cublas_handle()
    _workspace(cupy.cuda.Device().id)  # now, should the warm-up not have made a product through cublas_gemm
    mode = ctypes.c_int()
    _cublas_check(lib.cublasGetPointerMode_v2(handle, ctypes.byref(mode)), "cublasGetPointerMode")
    allocate = cupy.cuda.get_allocator()

    def allocate_and_keep(size):
        memory = allocate(size)
        if keep is not None:
            keep.append(memory)
        return memory

    try:
        with stream, cupy.cuda.using_allocator(allocate_and_keep), recording_session():
            stream.begin_capture()
            _capture_handle = handle
            try:
                fn()
            except BaseException:
                _capture_handle = None
                try:  # end the broken capture so the stream stays usable; report fn's error
                    stream.end_capture()
                except Exception:
                    pass
                raise
            _capture_handle = None
            return stream.end_capture()
    finally:
        _capture_handle = None
        lib.cublasSetPointerMode_v2(handle, mode.value)  # as CuPy had it
