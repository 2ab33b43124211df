"""The raw CUDA kernels, run on the CPU (tests/cuda_emulator.py), against their generic twins.

``xpgrad.kernels``' own functions run here, on NumPy arrays: only the kernel
launches are emulated, so the wrappers' block counts, argument types and
layouts are checked along with the kernels' index arithmetic, tiling,
barriers and cross-block sums. Every case runs with the threads (and the
blocks) in both orders. What this cannot show is GPU behaviour proper:
speed, the memory model between blocks, and the GPU's exp/log rounding; the
gpu-marked tests in test_kernels.py and test_parity.py check those.
"""

import concurrent.futures
import itertools
import os
import shutil

import numpy as np
import pytest

from xpgrad import backend, generic, kernels

from . import cuda_emulator
from .helpers import tolerances

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH (the emulator needs it)")

RAW_SPECS = [s for s in kernels.KERNELS.values() if isinstance(s, kernels.RawKernelSpec)]
# Row widths: one, a few, the training case, past a warp, past a block of threads, up to a whole tile.
WIDTHS = [1, 3, 10, 33, 256, 257, 1000, kernels.TILE]


def _bindings(spec):
    for combo in itertools.product(*(kernels.TYPE_CHOICES[v] for v in spec.types)):
        yield dict(zip(spec.types, combo))


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """Every raw kernel for every binding, compiled once for the session (in parallel), by CUDA name."""
    build_dir = str(tmp_path_factory.mktemp("emulated-kernels"))
    jobs = [(spec.source(b), spec.kernel_name(b)) for spec in RAW_SPECS for b in _bindings(spec)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        built = pool.map(lambda job: cuda_emulator.EmulatedKernel(*job, build_dir), jobs)
        return {name: kernel for (_, name), kernel in zip(jobs, built)}


@pytest.fixture(params=["forward", "reverse"])
def emulated(request, compiled, monkeypatch):
    """xpgrad.kernels on NumPy arrays, its RawKernels emulated, threads and blocks run in the given order.

    Yields the ticket the cross-block sums use; it must be back at 0 after every launch.
    """
    monkeypatch.setattr(cuda_emulator.EmulatedKernel, "thread_order", request.param)
    monkeypatch.setattr(cuda_emulator.EmulatedKernel, "block_order", request.param)
    monkeypatch.setattr(backend, "raw_kernel", lambda code, name, options=(): compiled[name])
    for spec in RAW_SPECS:
        monkeypatch.setattr(spec, "_kernels", {})
    monkeypatch.setattr(backend, "cupy", np)
    ticket = np.zeros(1, dtype=np.uint32)
    monkeypatch.setattr(kernels, "_ticket", lambda: ticket)
    yield ticket
    assert ticket[0] == 0


def _close(got, want, dtype, scale=1.0):
    rtol, atol = tolerances(dtype)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, scale))


def _rows_for(C: int) -> int:
    """Enough rows for three full tiles and a partial one."""
    return 3 * min(kernels.THREADS, kernels.TILE // C) + 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", WIDTHS)
def test_row_kernels_match_the_generic_code(emulated, rng, monkeypatch, C, dtype):
    monkeypatch.setattr(kernels, "MAX_BLOCKS", 2)  # so that blocks also loop over several tiles
    N = _rows_for(C)
    x = (rng.standard_normal((N, C)) * 3).astype(dtype)
    gy = rng.standard_normal((N, C)).astype(dtype)
    t = rng.integers(0, C, size=N).astype(np.int32 if dtype == np.float32 else np.int64)
    y = kernels.log_softmax_forward(x)
    _close(y, generic.log_softmax_forward(x), dtype, 3)
    _close(kernels.log_softmax_backward(y, gy), generic.log_softmax_backward(y, gy), dtype)
    loss, lse = kernels.softmax_cross_entropy_forward(x, t)
    want_loss, cache = generic.softmax_cross_entropy_forward(x, t)
    _close(loss, want_loss, dtype, 3)
    _close(lse, generic.logsumexp(x)[:, 0], dtype, 3)
    gloss = np.asarray(0.7, dtype=dtype)
    _close(kernels.softmax_cross_entropy_backward(x, t, lse, gloss),
           generic.softmax_cross_entropy_backward(x, t, cache, gloss), dtype)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.uint8])
def test_row_kernels_take_views_and_any_integer_labels(emulated, rng, label_dtype):
    wide = (rng.standard_normal((300, 20)) * 1e4).astype(np.float32)  # huge logits, every other column
    x, t = wide[:, ::2], rng.integers(0, 10, size=300).astype(label_dtype)
    _close(kernels.log_softmax_forward(x), generic.log_softmax_forward(x), np.float32, 1e4)
    loss, lse = kernels.softmax_cross_entropy_forward(x, t)
    _close(loss, generic.softmax_cross_entropy_forward(x, t)[0], np.float32, 1e4)
    gx = kernels.softmax_cross_entropy_backward(x, t, lse)
    _close(gx, generic.softmax_cross_entropy_backward(x, t, generic.softmax_cross_entropy_forward(x, t)[1]),
           np.float32)


def test_a_nan_spoils_only_its_own_row(emulated, rng):
    x = rng.standard_normal((500, 10)).astype(np.float32)
    x[3, 4] = np.nan
    t = rng.integers(0, 10, size=500).astype(np.int32)
    y = kernels.log_softmax_forward(x)
    loss, lse = kernels.softmax_cross_entropy_forward(x, t)
    assert np.isnan(y[3]).all() and np.isnan(lse[3]) and np.isnan(loss)
    rest = np.delete(np.arange(500), 3)
    assert np.isfinite(y[rest]).all() and np.isfinite(lse[rest]).all()


