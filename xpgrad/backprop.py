"""The backward pass over a recorded graph: topological order without recursion, and gradient accumulation.

A node (:class:`xpgrad.tensor.Function`) has one output, so the gradient
flowing into that output is kept in the node's ``gy`` slot while the pass
runs: no tensor -> gradient map is needed, only a count of each node's
pending consumers.

Gradients are never updated in place. A node's gradient may be the very
array another node received (``a + b`` hands ``gy`` to both), so every sum
is a new array.
"""

from __future__ import annotations


def accumulate(t, g) -> None:
    """Add ``g`` to ``t.grad`` out of place, in ``t``'s dtype, as a writable array."""
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    if t.grad is None:
        # Broadcast views (from sum's backward) are read-only; a user may want to edit .grad.
        t.grad = g if g.flags.writeable else g.copy()
    else:
        t.grad = t.grad + g


def _consumers(root) -> dict:
    """For every node reachable from ``root``, how many recorded edges lead out of it (towards root)."""
    pending = {root: 0}
    stack = [root]
    while stack:
        for x in stack.pop().inputs:
            node = x.creator
            if node is None:
                continue
            if node in pending:
                pending[node] += 1
            else:
                pending[node] = 1
                stack.append(node)
    return pending


def run_backward(root, seed) -> None:
    """Propagate ``seed`` (the gradient of root's output) to every leaf, in topological order.

    A node runs once all the nodes that consume its output have run, so its
    ``gy`` is complete; that order comes from counting consumers first (Kahn's
    algorithm), with an explicit stack instead of recursion.
    """
    pending = _consumers(root)
    root.gy = seed
    ready = [root]
    try:
        while ready:
            _run_node(ready.pop(), pending, ready)
    except BaseException:
        for node in pending:  # a failed pass leaves no partial sums behind for the next one
            node.gy = None
        raise


def _run_node(node, pending: dict, ready: list) -> None:
    """Call one node's backward; hand each input's gradient to its producer (or its ``.grad``, for a leaf)."""
    gy, node.gy = node.gy, None
    if node.retained is not None and gy is not None:
        kept = node.retained()
        if kept is not None:
            accumulate(kept, gy)
    grads = node.backward(gy) if gy is not None else (None,) * len(node.inputs)
    for x, gx in zip(node.inputs, grads):
        producer = x.creator
        if producer is None:
            if gx is not None and x.requires_grad:
                accumulate(x, gx)
            continue
        if gx is not None:
            producer.gy = gx if producer.gy is None else producer.gy + gx
        pending[producer] -= 1
        if pending[producer] == 0:
            ready.append(producer)
