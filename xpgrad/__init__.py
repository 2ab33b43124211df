"""xpgrad: small, readable autodiff that runs on NumPy (CPU) and CuPy (CUDA) from one source."""

import importlib

__version__ = "0.1.0"

# Public names and the module each comes from. They load on first use, not at
# import: the command line installs its signal handlers before NumPy and CuPy
# load (they take most of a second), so a Ctrl-C at start-up ends cleanly too.
_NAMES = {
    "get_array_module": "backend", "get_device": "backend", "to_device": "backend", "to_numpy": "backend",
    "Tensor": "tensor", "no_grad": "tensor", "graph_step": "graphstep", "manual_seed": "nn",
}
_MODULES = ("backend", "functional", "functions", "graphstep", "models", "nn", "ops", "optim", "tensor",
            "data", "training", "generic", "kernels", "notebook", "checkpoint", "gradcheck")

__all__ = [*_NAMES, "functional", "models", "nn", "optim"]


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'xpgrad' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
