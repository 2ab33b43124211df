"""Checks of the arguments layers and functions are made with (issue 20's rule): a value of the wrong kind is a
TypeError, one out of range a ValueError, and either message names the argument, what it got and what it
accepts. ``what`` names the argument with its owner, as ``"Conv2d's out_channels"``."""

from __future__ import annotations

import math
import numbers

import numpy

from . import backend


def describe(value) -> str:
    """``value``'s type and (at most 40 characters of) its repr, for a message: ``str 'no'``."""
    return f"{type(value).__name__} {value!r:.40}"


def flag(value, what: str) -> bool:
    """``value`` as a bool: True or False (NumPy's too), and what PyTorch's layers are often given for them,
    1, 0 and None (False); anything else, such as ``bias="no"``, is refused rather than taken for True."""
    if value is None:
        return False
    if not isinstance(value, (bool, numpy.bool_)) and not (_is_integer(value) and value in (0, 1)):
        raise TypeError(f"{what} must be True or False, got {describe(value)}")
    return bool(value)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, numpy.bool_))


def whole_number(value, what: str, low: int = 0) -> int:
    """``value`` as an int of at least ``low``: an integer (not a bool, not a float such as 3.0)."""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be a whole number, got {describe(value)}")
    if value < low:
        raise ValueError(f"{what} must be {low} or more, got {value}")
    return int(value)


def real_number(value, what: str, low: float, high: float | None = None, why: str = "", *,
                above: bool = False) -> float:
    """``value`` as a finite float in [low, high] (``high`` None: no upper bound; ``above``: more than ``low``,
    not equal to it); ``why``, if given, says in the message why the range is what it is."""
    accepted = f"a number {'>' if above else '>='} {low}" if high is None else f"a number in [{low}, {high}]"
    reason = f" ({why})" if why else ""
    if isinstance(value, (bool, numpy.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be {accepted}{reason}, got {describe(value)}")
    if not (math.isfinite(value) and (low < value if above else low <= value) and (high is None or value <= high)):
        raise ValueError(f"{what} must be {accepted}{reason}, got {value!r}")
    return float(value)


def is_array(value) -> bool:
    """Whether ``value`` is a NumPy or a CuPy array."""
    return isinstance(value, numpy.ndarray) or backend.is_cupy_array(value)
