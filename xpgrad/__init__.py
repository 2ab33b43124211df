"""xpgrad: small, readable autodiff that runs on NumPy (CPU) and CuPy (CUDA) from one source."""

import importlib

__version__ = "0.1.0"

_BACKEND_NAMES = ("get_array_module", "get_device", "to_device", "to_numpy")


def __getattr__(name):
    # Loaded on first use, not at import: the command line installs its signal
    # handlers before NumPy and CuPy load (they take most of a second), so a
    # Ctrl-C at start-up ends cleanly too.
    if name in _BACKEND_NAMES or name == "backend":
        backend = importlib.import_module(".backend", __name__)
        return backend if name == "backend" else getattr(backend, name)
    raise AttributeError(f"module 'xpgrad' has no attribute {name!r}")
