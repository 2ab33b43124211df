"""The array-module abstraction: the one module in xpgrad that imports CuPy.

Everything else asks this module for ``xp`` (NumPy or CuPy) and for devices,
so code is written once against ``xp`` and runs on either backend.

Two facts about CuPy are kept apart, because they need different fixes:

* CuPy is not installed (``pip install 'xpgrad[cuda12]'``);
* CuPy is installed but no GPU or driver is usable (check ``nvidia-smi``, the
  driver version, or ``docker run --gpus all``).
"""

from __future__ import annotations

import functools
import os
import re

import numpy

from .errors import DeviceError

try:  # pragma: no cover - depends on the machine
    import cupy

    _CUPY_IMPORT_ERROR: Exception | None = None
except Exception as exc:  # ImportError, or a broken CUDA install raising at import
    cupy = None
    _CUPY_IMPORT_ERROR = exc

#: Set ``XPGRAD_FUSED=0`` to run the generic ``xp`` code on the GPU instead of
#: the fused kernels, so both can be compared on the same device.
FUSED_ENV = "XPGRAD_FUSED"

_INSTALL_HINT = "pip install 'xpgrad[cuda12]' (CUDA 12 driver) or 'xpgrad[cuda13]' (CUDA 13 driver)"


# ---------------------------------------------------------------------------
# What is available


def cupy_installed() -> bool:
    """True when ``import cupy`` succeeded."""
    return cupy is not None


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
    """Whether a CUDA GPU is usable through CuPy, and if not, why (one line).

    The answer is cached: the set of GPUs does not change while a process runs.
    """
    if cupy is None:
        return False, f"CuPy is not installed ({_CUPY_IMPORT_ERROR}); install it with {_INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, driver too old, no device
        return False, (
            f"CuPy {cupy.__version__} is installed but CUDA is not usable ({_one_line(exc)}); "
            "check that an NVIDIA driver is loaded (nvidia-smi), that it is new enough for this CuPy, "
            "and in Docker that the container was started with --gpus all"
        )
    if count == 0:
        return False, (
            f"CuPy {cupy.__version__} is installed but no CUDA GPU is visible; "
            "check nvidia-smi and CUDA_VISIBLE_DEVICES, and in Docker use --gpus all"
        )
    return True, f"{count} CUDA GPU(s) visible to CuPy {cupy.__version__}"


def gpu_available() -> bool:
    """True when at least one CUDA GPU can be used through CuPy."""
    return gpu_status()[0]


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def fused_enabled() -> bool:
    """Whether ops use the fused CuPy kernels (default) or the generic ``xp`` code."""
    return os.environ.get(FUSED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# ---------------------------------------------------------------------------
# Arrays and their module


def is_cupy_array(a) -> bool:
    return cupy is not None and isinstance(a, cupy.ndarray)


def _describe(a) -> str:
    if is_cupy_array(a):
        return f"cuda:{a.device.id}"
    return "cpu"


def get_array_module(*arrays):
    """Return ``numpy`` or ``cupy`` according to the arrays' types.

    Non-array arguments (Python scalars, None) are ignored. Mixing host and
    device arrays raises :class:`DeviceError` naming both devices, instead of
    silently copying.
    """
    # Every op calls this several times per training step, so it is one plain
    # loop with no helper calls (a few hundred ns for 2-3 arrays).
    cupy_array = None if cupy is None else cupy.ndarray
    first = host = device = None
    for a in arrays:
        if cupy_array is not None and isinstance(a, cupy_array):
            device = a
        elif isinstance(a, (numpy.ndarray, numpy.generic)):
            host = a
        else:
            continue
        if first is None:
            first = a
    if device is None:
        return numpy
    if host is not None:
        other = host if first is device else device
        raise DeviceError(
            f"arrays live on different devices ({_describe(first)} and {_describe(other)}); "
            "move them to one device first with xpgrad.backend.to_device"
        )
    return cupy


# ---------------------------------------------------------------------------
# Devices

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class Device:
    """A place arrays live: the CPU (NumPy) or one CUDA GPU (CuPy).

    Use it as a context manager to make a GPU current while allocating.
    """

    def __init__(self, kind: str, index: int | None = None):
        self.kind = kind
        self.index = index

    @property
    def xp(self):
        return cupy if self.kind == "cuda" else numpy

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    def __repr__(self) -> str:
        return f"Device('{self}')"

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __enter__(self):
        if self.is_gpu:
            self._ctx = cupy.cuda.Device(self.index)
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.is_gpu:
            self._ctx.__exit__(*exc)
        return False

    def synchronize(self) -> None:
        """Wait for queued GPU work (no-op on the CPU). Used by timing code only."""
        if self.is_gpu:
            cupy.cuda.Device(self.index).synchronize()

    def name(self) -> str:
        """A human name: the GPU's model, or 'cpu'."""
        if not self.is_gpu:
            return "cpu"
        props = cupy.cuda.runtime.getDeviceProperties(self.index)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)


CPU = Device("cpu")


