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


def _emulate(monkeypatch, compiled, order: str):
    """xpgrad.kernels on NumPy arrays from here on, its RawKernels emulated, threads and blocks run in ``order``.
    Returns the ticket the cross-block kernels use."""
    monkeypatch.setattr(cuda_emulator.EmulatedKernel, "thread_order", order)
    monkeypatch.setattr(cuda_emulator.EmulatedKernel, "block_order", order)
    monkeypatch.setattr(backend, "raw_kernel", lambda code, name, options=(): compiled[name])
    for spec in RAW_SPECS:
        monkeypatch.setattr(spec, "_kernels", {})
    monkeypatch.setattr(backend, "cupy", np)
    ticket = np.zeros(1, dtype=np.uint32)
    monkeypatch.setattr(kernels, "_ticket", lambda: ticket)
    monkeypatch.setattr(kernels, "_stream", lambda: ("emulated", 0))
    monkeypatch.setattr(kernels, "_partials", {})
    return ticket


@pytest.fixture(params=["forward", "reverse"])
def emulated(request, compiled, monkeypatch):
    """xpgrad.kernels on NumPy arrays, its RawKernels emulated, threads and blocks run in the given order.

    Yields the ticket the cross-block sums use; it must be back at 0 after every launch.
    """
    ticket = _emulate(monkeypatch, compiled, request.param)
    yield ticket
    assert ticket[0] == 0


@pytest.fixture
def launches(emulated, monkeypatch):
    """The names of the raw kernels launched, in order (they still run)."""
    names = []
    launch = kernels.RawKernelSpec.launch

    def counted(spec, *args):
        names.append(spec.name)
        return launch(spec, *args)

    monkeypatch.setattr(kernels.RawKernelSpec, "launch", counted)
    return names


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
def test_gather_batch_takes_the_steps_rows_and_counts_the_step(emulated, launches, rng, monkeypatch, dtype,
                                                               label_dtype):
    """The batch's uint8 images, normalized as the run's inputs: ``x * multiplier - offset`` in the dtype."""
    monkeypatch.setattr(kernels, "MAX_BLOCKS", 3)  # blocks loop over the rows
    x = rng.integers(0, 256, size=(50, 7)).astype(np.uint8)
    t = rng.integers(0, 10, size=50).astype(label_dtype)
    order = rng.permutation(50).astype(np.int64)
    step = np.zeros((), np.int64)
    multiplier, offset = np.dtype(dtype).type(1 / (255 * 0.35)), np.dtype(dtype).type(0.28 / 0.35)
    for rows in (16, 16, 16, 2, 0):  # batch size 16, the last batch partial, then an empty one
        first = int(step) * 16
        out_x, out_t = np.full((rows, 7), np.nan, dtype), np.full(rows, -1, label_dtype)
        want_x, want_t, want_step = np.empty_like(out_x), np.empty_like(out_t), step.copy()
        generic.gather_batch(x, t, order, want_step, 16, want_x, want_t, multiplier, offset)
        kernels.gather_batch(x, t, order, step, 16, out_x, out_t, multiplier, offset)
        expected = x[order[first:first + rows]].astype(dtype) * multiplier - offset
        np.testing.assert_array_equal(want_x, expected)
        np.testing.assert_array_equal(out_x, want_x)  # two roundings each, as the generic code's
        np.testing.assert_array_equal(out_t, want_t)
        assert step == want_step == first // 16 + 1
    assert launches == ["xpgrad_gather_batch"] * 5
    with pytest.raises(TypeError, match="gather_batch reads uint8 images, got float32"):
        kernels.gather_batch(x.astype(np.float32), t, order, step, 16, out_x, out_t, multiplier, offset)


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


