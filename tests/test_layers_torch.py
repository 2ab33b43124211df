"""Convolution, max pooling, batch norm and dropout against torch.nn.functional (CPU, float64), forward and
every gradient, on random shapes; and the same ops on a GPU against the CPU (gpu-marked)."""

import numpy as np
import pytest

from xpgrad import Tensor, backend, functional, modeops

from .helpers import tolerances

torch = pytest.importorskip("torch", reason="the layers' oracle needs PyTorch (pip install torch==2.13.0)")
TF = torch.nn.functional
SEEDS = range(12)


def both(array):
    """The same float64 values as an xpgrad leaf and a torch leaf, both requiring gradients."""
    return Tensor(array.copy(), requires_grad=True), torch.tensor(array, requires_grad=True)


def assert_close(ours, theirs, what):
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=what)


def conv_case(rng):
    """Random shapes, kernel, stride and padding (PyTorch's rule: the padded input holds a window)."""
    kh, kw = rng.integers(1, 5, size=2)
    sh, sw = rng.integers(1, 4, size=2)
    ph, pw = rng.integers(0, 3, size=2)
    n, c, o = rng.integers(1, 4), rng.integers(1, 5), rng.integers(1, 6)
    h, w = rng.integers(max(1, kh - 2 * ph), 11), rng.integers(max(1, kw - 2 * pw), 11)
    stride = (int(sh), int(sw)) if rng.random() < 0.5 else int(sh)
    padding = (int(ph), int(pw)) if rng.random() < 0.5 else int(ph)
    if isinstance(padding, int) and (h + 2 * padding < kh or w + 2 * padding < kw):
        padding = (int(ph), int(pw))
    return (n, c, h, w), (o, c, kh, kw), stride, padding, rng.random() < 0.7


@pytest.mark.parametrize("seed", SEEDS)
def test_conv2d_matches_torch(seed):
    rng = np.random.default_rng(seed)
    x_shape, w_shape, stride, padding, has_bias = conv_case(rng)
    (x, tx), (W, tW) = both(rng.normal(size=x_shape)), both(rng.normal(size=w_shape))
    b, tb = both(rng.normal(size=w_shape[0])) if has_bias else (None, None)
    y, ty = functional.conv2d(x, W, b, stride, padding), TF.conv2d(tx, tW, tb, stride, padding)
    assert y.shape == tuple(ty.shape)
    assert_close(y.data, ty, f"forward {x_shape} {w_shape} stride {stride} padding {padding}")
    gy = rng.normal(size=y.shape)
    y.backward(gy)
    ty.backward(torch.tensor(gy))
    for name, ours, theirs in [("x", x, tx), ("weight", W, tW)] + ([("bias", b, tb)] if has_bias else []):
        assert_close(ours.grad, theirs.grad, f"gradient of {name}")


def test_conv2d_skips_the_input_gradient_of_data():
    rng = np.random.default_rng(0)
    W = Tensor(rng.normal(size=(2, 3, 3, 3)), requires_grad=True)
    y = functional.conv2d(rng.normal(size=(2, 3, 5, 5)), W)
    y.backward(np.ones(y.shape))
    assert y.creator.op.needs_input_grad is False and W.grad.shape == (2, 3, 3, 3)


def pool_case(rng):
    kh, kw = rng.integers(1, 4, size=2)
    stride = None if rng.random() < 0.4 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    ph, pw = rng.integers(0, kh // 2 + 1), rng.integers(0, kw // 2 + 1)
    padding = (int(ph), int(pw))
    shape = (rng.integers(1, 4), rng.integers(1, 4), rng.integers(kh, 10), rng.integers(kw, 10))
    return shape, (int(kh), int(kw)), stride, padding


@pytest.mark.parametrize("values", ["distinct", "ties", "nan", "-inf"])
@pytest.mark.parametrize("seed", SEEDS)
def test_max_pool2d_matches_torch_ties_included(seed, values):
    """The gradient goes to each window's first maximum, as PyTorch's; rounded inputs make many ties."""
    rng = np.random.default_rng(seed)
    shape, kernel, stride, padding = pool_case(rng)
    data = rng.normal(size=shape)
    if values != "distinct":
        data = np.round(data)
    if values == "nan":
        data[rng.random(shape) < 0.1] = np.nan
    if values == "-inf":  # windows of only -inf tie with the padding: PyTorch picks their first pixel inside
        data[rng.random(shape) < 0.7] = -np.inf
    x, tx = both(data)
    y, ty = functional.max_pool2d(x, kernel, stride, padding), TF.max_pool2d(tx, kernel, stride, padding)
    assert y.shape == tuple(ty.shape)
    assert np.array_equal(y.data, ty.detach().numpy(), equal_nan=True)
    gy = rng.normal(size=y.shape)
    y.backward(gy)
    ty.backward(torch.tensor(gy))
    assert_close(x.grad, tx.grad, f"gradient {shape} kernel {kernel} stride {stride} padding {padding}")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_batch_norm_matches_torch(seed, training):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 6, size=4))
    if shape[0] * shape[2] * shape[3] < 2:
        shape = (2, *shape[1:])
    c = shape[1]
    (x, tx), (w, tw), (b, tb) = both(rng.normal(size=shape) * 3 + 1), both(rng.normal(size=c)), both(rng.normal(size=c))
    mean, var = rng.normal(size=c), rng.random(c) + 0.5
    ours_stats, theirs_stats = (mean.copy(), var.copy()), (torch.tensor(mean), torch.tensor(var))
    y = functional.batch_norm(x, *ours_stats, w, b, training=training, momentum=0.1, eps=1e-5)
    ty = TF.batch_norm(tx, *theirs_stats, tw, tb, training=training, momentum=0.1, eps=1e-5)
    assert_close(y.data, ty, f"forward {shape}")
    for ours, theirs, name in zip(ours_stats, theirs_stats, ("running_mean", "running_var")):
        assert_close(ours, theirs, name)
    gy = rng.normal(size=shape)
    y.backward(gy)
    ty.backward(torch.tensor(gy))
    for name, ours, theirs in [("x", x, tx), ("weight", w, tw), ("bias", b, tb)]:
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-9, atol=1e-10, err_msg=name)


