"""Issue 20's rules for the image layers (Conv2d, MaxPool2d, BatchNorm2d, Dropout, their functional forms) and
nn.ModuleList: what forward accepts, backward handles (class B: mixed dtypes are refused at the forward pass, as
Linear refuses them), and a bad argument is a ValueError or TypeError raised by xpgrad that names the argument,
what it got and what it accepts (class C)."""

import numpy as np
import pytest

from xpgrad import Tensor, functional, modeops, nn, optim

from .helpers import assert_bad_argument

torch = pytest.importorskip("torch", reason="the reference needs PyTorch (pip install torch==2.13.0)")


def t(shape=(1, 3, 5, 5), dtype=np.float32, grad=True):
    return Tensor(np.ones(shape, dtype), requires_grad=grad)


def conv(*args, **kwargs):
    return nn.Conv2d(3, 2, 3, *args, rng=0, **kwargs)


def stats(c=3, dtype=np.float32):
    return np.zeros(c, dtype), np.ones(c, dtype)


def bn(x, *arrays, **kwargs):
    """functional.batch_norm of ``x`` in training, with (C,) float32 statistics unless ``arrays`` gives them."""
    mean, var = arrays[:2] if arrays else stats(x.shape[1])
    return functional.batch_norm(x, mean, var, *arrays[2:], **{"training": True, **kwargs})


def dropout(p=0.5, x=None, **kwargs):
    return functional.dropout(t() if x is None else x, p, **{"state": modeops.new_state(0), **kwargs})


