"""xpgrad: small, readable autodiff that runs on NumPy (CPU) and CuPy (CUDA) from one source."""

__version__ = "0.1.0"

from .backend import get_array_module, get_device, to_device, to_numpy  # noqa: E402,F401
from . import functional, nn  # noqa: E402,F401
from .tensor import Tensor, no_grad  # noqa: E402,F401
