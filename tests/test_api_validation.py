"""Issue 20, class C: each public entry point checks its arguments, and a bad one is a ValueError or TypeError
that names the argument, what it got and what it accepts (PyTorch's words where PyTorch has a rule), raised by
xpgrad itself rather than from inside NumPy or Python."""

import numpy as np
import pytest

from xpgrad import Tensor, functional, nn, no_grad, optim
from xpgrad.errors import DeviceError

from .helpers import assert_bad_argument


def t(shape=(2, 3), dtype=np.float32, grad=True):
    return Tensor(np.ones(shape, dtype), requires_grad=grad)


def linear():
    return nn.Linear(3, 2, rng=0)


def pair():
    """Two parameters and their optimizer inputs."""
    return [Tensor(np.ones((2, 3)), requires_grad=True), Tensor(np.zeros(3), requires_grad=True)]


def int_parameter():
    p = Tensor(np.ones(3), requires_grad=True)
    p.data = np.arange(3)
    return [p]


def with_grad(grad, flat=False):
    """An SGD step on a Linear whose weight's .grad was set by hand to ``grad``."""
    model = linear()
    if flat:
        nn.flatten_parameters(model)
    opt = optim.SGD(model.named_parameters(), lr=0.1)
    model.weight.grad, model.bias.grad = grad, np.zeros(2, np.float32)
    opt.step()


def replaced_after_construction():
    model = linear()
    opt = optim.Adam(model.named_parameters())
    model.weight.data = np.ones((4, 2), np.float32)
    model.weight.grad, model.bias.grad = np.ones((4, 2), np.float32), np.zeros(2, np.float32)
    opt.step()


class NaNSchedule(optim.Schedule):
    steps = 2

    def factor(self, step):
        return float("nan") if step == 1 else 1.0


class NegativeSteps(optim.Schedule):
    steps = -1


def adam_state(**changes):
    opt = optim.Adam(pair())
    state = {**opt.state_dict(), **changes}
    opt.load_state_dict(state)