# (what is called, the error, words the message must hold)
CASES = {
    # B: one floating-point dtype for x and the parameters, checked in the forward pass
    "Conv2d on float64 data": (lambda: conv()(t(dtype=np.float64)), TypeError,
                               r"conv2d needs x, weight and bias of one floating-point dtype \(PyTorch's rule\), "
                               r"got float64, float32, float32"),
    "Conv2d on a list": (lambda: conv()(np.ones((1, 3, 5, 5)).tolist()), TypeError, r"got float64, float32, float32"),
    "Conv2d on integers": (lambda: conv()(t(dtype=np.int64, grad=False)), TypeError, r"got int64, float32, float32"),
    "conv2d with a float64 bias": (lambda: functional.conv2d(t(), t((2, 3, 3, 3)), t((2,), np.float64)), TypeError,
                                   r"got float32, float32, float64"),
    "conv2d of integers": (lambda: functional.conv2d(np.ones((1, 3, 5, 5), int), np.ones((2, 3, 3, 3), int)),
                           TypeError, r"conv2d needs x, weight of one floating-point dtype .* got int64, int64"),
    "BatchNorm2d on float64 data": (lambda: nn.BatchNorm2d(3)(t(dtype=np.float64)), TypeError,
                                    r"batch_norm needs x, weight, bias, running_mean and running_var of one "
                                    r"floating-point dtype \(PyTorch's rule\), got x float64 and weight float32"),
    "batch_norm of float64 statistics": (lambda: bn(t(), *stats(3, np.float64)), TypeError,
                                         r"got x float32 and running_mean float64"),
    "batch_norm of integers": (lambda: bn(t(dtype=np.int64, grad=False)), TypeError,
                               r"batch_norm needs floating-point x, got int64"),
    "batch_norm with a weight of shape (1,)": (lambda: bn(t(), *stats(), t((1,)), t((1,))), ValueError,
                                               r"x \(1, 3, 5, 5\) has 3 channels, but weight has shape \(1,\); "
                                               r"it needs \(3,\), one value per channel"),
    "batch_norm with a bias of shape ()": (lambda: bn(t(), *stats(), t((3,)), t(())), ValueError,
                                           r"but bias has shape \(\)"),
    "batch_norm with a longer running_var": (lambda: bn(t(), np.zeros(3, np.float32), np.ones(4, np.float32)),
                                             ValueError, r"but running_var has shape \(4,\)"),
    "BatchNorm2d(3) on 4 channels": (lambda: nn.BatchNorm2d(3)(t((2, 4, 2, 2))), ValueError,
                                     r"x \(2, 4, 2, 2\) has 4 channels, but weight has shape \(3,\)"),
    "dropout of integers": (lambda: dropout(x=t(dtype=np.int64, grad=False)), TypeError,
                            r"dropout needs floating-point x, got int64"),
    # C: conv2d and Conv2d
    "Conv2d(3, -1, 3)": (lambda: nn.Conv2d(3, -1, 3), ValueError, r"Conv2d's out_channels must be 1 or more, got -1"),
    "Conv2d(3, 0, 3)": (lambda: nn.Conv2d(3, 0, 3), ValueError, r"Conv2d's out_channels must be 1 or more, got 0"),
    "Conv2d(-1, 2, 3)": (lambda: nn.Conv2d(-1, 2, 3), ValueError, r"Conv2d's in_channels must be 0 or more, got -1"),
    "Conv2d(3.0, 2, 3)": (lambda: nn.Conv2d(3.0, 2, 3), TypeError,
                          r"Conv2d's in_channels must be a whole number, got float 3.0"),
    "Conv2d(3, 2, 0)": (lambda: nn.Conv2d(3, 2, 0), ValueError, r"Conv2d's kernel_size must be at least 1, got 0"),
    "Conv2d(3, 2, (3, 0))": (lambda: nn.Conv2d(3, 2, (3, 0)), ValueError,
                             r"kernel_size must be at least 1, got \(3, 0\)"),
    "Conv2d(3, 2, 2.0)": (lambda: nn.Conv2d(3, 2, 2.0), TypeError,
                          r"Conv2d's kernel_size must be an int or a pair of ints, got float 2.0"),
    "Conv2d(stride=0)": (lambda: conv(stride=0), ValueError, r"Conv2d's stride must be at least 1, got 0"),
    "Conv2d(stride=1.5)": (lambda: conv(stride=1.5), TypeError, r"Conv2d's stride must be an int or a pair of ints"),
    "Conv2d(stride=(1, 2, 3))": (lambda: conv(stride=(1, 2, 3)), TypeError, r"stride .* got tuple \(1, 2, 3\)"),
    "Conv2d(padding=-1)": (lambda: conv(padding=-1), ValueError, r"Conv2d's padding must be at least 0, got -1"),
    "Conv2d(bias='no')": (lambda: conv(bias="no"), TypeError, r"Conv2d's bias must be True or False, got str 'no'"),
    "Conv2d(dtype='int32')": (lambda: conv(dtype="int32"), TypeError, r"Conv2d\(dtype=\.\.\.\) takes a floating-point"),
    "Conv2d(init='xavier')": (lambda: conv(init="xavier"), ValueError, r"Conv2d's init must be one of he, glorot"),
    "conv2d(stride=1.5)": (lambda: functional.conv2d(t(), t((2, 3, 3, 3)), stride=1.5), TypeError,
                           r"conv2d's stride must be an int or a pair of ints, got float 1.5"),
    "conv2d(padding=-1)": (lambda: functional.conv2d(t(), t((2, 3, 3, 3)), padding=-1), ValueError,
                           r"conv2d's padding must be at least 0, got -1"),
    "conv2d with a kernel of 0": (lambda: functional.conv2d(t(), t((2, 3, 0, 3))), ValueError,
                                  r"a kernel of at least 1 x 1 .* got shape \(2, 3, 0, 3\)"),
    "conv2d with no output channel": (lambda: functional.conv2d(t(), t((0, 3, 2, 2))), ValueError,
                                      r"the weight needs at least one output channel"),
    "Conv2d on a 3-d input": (lambda: conv()(t((3, 5, 5))), ValueError,
                              r"conv2d takes an \(N, C, H, W\) input x .* got shapes \(3, 5, 5\)"),
    "Conv2d on 4 channels": (lambda: conv()(t((1, 4, 5, 5))), ValueError,
                             r"the input has 4 channels, but the weight \(2, 3, 3, 3\) expects 3"),
    "Conv2d on a smaller image": (lambda: conv()(t((1, 3, 2, 5))), ValueError,
                                  r"the kernel \(3, 3\) is larger than the padded input \(2, 5\)"),
    "conv2d of an image of no rows": (lambda: conv(padding=2)(t((1, 3, 0, 5))), ValueError,
                                      r"the input x must be at least 1 x 1 .* got shape \(1, 3, 0, 5\)"),
    # max_pool2d and MaxPool2d
    "max_pool2d(kernel_size=2.0)": (lambda: functional.max_pool2d(t(), 2.0), TypeError,
                                    r"max_pool2d's kernel_size must be an int or a pair of ints, got float 2.0"),
    "max_pool2d(stride=1.5)": (lambda: functional.max_pool2d(t(), 2, 1.5), TypeError,
                               r"max_pool2d's stride must be an int or a pair of ints, got float 1.5"),
    "max_pool2d(padding=-1)": (lambda: functional.max_pool2d(t(), 3, 1, -1), ValueError,
                               r"max_pool2d's padding must be at least 0, got -1"),
    "MaxPool2d((2,))": (lambda: nn.MaxPool2d((2,)), TypeError, r"MaxPool2d's kernel_size .* got tuple \(2,\)"),
    "MaxPool2d(None)": (lambda: nn.MaxPool2d(None), TypeError, r"MaxPool2d's kernel_size .* got NoneType None"),
    "MaxPool2d(0)": (lambda: nn.MaxPool2d(0), ValueError, r"MaxPool2d's kernel_size must be at least 1, got 0"),
    "MaxPool2d(2, stride=-1)": (lambda: nn.MaxPool2d(2, stride=-1), ValueError,
                                r"MaxPool2d's stride must be at least 1, got -1"),
    "MaxPool2d(2, padding=2)": (lambda: nn.MaxPool2d(2, padding=2), ValueError,
                                r"padding \(2, 2\) must be at most half of kernel_size \(2, 2\)"),
    "max_pool2d of bool": (lambda: functional.max_pool2d(Tensor(np.ones((1, 1, 4, 4), bool)), 2), TypeError,
                           r"max_pool2d takes numbers, not bool"),
    "max_pool2d of a 3-d input": (lambda: functional.max_pool2d(t((3, 5, 5)), 2), ValueError,
                                  r"max_pool2d takes an \(N, C, H, W\) input x .* got shape \(3, 5, 5\)"),
    "max_pool2d of an image of no columns": (lambda: functional.max_pool2d(t((1, 3, 4, 0)), 2, padding=1), ValueError,
                                             r"H and W at least 1 \(N and C may be 0\), got shape \(1, 3, 4, 0\)"),
    "max_pool2d of a smaller image": (lambda: functional.max_pool2d(t((1, 3, 2, 2)), 3), ValueError,
                                      r"the window \(3, 3\) is larger than the padded input \(2, 2\)"),
    # batch_norm and BatchNorm2d
    "BatchNorm2d(-2)": (lambda: nn.BatchNorm2d(-2), ValueError,
                        r"BatchNorm2d's num_features must be 1 or more, got -2"),
    "BatchNorm2d(0)": (lambda: nn.BatchNorm2d(0), ValueError, r"num_features must be 1 or more, got 0"),
    "BatchNorm2d(2.5)": (lambda: nn.BatchNorm2d(2.5), TypeError, r"num_features must be a whole number, got float 2.5"),
    "BatchNorm2d(eps=-1)": (lambda: nn.BatchNorm2d(3, eps=-1), ValueError,
                            r"BatchNorm2d's eps must be a number > 0 \(it is added to the variance .* got -1"),
    "BatchNorm2d(eps=0)": (lambda: nn.BatchNorm2d(3, eps=0), ValueError, r"eps must be a number > 0 .* got 0"),
    "BatchNorm2d(eps=nan)": (lambda: nn.BatchNorm2d(3, eps=float("nan")), ValueError, r"eps .* got nan"),
    "BatchNorm2d(eps='small')": (lambda: nn.BatchNorm2d(3, eps="small"), TypeError, r"eps .* got str 'small'"),
    "BatchNorm2d(momentum=1.5)": (lambda: nn.BatchNorm2d(3, momentum=1.5), ValueError,
                                  r"BatchNorm2d's momentum must be a number in \[0, 1\] \(the running statistics .* "
                                  r"got 1.5"),
    "BatchNorm2d(momentum=-0.1)": (lambda: nn.BatchNorm2d(3, momentum=-0.1), ValueError, r"momentum .* got -0.1"),
    "BatchNorm2d(momentum=None)": (lambda: nn.BatchNorm2d(3, momentum=None), TypeError,
                                   r"None \(PyTorch's cumulative average\) is not supported"),
    "BatchNorm2d(affine='no')": (lambda: nn.BatchNorm2d(3, affine="no"), TypeError,
                                 r"BatchNorm2d's affine must be True or False, got str 'no'"),
    "BatchNorm2d(dtype=int)": (lambda: nn.BatchNorm2d(3, dtype=int), TypeError, r"BatchNorm2d\(dtype=\.\.\.\) takes"),
    "BatchNorm2d on a 3-d input": (lambda: nn.BatchNorm2d(3)(t((3, 5, 5))), ValueError,
                                   r"batch_norm takes an \(N, C, H, W\) input x with C >= 1, got shape \(3, 5, 5\)"),
    "batch_norm of no channels": (lambda: bn(t((2, 0, 2, 2))), ValueError, r"C >= 1, got shape \(2, 0, 2, 2\)"),
    "batch_norm of list statistics": (lambda: bn(t(), [0.0] * 3, [1.0] * 3), TypeError,
                                      r"batch_norm's running_mean must be a floating-point NumPy or CuPy array "
                                      r"\(updated in place, so not a list or a Tensor\), got list"),
    "batch_norm of integer statistics": (lambda: bn(t(), np.zeros(3, int), np.ones(3, int)), TypeError,
                                         r"running_mean .* got ndarray of int64 \(3,\)"),
    "batch_norm of Tensor statistics": (lambda: bn(t(), *map(Tensor, stats())), TypeError,
                                        r"running_mean .* got Tensor"),
    "batch_norm(training='yes')": (lambda: bn(t(), training="yes"), TypeError,
                                   r"batch_norm's training must be True or False, got str 'yes'"),
    "batch_norm(momentum=2)": (lambda: bn(t(), momentum=2), ValueError, r"batch_norm's momentum must be .* got 2"),
    "batch_norm(eps=-1e-5)": (lambda: bn(t(), eps=-1e-5), ValueError, r"batch_norm's eps must be a number > 0"),
    "batch_norm with a weight only": (lambda: bn(t(), *stats(), t((3,))), ValueError,
                                      r"batch_norm takes weight and bias together, or neither"),
    # dropout and Dropout
    "dropout(state=5)": (lambda: dropout(state=5), TypeError,
                         r"dropout's state must be a \(2,\) uint64 array, as xpgrad.modeops.new_state\(seed\) makes, "
                         r"got int 5"),
    "dropout(state=zeros(3))": (lambda: dropout(state=np.zeros(3)), TypeError, r"got ndarray of float64 \(3,\)"),
    "dropout(state=[0, 0])": (lambda: dropout(state=[0, 0]), TypeError, r"dropout's state .* got list \[0, 0\]"),
    "dropout of a (3,) uint64 state": (lambda: dropout(state=np.zeros(3, np.uint64)), ValueError,
                                       r"dropout's state must be a \(2,\) uint64 array \(key, counter\), "
                                       r"got shape \(3,\)"),
    "dropout(state=5) in evaluation": (lambda: dropout(state=5, training=False), TypeError, r"dropout's state"),
    "dropout(p='a')": (lambda: dropout("a"), TypeError,
                       r"dropout probability p must be a number between 0 and 1, got str 'a'"),
    "dropout(p=True)": (lambda: dropout(True), TypeError, r"dropout probability p .* got bool True"),
    "dropout(p=None)": (lambda: dropout(None), TypeError, r"dropout probability p .* got NoneType None"),
    "dropout(p=1.5)": (lambda: dropout(1.5), ValueError,
                       r"dropout probability has to be between 0 and 1, but got 1.5 \(the argument p\)"),
    "dropout(p=nan)": (lambda: dropout(float("nan")), ValueError, r"but got nan \(the argument p\)"),
    "dropout(training='yes')": (lambda: dropout(training="yes"), TypeError,
                                r"dropout's training must be True or False, got str 'yes'"),
    "Dropout('a')": (lambda: nn.Dropout("a"), TypeError, r"dropout probability p must be a number"),
    "Dropout(-0.1)": (lambda: nn.Dropout(-0.1), ValueError, r"but got -0.1 \(the argument p\)"),
    # flags, and ModuleList
    "Linear(bias='no')": (lambda: nn.Linear(3, 5, bias="no"), TypeError,
                          r"Linear's bias must be True or False, got str"),
    "Linear(bias=2)": (lambda: nn.Linear(3, 5, bias=2), TypeError, r"bias must be True or False, got int 2"),
    "Linear(bias=0.0)": (lambda: nn.Linear(3, 5, bias=0.0), TypeError, r"bias must be True or False, got float"),
    "ModuleList(5)": (lambda: nn.ModuleList(5), TypeError, r"ModuleList takes an iterable of Modules, got int"),
    "ModuleList of a Module": (lambda: nn.ModuleList(nn.ReLU()), TypeError, r"an iterable of Modules, got ReLU"),
    "ModuleList[slice] = ...": (lambda: nn.ModuleList([nn.ReLU()]).__setitem__(slice(0, 1), [nn.ReLU()]), TypeError,
                                r"ModuleList\[i\] = module takes one integer index, not a slice"),
    "ModuleList of numbers": (lambda: nn.ModuleList([nn.ReLU(), 5]), TypeError, r"ModuleList takes Modules, got int"),
    "ModuleList.append of a function": (lambda: nn.ModuleList().append(print), TypeError,
                                        r"ModuleList.append takes Modules, got builtin_function_or_method"),
    "ModuleList.extend of a list": (lambda: nn.ModuleList().extend([[nn.ReLU()]]), TypeError,
                                    r"ModuleList.extend takes Modules, got list"),
    "ModuleList[i] = a number": (lambda: nn.ModuleList([nn.ReLU()]).__setitem__(0, 1), TypeError,
                                 r"ModuleList\[i\] = \.\.\. takes Modules, got int"),
    "ModuleList['a']": (lambda: nn.ModuleList([nn.ReLU()])["a"], TypeError,
                        r"ModuleList indices must be integers or slices, got str"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_argument_is_named_with_what_was_got(case):
    assert_bad_argument(*CASES[case])


# ---------------------------------------------------------------------------
# What is accepted: an empty batch, integers to pool, the edges of the ranges


POOLS = [((0, 3, 4, 4), 2, None, 0), ((0, 3, 5, 5), 3, 1, 1), ((0, 1, 7, 6), (3, 2), (2, 1), (1, 1)),
         ((2, 0, 4, 4), 2, None, 0), ((0, 0, 3, 3), 3, 2, 1)]


@pytest.mark.parametrize("shape, kernel, stride, padding", POOLS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_of_an_empty_batch_or_no_channels_runs_both_ways(shape, kernel, stride, padding, dtype):
    """N = 0 as in PyTorch (conv2d took it already); C = 0 too, which PyTorch refuses."""
    x = Tensor(np.ones(shape, dtype), requires_grad=True)
    y = functional.max_pool2d(x, kernel, stride, padding)
    if shape[1]:
        assert y.shape == tuple(torch.nn.functional.max_pool2d(torch.ones(shape), kernel, stride, padding).shape)
    y.backward(np.ones(y.shape, dtype))
    assert y.dtype == dtype and x.grad.shape == shape and x.grad.dtype == dtype


def test_a_conv_net_runs_on_an_empty_batch_both_ways():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5, rng=1),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 10, rng=2))
    x = Tensor(np.ones((0, 1, 8, 8), np.float32), requires_grad=True)
    y = model(x)
    assert y.shape == (0, 10)
    y.sum().backward()
    assert x.grad.shape == x.shape and model[0].weight.grad.shape == (4, 1, 3, 3)
    assert not model[0].weight.grad.any()


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.uint8])
def test_max_pool2d_of_integers_pads_with_their_lowest_value_as_torch(rng, dtype):
    """PyTorch pools integers; the padding must never win (it once was -inf cast to an integer)."""
    info = np.iinfo(dtype)
    x = rng.integers(max(info.min, -50), 50, size=(2, 3, 5, 4)).astype(dtype)
    x[0, 0] = info.min  # a window of the lowest value, next to the padding
    y = functional.max_pool2d(Tensor(x), 3, 2, 1)
    want = torch.nn.functional.max_pool2d(torch.tensor(x.astype(np.int64)), 3, 2, 1).numpy()
    assert y.dtype == dtype and np.array_equal(y.data, want)


