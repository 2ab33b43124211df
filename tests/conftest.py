"""Shared fixtures: one ``xp`` parameter over the backends.

The cupy case carries the ``gpu`` mark and is skipped *with the reason* from
:func:`xpgrad.backend.gpu_status` when no GPU is usable, so a CPU-only run shows
exactly why it did not run, and never counts it as passed.
"""

import os

import numpy as np
import pytest

from xpgrad import backend


def pytest_configure(config):
    """``XPGRAD_REQUIRE_GPU=1`` (set by bench/gpu_check.sh) turns "no GPU" from a skip into an error.

    On the lent GPU machine a run where every GPU case skipped would otherwise read as a pass.
    """
    if os.environ.get("XPGRAD_REQUIRE_GPU") == "1":
        ok, reason = backend.gpu_status()
        if not ok:
            raise pytest.UsageError(f"XPGRAD_REQUIRE_GPU=1 but there is no usable GPU: {reason}")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests that take ``gpu_xp`` are GPU tests: mark them, so ``-m gpu`` selects them."""
    for item in items:
        if "gpu_xp" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)


def _cupy_param():
    ok, reason = backend.gpu_status()
    marks = [pytest.mark.gpu]
    if not ok:
        marks.append(pytest.mark.skip(reason=f"no usable GPU: {reason.split(';')[0]}"))
    return pytest.param("cupy", marks=marks, id="cupy")


@pytest.fixture(params=[pytest.param("numpy", id="numpy"), _cupy_param()])
def xp(request):
    """NumPy, or CuPy on a usable GPU."""
    if request.param == "numpy":
        return np
    return backend.cupy


@pytest.fixture
def gpu_xp():
    """CuPy, for tests that only make sense on a GPU (e.g. fused vs generic)."""
    ok, reason = backend.gpu_status()
    if not ok:
        pytest.skip(f"no usable GPU: {reason.split(';')[0]}")
    return backend.cupy


@pytest.fixture
def rng():
    """A seeded NumPy generator: inputs are made once on the host, then moved."""
    return np.random.default_rng(20261127)


def tolerances(dtype):
    """(rtol, atol) for comparing two implementations of the same formula."""
    if np.dtype(dtype) == np.float32:
        return 2e-5, 2e-6
    return 1e-12, 1e-14
