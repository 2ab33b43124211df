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

A node that saved its inputs for its backward records the clock of in-place
updates (:func:`bump_versions`) when it is made; its backward refuses to run
if an input was updated after that, in PyTorch's words.
"""

from __future__ import annotations

import numpy

from . import backend
from .backend import get_array_module
from .backend import graph as _graph
from .grad_mode import is_grad_enabled

ticks = 0  # in-place updates so far, of all tensors together: the clock a node's ``tick`` is read from


def bump_versions(tensors) -> None:
    """Count an in-place update of each tensor's data (the optimizers' and ``Module.load_state_dict``'s): its
    version counter (``[updates, tick of the last]``, shared with its views) moves to a new tick."""
    global ticks
    ticks += 1
    for t in tensors:
        c = t._counter
        if c is None:
            t._counter = [1, ticks]
        else:
            c[0] += 1
            c[1] = ticks


_UFUNCS = {"+=": "add", "-=": "subtract", "*=": "multiply", "/=": "true_divide"}


def in_place(t, other, other_requires_grad: bool, symbol: str):
    """``t (symbol) other`` written into tensor t's data, as PyTorch's in-place operators (``Tensor.__isub__``
    and its kin): one ufunc with ``out=t.data``, and t's version bumped, so a graph that saved t refuses to
    backpropagate through it. ``other`` is a Tensor's data, an array, or a number.

    The tape records no in-place operation: on a parameter (a leaf that requires grad) outside ``no_grad()``
    it is refused, as in PyTorch; where it would have to be recorded otherwise (``h += x`` in a forward pass,
    h or x computed from parameters) it returns NotImplemented, so Python computes ``h = h + x`` instead,
    recorded as before in-place operators existed."""
    if is_grad_enabled() and (t.requires_grad or other_requires_grad):
        if t.requires_grad and t.creator is None:
            raise RuntimeError(f"tensor {symbol} value on a leaf tensor that requires grad (a parameter) would not "
                               f"be recorded; update parameters inside `with xpgrad.no_grad():`, or write "
                               f"`x = x {symbol[0]} value` to record it")
        return NotImplemented
    value = other
    # Numbers stay as they are (a Python float is weakly typed: float32 data stays float32 arithmetic).
    if not (isinstance(value, (bool, int, float, numpy.generic, numpy.ndarray)) or backend.is_cupy_array(value)):
        try:
            value = numpy.asarray(value)
        except (ValueError, TypeError):
            value = numpy.asarray(None)
    kind = numpy.dtype(type(value)).kind if isinstance(value, (bool, int, float)) else value.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"tensor {symbol} value takes a Tensor, an array or a real number, got "
                        f"{type(other).__name__} {other!r:.40}")
    if isinstance(value, numpy.ndarray) or backend.is_cupy_array(value):
        where, here = backend.device_of(value), backend.device_of(t.data)
        if where != here:
            raise ValueError(f"tensor {symbol} value: the value is on {where} but the tensor on {here}; move "
                             "it with xpgrad.to_device first")
        try:
            shape = numpy.broadcast_shapes(value.shape, t.shape)
        except ValueError:
            shape = None
        if shape != t.shape:
            raise ValueError(f"tensor {symbol} value: a value of shape {value.shape} does not broadcast to the "
                             f"tensor's shape {t.shape}")
    result = numpy.result_type(t.dtype, value if isinstance(value, (bool, int, float)) else value.dtype)
    if symbol == "/=" and result.kind in "biu":
        result = numpy.result_type(result, 1.0)  # true division of integers gives floats
    if not numpy.can_cast(result, t.dtype, casting="same_kind"):
        raise TypeError(f"tensor {symbol} value: the {result} result cannot be written into the tensor's "
                        f"{t.dtype} data; make a floating-point tensor first, e.g. Tensor(t.data.astype('float32'))")
    getattr(get_array_module(t.data), _UFUNCS[symbol])(t.data, value, out=t.data)
    bump_versions((t,))
    return t


def backward(t, grad) -> None:
    """``Tensor.backward(grad)``: ``grad`` (an array, or None for 1) seeds the backward pass from t."""
    if not t.requires_grad:
        raise ValueError("backward() on a tensor that does not require gradients: no input of the "
                         "computation had requires_grad=True, or it ran under no_grad()")
    if grad is None:
        if t.data.size != 1:
            raise ValueError(f"backward() without a gradient needs a one-element tensor (a loss), got shape "
                             f"{t.shape}; pass grad= (an array of that shape) or reduce it first, e.g. .sum()")
        # A leaf keeps its gradient as .grad, which must not be the shared seed.
        seed = unit_seed(t.data) if t.creator is not None else get_array_module(t.data).ones_like(t.data)
    else:
        xp = get_array_module(t.data, grad)  # the same device, or DeviceError
        seed = xp.array(grad, dtype=t.dtype)  # a copy: .grad never aliases the caller's array
        if seed.shape != t.shape:
            raise ValueError(f"grad has shape {seed.shape}, but the tensor has shape {t.shape}")
    if t.creator is None:
        accumulate(t, seed)
    else:
        run_backward(t.creator, seed)


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
    inputs = node.inputs
    recorded = node.tick  # the clock of in-place updates when the node was recorded (None: it saved no input)
    if recorded is not None and recorded != ticks:  # an update since: was it one of the inputs?
        for x in inputs:
            if x._counter is not None and x._counter[1] > recorded:
                raise RuntimeError(_modified(node, x))
    grads = node.backward(gy) if gy is not None else (None,) * len(inputs)
    if len(grads) != len(inputs):
        raise RuntimeError(f"{type(node).__name__}.backward returned {len(grads)} gradients for {len(inputs)} inputs")
    for x, gx in zip(inputs, grads):
        producer = x.creator
        if gx is not None:
            # One tuple compare per gradient (and a dtype identity test; NumPy's dtypes are singletons): a
            # Function that gets a shape wrong is caught here, not by a wrong update later.
            data = x.data
            if gx.shape != data.shape or (gx.dtype is not data.dtype and gx.dtype != data.dtype):
                raise RuntimeError(_invalid_gradient(node, next(i for i, g in enumerate(grads) if g is gx), x, gx))
        if producer is None:
            if gx is not None and x.requires_grad:
                accumulate(x, gx)
            continue
        if gx is not None:
            _hand(producer, gx, gy, grads)
        pending[producer] -= 1
        if pending[producer] == 0:
            ready.append(producer)


def _modified(node, x) -> str:
    """PyTorch's words for a saved input changed in place between the forward and the backward pass."""
    i = next(i for i, y in enumerate(node.inputs) if y is x)
    return (f"one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"input {i} of {type(node).__name__} (a {x.dtype} Tensor of shape {tuple(x.shape)}) is at version "
            f"{x._counter[0]}, updated after this graph was recorded (by an optimizer step or load_state_dict); "
            "run the forward pass again after the update")


def _invalid_gradient(node, i: int, x, gx) -> str:
    """PyTorch's words for a Function whose backward returned a gradient unlike its input."""
    return (f"Function {type(node).__name__} returned an invalid gradient at index {i} - got {gx.dtype} "
            f"{tuple(gx.shape)} but expected {x.dtype} {tuple(x.shape)}, the input's dtype and shape")