def test_batch_norm_without_affine_matches_torch():
    rng = np.random.default_rng(1)
    x, tx = both(rng.normal(size=(4, 3, 2, 2)))
    y = functional.batch_norm(x, np.zeros(3), np.ones(3), training=True)
    ty = TF.batch_norm(tx, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), training=True)
    assert_close(y.data, ty, "forward")
    gy = rng.normal(size=(4, 3, 2, 2))
    y.backward(gy)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_scales_as_torch_and_its_gradient_is_the_mask(p):
    """The masks are different draws, so what is compared is the rule: where both keep an element, the values
    are PyTorch's to the bit (x / (1 - p), one rounding); the share kept is 1 - p; the gradient is the mask."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(200, 300)), requires_grad=True)
    y = functional.dropout(x, p, state=modeops.new_state(7))
    ty = TF.dropout(torch.tensor(x.data), p)
    kept, theirs_kept = y.data != 0, ty.numpy() != 0
    assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / kept.size)
    both_kept = kept & theirs_kept
    assert both_kept.sum() > 100 and np.array_equal(y.data[both_kept], ty.numpy()[both_kept])
    mask = kept * (1 / (1 - p))
    assert np.array_equal(y.data, x.data * mask)
    gy = rng.normal(size=y.shape)
    y.backward(gy)
    assert np.array_equal(x.grad, gy * mask)
    assert np.array_equal(functional.dropout(x, p, training=False).data, TF.dropout(torch.tensor(x.data), p,
                                                                                     training=False).numpy())


def test_dropout_of_one_drops_everything_and_of_zero_nothing():
    x = np.ones((3, 4))
    dropped = functional.dropout(x, 1.0, state=modeops.new_state(0)).data
    assert np.array_equal(dropped, TF.dropout(torch.ones(3, 4, dtype=torch.float64), 1.0).numpy())
    assert functional.dropout(x, 0.0, state=modeops.new_state(0)).data is x
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        functional.dropout(x, 1.5, state=modeops.new_state(0))


# ---------------------------------------------------------------------------
# The same ops on a GPU against the CPU


GPU_CASES = {
    "conv2d": lambda xp, x, W, b: functional.conv2d(x, W, b),
    "conv2d_strided": lambda xp, x, W, b: functional.conv2d(x, W, b, stride=(2, 1), padding=(1, 2)),
    "max_pool2d": lambda xp, x: functional.max_pool2d(x, 3, 2, 1),
    "batch_norm": lambda xp, x, w, b: functional.batch_norm(x, xp.zeros(3, x.dtype), xp.ones(3, x.dtype), w, b,
                                                            training=True),
    "dropout": lambda xp, x: functional.dropout(x, 0.3, state=xp.asarray(modeops.new_state(5))),
}


def run_on(xp, make, arrays, gy):
    """``make(xp, *leaves)`` on ``xp``'s device, then backward from ``gy``: output and gradients, on the host."""
    leaves = [Tensor(xp.asarray(a), requires_grad=True) for a in arrays]
    y = make(xp, *leaves)
    y.backward(xp.asarray(gy))
    return [backend.to_numpy(y.data)] + [backend.to_numpy(t.grad) for t in leaves]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", list(GPU_CASES))
def test_layers_on_a_gpu_match_the_cpu(gpu_xp, layer, dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3, 10, 9)).astype(dtype)
    arrays = {"conv2d": (x, rng.normal(size=(5, 3, 3, 2)), rng.normal(size=5)), "max_pool2d": (np.round(x),),
              "batch_norm": (x, np.arange(3) + 1.0, np.arange(3) - 1.0), "dropout": (x,)}
    arrays = tuple(np.asarray(a, dtype=dtype) for a in arrays.get(layer, arrays["conv2d"]))
    make = GPU_CASES[layer]
    gy = rng.normal(size=make(np, *[Tensor(a) for a in arrays]).shape).astype(dtype)
    cpu, gpu = run_on(np, make, arrays, gy), run_on(gpu_xp, make, arrays, gy)
    rtol, atol = tolerances(dtype)
    for i, (a, g) in enumerate(zip(cpu, gpu)):
        if layer in ("max_pool2d", "dropout"):  # the same choices and the same masks, bit for bit
            assert np.array_equal(g, a), (layer, i)
        else:
            np.testing.assert_allclose(g, a, rtol=10 * rtol, atol=10 * atol * max(1.0, float(np.abs(a).max())),
                                       err_msg=f"{layer}: output/gradient {i}")
