"""Fused kernels against NumPy reference formulas (GPU), and what can be checked without one.

Inputs are made once on the host with ``rng`` and moved with ``cupy.asarray``;
the references below are computed in float64 and compared with per-dtype
tolerances. The references themselves are checked against PyTorch on the CPU.
"""

import fnmatch
import inspect
import re
import subprocess
import sys

import numpy as np
import pytest

from xpgrad import backend, generic, kernels

from .helpers import move, tolerances

FLOATS = [np.float32, np.float64]


# (N, C, scale of the logits, layout of x): layout "c" is C-ordered, "T" a
# transposed view, "strided" every other column of a wider array.
ROW_CASES = [
    pytest.param(1, 1, 1.0, "c", id="N1-C1"),
    pytest.param(1, 7, 3.0, "c", id="N1"),
    pytest.param(6, 1, 3.0, "c", id="C1"),
    pytest.param(64, 10, 3.0, "c", id="64x10"),
    pytest.param(33, 17, 1e4, "c", id="big-logits"),
    pytest.param(16, 10, 3.0, "T", id="transposed"),
    pytest.param(9, 5, 1e4, "strided", id="strided-big"),
    # Odd row counts, C a power of two or just past one, many rows, and wide rows.
    pytest.param(37, 3, 3.0, "c", id="37x3"),
    pytest.param(37, 16, 3.0, "c", id="37x16"),
    pytest.param(5, 32, 3.0, "c", id="5x32"),
    pytest.param(1000, 10, 3.0, "c", id="1000x10"),
    pytest.param(7, 33, 3.0, "c", id="7x33"),
    pytest.param(3, 100, 1e4, "T", id="3x100-transposed"),
    # Tiles: several per launch, the widest tile row (C = TILE), and past it (the thread-per-row kernels).
    pytest.param(700, 10, 3.0, "c", id="700x10"),
    pytest.param(450_000, 10, 3.0, "c", id="450000x10-blocks-loop"),
    pytest.param(5, 1000, 3.0, "c", id="5x1000"),
    pytest.param(3, kernels.TILE, 3.0, "c", id="3xTILE"),
    pytest.param(3, kernels.TILE + 952, 3.0, "strided", id="3x3000-per-row"),
]


# ---------------------------------------------------------------------------
# NumPy references (float64)


def ref_relu_backward(x, gy):
    return np.where(x > 0, gy, 0.0)


def ref_logsumexp(x):
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def ref_log_softmax(x):
    return x - ref_logsumexp(x)[:, None]


def ref_log_softmax_backward(y, gy):
    return gy - np.exp(y) * gy.sum(axis=1, keepdims=True)


def ref_softmax_cross_entropy(x, t):
    lse = ref_logsumexp(x)
    return np.mean(lse - x[np.arange(len(t)), t]), lse


def ref_softmax_cross_entropy_backward(x, t, gloss):
    N, C = x.shape
    p = np.exp(x - ref_logsumexp(x)[:, None])
    return (p - np.eye(C)[t]) * gloss / N


def ref_sgd(p, g, lr):
    return p - lr * g


def ref_momentum(p, g, v, lr, momentum):
    v = momentum * v + g
    return p - lr * v, v


def ref_adam(p, g, m, v, lr, beta1, beta2, eps, step):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
    return p, m, v


# ---------------------------------------------------------------------------
# Helpers


def _assert_close(got, want, dtype, scale=1.0):
    """Compare with the dtype's tolerances; ``scale`` widens atol for large-magnitude inputs."""
    rtol, atol = tolerances(dtype)
    got = backend.to_numpy(got)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, scale))


def _scalar(dtype, value):
    """A Python scalar as the kernels see it: rounded to the parameter's dtype."""
    return float(np.dtype(dtype).type(value))


def _logits(rng, N, C, scale, dtype):
    return (rng.standard_normal((N, C)) * scale).astype(dtype)


# ---------------------------------------------------------------------------
# Without a GPU


