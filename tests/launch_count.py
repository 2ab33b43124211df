"""Count the GPU launches one training step makes, on the CPU (tests only).

What a GPU would run as kernels is logged instead of run: xpgrad's own
kernels (each spec's launch), cuBLAS's matrix products (``ops.matmul``), and
every NumPy operation on the arrays that would live on the GPU, which CuPy
would run as a kernel of its own (``h += b``, a column sum). The last are
caught by :class:`Counted`, a NumPy array that logs each ufunc and method it
runs; allocations and views are free, as in a CUDA graph (a replay allocates
nothing, and a view launches nothing).
"""

from __future__ import annotations

import functools

import numpy as np

from xpgrad import backend, convops, kernels, ops


class Counted(np.ndarray):
    """An array that logs every operation on it that would be a GPU kernel into :attr:`log`."""

    log: list = []

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        Counted.log.append(f"cupy {ufunc.__name__}" + ("" if method == "__call__" else f".{method}"))
        inputs = [i.view(np.ndarray) if isinstance(i, Counted) else i for i in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, Counted) else o for o in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        return result.view(Counted) if isinstance(result, np.ndarray) and out is None else (
            out[0] if out is not None and len(out) == 1 else result)

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ not in ("empty_like", "shape", "ndim", "size", "result_type", "may_share_memory",
                                 "shares_memory"):
            Counted.log.append(f"cupy {func.__name__}")
        return super().__array_function__(func, types, args, kwargs)

    def fill(self, value):
        Counted.log.append("cupy fill")
        return super().fill(value)

    def copy(self, order="C"):
        Counted.log.append("cupy copy")
        return super().copy(order)

    def astype(self, dtype, *args, **kwargs):
        Counted.log.append("cupy astype")
        return super().astype(dtype, *args, **kwargs)

    def __setitem__(self, index, value):
        Counted.log.append("cupy setitem")
        return super().__setitem__(index, value)


def _gemm(log):
    def gemm(xp, a, b, out=None):
        log.append("cublas gemm")
        return out if out is not None else np.empty((a.shape[0], b.shape[1]), dtype=a.dtype).view(Counted)
    return gemm


def _elementwise(log):
    """A CuPy ElementwiseKernel's call, logged: it returns its output, given (after the inputs) or new."""
    def call(spec, *args, **kwargs):
        log.append(spec.name)
        inputs = len(spec.in_params.split(","))
        if len(args) > inputs:
            return args[inputs]
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        return np.empty(shape, dtype=arrays[-1].dtype).view(Counted)
    return call


def launches_of_one_step(monkeypatch, trainer) -> list[str]:
    """The launches one training step of ``trainer`` (a CPU Trainer) would make on a GPU, in order."""
    log = Counted.log = []
    store = trainer.parameters
    store._place(store.data.view(Counted), store.grad.view(Counted))
    trainer.optimizer._flat_data = store.data  # the same buffer, seen through a counting view
    monkeypatch.setattr(backend, "get_ops", lambda xp: kernels)
    monkeypatch.setattr(backend, "cupy", np)  # the kernels' own scratch arrays, on the host
    monkeypatch.setattr(backend, "device_of", lambda a: backend.CPU)
    monkeypatch.setattr(kernels, "_stream", lambda: (0, 0))  # the kernels' scratch, keyed by device and stream
    monkeypatch.setattr(kernels.KernelSpec, "__call__", _elementwise(log))
    monkeypatch.setattr(kernels.RawKernelSpec, "launch", lambda spec, *a: log.append(spec.name))
    monkeypatch.setattr(ops, "matmul", _gemm(log))
    monkeypatch.setattr(convops, "matmul", _gemm(log))
    # A strided view of a Counted array stays Counted (NumPy's as_strided returns a base ndarray by default).
    monkeypatch.setattr(np.lib.stride_tricks, "as_strided",
                        functools.partial(np.lib.stride_tricks.as_strided, subok=True))
    for module in ("xpgrad.optim", "xpgrad.ops", "xpgrad.training.batches"):
        monkeypatch.setattr(f"{module}.get_ops", lambda xp: kernels)
    steps = trainer._training_steps()
    log.clear()
    steps[0]()
    return list(log)