def test_a_label_out_of_range_gives_a_nan_loss(emulated, rng):
    """The host checks labels for NumPy arrays, so launch the kernel directly, as it runs on a GPU."""
    x = rng.standard_normal((300, 10)).astype(np.float32)
    t = rng.integers(0, 10, size=300).astype(np.int64)
    t[7], t[250] = 10, -1
    lse, loss, partial = np.empty(300, np.float32), np.empty((), np.float32), np.empty(2, np.float64)
    kernels.tiled.xpgrad_softmax_xent_fwd_tiled.launch({"T": "float32", "S": "int64"}, 2, (
        x, t, lse, loss, partial, emulated, np.int64(300), np.int32(10)))
    assert np.isnan(loss) and np.isfinite(lse).all()
    gx = np.empty_like(x)
    kernels.tiled.xpgrad_softmax_xent_bwd_tiled.launch({"T": "float32", "S": "int64"}, 2, (
        x, lse, t, np.ones((), np.float32), gx, np.int64(300), np.int32(10)))
    softmax = np.exp(x - lse[:, None]) / 300
    np.testing.assert_allclose(gx[[7, 250]], softmax[[7, 250]], rtol=1e-5)  # no class is hit


def test_wrong_argument_types_are_refused(emulated):
    """The emulator holds the wrappers to the exact C types a GPU launch needs."""
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="must be a NumPy int32 scalar"):
        kernels.tiled.xpgrad_log_softmax_fwd_tiled.launch({"T": "float32"}, 1, (x, x.copy(), np.int64(4), 3))
    with pytest.raises(TypeError, match="must be a C-contiguous float32 array"):
        kernels.tiled.xpgrad_log_softmax_fwd_tiled.launch(
            {"T": "float32"}, 1, (x.astype(np.float64), x, np.int64(4), np.int32(3)))


# ---------------------------------------------------------------------------
# The training-step kernels


@pytest.mark.parametrize("dtype, label_dtype", [(np.float32, np.int32), (np.float64, np.int64)])
def test_gather_batch_takes_the_steps_rows(emulated, rng, dtype, label_dtype):
    x = rng.standard_normal((50, 7)).astype(dtype)
    t = rng.integers(0, 10, size=50).astype(label_dtype)
    order = rng.permutation(50).astype(np.int64)
    for step, rows in [(0, 16), (2, 16), (3, 2)]:  # batch size 16, the last batch partial
        out_x, out_t = np.full((rows, 7), np.nan, dtype), np.full(rows, -1, label_dtype)
        kernels.gather_batch(x, t, order, np.asarray(step), 16, out_x, out_t)
        want = order[16 * step:16 * step + rows]
        np.testing.assert_array_equal(out_x, x[want])
        np.testing.assert_array_equal(out_t, t[want])


@pytest.mark.parametrize("N, C", [(3000, 1), (40, 100), (40, 300), (5, kernels.TILE + 1)])
def test_bias_relu_matches_the_generic_code(emulated, rng, monkeypatch, N, C):
    monkeypatch.setattr(kernels, "MAX_BLOCKS", 2)
    h = rng.standard_normal((N, C)).astype(np.float32)
    h[0, 0] = np.nan
    b = rng.standard_normal(C).astype(np.float32)
    want = generic.bias_relu_forward(h.copy(), b)
    got = kernels.bias_relu_forward(h, b)
    assert got is h
    np.testing.assert_array_equal(got, want)  # one addition and a comparison: exact
    assert np.isnan(got[0, 0])


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("N, C, max_blocks", [(1, 10, 2048), (128, 10, 2048), (600, 10, 2), (37, 300, 2048)])
def test_cross_entropy_step_matches_the_generic_code(emulated, rng, monkeypatch, N, C, max_blocks, with_bias):
    monkeypatch.setattr(kernels, "MAX_BLOCKS", max_blocks)
    z = (rng.standard_normal((N, C)) * 3).astype(np.float32)
    z[0, 1] = z[0, 2] = z[0].max() + 1  # a tie: the first maximum counts
    b = rng.standard_normal(C).astype(np.float32) if with_bias else None
    t = rng.integers(0, C, size=N).astype(np.int32)
    t[0] = 1
    sums = [np.asarray(0.5, np.float32), np.asarray(3, np.int64), np.asarray(4, np.int64)]
    want = [s.copy() for s in sums]
    gz, want_gz = np.empty_like(z), np.empty_like(z)
    work = kernels.softmax_cross_entropy_step_work(z)
    for _ in range(2):  # the same scratch twice, as every step of an epoch uses it
        kernels.softmax_cross_entropy_step(z.copy(), b, t, gz, *sums, work=work)
        generic.softmax_cross_entropy_step(z.copy(), b, t, want_gz, *want)
        _close(gz, want_gz, np.float32)
    np.testing.assert_allclose(sums[0], want[0], rtol=1e-5)
    assert sums[1] == want[1] and sums[2] == want[2] == 6
    assert work[1][0] == 0  # the ticket is ready for the next step


def test_cross_entropy_step_counts_nan_rows_as_wrong_and_spoils_the_loss(emulated, rng):
    z = rng.standard_normal((300, 10)).astype(np.float32)
    z[5, 3] = np.nan
    t = rng.integers(0, 10, size=300).astype(np.int32)
    t[5] = 3
    loss_sum, correct, step = np.zeros((), np.float32), np.zeros((), np.int64), np.zeros((), np.int64)
    kernels.softmax_cross_entropy_step(z, None, t, np.empty_like(z), loss_sum, correct, step)
    assert np.isnan(loss_sum) and step == 1
    # NaN counts as the largest logit (as argmax has it), so row 5 predicts class 3
    assert correct == int((np.argmax(z, axis=1) == t).sum())