def get_device(name: str | Device = "cpu") -> Device:
    """Parse ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` into a usable :class:`Device`.

    ``"auto"`` picks ``cuda:0`` when a GPU is usable and the CPU otherwise.
    Asking for a GPU that cannot be used raises :class:`DeviceError` with a
    one-line reason (CuPy missing, or CuPy present but no usable GPU/driver).
    """
    if isinstance(name, Device):
        return name
    text = str(name).strip().lower()
    if text == "auto":
        return Device("cuda", 0) if gpu_available() else CPU
    match = _DEVICE_RE.match(text)
    if not match:
        raise DeviceError(f"unknown device {name!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index is not None:
            raise DeviceError(f"unknown device {name!r}; the CPU takes no index, use 'cpu'")
        return CPU
    ok, reason = gpu_status()
    if not ok:
        raise DeviceError(f"cannot use device {name!r}: {reason}")
    index = int(index or 0)
    count = cupy.cuda.runtime.getDeviceCount()
    if index >= count:
        raise DeviceError(f"cannot use device {name!r}: only {count} CUDA GPU(s) visible (cuda:0..cuda:{count - 1})")
    return Device("cuda", index)


def device_of(a) -> Device:
    """The device an array lives on."""
    if is_cupy_array(a):
        return Device("cuda", a.device.id)
    return CPU


def to_numpy(a):
    """Return ``a`` as a NumPy array (copying from the GPU if needed)."""
    if is_cupy_array(a):
        return cupy.asnumpy(a)
    return numpy.asarray(a)


def to_device(a, device: str | Device = "cpu"):
    """Return ``a`` on ``device`` (no copy when it is already there)."""
    device = get_device(device)
    if not device.is_gpu:
        return to_numpy(a)
    with cupy.cuda.Device(device.index):
        return cupy.asarray(a)


# ---------------------------------------------------------------------------
# Kernels: built here so that kernel modules never import CuPy themselves.


def elementwise_kernel(in_params: str, out_params: str, operation: str, name: str, **kwargs):
    """Build a ``cupy.ElementwiseKernel`` (CuPy compiles it on first call per dtype)."""
    _require_cupy()
    return cupy.ElementwiseKernel(in_params, out_params, operation, name, **kwargs)


def _require_cupy():
    if cupy is None:
        raise DeviceError(f"CuPy is not installed; install it with {_INSTALL_HINT}")


# ---------------------------------------------------------------------------
# Matrix products, and CUDA-graph capture.
#
# CuPy refuses every cuBLAS call while a stream is being captured into a CUDA
# graph (NotImplementedError: "calling cuBLAS API during stream capture is
# currently unsupported"; cupy/cupy#6290), its low-level cuBLAS wrappers
# included, although cuBLAS's gemm itself can be captured. So while
# capture_graph() records, matmul() calls cuBLAS's C API directly (ctypes, on
# the library CuPy has already loaded) with CuPy's own handle.

_capture_handle = None  # CuPy's cuBLAS handle while capture_graph() records, else None
_CUBLAS_OP_N, _CUBLAS_OP_T, _CUBLAS_POINTER_MODE_HOST = 0, 1, 0


def matmul(xp, a, b, out=None):
    """``xp.matmul(a, b, out=out)``, which also works inside :func:`capture_graph`."""
    if _capture_handle is None or xp is numpy:
        return xp.matmul(a, b, out=out)
    return cublas_gemm(a, b, out, handle=_capture_handle)


@functools.lru_cache(maxsize=1)
def _libcublas():
    """cuBLAS's shared library, as CuPy loaded it (dlopen by soname finds the loaded copy)."""
    import ctypes

    cupy.cuda.device.get_cublas_handle()  # makes CuPy load libcublas
    major = cupy.cuda.runtime.runtimeGetVersion() // 1000
    lib = ctypes.CDLL(f"libcublas.so.{major}")
    c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
    for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
        getattr(lib, name).argtypes = [c_void_p, c_int, c_int, c_int, c_int, c_int, c_void_p, c_void_p,
                                       c_int, c_void_p, c_int, c_void_p, c_void_p, c_int]
    lib.cublasSetStream_v2.argtypes = [c_void_p, c_void_p]
    lib.cublasSetPointerMode_v2.argtypes = [c_void_p, c_int]
    lib.cublasGetPointerMode_v2.argtypes = [c_void_p, ctypes.POINTER(c_int)]
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
    gemm = lib.cublasSgemm_v2 if a.dtype.type is numpy.float32 else lib.cublasDgemm_v2
    _cublas_check(lib.cublasSetStream_v2(handle, cupy.cuda.get_current_stream().ptr), "cublasSetStream")
    _cublas_check(lib.cublasSetPointerMode_v2(handle, _CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode")
    _cublas_check(gemm(handle, op_b, op_a, n, m, k, one.ctypes.data, b.data.ptr, ldb, a.data.ptr, lda,
                       zero.ctypes.data, out.data.ptr, n), "cublas gemm")
    return out


def capture_graph(fn, stream):
    """Record ``fn()`` on ``stream`` (a non-blocking CuPy stream) as a CUDA graph and return it.

    Nothing runs while recording; ``graph.launch(stream)`` replays the work.
    Run ``fn`` eagerly on the same stream first, so that kernels are compiled
    and the memory pool already holds every block ``fn`` allocates: a capture
    cannot allocate device memory or copy to or from the host.
    """
    import ctypes

    global _capture_handle
    _require_cupy()
    lib = _libcublas()
    handle = cupy.cuda.device.get_cublas_handle()
    mode = ctypes.c_int()
    _cublas_check(lib.cublasGetPointerMode_v2(handle, ctypes.byref(mode)), "cublasGetPointerMode")
    try:
        with stream:
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


# ---------------------------------------------------------------------------
# Kernel source checks: the CUDA source CuPy generates, compiled without a GPU.
# These reach into CuPy internals (``cupy._core._kernel``, ``cupy._core.core``,
# ``cupy.cuda.compiler``) as they are in CuPy 14 (checked with 14.2); tests only.

_ARG_KIND_NDARRAY, _ARG_KIND_INDEXER, _ARG_KIND_SCALAR = 1, 2, 3  # cupy/_core/_kernel.pxd


class KernelCompileError(RuntimeError):
    """A kernel's generated CUDA source did not compile; the message is the compiler log."""


def elementwise_kernel_source(kernel, args, *, indexer_ndim: int, index_32_bits: bool = True) -> str:
    """The CUDA source CuPy compiles when ``kernel`` (a ``cupy.ElementwiseKernel``) is called.

    ``args`` has one entry per in/out parameter: ``None`` for a Python scalar
    (its type comes from the parameter, as CuPy casts it), or ``(dtype, ndim,
    c_contiguous)`` for an array as the kernel sees it after CuPy's
    ``reduce_dims`` (e.g. ndim 1 when all non-raw arrays are contiguous).
    Uses CuPy's own code generator, so no device is needed.
    """
    _require_cupy()
    from cupy._core import _carray, _kernel, _scalar, core  # noqa: PLC0415

    params = kernel.in_params + kernel.out_params
    if len(args) != len(params):
        raise ValueError(f"{kernel.name} takes {len(params)} arguments, got {len(args)}")
    dtypes = [None if a is None else numpy.dtype(a[0]) for a in args]
    in_types, _, type_map = _kernel._decide_params_type(
        kernel.in_params, kernel.out_params, tuple(dtypes[: kernel.nin]), tuple(dtypes[kernel.nin :])
    )
    arginfos = []
    for i, a in enumerate(args):
        if a is None:
            info = (_ARG_KIND_SCALAR, _scalar.CScalar, numpy.dtype(in_types[i]), 0, True, True)
        else:
            dtype, ndim, c_contiguous = a
            info = (_ARG_KIND_NDARRAY, cupy.ndarray, numpy.dtype(dtype), ndim, c_contiguous, index_32_bits)
        arginfos.append(_kernel._ArgInfo(*info))
    arginfos.append(_kernel._ArgInfo(_ARG_KIND_INDEXER, _carray.Indexer, None, indexer_ndim, True, index_32_bits))
    code = _kernel._get_elementwise_kernel_code(
        tuple(arginfos), type_map, kernel.params, kernel.operation, kernel.name, kernel.preamble, **kernel.kwargs
    )
    # compile_with_cache prepends these includes before compiling.
    return "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + code


def kernel_compile_options(kernel) -> tuple[str, ...]:
    """The compiler options CuPy passes for ``kernel``, less the target architecture."""
    _require_cupy()
    from cupy._core import core  # noqa: PLC0415

    return core.assemble_cupy_compiler_options(tuple(kernel.kwargs.get("options", ()))) + ("-ftz=true",)


def nvrtc_version() -> tuple[int, int] | None:
    """The NVRTC version CuPy loads, or None when NVRTC cannot be loaded."""
    if cupy is None:
        return None
    try:
        return tuple(cupy.cuda.nvrtc.getVersion())
    except Exception:
        return None


def compile_cuda_source(source: str, options: tuple[str, ...], *, arch: str = "90", compiler: str = "nvrtc") -> bytes:
    """Compile ``source`` to a cubin for ``sm_<arch>`` with NVRTC or nvcc, without a GPU.

    For NVRTC this adds what ``cupy.cuda.compiler.compile_using_nvrtc`` adds
    (``-arch=sm_XX`` and ``--device-as-default-execution-space``); that
    function itself asks the device for its architecture. nvcc goes through
    ``compile_using_nvcc``, which takes the architecture as given. Raises
    :class:`KernelCompileError` with the compiler's log.
    """
    _require_cupy()
    from cupy.cuda import compiler as cuda_compiler  # noqa: PLC0415

    try:
        if compiler == "nvrtc":
            options = tuple(options) + (f"-arch=sm_{arch}", "--device-as-default-execution-space")
            program = cuda_compiler._NVRTCProgram(source, "kern.cu", method="cubin")
            return program.compile(options)[0]
        if compiler == "nvcc":
            return cuda_compiler.compile_using_nvcc(source, tuple(options), arch=arch, code_type="cubin")
    except cuda_compiler.CompileException as exc:
        raise KernelCompileError(str(exc)) from None
    raise ValueError(f"unknown compiler {compiler!r}; use 'nvrtc' or 'nvcc'")