def test_the_edges_of_the_ranges_and_numpy_numbers_are_accepted(rng):
    """momentum 0 and 1 (as torch), a tiny eps, p as a NumPy float, sizes as NumPy ints, flags as NumPy bools or 0/1, a
    pair as a list, and in_channels 0 (an empty sum: the output is the bias, where torch returns no channels)."""
    x = rng.normal(size=(4, 3, 2, 2))
    for momentum, eps in ((0.0, 1e-30), (1.0, 1e-5)):
        ours, theirs = np.zeros(3), torch.zeros(3, dtype=torch.float64)
        y = functional.batch_norm(Tensor(x), ours, np.ones(3), training=True, momentum=momentum, eps=eps)
        want = torch.nn.functional.batch_norm(torch.tensor(x), theirs, torch.ones(3, dtype=torch.float64),
                                              training=True, momentum=momentum, eps=eps)
        np.testing.assert_allclose(y.data, want.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-12, atol=1e-15)
    layer = nn.Conv2d(np.int64(3), np.int32(2), [2, 2], stride=np.int64(1), bias=np.True_, dtype="float64")
    assert layer(Tensor(x)).shape == (4, 2, 1, 1)
    assert nn.BatchNorm2d(np.int64(3), affine=np.False_).weight is None
    # The flags PyTorch's layers are often given, and took before xpgrad checked them: 0, 1, None (False).
    assert nn.Linear(3, 5, bias=0).bias is None and nn.Linear(3, 5, bias=None).bias is None
    assert nn.Linear(3, 5, bias=1).bias is not None and nn.Conv2d(3, 2, 2, bias=np.int64(0)).bias is None
    assert dropout(np.float32(0.5), x=Tensor(np.ones((8,), np.float32))).shape == (8,)
    empty = nn.Conv2d(0, 2, 3, dtype="float64")
    empty.bias.data[...] = [1.0, 2.0]
    y = empty(Tensor(np.ones((2, 0, 4, 4))))
    assert y.shape == (2, 2, 2, 2) and np.array_equal(y.data[:, :, 0, 0], [[1.0, 2.0]] * 2)
    y.sum().backward()
    assert empty.weight.grad.shape == (2, 0, 3, 3) and np.array_equal(empty.bias.grad, [8.0, 8.0])


