"""Everything that is "the notebook": its code, and its gradient-check cell.

* The notebook's classes as it wrote them (``np.`` calls, the (N, C, C)
  softmax Jacobian, no max subtraction), so that tests and benchmarks can
  compare xpgrad against the code it grew from. They are CPU-only by design.
* Its "Final Gradient Check" cell run with xpgrad's ops (:func:`chain`, on
  either device), and the same function in PyTorch (:func:`torch_gradients`)
  as the independent autodiff it was checked against.
"""

from __future__ import annotations

import numpy as np

from . import backend, ops


class Matmul:
    def __init__(self):
        self.mem = {}

    def forward(self, x, W):
        self.mem = {"x": x, "W": W}
        return np.matmul(x, W)

    def backward(self, grad_y):
        x, W = self.mem["x"], self.mem["W"]
        return np.dot(grad_y, W.T), np.dot(x.T, grad_y)


class Relu:
    def __init__(self):
        self.mem = {}

    def forward(self, x):
        self.mem["x"] = x
        return np.where(x > 0, x, np.zeros_like(x))

    def backward(self, grad_y):
        return np.where(self.mem["x"] > 0, grad_y, np.zeros_like(grad_y))


class Softmax:
    def __init__(self):
        self.epsilon = 1e-12
        self.mem = {}

    def forward(self, x):
        x_exp = np.exp(x)
        partition = np.sum(x_exp, axis=1, keepdims=True)
        out = x_exp / (partition + self.epsilon)
        self.mem["out"] = out
        self.mem["x_exp"] = x_exp
        return out

    def backward(self, grad_y):
        s = self.mem["out"]
        sisj = np.matmul(np.expand_dims(s, axis=2), np.expand_dims(s, axis=1))  # (N, C, C)
        tmp = np.squeeze(np.matmul(np.expand_dims(grad_y, axis=1), sisj), axis=1)  # (N, C)
        return -tmp + grad_y * s


class Log:
    def __init__(self):
        self.epsilon = 1e-12
        self.mem = {}

    def forward(self, x):
        self.mem["x"] = x
        return np.log(x + self.epsilon)

    def backward(self, grad_y):
        return 1.0 / (self.mem["x"] + 1e-12) * grad_y


class Model:
    """The notebook's ``myModel``: 784(+bias)-100-10, W ~ N(0, 1), float64."""

    def __init__(self, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        self.W1 = rng.normal(size=[28 * 28 + 1, 100])
        self.W2 = rng.normal(size=[100, 10])
        self.mul_h1, self.mul_h2 = Matmul(), Matmul()
        self.relu, self.softmax, self.log = Relu(), Softmax(), Log()

    def forward(self, x):
        x = x.reshape(-1, 28 * 28)
        x = np.concatenate([x, np.ones(shape=[x.shape[0], 1])], axis=1)
        h1 = self.mul_h1.forward(x, self.W1)
        h2 = self.mul_h2.forward(self.relu.forward(h1), self.W2)
        self.h2_log = self.log.forward(self.softmax.forward(h2))

    def backward(self, label):
        g = self.softmax.backward(self.log.backward(-label))
        g, self.W2_grad = self.mul_h2.backward(g)
        _, self.W1_grad = self.mul_h1.backward(self.relu.backward(g))


def train_one_step(model, x, y, lr=1e-5):
    """The notebook's full-batch step: returns (mean loss, accuracy) of the forward pass."""
    model.forward(x)
    model.backward(y)
    model.W1 -= lr * model.W1_grad
    model.W2 -= lr * model.W2_grad
    loss = np.mean(np.sum(-model.h2_log * y, axis=1))
    accuracy = np.mean(np.argmax(model.h2_log, axis=1) == np.argmax(y, axis=1))
    return loss, accuracy


# ---------------------------------------------------------------------------
# The "Final Gradient Check" cell, with xpgrad's ops


def chain(x, W1, W2, label):
    """Run the notebook's gradient-check chain with xpgrad's ops (on the inputs' device).

    Forward: ``log(softmax(relu(x @ W1) @ W2))``; backward from ``label``
    (the gradient of ``sum(label * log_prob)``). Returns every gradient of
    the chain by the notebook's variable names.
    """
    mul_h1, mul_h2, relu = ops.Matmul(), ops.Matmul(), ops.Relu()
    softmax, log = ops.Softmax(), ops.Log()
    h1 = mul_h1.forward(x, W1)
    h2 = mul_h2.forward(relu.forward(h1), W2)
    log.forward(softmax.forward(h2))
    grads = {"h2_log_grad": log.backward(label)}
    grads["h2_soft_grad"] = softmax.backward(grads["h2_log_grad"])
    grads["h2_grad"], grads["W2_grad"] = mul_h2.backward(grads["h2_soft_grad"])
    grads["h1_relu_grad"] = relu.backward(grads["h2_grad"])
    grads["h1_grad"], grads["W1_grad"] = mul_h1.backward(grads["h1_relu_grad"])
    return grads


def inputs(seed=0, xp=None):
    """The cell's inputs: x (5, 6), W1 (6, 5), W2 (5, 6) ~ N(0, 1) and its one-hot labels.

    Made on the host, then moved to the GPU when ``xp`` is CuPy.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=[5, 6])
    W1 = rng.normal(size=[6, 5])
    W2 = rng.normal(size=[5, 6])
    label = np.zeros_like(x)
    for row, col in enumerate([1, 0, 3, 5, 0]):
        label[row, col] = 1.0
    arrays = (x, W1, W2, label)
    if xp is not None and xp is not np:
        arrays = tuple(backend.to_device(a, "cuda") for a in arrays)
    return arrays


def torch_gradients(torch, x, W1, W2, label) -> dict:
    """The cell's gradients by PyTorch's autograd, for the probabilities, W1, W2 and x.

    The cell printed the probabilities' gradient; the notebook compared it
    with TensorFlow's. ``torch`` is the imported module (an optional oracle).
    """
    xt, W1t, W2t = (torch.tensor(a, requires_grad=True) for a in (x, W1, W2))
    prob = torch.softmax(torch.relu(xt @ W1t) @ W2t, dim=1)
    prob.retain_grad()
    (torch.tensor(label) * torch.log(prob + 1e-12)).sum().backward()
    return {"h2_log_grad": prob.grad.numpy(), "W1_grad": W1t.grad.numpy(), "W2_grad": W2t.grad.numpy(),
            "h1_grad": xt.grad.numpy()}


def max_relative_difference(grads: dict, reference: dict) -> float:
    """The largest ``max|a - b| / max|b|`` over the gradients ``reference`` holds."""
    worst = 0.0
    for name, ref in reference.items():
        got = backend.to_numpy(grads[name])
        worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
    return worst
