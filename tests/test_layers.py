"""nn.Conv2d, MaxPool2d, BatchNorm2d and Dropout as layers: gradients by central differences (no PyTorch
needed), PyTorch's weight layout and state names, modes, buffers, and dropout's generator."""

import numpy as np
import pytest

from xpgrad import Tensor, convops, functional, modeops, nn, optim
from xpgrad.gradcheck import gradcheck


def grads_of(make, arrays, gy):
    """``make(*leaves)`` and every leaf's gradient of ``sum(y * gy)``."""
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    y = make(*leaves)
    y.backward(gy)
    return [t.grad for t in leaves]


CASES = {
    "conv2d": (lambda x, W, b: functional.conv2d(x, W, b, stride=(2, 1), padding=1),
               [(2, 3, 6, 5), (4, 3, 3, 2), (4,)]),
    "conv2d_no_bias": (lambda x, W: functional.conv2d(x, W, None, stride=2), [(2, 2, 7, 7), (3, 2, 3, 3)]),
    "max_pool2d": (lambda x: functional.max_pool2d(x, 3, 2, 1), [(2, 3, 7, 6)]),
    "batch_norm_training": (lambda x, w, b: functional.batch_norm(x, np.zeros(3), np.ones(3), w, b, training=True),
                            [(4, 3, 3, 2), (3,), (3,)]),
    "batch_norm_eval": (lambda x, w, b: functional.batch_norm(x, np.full(3, 0.5), np.full(3, 2.0), w, b),
                        [(4, 3, 3, 2), (3,), (3,)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_central_differences(name, rng):
    make, shapes = CASES[name]
    arrays = [rng.normal(size=s) for s in shapes]
    gy = rng.normal(size=make(*[Tensor(a) for a in arrays]).shape)
    report = gradcheck(lambda *a: make(*[Tensor(v) for v in a]).data, arrays, grads_of(make, arrays, gy), gy)
    assert report.ok, report


def test_conv2d_keeps_pytorchs_weight_layout_and_linear_keeps_xpgrads():
    conv = nn.Conv2d(3, 8, (5, 3), stride=2, padding=(2, 1), rng=0)
    assert conv.weight.shape == (8, 3, 5, 3) and conv.bias.shape == (8,)
    assert nn.Linear(4, 6, rng=0).weight.shape == (4, 6)
    assert conv(Tensor(np.zeros((2, 3, 9, 9), np.float32))).shape == (2, 8, 5, 5)
    std = conv.weight.data.std()
    assert 0.5 < std / np.sqrt(2 / 45) < 1.5  # He: N(0, 2 / fan_in), fan_in = 3 * 5 * 3


def test_a_pytorch_model_state_loads_as_it_is():
    torch = pytest.importorskip("torch", reason="needs PyTorch (pip install torch==2.13.0)")
    tnn = torch.nn
    torch.manual_seed(0)
    theirs = tnn.Sequential(tnn.Conv2d(1, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2)).double()
    with torch.no_grad():  # statistics that are not the defaults
        theirs[1].running_mean.uniform_(-1, 1), theirs[1].running_var.uniform_(0.5, 2), theirs[1].weight.uniform_()
    ours = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype="float64"), nn.BatchNorm2d(4, dtype="float64"),
                         nn.ReLU(), nn.MaxPool2d(2))
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state)
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8))
    theirs.eval(), ours.eval()
    np.testing.assert_allclose(ours(Tensor(x)).data, theirs(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_batch_norm_keeps_buffers_that_the_optimizer_never_sees(rng):
    layer = nn.BatchNorm2d(3)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in layer.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    opt = optim.SGD(layer.parameters(), lr=0.1)
    x = Tensor(rng.normal(size=(8, 3, 4, 4)).astype(np.float32) * 2 + 3)
    layer(x).sum().backward()
    opt.step()
    assert int(layer.num_batches_tracked) == 1
    np.testing.assert_allclose(layer.running_mean, 0.1 * x.data.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * x.data.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)
    before = [b.copy() for b in layer.buffers()]
    layer.eval()
    y = layer(x)  # the running estimates normalize, and stay as they are
    assert all(np.array_equal(a, b) for a, b in zip(before, layer.buffers()))
    expected = (x.data - layer.running_mean[:, None, None]) / np.sqrt(layer.running_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(y.data, expected * layer.weight.data[:, None, None] + layer.bias.data[:, None, None],
                               rtol=1e-5, atol=1e-5)
    assert layer.to(dtype="float64").running_var.dtype == np.float64 and layer.num_batches_tracked.dtype == np.int64


def test_modes_reach_every_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 2))
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    x = Tensor(np.ones((2, 1, 4, 4), np.float32))
    assert np.array_equal(model(x).data, model(x).data)  # no dropout, no statistics in eval mode
    assert int(model[1].num_batches_tracked) == 0 and model[3].generator_state[1] == 0
    model.train()
    assert model[3].training and model[1].training


def test_dropout_masks_follow_the_seed_and_the_state():
    x = Tensor(np.ones((64, 50), np.float32))
    a, b, c = nn.Dropout(0.5, rng=1), nn.Dropout(0.5, rng=1), nn.Dropout(0.5, rng=2)
    first, again = a(x).data, b(x).data
    assert np.array_equal(first, again) and not np.array_equal(first, c(x).data)
    assert set(np.unique(first)) == {0.0, 2.0}
    second = a(x).data
    assert not np.array_equal(first, second) and a.state_dict()["generator_state"][1] == 2
    rewound = nn.Dropout(0.5, rng=99)
    rewound.load_state_dict({"generator_state": np.array([a.generator_state[0], 1], dtype=np.uint64)})
    assert np.array_equal(rewound(x).data, second)  # a restored state draws the masks that followed


def test_dropout_bits_are_uniform_enough():
    bits = modeops.random_bits(modeops.new_state(0), 1 << 16)
    for shift in (0, 32, 63):  # low, middle and top bits each set about half the time
        share = float(((bits >> np.uint64(shift)) & np.uint64(1)).mean())
        assert abs(share - 0.5) < 0.01, shift
    assert len(np.unique(bits)) == bits.size


def test_the_cnn_is_small_and_too_small_images_are_refused():
    from xpgrad.models import cnn

    model = cnn()
    assert sum(p.size for p in model.parameters()) == 80202
    assert model(Tensor(np.zeros((3, 1, 28, 28), np.float32))).shape == (3, 10)
    assert cnn((1, 16, 16), 4)(Tensor(np.zeros((2, 1, 16, 16), np.float32))).shape == (2, 4)
    with pytest.raises(ValueError, match="images of 12x12 are too small for the cnn"):
        cnn((1, 12, 12), 10)


def test_pool_then_relu_is_relu_then_pool_values_and_gradients(rng):
    """Why the cnn pools before its ReLU: the same numbers, ties included."""
    x = np.round(rng.normal(size=(2, 3, 8, 8)) * 2)
    gy = rng.normal(size=(2, 3, 4, 4))
    a, b = Tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    ya, yb = functional.relu(functional.max_pool2d(a, 2)), functional.max_pool2d(functional.relu(b), 2)
    assert np.array_equal(ya.data, yb.data)
    ya.backward(gy), yb.backward(gy)
    assert np.array_equal(a.grad, b.grad)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="the input has 3 channels, but the weight"):
        functional.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match="larger than the padded input"):
        functional.conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints"):
        nn.Conv2d(1, 1, (3, 3, 3))
    with pytest.raises(ValueError, match="padding .* must be at most half of kernel_size"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(2)(Tensor(np.zeros((1, 2, 1, 1), np.float32)))
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(-0.1)


def test_im2col_and_col2im_are_adjoint(rng):
    """<im2col(x), g> == <x, col2im(g)>: the input gradient's col2im is the transpose of the forward's copy."""
    shape, kernel, stride, padding = (2, 3, 7, 6), (3, 2), (2, 1), (1, 2)
    x = rng.normal(size=shape)
    col = convops.im2col(x, kernel, stride, padding)
    g = rng.normal(size=col.shape)
    back = convops.col2im(g, shape, kernel, stride, padding)
    assert back.shape == shape
    np.testing.assert_allclose((col * g).sum(), (x * back).sum(), rtol=1e-12)