def test_kernel_names_are_prefixed_and_unique():
    assert kernels.KERNELS
    for key, spec in kernels.KERNELS.items():
        assert key == spec.name
        assert spec.name.startswith("xpgrad_") and spec.name.isidentifier()


def _elementwise_specs():
    return [s for s in kernels.KERNELS.values() if isinstance(s, kernels.KernelSpec)]


def _raw_specs():
    return [s for s in kernels.KERNELS.values() if isinstance(s, kernels.RawKernelSpec)]


def test_raw_specs_define_one_kernel_over_their_type_placeholders():
    assert _raw_specs()
    for spec in _raw_specs():
        assert spec.code.count("XPGRAD_KERNEL(") == 1 and "typedef" not in spec.code, spec.name
        for v in "TS":
            assert (re.search(rf"\b{v}\b", spec.code) is not None) == (v in spec.types), (spec.name, v)


def test_specs_describe_their_parameters():
    for spec in _elementwise_specs():
        declared = {p.split()[-1] for p in (spec.in_params + "," + spec.out_params).split(",")}
        raw = {p.split()[-1] for p in (spec.in_params + "," + spec.out_params).split(",") if p.split()[0] == "raw"}
        assert set(spec.scalars) <= declared, spec.name
        assert set(spec.raw_ndim) == raw, spec.name


