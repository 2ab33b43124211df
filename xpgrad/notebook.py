"""The original teaching notebook's NumPy ops, kept as a reference.

These are the notebook's classes as it wrote them (``np.`` calls, the (N, C, C)
softmax Jacobian, no max subtraction), so that tests and benchmarks can compare
xpgrad against the code it grew from. They are CPU-only by design and are not
used by xpgrad's training code.
"""

import numpy as np


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