# ---------------------------------------------------------------------------
# ModuleList


class Tower(nn.Module):
    """Linear blocks held in a ModuleList, and the same kind held in a plain list (which is never trained)."""

    def __init__(self, depth=3):
        self.blocks = nn.ModuleList(nn.Linear(4, 4, rng=i, dtype="float64") for i in range(depth))
        self.plain = [nn.Linear(4, 4, rng=9, dtype="float64")]

    def forward(self, x):
        for block in [*self.blocks, *self.plain]:
            x = functional.relu(block(x))
        return x


def test_a_module_list_registers_its_modules_so_they_are_trained_and_saved():
    model = Tower()
    names = [name for name, _ in model.named_parameters()]
    assert names == [f"blocks.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert list(model.state_dict()) == names
    before = [p.data.copy() for p in model.parameters()]
    plain_before = model.plain[0].weight.data.copy()
    model(Tensor(np.ones((2, 4)))).sum().backward()
    optim.SGD(model.parameters(), lr=0.1).step()
    assert all(not np.array_equal(p.data, b) for p, b in zip(model.parameters(), before) if p.grad.any())
    assert np.array_equal(model.plain[0].weight.data, plain_before)  # the plain list: not a parameter, not trained
    copy = Tower()
    copy.load_state_dict(model.state_dict())
    assert all(np.array_equal(a.data, b.data) for a, b in zip(copy.parameters(), model.parameters()))
    model.eval()
    assert not model.blocks[2].training


def test_a_module_list_indexes_and_grows_as_a_list():
    a, b, c, d = (nn.Linear(2, 2, rng=i) for i in range(4))
    blocks = nn.ModuleList([a, b])
    assert len(blocks) == 2 and list(blocks) == [a, b] and blocks[-1] is b and blocks[0] is a
    assert blocks.append(c) is blocks and blocks.extend(iter([d])) is blocks and list(blocks) == [a, b, c, d]
    sliced = blocks[1:3]
    assert isinstance(sliced, nn.ModuleList) and list(sliced) == [b, c]
    blocks.insert(0, nn.ReLU())
    del blocks[0]
    blocks[3] = nn.ReLU()
    assert [type(m).__name__ for m in blocks] == ["Linear", "Linear", "Linear", "ReLU"]
    assert [name for name, _ in blocks.named_parameters()][-2:] == ["2.weight", "2.bias"]
    assert repr(nn.ModuleList([nn.ReLU()])) == "ModuleList(ReLU())" and len(nn.ModuleList()) == 0
    with pytest.raises(IndexError, match=r"index 4 is out of range for a ModuleList of 4 modules"):
        blocks[4]
    model = nn.Sequential(nn.ModuleList([nn.Linear(2, 2)]))
    assert [name for name, _ in model.named_parameters()] == ["0.0.weight", "0.0.bias"]
    with pytest.raises(NotImplementedError, match="ModuleList must define forward"):
        blocks(Tensor(np.ones((1, 2))))
