"""How parameters start: the initializers, and the defaults layers use when given no generator or dtype.

Layers draw their initial weights on the host, in float64, and then cast and
move them, so every device and dtype starts from the same numbers. A layer
made without ``rng`` draws from this module's generator: seed it with
:func:`manual_seed` (as ``torch.manual_seed``), or for one block with
:func:`defaults`, to make a model's initial weights reproducible. A layer
made without ``dtype`` takes the default dtype, float32 unless
:func:`defaults` says otherwise (as ``torch.set_default_dtype``).
"""

from __future__ import annotations

import contextlib
import math

import numpy

INITS = ("he", "glorot", "normal")

_generator = numpy.random.default_rng()
_dtype = numpy.dtype("float32")


def manual_seed(seed) -> None:
    """Seed the generator that layers made without ``rng`` draw their initial weights from."""
    global _generator
    _generator = generator(seed, "manual_seed(seed)")


@contextlib.contextmanager
def defaults(seed=None, dtype=None):
    """``with defaults(seed=0, dtype="float64"): ...``: layers made in the block draw from a generator seeded
    with ``seed`` and are made in ``dtype`` when they are given neither (None: unchanged); the previous
    defaults are back afterwards. The Trainer builds every model this way, from the run's seed and dtype."""
    global _generator, _dtype
    previous = _generator, _dtype
    if seed is not None:
        _generator = generator(seed, "seed")
    if dtype is not None:
        _dtype = float_dtype(dtype, "defaults(dtype=...)")
    try:
        yield
    finally:
        _generator, _dtype = previous


def default_dtype() -> numpy.dtype:
    """The dtype layers are made in when given none: float32, or what :func:`defaults` set."""
    return _dtype


def generator(rng=None, what: str = "rng") -> numpy.random.Generator:
    """``rng`` as a generator: the module's generator for None, a new one for a seed (a whole number >= 0, or
    what ``numpy.random.default_rng`` takes), itself for a Generator; TypeError naming ``what`` otherwise."""
    if rng is None:
        return _generator
    if isinstance(rng, numpy.random.Generator):
        return rng
    try:
        if isinstance(rng, (bool, float, str, bytes)):
            raise TypeError("not a seed")
        return numpy.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be None, a seed (a whole number >= 0) or a numpy.random.Generator, "
                        f"got {type(rng).__name__} {rng!r:.40} ({exc})") from None


def float_dtype(dtype, what: str) -> numpy.dtype:
    """``dtype`` as a floating-point NumPy dtype, or a TypeError naming ``what``: parameters are trained, so
    they are floating-point (PyTorch's rule too)."""
    try:
        parsed = numpy.dtype(dtype)
    except TypeError:
        parsed = None
    if parsed is None or parsed.kind != "f":
        raise TypeError(f"{what} takes a floating-point dtype (float16, float32, float64), got {dtype!r:.40}")
    return parsed


def check_init(init, owner: str) -> None:
    """ValueError naming ``owner`` unless ``init`` is None or one of ``INITS`` (``he``, ``glorot``, ``normal``)."""
    if init is not None and (not isinstance(init, str) or init not in INITS):
        raise ValueError(f"{owner}'s init must be one of {', '.join(INITS)} or None, got {init!r:.40}")


def init_weight(rng: numpy.random.Generator, fan_in: int, fan_out: int, init: str) -> numpy.ndarray:
    """A (fan_in, fan_out) float64 weight on the host.

    ``he``: N(0, 2/fan_in), for ReLU layers; ``glorot``: U(+-sqrt(6/(fan_in+fan_out)));
    ``normal``: N(0, 1), as the notebook did. A weight with no elements (``fan_in`` or ``fan_out`` 0, which
    PyTorch allows too) is drawn from nothing.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if fan_in == 0 or fan_out == 0:
        return numpy.zeros((fan_in, fan_out))
    if init == "he":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
    if init == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))
    return rng.normal(size=(fan_in, fan_out))
