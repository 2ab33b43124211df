"""Random expression trees: xpgrad's Tensor against torch.autograd (CPU, float64), leaf by leaf."""

import numpy as np
import pytest

from xpgrad import Tensor, backend, functional

torch = pytest.importorskip("torch", reason="the autodiff oracle needs PyTorch (pip install torch==2.13.0)")

# Leaves: the trees' nodes are (3, 4); the others enter through broadcasting or a product.
SHAPES = {"A": (3, 4), "B": (3, 4), "row": (4,), "col": (3, 1), "s": (), "M": (4, 4)}
SEEDS, DEPTH = 60, 6


class Both:
    """One node built twice, in xpgrad and in torch, from the same random choices."""

    def __init__(self, ours, theirs):
        self.ours, self.theirs = ours, theirs

    def apply(self, ours_fn, theirs_fn, other=None):
        if other is None:
            return Both(ours_fn(self.ours), theirs_fn(self.theirs))
        return Both(ours_fn(self.ours, other.ours), theirs_fn(self.theirs, other.theirs))


def positive(a):
    return a * a + 1.0


def torch_softmax(x, dim):
    """xpgrad's softmax (:class:`xpgrad.ops.Softmax`): the row max subtracted, as a constant (its
    backward treats it as one), and the notebook's 1e-12 in the denominator."""
    e = torch.exp(x - x.max(dim=dim, keepdim=True).values.detach())
    return e / (e.sum(dim=dim, keepdim=True) + 1e-12)


UNARY = {
    "neg": (lambda x: -x, lambda x: -x),
    "exp of a bounded value": (lambda x: (-(x * x)).exp(), lambda x: (-(x * x)).exp()),
    "log": (lambda x: positive(x).log(), lambda x: positive(x).log()),
    "relu": (lambda x: x.relu(), torch.relu),
    "pow": (lambda x: positive(x) ** -0.5, lambda x: positive(x) ** -0.5),
    "square": (lambda x: x**2, lambda x: x**2),
    "scalars": (lambda x: 1.5 - x / 2.0 + 0.25 * x, lambda x: 1.5 - x / 2.0 + 0.25 * x),
    "rdiv": (lambda x: 3.0 / positive(x), lambda x: 3.0 / positive(x)),
    "softmax rows": (functional.softmax, lambda x: torch_softmax(x, dim=-1)),
    "softmax columns": (lambda x: functional.softmax(x, axis=0), lambda x: torch_softmax(x, dim=0)),
    "log_softmax": (functional.log_softmax, lambda x: torch.log_softmax(x, dim=-1)),
    "reshape round trip": (lambda x: x.reshape(2, 6).T.reshape(3, 4), lambda x: x.reshape(2, 6).T.reshape(3, 4)),
    "gather rows": (lambda x: x[[2, 0, 2]], lambda x: x[[2, 0, 2]]),
    "reverse": (lambda x: x[::-1], lambda x: torch.flip(x, dims=[0])),
    "row mean": (lambda x: x - x.mean(axis=1, keepdims=True), lambda x: x - x.mean(dim=1, keepdim=True)),
    "column sum": (lambda x: x * x.sum(axis=0), lambda x: x * x.sum(dim=0)),
}
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / positive(b), lambda a, b: a / positive(b)),
}


def grow(rng, leaves, depth, used):
    """A random (3, 4) expression over the leaves; the kinds of node it used are added to ``used``."""
    if depth == 0 or (depth <= DEPTH - 3 and rng.random() < 0.15):  # the top three levels are always nodes
        return leaves["A" if rng.random() < 0.5 else "B"]
    choice = rng.integers(3)
    if choice == 0:
        name = list(UNARY)[rng.integers(len(UNARY))]
        used.add(name)
        return grow(rng, leaves, depth - 1, used).apply(*UNARY[name])
    if choice == 1:
        left = grow(rng, leaves, depth - 1, used)
        right = grow(rng, leaves, depth - 1, used) if rng.random() < 0.5 else leaves[rng.choice(["row", "col", "s"])]
        if rng.random() < 0.5:
            left, right = right, left
        name = list(BINARY)[rng.integers(len(BINARY))]
        used.add(name)
        return left.apply(*BINARY[name], right)
    used.add("matmul")
    return grow(rng, leaves, depth - 1, used).apply(lambda a, b: a @ b, lambda a, b: a @ b, leaves["M"])


def build(seed, used):
    """The leaves (ours, theirs) and the tree of ``seed``."""
    rng = np.random.default_rng(seed)
    values = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    # Products by M stay O(1), so that softmax does not saturate: at a probability of 1 - 1e-8 its
    # gradient loses 8 digits to cancellation in any implementation, and the comparison would test that.
    values["M"] *= 0.5
    ours = {k: Tensor(v.copy(), requires_grad=True) for k, v in values.items()}
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    tree = grow(rng, {k: Both(ours[k], theirs[k]) for k in values}, DEPTH, used)
    return ours, theirs, tree, rng.normal(size=(3, 4))


def assert_close(got, want, name):
    """Equal to 1e-10 of the largest element, or 1e-12 absolute: the trees add and cancel O(1) terms,
    so a small result carries the rounding of those terms (a wrong derivative is off by O(1))."""
    atol = max(1e-10 * np.abs(want).max(), 1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=atol, err_msg=name)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_tree_matches_torch_autograd(seed):
    ours, theirs, tree, weights = build(seed, set())
    (tree.ours * weights).sum().backward()
    (tree.theirs * torch.tensor(weights)).sum().backward()
    assert_close(tree.ours.data, tree.theirs.detach().numpy(), "forward")
    compared = 0
    for k in ours:
        if theirs[k].grad is None:
            assert ours[k].grad is None, k
            continue
        assert_close(backend.to_numpy(ours[k].grad), theirs[k].grad.numpy(), k)
        compared += 1
    assert compared >= 1


def test_the_trees_use_every_kind_of_node():
    """Over the seeds above, every kind of node occurs (else the test would be weaker than it reads)."""
    used = set()
    for seed in range(SEEDS):
        build(seed, used)
    assert used == set(UNARY) | set(BINARY) | {"matmul"}
