"""Layers that hold parameters, as ``torch.nn``.

==================  ============================================================
module              what it holds
==================  ============================================================
``module``          :class:`Module`: parameters, buffers, ``state_dict``, modes
``layers``          :class:`Linear`, :class:`ReLU`, :class:`Flatten`, :class:`Sequential`,
                    :class:`ModuleList`
``conv``            :class:`Conv2d`, :class:`MaxPool2d`
``batchnorm``       :class:`BatchNorm2d`: running statistics as buffers
``dropout``         :class:`Dropout`: its generator's state as a buffer
``init``            the initializers, and :func:`manual_seed` for their generator
``flat``            :func:`flatten_parameters`: one buffer for every parameter
==================  ============================================================
"""

from . import init
from .batchnorm import BatchNorm2d
from .conv import Conv2d, MaxPool2d
from .dropout import Dropout
from .flat import FlatParameters, flatten_parameters
from .init import manual_seed
from .layers import Flatten, Linear, ModuleList, ReLU, Sequential
from .module import IncompatibleKeys, Module

__all__ = ["FlatParameters", "Flatten", "IncompatibleKeys", "Linear", "Module", "ReLU", "Sequential",
           "flatten_parameters", "init", "manual_seed"]
__all__ += ["BatchNorm2d", "Conv2d", "Dropout", "MaxPool2d", "ModuleList"]
