"""The backward pass over a recorded graph: topological order without recursion, and gradient accumulation.

A node (:class:`xpgrad.tensor.Function`) has one output, so the gradient
flowing into that output is kept in the node's ``gy`` slot while the pass
runs: no tensor -> gradient map is needed, only a count of each node's
pending consumers.

Gradients flowing between nodes are not updated in place, unless the pass
knows the array is the receiving node's alone: a node's gradient may be the
very array another node received (``a + b`` hands ``gy`` to both), a view of
one, or a retained ``.grad``. A node whose ``gy`` is a new array made for it
alone gets ``owned = True`` (:func:`_hand`), and its backward may then write
into ``gy`` (as :class:`xpgrad.functions.LinearReLU` does), saving a copy. A leaf's ``.grad`` is its own: a
parameter made flat by :func:`xpgrad.nn.flatten_parameters` receives its
gradient in its view of the flat gradient buffer, written there directly by
the Function that computes it when it can (:func:`grad_destination`), and
added to in place when gradients accumulate.
"""

from __future__ import annotations

import numpy

from . import backend
from .backend import get_array_module
from .backend import graph as _graph

_unit_seeds = {}
_unit_ids = set()  # id() of every seed, for is_unit's one set lookup


def unit_seed(like):
    """A ones array of ``like``'s shape, dtype and device, made once and reused: the gradient
    ``loss.backward()`` starts from. Reusing it keeps a training step from filling a new one each time (a
    kernel on a GPU), and lets a Function see that its output's gradient is exactly 1 (:func:`is_unit`)."""
    device = backend.device_of(like)
    key = (device, like.dtype, like.shape)
    seed = _unit_seeds.get(key)
    if seed is None:
        with device:
            seed = _unit_seeds[key] = device.xp.ones(like.shape, dtype=like.dtype)
        _unit_ids.add(id(seed))  # seeds live as long as the process, so their ids stay theirs
        if device.xp is numpy:
            seed.flags.writeable = False  # nothing may write into a shared seed
    return seed


def is_unit(gy) -> bool:
    """Whether ``gy`` is a seed of :func:`unit_seed`: the gradient of a loss with respect to itself, 1."""
    return id(gy) in _unit_ids


def grad_destination(node, i: int):
    """Where input ``i`` of ``node`` may receive its gradient directly: its view of a flat gradient buffer,
    when it is a leaf parameter with no gradient yet in this pass, used only once by ``node``; else None.

    A Function whose backward can write into a given array (``out=``) asks
    here, so a flat parameter's gradient costs no copy.
    """
    x = node.inputs[i]
    if x._grad_slot is None or x.grad is not None or x.creator is not None or node.inputs.count(x) > 1:
        return None
    return x._grad_slot


def accumulate(t, g) -> None:
    """Add ``g`` to ``t.grad``, in ``t``'s dtype, as a writable array.

    Out of place, except into a flat parameter's own view of the gradient buffer.
    """
    if g.dtype != t.data.dtype:
        g = g.astype(t.data.dtype)
    slot = t._grad_slot
    if slot is not None:
        if t.grad is None:
            if g is not slot:
                slot[...] = g
            t.grad = slot
        elif t.grad is slot:
            get_array_module(slot, g).add(slot, g, out=slot)
        else:  # the user set .grad to an array of their own: copy it in, then add
            slot[...] = t.grad
            get_array_module(slot, g).add(slot, g, out=slot)
            t.grad = slot
    elif t.grad is None:
        # Broadcast views (from sum's backward) are read-only; a user may want to edit .grad.
        t.grad = g if g.flags.writeable else g.copy()
    else:
        t.grad = t.grad + g


def _hand(producer, gx, gy, grads) -> None:
    """Give ``gx`` to ``producer``, adding it to what it has; ``owned`` when the result is producer's alone:
    a new array (not a view, not the giving node's own ``gy``, not given to another input as well)."""
    if producer.gy is None:
        producer.gy = gx
        producer.owned = gx is not gy and gx.base is None and _once(gx, grads)
    else:
        producer.gy = producer.gy + gx
        producer.owned = True


def _once(g, grads) -> bool:
    """Whether ``g`` is exactly one of ``grads`` (by identity: arrays' ``==`` compares elements)."""
    seen = 0
    for other in grads:
        if other is g:
            seen += 1
    return seen == 1


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
    root.gy, root.owned = seed, False
    ready = [root]
    try:
        while ready:
            node = ready.pop()
            if _graph.recording:  # name the node if its backward cannot be recorded in a CUDA graph
                with _graph.recording_op(f"{type(node).__name__} (backward)"):
                    _run_node(node, pending, ready)
            else:
                _run_node(node, pending, ready)
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
            node.owned = False  # .grad now holds gy itself
    grads = node.backward(gy) if gy is not None else (None,) * len(node.inputs)
    for x, gx in zip(node.inputs, grads):
        producer = x.creator
        if producer is None:
            if gx is not None and x.requires_grad:
                accumulate(x, gx)
            continue
        if gx is not None:
            _hand(producer, gx, gy, grads)
        pending[producer] -= 1
        if pending[producer] == 0:
            ready.append(producer)