# (what is called, the error, words the message must hold)
CASES = {
    # Tensor and its operators
    "Tensor of a string": (lambda: Tensor("abc"), TypeError, r"Tensor\(data\) takes an array.*got str 'abc'"),
    "Tensor of None": (lambda: Tensor(None), TypeError, r"got NoneType None"),
    "Tensor of a ragged list": (lambda: Tensor([1, [2, 3]]), TypeError, r"nested list of them of one shape"),
    "Tensor of complex numbers": (lambda: Tensor(np.ones(2, complex)), TypeError, r"bool, integer or floating-point"),
    "requires_grad not a bool": (lambda: Tensor(np.ones(2), requires_grad="yes"), TypeError,
                                 r"requires_grad=\.\.\.\) takes True or False, got 'yes'"),
    "an integer parameter": (lambda: Tensor(np.arange(3), requires_grad=True), TypeError,
                             r"only floating-point tensors can require gradients, got int64"),
    "a complex operand": (lambda: t() * 1j, TypeError, r"a Tensor, an array or a real number, got complex 1j"),
    "a string operand": (lambda: t() + "a", TypeError, r"got str 'a'"),
    "a tensor exponent": (lambda: t() ** t(), TypeError, r"Python number as the exponent, got Tensor"),
    "an integer to a negative power": (lambda: Tensor(np.arange(3)) ** -1, ValueError, r"negative exponent \(-1\)"),
    "bool negated": (lambda: -Tensor(np.array([True])), TypeError, r"-x on bool data is not supported"),
    "shapes that do not broadcast": (lambda: t((2, 3)) + t((2,)), ValueError,
                                     r"Add: shapes \(2, 3\), \(2,\) do not broadcast"),
    "matmul of mismatched shapes": (lambda: t((2, 3)) @ t((2, 3)), ValueError,
                                    r"matmul: shapes \(2, 3\) and \(2, 3\) do not fit"),
    "to a number": (lambda: t().to(5), TypeError, r"to\(device\) takes a device name .* got int 5"),
    "bool of many elements": (lambda: bool(t()), ValueError, r"truth value of a tensor of 6 elements"),
    # Tensor methods
    "sum over a float axis": (lambda: t().sum(axis=1.0), TypeError, r"axis must be None, an int or a tuple of ints, "
                                                                     r"got float 1.0"),
    "mean over an axis twice": (lambda: t().mean(axis=(1, -1)), ValueError, r"axis \(1, -1\) names an axis twice"),
    "sum over a missing axis": (lambda: t().sum(axis=2), ValueError, r"axis 2 is out of range for an array of 2"),
    "reshape to floats": (lambda: t().reshape(2.0, 3), TypeError, r"reshape takes ints"),
    "reshape to the wrong size": (lambda: t().reshape(4, 2), ValueError,
                                  r"cannot reshape a tensor of shape \(2, 3\) \(6 elements\) into \(4, 2\)"),
    "transpose by a wrong permutation": (lambda: t().transpose(0, 0), ValueError,
                                         r"transpose of a 2-d tensor takes a permutation of its 2 axes"),
    # functional
    "labels as a list": (lambda: functional.cross_entropy(t(), [0, 1]), TypeError,
                         r"cross_entropy's labels must be an array or Tensor.*got list"),
    "labels as a Python int": (lambda: functional.cross_entropy(t((1, 3)), 2), TypeError, r"labels .* got int 2"),
    "integer logits": (lambda: functional.cross_entropy(Tensor(np.ones((2, 3), int)), np.array([0, 1])), TypeError,
                       r"cross_entropy's logits must be floating-point, got int64"),
    "bool logits": (lambda: functional.cross_entropy(Tensor(np.ones((2, 3), bool)), np.array([0, 1])), TypeError,
                    r"logits must be floating-point, got bool"),
    "labels out of range": (lambda: functional.cross_entropy(t(), np.array([0, 3])), ValueError,
                            r"labels must lie in \[0, 3\); got \[0, 3\]"),
    "negative labels": (lambda: functional.cross_entropy(t(), np.array([0, -1])), ValueError, r"labels must lie in"),
    "a label per row": (lambda: functional.cross_entropy(t(), np.array([0, 1, 2])), ValueError,
                        r"got 2 rows of logits but 3 labels"),
    "float class indices": (lambda: functional.cross_entropy(t(), np.array([0.0, 1.0])), ValueError,
                            r"labels must be integer class indices of shape \(2,\) or targets of shape \(2, 3\)"),
    "logits of one dimension": (lambda: functional.cross_entropy(t((3,)), np.array([0])), ValueError,
                                r"expects \(N, C\) logits, got shape \(3,\)"),
    "softmax over a tuple of axes": (lambda: functional.softmax(t(), axis=(0, 1)), TypeError,
                                     r"Softmax's axis must be an int, got tuple"),
    "log_softmax over a float axis": (lambda: functional.log_softmax(t(), axis=1.0), TypeError,
                                      r"LogSoftmax's axis must be an int, got float"),
    "softmax of integers": (lambda: functional.softmax(Tensor(np.arange(3))), TypeError,
                            r"Softmax needs floating-point x, got int64"),
    "softmax of a number": (lambda: functional.softmax(t(())), ValueError, r"at least one dimension, got a 0-d"),
    "softmax over a missing axis": (lambda: functional.softmax(t(), axis=2), ValueError, r"axis 2 is out of range"),
    "linear with a 1-d weight": (lambda: functional.linear(t(), t((3,))), ValueError,
                                 r"the weight W must be 2-d \(in_features, out_features\), got shape \(3,\)"),
    "linear of the wrong width": (lambda: functional.linear(t((2, 4)), t((3, 2))), ValueError,
                                  r"the input x must be \(3,\) or \(\.\.\., 3\) .* got shape \(2, 4\)"),
    "linear of a number": (lambda: functional.linear(t(()), t((3, 2))), ValueError, r"got shape \(\)"),
    "linear of mixed dtypes": (lambda: functional.linear(t((2, 3), np.float64), t((3, 2))), TypeError,
                               r"one floating-point dtype \(PyTorch's rule\), got float64, float32"),
    "linear of integer data": (lambda: functional.linear(Tensor(np.ones((2, 3), np.uint8)), t((3, 2))), TypeError,
                               r"got uint8, float32"),
    "linear with a bias that widens it": (lambda: functional.linear(t(), t((3, 2)), t((3,))), ValueError,
                                          r"the bias b must be \(2,\) or broadcast to the output's shape \(2, 2\)"),
    "relu of a string": (lambda: functional.relu("a"), TypeError, r"got str 'a'"),
    # nn
    "Linear(-1, 5)": (lambda: nn.Linear(-1, 5), ValueError, r"Linear's in_features must be 0 or more, got -1"),
    "Linear(3, -2)": (lambda: nn.Linear(3, -2), ValueError, r"out_features must be 0 or more, got -2"),
    "Linear(3.0, 2)": (lambda: nn.Linear(3.0, 2), TypeError, r"in_features must be a whole number, got float 3.0"),
    "Linear(True, 2)": (lambda: nn.Linear(True, 2), TypeError, r"got bool True"),
    "Linear of integers": (lambda: nn.Linear(3, 2, dtype="int32"), TypeError,
                           r"Linear\(dtype=\.\.\.\) takes a floating-point dtype .* got 'int32'"),
    "Linear of no dtype": (lambda: nn.Linear(3, 2, dtype="float"*2), TypeError, r"got 'floatfloat'"),
    "Linear's unknown init": (lambda: nn.Linear(3, 2, init="xavier"), ValueError,
                              r"init must be one of he, glorot, normal or None, got 'xavier'"),
    "Linear's rng a string": (lambda: nn.Linear(3, 2, rng="seed"), TypeError,
                              r"rng must be None, a seed .* or a numpy.random.Generator, got str 'seed'"),
    "Linear on the wrong width": (lambda: linear()(t((4, 5))), ValueError, r"must be \(3,\) or \(\.\.\., 3\)"),
    "Linear on float64 data": (lambda: linear()(t((4, 3), np.float64)), TypeError, r"got float64, float32, float32"),
    "Flatten(1.5)": (lambda: nn.Flatten(1.5), TypeError, r"Flatten's start_dim must be an int, got float 1.5"),
    "Flatten past the last axis": (lambda: nn.Flatten(5)(t((2, 3, 4))), ValueError, r"axis 5 is out of range"),
    "Sequential of a number": (lambda: nn.Sequential(5), TypeError, r"Sequential takes Modules, got int"),
    "Module.to an integer dtype": (lambda: linear().to(dtype="int64"), TypeError,
                                   r"Module.to\(dtype=\.\.\.\) takes a floating-point dtype"),
    "load_state_dict of a list": (lambda: linear().load_state_dict([1]), TypeError,
                                  r"load_state_dict takes a mapping .* got list"),
    "load_state_dict of lists": (lambda: linear().load_state_dict({"weight": [[0.0] * 2] * 3, "bias": [0.0] * 2}),
                                 TypeError, r"load_state_dict: weight must be an array of numbers .* got list"),
    "load_state_dict(strict='no')": (lambda: linear().load_state_dict({}, strict="no"), TypeError,
                                     r"strict=\.\.\.\) takes True or False, got 'no'"),
    "manual_seed of a string": (lambda: nn.manual_seed("x"), TypeError, r"manual_seed\(seed\) must be None, a seed"),
    "init defaults of integers": (lambda: nn.init.defaults(dtype=int).__enter__(), TypeError,
                                  r"defaults\(dtype=\.\.\.\) takes a floating-point dtype"),
    # optimizers
    "lr as a string": (lambda: optim.SGD(pair(), lr="0.1"), TypeError,
                       r"Invalid learning rate: '0.1' \(lr must be a number >= 0, got str\)"),
    "lr negative": (lambda: optim.SGD(pair(), lr=-1), ValueError, r"Invalid learning rate: -1 \(lr must be"),
    "lr set to None": (lambda: setattr(optim.SGD(pair(), lr=0.1), "lr", None), TypeError, r"Invalid learning rate"),
    "Adam(beta1=1.0)": (lambda: optim.Adam(pair(), beta1=1.0), ValueError,
                        r"Invalid beta parameter at index 0: 1.0 \(beta1 must be in \[0, 1\)\)"),
    "Adam(beta2=-0.5)": (lambda: optim.Adam(pair(), beta2=-0.5), ValueError, r"Invalid beta parameter at index 1: -0.5"),
    "Adam(eps=-1e-8)": (lambda: optim.Adam(pair(), eps=-1e-8), ValueError, r"Invalid epsilon value: -1e-08"),
    "Adam(eps=None)": (lambda: optim.Adam(pair(), eps=None), TypeError, r"Invalid epsilon value: None"),
    "MomentumSGD(momentum=1.0)": (lambda: optim.MomentumSGD(pair(), lr=0.1, momentum=1.0), ValueError,
                                  r"Invalid momentum value: 1.0 \(momentum must be in \[0, 1\)\)"),
    "an integer parameter for the optimizer": (lambda: optim.SGD(int_parameter(), lr=0.1), TypeError,
                                               r"parameter 0 must be a leaf Tensor .* floating-point data"),
    "a gradient of the wrong shape": (lambda: with_grad(np.ones(2, np.float32)), ValueError,
                                      r"parameter weight's gradient has shape \(2,\), the parameter \(3, 2\)"),
    "a gradient of the wrong shape, flat": (lambda: with_grad(np.ones((1, 2), np.float32), flat=True), ValueError,
                                            r"gradient has shape \(1, 2\), the parameter \(3, 2\)"),
    "a gradient of another dtype": (lambda: with_grad(np.ones((3, 2))), TypeError,
                                    r"parameter weight's gradient is float64, the parameter float32"),
    "a gradient as a list": (lambda: with_grad([[1.0] * 2] * 3), TypeError, r"\.grad must be an array .* got list"),
    "a parameter replaced by another shape": (replaced_after_construction, ValueError,
                                              r"parameter weight is now float32 \(4, 2\), but was float32 \(3, 2\)"),
    "a schedule's NaN factor": (lambda: optim.SGD(pair(), lr=0.1, schedule=NaNSchedule()), ValueError,
                                r"NaNSchedule.factor\(1\) must be a finite number, got nan"),
    "a schedule of negative steps": (lambda: optim.SGD(pair(), lr=0.1, schedule=NegativeSteps()), ValueError,
                                     r"NegativeSteps.steps must be a whole number >= 0, got -1"),
    "optimizer load_state_dict of a list": (lambda: optim.SGD(pair(), lr=0.1).load_state_dict([]), TypeError,
                                            r"load_state_dict takes a mapping"),
    "a fractional step count": (lambda: adam_state(step_count=np.asarray(1.5)), TypeError,
                                r"step_count must be one whole number, got float64 \(\)"),
    "a negative step count": (lambda: adam_state(step_count=np.asarray(-2)), ValueError, r"step count is negative"),
    "a state entry as a list": (lambda: adam_state(**{"m/0": [[0.0] * 3] * 2}), TypeError,
                                r"optimizer state m/0 must be an array of numbers, got list"),
    "a saved lr that is not a number": (lambda: adam_state(lr=np.asarray("x")), TypeError, r"Invalid learning rate"),
    # no_grad
    "no_grad(5)": (lambda: no_grad(5), TypeError, r"no_grad\(\) takes no arguments, or decorates a function; got int"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_argument_is_named_with_what_was_got(case):
    assert_bad_argument(*CASES[case])


def test_an_unknown_device_is_a_device_error_naming_what_is_accepted():
    with pytest.raises(DeviceError, match=r"unknown device 'tpu'; use 'cpu', 'cuda', 'cuda:N' or 'auto'"):
        t().to("tpu")
    with pytest.raises(DeviceError, match="unknown device"):
        nn.Linear(3, 2, device="tpu")


def test_what_xpgrad_accepts_beyond_pytorch_works():
    """Documented in the docstrings: a bias that broadcasts, probabilities of another dtype (cast to the logits'),
    a state of Tensors, a bare @no_grad, and a softmax over an empty axis (as PyTorch: an empty result)."""
    assert functional.linear(t(), t((3, 2)), t(())).shape == (2, 2)
    logits = t()
    loss = functional.cross_entropy(logits, np.array([[0, 1, 0], [1, 0, 0]]))  # integer probabilities
    loss.backward()
    assert loss.dtype == logits.grad.dtype == np.float32
    model = linear()
    model.load_state_dict({k: Tensor(v.copy()) for k, v in model.state_dict().items()})
    assert functional.softmax(t((2, 0))).shape == (2, 0)
    empty = t((0, 3))
    functional.log_softmax(empty).sum().backward()
    assert empty.grad.shape == (0, 3)
