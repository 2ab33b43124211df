"""Checkpoints of formats 1 and 2, from before the one engine: the hand-written MLP's ``W1, b1, ...``.

Those runs trained the built-in ``mlp``, whose Linear layers hold the same
numbers under PyTorch's names (``1.weight``, ``1.bias``, ...), in the same
order, so the flat optimizer state (``m/all``) splits into the same
parameters. With the notebook's bias column (``input_bias``), ``W1`` is the
first layer's weight with its bias as the last row.
"""

from __future__ import annotations

import numpy

from .. import nn
from ..checkpoint import LEGACY_PARAM_PREFIX, OPTIM_PREFIX


def read_legacy(checkpoint, model, optimizer, input_bias: bool) -> tuple[dict, dict]:
    """``(model state, optimizer state)`` by today's names, from a format-1 or format-2 ``checkpoint``."""
    names = {id(t): name for name, t in model.named_parameters()}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    expected, placed = {}, []
    for i, layer in enumerate(linears, start=1):
        W, b = layer.weight, layer.bias
        if input_bias and i == 1 and b is not None:
            expected["W1"] = ((W.shape[0] + 1, W.shape[1]), W.dtype)
            placed.append(("W1", names[id(W)], slice(None, -1)))
            placed.append(("W1", names[id(b)], -1))
            continue
        expected[f"W{i}"] = (W.shape, W.dtype)
        placed.append((f"W{i}", names[id(W)], slice(None)))
        if b is not None:
            expected[f"b{i}"] = (b.shape, b.dtype)
            placed.append((f"b{i}", names[id(b)], slice(None)))
    stored = checkpoint.read(LEGACY_PARAM_PREFIX, expected, "this MLP")
    state = {name: stored[key][where] for key, name, where in placed}
    return state, _optimizer_state(checkpoint, model, optimizer)


def _optimizer_state(checkpoint, model, optimizer) -> dict:
    """The whole model's flat state arrays (``m/all``) split into each parameter's."""
    params = list(model.named_parameters())
    total = sum(t.size for _, t in params)
    dtype = params[0][1].dtype
    expected = {"step_count": ((), None), **{f"{s}/all": ((total,), dtype) for s in optimizer.state_names}}
    stored = checkpoint.read(OPTIM_PREFIX, expected, "this optimizer")
    state = {"step_count": stored["step_count"]}
    for s in optimizer.state_names:
        offset = 0
        for name, t in params:
            state[f"{s}/{name}"] = numpy.asarray(stored[f"{s}/all"][offset:offset + t.size]).reshape(t.shape)
            offset += t.size
    return state
