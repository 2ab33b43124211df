"""Layers that hold parameters, as ``torch.nn``.

==================  ============================================================
module              what it holds
==================  ============================================================
``module``          :class:`Module`: parameters, buffers, ``state_dict``, modes
``layers``          :class:`Linear`, :class:`ReLU`, :class:`Flatten`, :class:`Sequential`
``init``            the initializers, and :func:`manual_seed` for their generator
``flat``            :func:`flatten_parameters`: one buffer for every parameter
==================  ============================================================
"""

from . import init
from .flat import FlatParameters, flatten_parameters
from .init import manual_seed
from .layers import Flatten, Linear, ReLU, Sequential
from .module import IncompatibleKeys, Module

__all__ = ["FlatParameters", "Flatten", "IncompatibleKeys", "Linear", "Module", "ReLU", "Sequential",
           "flatten_parameters", "init", "manual_seed"]