def test_import_builds_nothing_and_works_without_cupy():
    code = (
        "import sys; sys.modules['cupy'] = None; sys.modules['cupyx'] = None\n"
        "from xpgrad import backend, kernels\n"
        "assert backend.cupy is None\n"
        "assert kernels.KERNELS and all(getattr(s, '_kernel', None) is None and not getattr(s, '_kernels', None)\n"
        "                               for s in kernels.KERNELS.values())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_kernels_module_does_not_import_cupy():
    source = inspect.getsource(kernels)
    assert "import cupy" not in source and "from cupy" not in source


def _generic_table_names():
    """The functions xpgrad.generic's docstring lists as twins (a ``*`` stands for any ending)."""
    table = generic.__doc__.split("The twins:")[1].split("\n\n")[1]
    patterns = [line.split()[0] for line in table.splitlines() if line and not line.startswith(("=", "function"))]
    public = [n for n, f in vars(generic).items() if inspect.isfunction(f) and not n.startswith("_")]
    return {n for n in public if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def test_the_twins_have_the_generic_signatures():
    """xpgrad.kernels defines exactly the twins generic lists, each with the generic signature."""
    twins = _generic_table_names()
    assert {"sgd_update", "bias_relu_backward", "softmax_cross_entropy_step_work", "gather_batch"} <= twins
    fused = {n for n, f in vars(kernels).items()
             if inspect.isfunction(f) and f.__module__ == kernels.__name__ and not n.startswith("_")}
    assert fused == twins
    for name in twins:
        assert inspect.signature(getattr(kernels, name)) == inspect.signature(getattr(generic, name)), name
        assert getattr(kernels, name).__doc__, name


@pytest.mark.skipif(not backend.cupy_installed(), reason="CuPy is not installed")
def test_specs_build_without_a_gpu():
    for spec in _elementwise_specs():
        kernel = spec.build()
        assert kernel.name == spec.name
        assert spec._kernel is None  # build() does not cache; the first call does
    for spec in _raw_specs():
        binding = {v: kernels.TYPE_CHOICES[v][0] for v in spec.types}
        assert spec.build(binding).name == spec.kernel_name(binding)
        assert not spec._kernels


# The references are what the GPU tests trust, so check them against PyTorch.


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_reference_softmax_cross_entropy_matches_torch(torch, rng):
    x = rng.standard_normal((7, 5)) * 3
    t = rng.integers(0, 5, size=7)
    xt = torch.tensor(x, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(xt, torch.tensor(t))
    (loss * 0.7).backward()
    want_loss, _ = ref_softmax_cross_entropy(x, t)
    np.testing.assert_allclose(want_loss, loss.item(), rtol=1e-12)
    np.testing.assert_allclose(ref_softmax_cross_entropy_backward(x, t, 0.7), xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ref_log_softmax(x), torch.log_softmax(torch.tensor(x), 1).numpy(), rtol=1e-12)


def test_reference_log_softmax_backward_matches_torch(torch, rng):
    x, gy = rng.standard_normal((2, 6, 4))
    xt = torch.tensor(x, requires_grad=True)
    y = torch.log_softmax(xt, 1)
    y.backward(torch.tensor(gy))
    got = ref_log_softmax_backward(y.detach().numpy(), gy)
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_reference_optimizers_match_torch(torch, rng, kind):
    p0 = rng.standard_normal((3, 4))
    grads = rng.standard_normal((3, 3, 4))
    pt = torch.tensor(p0.copy(), requires_grad=True)
    if kind == "momentum":
        opt = torch.optim.SGD([pt], lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam([pt], lr=0.01, betas=(0.8, 0.95), eps=1e-6)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for step, g in enumerate(grads, start=1):
        pt.grad = torch.tensor(g)
        opt.step()
        if kind == "momentum":
            p, v = ref_momentum(p, g, v, 0.1, 0.9)
        else:
            p, m, v = ref_adam(p, g, m, v, 0.01, 0.8, 0.95, 1e-6, step)
    np.testing.assert_allclose(p, pt.detach().numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# On a GPU: each kernel against its reference


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("layout", ["c", "T", "strided"])
def test_relu_backward(gpu_xp, rng, dtype, layout):
    x = rng.standard_normal((9, 6)).astype(dtype)
    x[0, :3] = 0  # the subgradient at 0 is 0
    gy = rng.standard_normal((9, 6)).astype(dtype)
    (x_gpu,), (gy_gpu,) = move(gpu_xp, x, layout=layout), move(gpu_xp, gy)
    got = kernels.relu_backward(x_gpu, gy_gpu)
    assert got.shape == x.shape
    _assert_close(got, ref_relu_backward(x.astype(np.float64), gy), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N, C, scale, layout", ROW_CASES)
def test_log_softmax_forward(gpu_xp, rng, dtype, N, C, scale, layout):
    x = _logits(rng, N, C, scale, dtype)
    got = kernels.log_softmax_forward(*move(gpu_xp, x, layout=layout))
    _assert_close(got, ref_log_softmax(x.astype(np.float64)), dtype, scale)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N, C, scale, layout", ROW_CASES)
def test_log_softmax_backward(gpu_xp, rng, dtype, N, C, scale, layout):
    y = ref_log_softmax(_logits(rng, N, C, scale, np.float64)).astype(dtype)
    gy = rng.standard_normal((N, C)).astype(dtype)
    got = kernels.log_softmax_backward(*move(gpu_xp, y, gy, layout=layout))
    _assert_close(got, ref_log_softmax_backward(y.astype(np.float64), gy), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N, C, scale, layout", ROW_CASES)
def test_softmax_cross_entropy(gpu_xp, rng, dtype, label_dtype, N, C, scale, layout):
    x = _logits(rng, N, C, scale, dtype)
    t = rng.integers(0, C, size=N).astype(label_dtype)
    (x_gpu,) = move(gpu_xp, x, layout=layout)
    (t_gpu,) = move(gpu_xp, t, layout="strided" if layout == "strided" else "c")
    loss, lse = kernels.softmax_cross_entropy_forward(x_gpu, t_gpu)
    want_loss, want_lse = ref_softmax_cross_entropy(x.astype(np.float64), t)
    assert loss.shape == () and lse.shape == (N,)
    _assert_close(loss, want_loss, dtype, scale)
    _assert_close(lse, want_lse, dtype, scale)

    gloss = gpu_xp.asarray(np.float64(0.7)).astype(dtype)
    gx = kernels.softmax_cross_entropy_backward(x_gpu, t_gpu, lse, gloss)
    assert gx.shape == (N, C)
    _assert_close(gx, ref_softmax_cross_entropy_backward(x.astype(np.float64), t, 0.7), dtype, scale)


@pytest.mark.gpu
def test_softmax_cross_entropy_backward_keeps_dtype_of_logits(gpu_xp, rng):
    x = _logits(rng, 4, 3, 1.0, np.float32)
    t = np.array([0, 2, 1, 2])
    x_gpu, t_gpu = gpu_xp.asarray(x), gpu_xp.asarray(t)
    _, lse = kernels.softmax_cross_entropy_forward(x_gpu, t_gpu)
    gx = kernels.softmax_cross_entropy_backward(x_gpu, t_gpu, lse, gpu_xp.asarray(1.0))  # float64 gloss
    _assert_close(gx, ref_softmax_cross_entropy_backward(x.astype(np.float64), t, 1.0), np.float32)


@pytest.mark.gpu
def test_out_of_range_label_gives_nan_loss(gpu_xp):
    x = gpu_xp.zeros((2, 3), dtype=np.float32)
    loss, _ = kernels.softmax_cross_entropy_forward(x, gpu_xp.asarray([0, 3]))
    assert np.isnan(float(loss))


@pytest.mark.gpu
@pytest.mark.parametrize("C", [10, 40])
def test_a_nan_logit_spoils_only_its_own_row(gpu_xp, rng, C):
    """Row maxima and sums stay inside a row, for narrow (C = 10) and wide (C = 40) rows alike."""
    x = rng.standard_normal((7, C)).astype(np.float32)
    x[3, C // 2] = np.nan
    t = rng.integers(0, C, size=7)
    y = gpu_xp.asnumpy(kernels.log_softmax_forward(gpu_xp.asarray(x)))
    assert np.isnan(y[3]).all()
    rest = np.delete(np.arange(7), 3)
    _assert_close(y[rest], ref_log_softmax(x[rest].astype(np.float64)), np.float32)
    _, lse = kernels.softmax_cross_entropy_forward(gpu_xp.asarray(x), gpu_xp.asarray(t))
    lse = gpu_xp.asnumpy(lse)
    assert np.isnan(lse[3]) and np.isfinite(lse[rest]).all()


# ---------------------------------------------------------------------------
# On a GPU: the optimizer updates against the references and their generic twins

SCHEDULE = np.array([0.05, 1.0, 0.5, 0.25])  # a base rate and three factors
UPDATE_KINDS = ["sgd", "momentum", "adam"]


def _lr(step: int) -> float:
    """The learning rate of update number ``step + 1`` under SCHEDULE."""
    return SCHEDULE[0] * SCHEDULE[1 + min(step, len(SCHEDULE) - 2)]


def _update_state(rng, kind, shape, dtype):
    """Host param, grad and optimizer state (velocity, or Adam's m and v at 0, as an optimizer starts)."""
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in range({"sgd": 2, "momentum": 3, "adam": 4}[kind])]
    if kind == "adam":
        arrays[2][...], arrays[3][...] = 0, 0
        arrays[1].reshape(-1)[0] = 0  # a zero gradient: the update is 0, not 0/0
    return arrays


def _update(module, kind, arrays, schedule, step, advance=True):
    if kind == "sgd":
        module.sgd_update(*arrays, schedule, step, advance=advance)
    elif kind == "momentum":
        module.momentum_update(*arrays, schedule, step, 0.9, advance=advance)
    else:
        module.adam_update(*arrays, schedule, step, 0.9, 0.999, 1e-8, advance=advance)


def _reference_update(kind, arrays, step, dtype):
    """Update number ``step + 1`` of float64 host ``arrays``, with the numbers a kernel of ``dtype`` sees."""
    lr = _scalar(dtype, _lr(step))
    if kind == "sgd":
        return [ref_sgd(arrays[0], arrays[1], lr), arrays[1]]
    if kind == "momentum":
        p, v = ref_momentum(arrays[0], arrays[1], arrays[2], lr, _scalar(dtype, 0.9))
        return [p, arrays[1], v]
    p, m, v = ref_adam(*arrays, lr, _scalar(dtype, 0.9), _scalar(dtype, 0.999), _scalar(dtype, 1e-8), step + 1)
    return [p, arrays[1], m, v]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", UPDATE_KINDS)
@pytest.mark.parametrize("shape", [(1,), (5,), (3, 4), (4097,), (4 * kernels.THREADS * kernels.MAX_BLOCKS + 5,)],
                         ids=["1", "5", "3x4", "4097", "past-MAX_BLOCKS"])
def test_updates_match_the_references_and_the_generic_twins(gpu_xp, rng, dtype, kind, shape):
    """Five updates in a row, the last two past the schedule's three factors; the step counter advances."""
    host = _update_state(rng, kind, shape, dtype)
    fused, twin = [gpu_xp.asarray(a) for a in host], [gpu_xp.asarray(a) for a in host]
    want = [a.astype(np.float64) for a in host]
    schedule = gpu_xp.asarray(SCHEDULE)
    step, twin_step = gpu_xp.zeros((), np.int64), gpu_xp.zeros((), np.int64)
    for s in range(5):
        _update(kernels, kind, fused, schedule, step)
        _update(generic, kind, twin, schedule, twin_step)
        want = _reference_update(kind, want, s, dtype)
    assert int(step) == int(twin_step) == 5
    for got, other, ref in zip(fused, twin, want):
        _assert_close(got, backend.to_numpy(other), dtype)
        _assert_close(got, ref, dtype)
    assert int(kernels._ticket()[0]) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("kind", UPDATE_KINDS)
def test_updates_without_advance_share_one_step(gpu_xp, rng, kind):
    """The per-parameter path: the layers of a 784-100-10 MLP, only the last update advancing the counter."""
    params = [_update_state(rng, kind, shape, np.float32) for shape in [(784, 100), (100,), (100, 10), (10,)]]
    fused = [[gpu_xp.asarray(a) for a in arrays] for arrays in params]
    step = gpu_xp.asarray(2, np.int64)
    for k, arrays in enumerate(fused):
        _update(kernels, kind, arrays, gpu_xp.asarray(SCHEDULE), step, advance=k == len(fused) - 1)
    assert int(step) == 3
    for arrays, host in zip(fused, params):
        for got, ref in zip(arrays, _reference_update(kind, [a.astype(np.float64) for a in host], 2, np.float32)):
            _assert_close(got, ref, np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["T", "strided"])
def test_updates_refuse_arrays_that_are_not_contiguous(gpu_xp, rng, layout):
    p, g = move(gpu_xp, *rng.standard_normal((2, 6, 4)), layout=layout)
    step = gpu_xp.zeros((), np.int64)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.sgd_update(p, g, gpu_xp.asarray(SCHEDULE), step)
    assert int(step) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 3, 4, 5, 4097])
def test_flat_kernels_cover_every_element(gpu_xp, rng, n):
    """Sizes that do and do not divide into four (the SGD kernel splits a contiguous array in four)."""
    x, gy, p, g = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    gy_gpu = gpu_xp.asarray(gy)
    got = kernels.relu_backward(gpu_xp.asarray(x), gy_gpu, out=gy_gpu)  # in place, as the model calls it
    assert got is gy_gpu
    _assert_close(got, ref_relu_backward(x.astype(np.float64), gy), np.float32)
    p_gpu = gpu_xp.asarray(p)
    kernels.sgd_update(p_gpu, gpu_xp.asarray(g), gpu_xp.asarray([0.5, 1.0]), gpu_xp.zeros((), np.int64))
    _assert_close(p_gpu, ref_sgd(p.astype(np.float64), g, 0.5), np.float32)


# ---------------------------------------------------------------------------
# On a GPU: the training step's kernels against their generic twins


def _on_gpu_both_ways(gpu_xp, fn_name, make_args):
    """Run ``fn_name`` of kernels and of generic on fresh device copies of the same arguments;
    returns both argument lists afterwards, on the host."""
    results = []
    for module in (kernels, generic):
        args = [gpu_xp.array(a) if isinstance(a, np.ndarray) else a for a in make_args()]
        getattr(module, fn_name)(*args)
        results.append([backend.to_numpy(a) if isinstance(a, gpu_xp.ndarray) else a for a in args])
    return results


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
def test_gather_batch_and_bias_relu(gpu_xp, rng, dtype):
    x = rng.standard_normal((50, 7)).astype(dtype)
    t = rng.integers(0, 10, size=50).astype(np.int32)
    order = rng.permutation(50).astype(np.int64)
    for step, rows in [(0, 16), (3, 2)]:
        fused, generic_ = _on_gpu_both_ways(gpu_xp, "gather_batch", lambda: [
            x, t, order, np.asarray(step, np.int64), 16, np.zeros((rows, 7), dtype), np.zeros(rows, np.int32)])
        np.testing.assert_array_equal(fused[5], x[order[16 * step:16 * step + rows]])
        np.testing.assert_array_equal(fused[6], generic_[6])
        assert fused[3] == generic_[3] == step + 1
    h, b = rng.standard_normal((40, 300)).astype(dtype), rng.standard_normal(300).astype(dtype)
    fused, generic_ = _on_gpu_both_ways(gpu_xp, "bias_relu_forward", lambda: [h, b])
    np.testing.assert_array_equal(fused[0], generic_[0])


@pytest.mark.gpu
@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N, C", [(128, 100), (128, 1024), (37, 300), (1000, 10), (60_000, 100), (0, 5)])
def test_bias_relu_backward(gpu_xp, rng, dtype, N, C, given):
    """gx exactly as the generic twin's (NaN and inf in gy included), gb within tolerance of the generic
    twin's and of a float64 sum, the same bits on a second run, and gy untouched."""
    y = np.maximum(rng.standard_normal((N, C)), 0).astype(dtype)
    gy = rng.standard_normal((N, C)).astype(dtype)
    if N:
        y[0, :3], gy[0, :3] = [0, 0, 1], [np.nan, np.inf, np.nan]  # NaN * 0, inf * 0, NaN * 1: all NaN
    y_gpu, gy_gpu = gpu_xp.asarray(y), gpu_xp.asarray(gy)
    out = (gpu_xp.full((N, C), 7, dtype), gpu_xp.full(C, 7, dtype)) if given else (None, None)
    gx, gb = kernels.bias_relu_backward(y_gpu, gy_gpu, *out)
    if given:
        assert gx is out[0] and gb is out[1]
    want_gx, want_gb = generic.bias_relu_backward(y_gpu, gy_gpu)
    np.testing.assert_array_equal(backend.to_numpy(gx), backend.to_numpy(want_gx))
    np.testing.assert_array_equal(backend.to_numpy(gy_gpu), gy)
    with np.errstate(invalid="ignore"):
        ref = (gy.astype(np.float64) * (y > 0)).sum(axis=0)
    scale = 3 * np.sqrt(max(N, 1))
    _assert_close(gb, ref, dtype, scale)
    _assert_close(gb, backend.to_numpy(want_gb), dtype, scale)
    again = kernels.bias_relu_backward(y_gpu, gy_gpu)[1]
    assert backend.to_numpy(again).tobytes() == backend.to_numpy(gb).tobytes()
    assert int(kernels._ticket()[0]) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N, C", [(1, 10), (128, 10), (600, 10), (37, 300)])
def test_softmax_cross_entropy_step(gpu_xp, rng, dtype, N, C):
    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
    t = rng.integers(0, C, size=N).astype(np.int32)
    cp = gpu_xp
    results = {}
    for name, module in (("kernels", kernels), ("generic", generic)):
        zd, td = cp.array(z), cp.array(t)
        gz = cp.empty_like(zd)
        sums = [cp.zeros((), dtype), cp.zeros((), dtype), cp.zeros((), np.int64)]  # loss, loss_sum, correct
        work = module.softmax_cross_entropy_step_work(zd)
        for _ in range(2):
            module.softmax_cross_entropy_step(zd, td, gz, *sums, work=work)
        results[name] = [backend.to_numpy(gz)] + [backend.to_numpy(s) for s in sums]
    fused, generic_ = results["kernels"], results["generic"]
    want_loss, _ = ref_softmax_cross_entropy(z.astype(np.float64), t)
    _assert_close(fused[0], generic_[0], dtype)
    _assert_close(fused[0], ref_softmax_cross_entropy_backward(z.astype(np.float64), t, 1.0), dtype)
    _assert_close(fused[1], want_loss, dtype, 3)
    np.testing.assert_allclose(fused[2], generic_[2], rtol=tolerances(dtype)[0])
    np.testing.assert_allclose(fused[2], 2 * N * want_loss, rtol=tolerances(dtype)[0])
    assert fused[3] == generic_[3] == 2 * int((z.argmax(axis=1) == t).sum())


@pytest.mark.gpu
@pytest.mark.parametrize("kind", UPDATE_KINDS)
def test_a_recorded_step_replays_with_its_counters_in_device_memory(gpu_xp, rng, kind):
    """A gather, bias + ReLU backward and an update recorded once as a CUDA graph: each replay takes the next
    batch and the next learning rate, as the generic twins do step by step."""
    cp = gpu_xp
    x, gy = rng.standard_normal((64, 30)).astype(np.float32), rng.standard_normal((16, 30)).astype(np.float32)
    data = [cp.asarray(x), cp.asarray(rng.integers(0, 10, size=64).astype(np.int32)),
            cp.asarray(rng.permutation(64).astype(np.int64))]
    host = _update_state(rng, kind, (30,), np.float32)

    def state():
        return {"params": [cp.asarray(a) for a in host], "batch": cp.zeros((), np.int64),
                "step": cp.zeros((), np.int64), "x": cp.empty((16, 30), np.float32),
                "t": cp.empty(16, np.int32), "gx": cp.empty((16, 30), np.float32)}

    def training_step(module, s):
        module.gather_batch(*data, s["batch"], 16, s["x"], s["t"])
        _, gb = module.bias_relu_backward(s["x"], cp.asarray(gy) if module is generic else gy_gpu, s["gx"],
                                          s["params"][1])
        _update(module, kind, s["params"], schedule, s["step"])

    schedule, gy_gpu = cp.asarray(SCHEDULE), cp.asarray(gy)
    fused, twin = state(), state()
    stream, kept = backend.capture_stream(), []
    with stream:
        training_step(kernels, fused)  # compiles and allocates the kernels' scratch, then step 1 is recorded
    graph = backend.capture_graph(lambda: training_step(kernels, fused), stream, keep=kept)
    for _ in range(3):
        graph.launch(stream)
    stream.synchronize()
    for _ in range(4):
        training_step(generic, twin)
    assert int(fused["batch"]) == int(fused["step"]) == int(twin["step"]) == 4
    for got, want in zip(fused["params"], twin["params"]):
        _assert_close(got, backend.to_numpy(want), np.float32)
    with stream:
        assert int(kernels._ticket()[0]) == 0


@pytest.mark.gpu
def test_cross_block_sums_leave_their_ticket_at_zero(gpu_xp, rng):
    x = gpu_xp.asarray(rng.standard_normal((450_000, 10)).astype(np.float32))
    t = gpu_xp.asarray(rng.integers(0, 10, size=450_000).astype(np.int32))
    for _ in range(3):
        loss, _ = kernels.softmax_cross_entropy_forward(x, t)
    np.testing.assert_allclose(float(loss), float(ref_softmax_cross_entropy(
        backend.to_numpy(x).astype(np.float64), backend.to_numpy(t))[0]), rtol=1e-5)
    assert int(kernels._ticket()[0]) == 0
