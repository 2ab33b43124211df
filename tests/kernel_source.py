"""The CUDA source CuPy generates for a kernel, and its compile, without a GPU (tests only).

This reaches into CuPy internals (``cupy._core._kernel``, ``cupy._core.core``,
``cupy.cuda.compiler``) as they are in CuPy 14 (checked with 14.2), which is
why it lives under tests/ and not in the library: only the compile tests use
it, and a CuPy upgrade that moves these internals should break a test, not
xpgrad.
"""

from __future__ import annotations

import io
import re

import numpy

try:
    import cupy
except Exception:  # ImportError, or a broken CUDA install raising at import
    cupy = None


def _require_cupy():
    if cupy is None:
        raise RuntimeError("CuPy is not installed")


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


#: The options CuPy compiles a ``cupy.RawKernel`` with when it is given none (CuPy >= 13), less the
#: target architecture.
RAW_KERNEL_OPTIONS = ("-std=c++14", "-ftz=true")


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


_USED = re.compile(r"Used (\d+) registers")
_LOCAL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_report(source: str, options: tuple[str, ...], *, arch: str = "90") -> dict:
    """What ptxas reports (``-Xptxas -v``) when NVRTC compiles ``source`` for ``sm_<arch>``, summed over its functions.

    ``{"registers": the most any function uses, "stack_frame", "spill_stores", "spill_loads": bytes of local
    memory}``; local memory is what a kernel that runs out of registers spills to. Raises
    :class:`KernelCompileError` on a compile error, or when the log has no such report (so a changed log
    format cannot read as "no spills").
    """
    _require_cupy()
    from cupy.cuda import compiler as cuda_compiler  # noqa: PLC0415

    options = tuple(options) + (f"-arch=sm_{arch}", "--device-as-default-execution-space", "-Xptxas", "-v")
    log = io.StringIO()
    try:
        cuda_compiler._NVRTCProgram(source, "kern.cu", method="cubin").compile(options, log_stream=log)
    except cuda_compiler.CompileException as exc:
        raise KernelCompileError(str(exc)) from None
    text = log.getvalue()
    used, local = [int(n) for n in _USED.findall(text)], [tuple(map(int, m)) for m in _LOCAL.findall(text)]
    if not used or not local:
        raise KernelCompileError(f"no register report in ptxas's log: {text!r}")
    frame, stores, loads = (sum(column) for column in zip(*local))
    return {"registers": max(used), "stack_frame": frame, "spill_stores": stores, "spill_loads": loads}
