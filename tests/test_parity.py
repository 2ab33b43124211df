"""Backend parity: the same op on NumPy and on CuPy computes the same thing.

Inputs are generated once with NumPy and then moved, so the backends never
depend on matching random streams. The cupy cases need a GPU and are skipped
with a reason without one. On the CPU, the fused formulas (LogSoftmax,
SoftmaxCrossEntropy) are compared with the notebook's Jacobian chain.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from xpgrad import backend, notebook
from xpgrad.ops import (
    Linear,
    Log,
    LogSoftmax,
    Matmul,
    Relu,
    Softmax,
    SoftmaxCrossEntropy,
)

from .helpers import move, tolerances

DTYPES = [np.float32, np.float64]

# (name, rows, classes, logit scale, make non-contiguous)
CASES = [
    ("typical", 64, 10, 3.0, False),
    ("batch_of_one", 1, 10, 3.0, False),
    ("single_class", 16, 1, 3.0, False),
    ("huge_logits", 8, 5, 1e4, False),
    ("non_contiguous", 32, 10, 3.0, True),
]


def make_inputs(rng, n, c, scale, strided, dtype):
    """Host inputs: logits (maybe a strided view), upstream grad, labels."""
    logits = (rng.normal(size=(n, 2 * c if strided else c)) * scale).astype(dtype)
    if strided:
        logits = logits[:, ::2]  # a view with a column stride of 2
        assert not logits.flags.c_contiguous
    gy = rng.normal(size=(n, c)).astype(dtype)
    t = rng.integers(0, c, size=n)
    return logits, gy, t


def run_op(op, args, gy):
    """Forward then backward; everything returned on the host."""
    out = op.forward(*args)
    grads = op.backward(gy)
    grads = grads if isinstance(grads, tuple) else (grads,)
    return [backend.to_numpy(out)] + [backend.to_numpy(g) for g in grads if g is not None]


def assert_all_close(actual, expected, dtype, what):
    rtol, atol = tolerances(dtype)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype, f"{what}[{i}]: dtype {a.dtype} != {e.dtype}"
        scale = max(1.0, float(np.abs(e).max())) if e.size else 1.0
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol * scale, err_msg=f"{what}[{i}]")


def softmax_like_ops():
    return {
        "Relu": (Relu, lambda x, t: (x,)),
        "Softmax": (Softmax, lambda x, t: (x,)),
        "LogSoftmax": (LogSoftmax, lambda x, t: (x,)),
        "SoftmaxCrossEntropy": (SoftmaxCrossEntropy, lambda x, t: (x, t)),
    }


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("op_name", list(softmax_like_ops()))
def test_numpy_vs_cupy(gpu_xp, rng, op_name, case, dtype):
    _, n, c, scale, strided = case
    op_cls, args_of = softmax_like_ops()[op_name]
    x, gy, t = make_inputs(rng, n, c, scale, strided, dtype)
    gy_op = None if op_name == "SoftmaxCrossEntropy" else gy
    ref = run_op(op_cls(), args_of(x, t), gy_op)
    got = run_op(op_cls(), move(gpu_xp, *args_of(x, t)), None if gy_op is None else gpu_xp.asarray(gy))
    assert_all_close(got, ref, dtype, f"{op_name}/{case[0]}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_vs_cupy_matmul_linear_log(gpu_xp, rng, dtype):
    x = rng.normal(size=(17, 9)).astype(dtype)
    W = rng.normal(size=(9, 5)).astype(dtype)
    b = rng.normal(size=(5,)).astype(dtype)
    gy = rng.normal(size=(17, 5)).astype(dtype)
    p = rng.uniform(1e-6, 1.0, size=(17, 5)).astype(dtype)
    for name, op_cls, args in [("Matmul", Matmul, (x, W)), ("Linear", Linear, (x, W, b)), ("Log", Log, (p,))]:
        ref = run_op(op_cls(), args, gy)
        got = run_op(op_cls(), move(gpu_xp, *args), gpu_xp.asarray(gy))
        assert_all_close(got, ref, dtype, name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("op_name", ["Relu", "LogSoftmax", "SoftmaxCrossEntropy"])
def test_fused_vs_generic_on_gpu(gpu_xp, rng, op_name, case, dtype):
    """The fused kernels against the generic xp code, on the same GPU."""
    _, n, c, scale, strided = case
    op_cls, args_of = softmax_like_ops()[op_name]
    x, gy, t = make_inputs(rng, n, c, scale, strided, dtype)
    args = move(gpu_xp, *args_of(x, t))
    gy_dev = None if op_name == "SoftmaxCrossEntropy" else gpu_xp.asarray(gy)
    with backend.use_fused(True):
        fused = run_op(op_cls(), args, gy_dev)
    with backend.use_fused(False):
        generic = run_op(op_cls(), args, gy_dev)
    assert_all_close(fused, generic, dtype, f"{op_name}/{case[0]}")


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False), ("1", True), (None, True)])
def test_fused_env_switch_is_read_at_import(value, expected):
    """XPGRAD_FUSED sets the switch once, when xpgrad is imported (default: on)."""
    env = {k: v for k, v in os.environ.items() if k != backend.FUSED_ENV}
    if value is not None:
        env[backend.FUSED_ENV] = value
    code = "from xpgrad import backend; print(backend.fused_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == str(expected)


def test_get_ops_picks_kernels_only_for_gpu_arrays_while_fused():
    """The one decision: NumPy always gets the generic code; another xp the kernels unless switched off."""
    from xpgrad import generic, kernels

    other_xp = object()  # a stand-in for cupy: anything that is not numpy
    with backend.use_fused(True):
        assert backend.get_ops(np) is generic
        assert backend.get_ops(other_xp) is kernels
        with backend.use_fused(False):
            assert backend.get_ops(other_xp) is generic
            assert not backend.fused_enabled()
        assert backend.get_ops(other_xp) is kernels


def test_generic_and_kernels_mirror_each_other():
    """Every public function of kernels has a generic twin with the same parameters, and back."""
    import inspect

    from xpgrad import generic, kernels

    def public(module):
        return {name: fn for name, fn in vars(module).items() if inspect.isfunction(fn)
                and not name.startswith("_") and fn.__module__ == module.__name__}

    twins = public(kernels)
    assert twins and set(twins) <= set(public(generic))
    for name, fn in twins.items():
        assert list(inspect.signature(fn).parameters) == list(inspect.signature(getattr(generic, name)).parameters), name


# ---------------------------------------------------------------------------
# On the CPU: the fused formulas against the notebook's Jacobian chain


def notebook_softmax_log(x, gy):
    """The notebook's Softmax then Log, forward and backward (with its (N, C, C) Jacobian)."""
    softmax, log = notebook.Softmax(), notebook.Log()
    y = log.forward(softmax.forward(x))
    return y, softmax.backward(log.backward(gy))


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "huge_logits"], ids=lambda c: c[0])
def test_log_softmax_matches_notebook_chain(rng, case):
    """float64, moderate logits: the notebook's chain is accurate, so the formulas must agree."""
    _, n, c, _, strided = case
    # Logits of unit scale keep every probability above ~1e-4, where the
    # notebook's 1e-12 changes results by < 1e-8 relative.
    x, gy, _ = make_inputs(rng, n, c, 1.0, strided, np.float64)
    op = LogSoftmax()
    y = op.forward(x)
    gx = op.backward(gy)
    y_ref, gx_ref = notebook_softmax_log(x, gy)
    # The notebook's 1e-12 (in the denominator and the log) is the only difference.
    np.testing.assert_allclose(y, y_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "huge_logits"], ids=lambda c: c[0])
def test_cross_entropy_gradient_matches_notebook_chain(rng, case):
    """(softmax - onehot)/N equals the notebook's Log->Softmax backward of -onehot/N."""
    _, n, c, _, strided = case
    x, _, t = make_inputs(rng, n, c, 1.0, strided, np.float64)
    onehot = np.eye(c)[t]
    sce = SoftmaxCrossEntropy()
    loss = sce.forward(x, t)
    gx = sce.backward()
    y_ref, gx_ref = notebook_softmax_log(x, -onehot / n)
    np.testing.assert_allclose(float(loss), -(y_ref * onehot).sum() / n, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-8, atol=1e-10)


def test_notebook_chain_overflows_where_xpgrad_does_not():
    """Why the row max is subtracted: the notebook's softmax gives NaN at logits of 1e4."""
    x = np.array([[1e4, 0.0, -1e4]])
    with np.errstate(over="ignore", invalid="ignore"):
        y_ref, _ = notebook_softmax_log(x, np.ones_like(x))
    assert not np.all(np.isfinite(y_ref))
    y = LogSoftmax().forward(x)
    np.testing.assert_allclose(y, [[0.0, -1e4, -2e4]])
