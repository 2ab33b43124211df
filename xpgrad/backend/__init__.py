"""The array core: the one package in xpgrad that imports CuPy.

Everything else asks this package for ``xp`` (NumPy or CuPy), for devices,
and for the implementation of the hot-path functions (:func:`get_ops`), so
code is written once against ``xp`` and runs on either backend.
:mod:`xpgrad.backend.graph` holds the capture-safe matrix product and CUDA
graph capture.

Two facts about CuPy are kept apart, because they need different fixes:

* CuPy is not installed (``pip install 'xpgrad[cuda12]'``);
* CuPy is installed but no GPU or driver is usable (check ``nvidia-smi``, the
  driver version, or ``docker run --gpus all``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re

import numpy

from ..errors import DeviceError, one_line

try:  # pragma: no cover - depends on the machine
    import cupy

    _CUPY_IMPORT_ERROR: Exception | None = None
except Exception as exc:  # ImportError, or a broken CUDA install raising at import
    cupy = None
    _CUPY_IMPORT_ERROR = exc

#: Set ``XPGRAD_FUSED=0`` to run the generic ``xp`` code on the GPU instead of
#: the fused kernels, so both can be compared on the same device. Read once,
#: at import; :func:`set_fused` and :func:`use_fused` change it afterwards.
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
            f"CuPy {cupy.__version__} is installed but CUDA is not usable ({one_line(exc)}); "
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


def gpu_count() -> int:
    """How many CUDA GPUs this process sees (0 without a usable one)."""
    return cupy.cuda.runtime.getDeviceCount() if gpu_available() else 0


# ---------------------------------------------------------------------------
# Fused or generic: the one place the choice is made


def _fused_from_env() -> bool:
    return os.environ.get(FUSED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


_fused = _fused_from_env()
_ops_modules = {}  # "kernels" / "generic" -> the module, imported on first use


def fused_enabled() -> bool:
    """Whether GPU arrays go through the fused CuPy kernels (default) or the generic ``xp`` code."""
    return _fused


def set_fused(enabled: bool) -> bool:
    """Switch the fused kernels on or off for this process; returns the previous setting."""
    global _fused
    previous, _fused = _fused, bool(enabled)
    return previous


@contextlib.contextmanager
def use_fused(enabled: bool):
    """``with use_fused(False): ...`` runs the block with the generic code, then restores the switch."""
    previous = set_fused(enabled)
    try:
        yield
    finally:
        set_fused(previous)


def get_ops(xp):
    """The module that implements the hot-path functions for arrays of ``xp``.

    :mod:`xpgrad.kernels` (fused CUDA kernels) for CuPy while the fused switch
    is on, else :mod:`xpgrad.generic` (the same functions, names and
    signatures, written once against ``xp``). Ops and optimizers call the
    functions of whichever module this returns, as thinc's ``get_ops`` picks
    an ``Ops`` class.
    """
    name = "kernels" if _fused and xp is not numpy else "generic"
    module = _ops_modules.get(name)
    if module is None:  # imported here: both modules build on this package
        import importlib  # noqa: PLC0415

        module = _ops_modules[name] = importlib.import_module(f"xpgrad.{name}")
    return module


# ---------------------------------------------------------------------------
# Arrays and their module


def is_cupy_array(a) -> bool:
    """Whether ``a`` is a CuPy array (False whenever CuPy is not installed)."""
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
    # Every op calls this several times per training step: NumPy arrays (and
    # numbers) pass one type check each, and only a CuPy array takes the loop
    # that looks for host arrays beside it.
    for a in arrays:
        if type(a) is not _ndarray and cupy is not None and isinstance(a, cupy.ndarray):
            return _cupy_module(arrays)
    return numpy


_ndarray = numpy.ndarray


def _cupy_module(arrays):
    """``cupy``, for arrays of which at least one is CuPy's; DeviceError if any is a host array."""
    first = host = device = None
    for a in arrays:
        if isinstance(a, cupy.ndarray):
            device = a
        elif isinstance(a, (numpy.ndarray, numpy.generic)):
            host = a
        else:
            continue
        if first is None:
            first = a
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
    ``kind`` is ``"cpu"`` or ``"cuda"``; ``index`` the GPU's number (None on the CPU).
    """

    def __init__(self, kind: str, index: int | None = None):
        self.kind = kind
        self.index = index

    @property
    def xp(self):
        """The array module of this device: ``numpy``, or ``cupy`` for a GPU."""
        return cupy if self.kind == "cuda" else numpy

    @property
    def is_gpu(self) -> bool:
        """Whether this is a CUDA GPU."""
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    def __repr__(self) -> str:
        return f"Device('{self}')"

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self) -> int:
        return hash((self.kind, self.index))

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


#: The CPU, where NumPy's arrays live.
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


def copy_from_host(dst, src) -> None:
    """Copy the host array ``src`` into the array ``dst`` in place; on a GPU, on the current stream."""
    if is_cupy_array(dst):
        dst.set(numpy.ascontiguousarray(src, dtype=dst.dtype), stream=cupy.cuda.get_current_stream())
    else:
        dst[...] = src


def copy_into(dst, src) -> None:
    """Copy the values of ``src`` (a host or device array of ``dst``'s shape) into ``dst`` in place, cast to its dtype."""
    if is_cupy_array(dst):
        with cupy.cuda.Device(dst.device.id):
            dst[...] = cupy.asarray(src, dtype=dst.dtype)
    else:
        dst[...] = to_numpy(src)


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
    require_cupy()
    return cupy.ElementwiseKernel(in_params, out_params, operation, name, **kwargs)


def raw_kernel(code: str, name: str, options: tuple = ()):
    """Build a ``cupy.RawKernel`` for the ``extern "C"`` kernel ``name`` in ``code`` (compiled on first launch)."""
    require_cupy()
    return cupy.RawKernel(code, name, options=tuple(options))


def capture_stream():
    """A new non-blocking CUDA stream to record and replay CUDA graphs on.

    It does not wait for the default stream (a capture cannot use that one),
    so work queued there must be synchronized by hand before the graph reads it.
    """
    require_cupy()
    return cupy.cuda.Stream(non_blocking=True)


def require_cupy() -> None:
    """Raise :class:`DeviceError` saying how to install CuPy when it is missing."""
    if cupy is None:
        raise DeviceError(f"CuPy is not installed; install it with {_INSTALL_HINT}")


_GRAPH_NAMES = ("capture_graph", "cublas_gemm", "gemm", "matmul")


def __getattr__(name):
    """``backend.capture_graph`` and the other names of :mod:`.graph`, which builds on this module (so it is
    loaded on first use rather than imported here)."""
    if name in _GRAPH_NAMES:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f"{__name__}.graph"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


