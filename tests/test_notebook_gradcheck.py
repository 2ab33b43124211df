"""The notebook's "Final Gradient Check" cell, with xpgrad's ops, against independent autodiff.

The notebook compared one gradient with TensorFlow; here every gradient of the
chain is compared with PyTorch (CPU, float64), to 1e-10 relative.
"""

import numpy as np
import pytest

from xpgrad import backend, notebook

torch = pytest.importorskip("torch", reason="the autodiff oracle needs PyTorch (pip install torch==2.13.0)")

# The notebook's variable -> the tensor its gradient belongs to in the torch graph.
PAIRS = {
    "h2_log_grad": "prob",
    "h2_soft_grad": "h2",
    "h2_grad": "h1_relu",
    "W2_grad": "W2",
    "h1_relu_grad": "h1",
    "h1_grad": "x",
    "W1_grad": "W1",
}


def torch_chain(x, W1, W2, label):
    """The same function in PyTorch: sum(label * log(softmax(relu(x W1) W2) + 1e-12))."""
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in {"x": x, "W1": W1, "W2": W2}.items()}
    t = {**leaves}
    t["h1"] = leaves["x"] @ leaves["W1"]
    t["h1_relu"] = torch.relu(t["h1"])
    t["h2"] = t["h1_relu"] @ leaves["W2"]
    t["prob"] = torch.softmax(t["h2"], dim=1)
    for name in ("h1", "h1_relu", "h2", "prob"):
        t[name].retain_grad()
    # The notebook's Log adds 1e-12 inside the log; the oracle computes the same function.
    loss = (torch.tensor(label) * torch.log(t["prob"] + 1e-12)).sum()
    loss.backward()
    return {name: t[name].grad.numpy() for name in PAIRS.values()}


def assert_close_relative(actual, expected, name, rtol=1e-10):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 1e-3 * scale, err_msg=name)


@pytest.mark.parametrize("seed", range(5))
def test_every_gradient_matches_torch(xp, seed):
    inputs = notebook.inputs(seed, xp)
    ours = notebook.chain(*inputs)
    ref = torch_chain(*(backend.to_numpy(a) for a in inputs))
    for name, tensor_name in PAIRS.items():
        assert ours[name].dtype == np.float64
        assert_close_relative(backend.to_numpy(ours[name]), ref[tensor_name], name)


def test_printed_gradient_is_label_over_probability():
    """What the cell printed: label / (p + 1e-12) at each row's labelled class, zero elsewhere."""
    x, W1, W2, label = notebook.inputs(0)
    grads = notebook.chain(x, W1, W2, label)
    h2 = np.maximum(x @ W1, 0) @ W2
    p = np.exp(h2) / np.exp(h2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(grads["h2_log_grad"], label / (p + 1e-12), rtol=1e-10)
    assert np.count_nonzero(grads["h2_log_grad"]) == 5


def test_matches_the_notebooks_own_implementation():
    """xpgrad's ops reproduce the original notebook classes (Jacobian softmax, no max shift)."""
    x, W1, W2, label = notebook.inputs(3)
    ours = notebook.chain(x, W1, W2, label)
    mul1, mul2, relu = notebook.Matmul(), notebook.Matmul(), notebook.Relu()
    softmax, log = notebook.Softmax(), notebook.Log()
    log.forward(softmax.forward(mul2.forward(relu.forward(mul1.forward(x, W1)), W2)))
    g_prob = log.backward(label)
    g_h2 = softmax.backward(g_prob)
    g_h1r, g_W2 = mul2.backward(g_h2)
    g_x, g_W1 = mul1.backward(relu.backward(g_h1r))
    for name, ref in [("h2_log_grad", g_prob), ("h2_soft_grad", g_h2), ("W2_grad", g_W2),
                      ("W1_grad", g_W1), ("h1_grad", g_x)]:
        assert_close_relative(ours[name], ref, name)