def _bias_relu_backward_inputs(rng, N, C, dtype):
    """y with zeros, NaN and negatives; gy with NaN and infinities where y > 0 and where not."""
    y = np.maximum(rng.standard_normal((N, C)), 0).astype(dtype)
    gy = rng.standard_normal((N, C)).astype(dtype)
    if N * C >= 8:
        y.reshape(-1)[:4] = [1.0, -0.0, 2.0, 0.0]
        gy.reshape(-1)[:4] = [np.nan, np.nan, np.inf, -np.inf]  # NaN, NaN * 0, inf, -inf * 0
        y.reshape(-1)[-1] = np.nan  # NaN > 0 is false: this gy is masked
    return y, gy


# Training batches (lanes of whole rows for C = 100, column tiles for C = 1024), ragged tails, narrow rows
# (25 lanes), wide rows (two tiles of 150 columns), one column, no rows, and enough rows to cap the row groups.
BIAS_BACKWARD_SHAPES = [(128, 100), (128, 1024), (37, 300), (1000, 10), (333, 1), (0, 7), (20_000, 100)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, C", BIAS_BACKWARD_SHAPES)
@pytest.mark.parametrize("given", [False, True])
def test_bias_relu_backward_matches_the_generic_code(emulated, launches, rng, N, C, dtype, given):
    y, gy = _bias_relu_backward_inputs(rng, N, C, dtype)
    gy_before = gy.copy()
    out = (np.full((N, C), 7, dtype), np.full(C, 7, dtype)) if given else (None, None)
    gx, gb = kernels.bias_relu_backward(y, gy, *out)
    if given:
        assert gx is out[0] and gb is out[1]
    with np.errstate(invalid="ignore"):  # inf * 0
        want_gx, _ = generic.bias_relu_backward(y, gy)
        # The sums against the generic twin in float64, within the dtype's tolerance (NaN columns alike).
        _, want_gb = generic.bias_relu_backward(y.astype(np.float64), gy.astype(np.float64))
    np.testing.assert_array_equal(gx, want_gx)  # a multiply by 0 or 1: exact, NaN where generic has NaN
    np.testing.assert_array_equal(gy, gy_before)
    _close(gb, want_gb, dtype, np.sqrt(N) * 3)
    assert gb.shape == (C,) and launches == ["xpgrad_bias_relu_bwd"]
    if N * C >= 8:
        assert np.isnan(gx.reshape(-1)[:2]).all() and np.isnan(gb[:2]).all() and gx.reshape(-1)[-1] == 0


@pytest.mark.parametrize("N, C, max_blocks", [(128, 100, 3), (5000, 10, 2), (300, 700, 2)])
def test_bias_relu_backward_sums_in_a_fixed_order(compiled, rng, monkeypatch, N, C, max_blocks):
    """The same bits whichever order the threads and blocks run in (a grid smaller than its units too)."""
    monkeypatch.setattr(kernels, "MAX_BLOCKS", max_blocks)
    y, gy = (rng.standard_normal((N, C)) * 100).astype(np.float32), rng.standard_normal((N, C)).astype(np.float32)
    results = []
    for order in ("forward", "reverse", "forward"):
        with monkeypatch.context() as m:
            ticket = _emulate(m, compiled, order)
            results.append(kernels.bias_relu_backward(y, gy)[1])
            assert ticket[0] == 0
    assert results[0].tobytes() == results[1].tobytes() == results[2].tobytes()


def test_bias_relu_backward_may_write_over_gy(emulated, rng):
    y, gy = rng.standard_normal((64, 30)).astype(np.float32), rng.standard_normal((64, 30)).astype(np.float32)
    want_gx, want_gb = generic.bias_relu_backward(y, gy)
    gx, gb = kernels.bias_relu_backward(y, gy, gx=gy)
    assert gx is gy
    np.testing.assert_array_equal(gx, want_gx)
    _close(gb, want_gb, np.float32)


@pytest.mark.parametrize("N, C, max_blocks", [(1, 10, 2048), (128, 10, 2048), (600, 10, 2), (37, 300, 2048)])
@pytest.mark.parametrize("dtype, label_dtype", [(np.float32, np.int32), (np.float64, np.int64)])
def test_cross_entropy_step_matches_the_generic_code(emulated, launches, rng, monkeypatch, N, C, max_blocks, dtype,
                                                     label_dtype):
    monkeypatch.setattr(kernels, "MAX_BLOCKS", max_blocks)
    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
    z[0, 1] = z[0, 2] = z[0].max() + 1  # a tie: the first maximum counts
    t = rng.integers(0, C, size=N).astype(label_dtype)
    t[0] = 1
    sums = [np.asarray(9.0, dtype), np.asarray(0.5, dtype), np.asarray(3, np.int64)]  # loss, loss_sum, correct
    want = [s.copy() for s in sums]
    gz, want_gz = np.empty_like(z), np.empty_like(z)
    work = kernels.softmax_cross_entropy_step_work(z)
    for _ in range(2):  # the same scratch twice, as every step of an epoch uses it
        kernels.softmax_cross_entropy_step(z, t, gz, *sums, work=work)
        generic.softmax_cross_entropy_step(z, t, want_gz, *want)
        _close(gz, want_gz, dtype)
        _close(sums[0], want[0], dtype, 3)
    _close(sums[1], want[1], dtype, 3 * N)
    assert sums[2] == want[2] and (want[2] - 3) % 2 == 0 and want[2] >= 5
    assert work[1][0] == 0  # the ticket is ready for the next step
    assert launches == ["xpgrad_softmax_xent_step"] * 2


def test_cross_entropy_step_counts_nan_rows_as_wrong_and_spoils_the_loss(emulated, rng):
    z = rng.standard_normal((300, 10)).astype(np.float32)
    z[5, 3] = np.nan
    t = rng.integers(0, 10, size=300).astype(np.int32)
    t[5] = 3
    loss, loss_sum, correct = np.zeros((), np.float32), np.zeros((), np.float32), np.zeros((), np.int64)
    kernels.softmax_cross_entropy_step(z, t, np.empty_like(z), loss, loss_sum, correct)
    assert np.isnan(loss) and np.isnan(loss_sum)
    # NaN counts as the largest logit (as argmax has it), so row 5 predicts class 3
    assert correct == int((np.argmax(z, axis=1) == t).sum())


# ---------------------------------------------------------------------------
# The optimizer updates

UPDATE_KINDS = ["sgd", "momentum", "adam"]


def _state(rng, kind, n, dtype):
    """param, grad and the optimizer's state arrays (velocity, or Adam's m and v), as flat arrays."""
    count = {"sgd": 2, "momentum": 3, "adam": 4}[kind]
    arrays = [rng.standard_normal(n).astype(dtype) for _ in range(count)]
    if kind == "adam":
        arrays[3] = np.abs(arrays[3])
    return arrays


def _update(module, kind, arrays, schedule, step, advance=True):
    """One update of ``kind`` through ``module`` (kernels or generic) on ``arrays`` from :func:`_state`."""
    if kind == "sgd":
        module.sgd_update(*arrays, schedule, step, advance=advance)
    elif kind == "momentum":
        module.momentum_update(*arrays, schedule, step, 0.9, advance=advance)
    else:
        module.adam_update(*arrays, schedule, step, 0.9, 0.999, 1e-8, advance=advance)


def _schedule(K=3):
    """A base rate and K factors."""
    return np.array([0.05, 1.0, 0.5, 0.25, 0.125][:1 + K])


# Sizes that do and do not divide into four, a block's worth, and enough for a grid of many blocks.
@pytest.mark.parametrize("n, max_blocks", [(1, 2048), (3, 2048), (5, 2048), (4 * 256, 2048), (3 * 4 * 256 + 7, 2),
                                           (10_000, 2048)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", UPDATE_KINDS)
def test_updates_match_the_generic_code_step_after_step(emulated, launches, rng, monkeypatch, kind, dtype, n,
                                                         max_blocks):
    """Five updates in a row on a schedule of three factors: the last two take the last factor."""
    monkeypatch.setattr(kernels, "MAX_BLOCKS", max_blocks)
    got = _state(rng, kind, n, dtype)
    want = [a.copy() for a in got]
    schedule, step, want_step = _schedule(), np.zeros((), np.int64), np.zeros((), np.int64)
    for s in range(5):
        _update(kernels, kind, got, schedule, step)
        _update(generic, kind, want, schedule, want_step)
        assert step == want_step == s + 1
        for a, b in zip(got, want):
            _close(a, b, dtype)
    assert launches == [f"xpgrad_{kind}_update"] * 5


@pytest.mark.parametrize("kind", UPDATE_KINDS)
def test_updates_without_advance_share_one_step(emulated, launches, rng, kind):
    """The per-parameter path: every parameter but the last leaves the counter, the last advances it,
    and all of them use the same learning rate."""
    params = [_state(rng, kind, n, np.float32) for n in (7, 300, 1)]
    want = [[a.copy() for a in arrays] for arrays in params]
    schedule, step, want_step = _schedule(), np.asarray(1, np.int64), np.asarray(1, np.int64)
    for k, (arrays, want_arrays) in enumerate(zip(params, want)):
        last = k == len(params) - 1
        _update(kernels, kind, arrays, schedule, step, advance=last)
        _update(generic, kind, want_arrays, schedule, want_step, advance=last)
        assert step == want_step == (2 if last else 1)
        for a, b in zip(arrays, want_arrays):
            _close(a, b, np.float32)
    assert launches == [f"xpgrad_{kind}_update"] * 3


@pytest.mark.parametrize("kind", UPDATE_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_past_the_schedule_keep_its_last_factor(emulated, rng, kind, dtype):
    for K, s in [(1, 0), (1, 5), (4, 3), (4, 4), (4, 10**12)]:
        got = _state(rng, kind, 9, dtype)
        want = [a.copy() for a in got]
        step, want_step = np.asarray(s, np.int64), np.asarray(s, np.int64)
        _update(kernels, kind, got, _schedule(K), step)
        _update(generic, kind, want, _schedule(K), want_step)
        assert step == want_step == s + 1
        for a, b in zip(got, want):
            _close(a, b, dtype)


@pytest.mark.parametrize("kind", UPDATE_KINDS)
def test_an_empty_parameter_still_advances_the_step(emulated, launches, kind):
    arrays = [np.zeros(0, np.float32) for _ in range({"sgd": 2, "momentum": 3, "adam": 4}[kind])]
    step = np.zeros((), np.int64)
    _update(kernels, kind, arrays, _schedule(), step)
    assert step == 1 and launches == [f"xpgrad_{kind}_update"]


def test_updates_take_two_dimensional_contiguous_parameters(emulated, rng):
    p, g = rng.standard_normal((2, 3, 40)).astype(np.float32)
    want = p.copy()
    kernels.sgd_update(p, g, _schedule(), np.zeros((), np.int64))
    generic.sgd_update(want, g, _schedule(), np.zeros((), np.int64))
    _close(p, want, np.float32)


def test_updates_refuse_what_the_kernels_cannot_read(emulated, rng):
    p, g = rng.standard_normal((2, 8, 6)).astype(np.float32)
    step = np.zeros((), np.int64)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.sgd_update(p[:, ::2], g[:, ::2], _schedule(), step)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.momentum_update(p.T, g.T, np.zeros_like(p).T, _schedule(), step, 0.9)
    with pytest.raises(ValueError, match="schedule"):
        kernels.sgd_update(p, g, np.array([0.1]), step)
    with pytest.raises(ValueError, match="schedule"):
        kernels.sgd_update(p, g, _schedule().astype(np.float32), step)
    with pytest.raises(TypeError, match="float32 arrays throughout"):
        kernels.sgd_update(p, g.astype(np.float64), _schedule(), step)
    with pytest.raises(TypeError, match="counters are 0-d int64"):
        kernels.sgd_update(p, g, _schedule(), np.zeros((), np.int32))
    with pytest.raises(ValueError, match="shape"):
        kernels.adam_update(p, g, p[:4].copy(), p.copy(), _schedule(), step, 0.9, 0.999, 1e-8)
    assert step == 0
