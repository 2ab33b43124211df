"""``xpgrad info`` and ``xpgrad gradcheck``: what the machine offers, and whether the gradients are right."""

from __future__ import annotations

import sys

from . import __version__, backend
from .errors import XpgradError


def _blas_line() -> str:
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 - optional

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            return f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, {p.get('num_threads')} threads)"
    except ImportError:
        pass
    try:
        import numpy  # noqa: PLC0415

        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown"


def gpu_self_test(device) -> str:
    """Compile and run one fused kernel on ``device``; return a one-line verdict or raise XpgradError."""
    import numpy  # noqa: PLC0415

    from . import kernels  # noqa: PLC0415

    x = numpy.array([-1.0, 0.5, 2.0], dtype=numpy.float32)
    gy = numpy.array([3.0, 4.0, 5.0], dtype=numpy.float32)
    try:
        with device:
            gx = backend.to_numpy(kernels.relu_backward(backend.to_device(x, device), backend.to_device(gy, device)))
    except Exception as exc:  # compile errors, missing headers, driver errors
        text = " ".join(str(exc).split())[:300]
        hint = ("the CUDA headers NVRTC needs are missing: use an nvidia/cuda *-devel image or install the CUDA toolkit headers"
                if "include" in text.lower() or "cuda_fp16" in text.lower() or "nvrtc" in text.lower()
                else "check the driver (nvidia-smi) and that CuPy matches its CUDA version")
        raise XpgradError(f"GPU self-test failed on {device} ({type(exc).__name__}: {text}); {hint}") from None
    if not numpy.array_equal(gx, [0.0, 4.0, 5.0]):
        raise XpgradError(f"GPU self-test computed {gx.tolist()} instead of [0, 4, 5] on {device}; the GPU stack is broken")
    return f"GPU self-test: ok (xpgrad_relu_bwd compiled and ran on {device}, {device.name()})"


def cmd_info(args) -> int:
    import numpy  # noqa: PLC0415

    print(f"xpgrad {__version__}")
    print(f"python {sys.version.split()[0]}")
    print(f"numpy {numpy.__version__}, BLAS: {_blas_line()}")
    if backend.cupy_installed():
        print(f"cupy {backend.cupy.__version__}")
    else:
        print("cupy: not installed (pip install 'xpgrad[cuda12]' or 'xpgrad[cuda13]' for GPUs)")
    ok, reason = backend.gpu_status()
    wants_gpu = args.device is not None and args.device.strip().lower().startswith("cuda")
    if not ok:
        print(f"gpu: none ({reason})")
        if wants_gpu:
            raise XpgradError(f"no usable GPU for --device {args.device}: {reason}")
        return 0
    for i in range(backend.cupy.cuda.runtime.getDeviceCount()):
        dev = backend.Device("cuda", i)
        with dev:
            free, total = backend.cupy.cuda.runtime.memGetInfo()
        print(f"gpu cuda:{i}: {dev.name()}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
    device = backend.get_device(args.device or "cuda:0")
    if device.is_gpu:
        print(gpu_self_test(device))
    return 0


def cmd_gradcheck(args) -> int:
    """The notebook's "Final Gradient Check" cell: xpgrad's gradient next to an autodiff framework's."""
    import numpy  # noqa: PLC0415

    from . import notebook  # noqa: PLC0415

    inputs = notebook.inputs(seed=0)
    grads = notebook.chain(*inputs)
    numpy.set_printoptions(precision=8, suppress=True, linewidth=100)
    print(grads["h2_log_grad"])
    print("--" * 20)
    try:
        import torch  # noqa: PLC0415 - optional oracle
    except ImportError:
        print("(PyTorch is not installed, so there is no independent autodiff to compare with: pip install torch)")
        return 0
    reference = notebook.torch_gradients(torch, *inputs)
    print(reference["h2_log_grad"])
    worst = notebook.max_relative_difference(grads, reference)
    print(f"max relative difference from PyTorch over prob, W1, W2 and x gradients: {worst:.2e}")
    if worst > 1e-10:
        raise XpgradError(f"gradients differ from PyTorch by {worst:.2e} (more than 1e-10)")
    return 0
