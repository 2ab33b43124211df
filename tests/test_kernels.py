"""Fused kernels against NumPy reference formulas (GPU), and what can be checked without one.

Inputs are made once on the host with ``rng`` and moved with ``cupy.asarray``;
the references below are computed in float64 and compared with per-dtype
tolerances. The references themselves are checked against PyTorch on the CPU.
"""

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


def test_public_functions_have_docstrings():
    for name in (
        "relu_backward", "log_softmax_forward", "log_softmax_backward", "softmax_cross_entropy_forward",
        "softmax_cross_entropy_backward", "sgd_update", "momentum_update", "adam_update",
    ):
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


def _optimizer_arrays(xp, rng, dtype, layout, count):
    """``count`` (3, 4) host arrays and their GPU copies; GPU copies use ``layout``."""
    host = [rng.standard_normal((3, 4)).astype(dtype) for _ in range(count)]
    return host, list(move(xp, *host, layout=layout))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("layout", ["c", "T", "strided"])
def test_sgd_update(gpu_xp, rng, dtype, layout):
    (p, g), (p_gpu, g_gpu) = _optimizer_arrays(gpu_xp, rng, dtype, layout, 2)
    kernels.sgd_update(p_gpu, g_gpu, 0.1)
    _assert_close(p_gpu, ref_sgd(p.astype(np.float64), g, _scalar(dtype, 0.1)), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("layout", ["c", "T", "strided"])
def test_momentum_update(gpu_xp, rng, dtype, layout):
    (p, g, v), (p_gpu, g_gpu, v_gpu) = _optimizer_arrays(gpu_xp, rng, dtype, layout, 3)
    want_p, want_v = p.astype(np.float64), v.astype(np.float64)
    for _ in range(3):
        kernels.momentum_update(p_gpu, g_gpu, v_gpu, 0.1, 0.9)
        want_p, want_v = ref_momentum(want_p, g, want_v, _scalar(dtype, 0.1), _scalar(dtype, 0.9))
    _assert_close(p_gpu, want_p, dtype)
    _assert_close(v_gpu, want_v, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("layout", ["c", "T", "strided"])
def test_adam_update(gpu_xp, rng, dtype, layout):
    (p, g), (p_gpu, g_gpu) = _optimizer_arrays(gpu_xp, rng, dtype, layout, 2)
    g[0, 0] = 0  # a zero gradient: the update is 0, not 0/0
    g_gpu[0, 0] = 0
    m_gpu, v_gpu = gpu_xp.zeros_like(p_gpu), gpu_xp.zeros_like(p_gpu)
    want_p, want_m, want_v = p.astype(np.float64), np.zeros((3, 4)), np.zeros((3, 4))
    beta1, beta2, eps = _scalar(dtype, 0.9), _scalar(dtype, 0.999), _scalar(dtype, 1e-8)
    for step in range(1, 4):
        kernels.adam_update(p_gpu, g_gpu, m_gpu, v_gpu, 1e-2, 0.9, 0.999, 1e-8, step)
        want_p, want_m, want_v = ref_adam(want_p, g, want_m, want_v, 1e-2, beta1, beta2, eps, step)
    _assert_close(p_gpu, want_p, dtype)
    _assert_close(m_gpu, want_m, dtype)
    _assert_close(v_gpu, want_v, dtype)


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
    kernels.sgd_update(p_gpu, gpu_xp.asarray(g), 0.5)
    _assert_close(p_gpu, ref_sgd(p.astype(np.float64), g, 0.5), np.float32)


# ---------------------------------------------------------------------------
# On a GPU: the device-resident step's kernels against their generic twins


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
    h, b = rng.standard_normal((40, 300)).astype(dtype), rng.standard_normal(300).astype(dtype)
    fused, generic_ = _on_gpu_both_ways(gpu_xp, "bias_relu_forward", lambda: [h, b])
    np.testing.assert_array_equal(fused[0], generic_[0])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("N, C", [(1, 10), (128, 10), (600, 10), (37, 300)])
def test_softmax_cross_entropy_step(gpu_xp, rng, dtype, N, C):
    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    t = rng.integers(0, C, size=N).astype(np.int32)
    cp = gpu_xp
    counters = {}
    for name, module in (("kernels", kernels), ("generic", generic)):
        zd, bd, td = cp.array(z), cp.array(b), cp.array(t)
        gz, sums = cp.empty_like(zd), [cp.zeros((), dtype), cp.zeros((), np.int64), cp.zeros((), np.int64)]
        work = module.softmax_cross_entropy_step_work(zd)
        for _ in range(2):
            module.softmax_cross_entropy_step(cp.array(z), bd, td, gz, *sums, work=work)
        counters[name] = [backend.to_numpy(gz)] + [backend.to_numpy(s) for s in sums]
    fused, generic_ = counters["kernels"], counters["generic"]
    _assert_close(fused[0], generic_[0], dtype)
    np.testing.assert_allclose(fused[1], generic_[1], rtol=tolerances(dtype)[0])
    assert fused[2] == generic_[2] and fused[3] == generic_[3] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_optimizer_steps_read_the_schedule(gpu_xp, rng, dtype, kind):
    """Row 3 of a schedule gives what the *_update kernels compute from the same numbers given directly,
    and what the generic twins compute."""
    p, g, m, v = (rng.standard_normal(4097).astype(dtype) for _ in range(4))
    v = np.abs(v)
    schedule = np.array([[0.1, 0.5, 0.25], [0.2, 0.4, 0.3], [0.05, 1 - 0.9**7, 1 - 0.999**7]])
    cp = gpu_xp
    a, c, d = ([cp.array(x) for x in (p, g, m, v)] for _ in range(3))
    step = cp.asarray(3, dtype=np.int64)
    for module, arrays in ((kernels, a), (generic, d)):  # fused, and its generic twin
        if kind == "sgd":
            module.sgd_step(arrays[0], arrays[1], cp.asarray(schedule), step)
        elif kind == "momentum":
            module.momentum_step(arrays[0], arrays[1], arrays[2], cp.asarray(schedule), step, 0.9)
        else:
            module.adam_step(*arrays, cp.asarray(schedule), step, 0.9, 0.999, 1e-8)
    if kind == "sgd":
        kernels.sgd_update(c[0], c[1], 0.05)
    elif kind == "momentum":
        kernels.momentum_update(c[0], c[1], c[2], 0.05, 0.9)
    else:
        kernels.adam_update(*c, 0.05, 0.9, 0.999, 1e-8, 7)
    for got, updated, twin in zip(a, c, d):
        _assert_close(got, backend.to_numpy(updated), dtype)
        _assert_close(got, backend.to_numpy(twin), dtype)


@pytest.mark.gpu
def test_cross_block_sums_leave_their_ticket_at_zero(gpu_xp, rng):
    x = gpu_xp.asarray(rng.standard_normal((450_000, 10)).astype(np.float32))
    t = gpu_xp.asarray(rng.integers(0, 10, size=450_000).astype(np.int32))
    for _ in range(3):
        loss, _ = kernels.softmax_cross_entropy_forward(x, t)
    np.testing.assert_allclose(float(loss), float(ref_softmax_cross_entropy(
        backend.to_numpy(x).astype(np.float64), backend.to_numpy(t))[0]), rtol=1e-5)
    assert int(kernels._ticket()[0]) == 0
