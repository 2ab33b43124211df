"""The built-in models, by the name ``xpgrad train --model`` knows them: each a function returning an ``nn.Module``.

Every one is called as ``NAME(input_shape=(1, 28, 28), num_classes=10, ...)``
with the dataset's real values, as a model file's function is, and maps a
``(N, *input_shape)`` Tensor to ``(N, num_classes)`` logits.
"""

from __future__ import annotations

import math

from . import nn
from .nn.init import init_weight
from .tensor import no_grad


def mlp(input_shape=(1, 28, 28), num_classes: int = 10, hidden=(100,), *, init: str = "he",
        input_bias: bool = False) -> nn.Sequential:
    """The notebook's MLP, generalized: Flatten, then Linear -> ReLU per hidden width, then Linear.

    ``mlp()`` is 784-100-10 with He initialization and zero biases. With
    ``input_bias`` it is the notebook's exact layout: no bias on the layers
    after the first, and the first layer's bias drawn with its weight, as the
    last row of one (in + 1, out) matrix (the notebook appended a column of
    ones to the input and multiplied by that matrix; ``x @ W + b`` is the same
    product without the copy). Weights are drawn, layer by layer, from
    :mod:`xpgrad.nn.init`'s generator.
    """
    sizes = (math.prod(input_shape), *hidden, num_classes)
    rng = nn.init.generator()
    layers = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if input_bias and i == 0:
            layer = nn.Linear(fan_in, fan_out, init=None)
            drawn = init_weight(rng, fan_in + 1, fan_out, init)
            with no_grad():
                layer.weight.data[...] = drawn[:-1]
                layer.bias.data[...] = drawn[-1]
        else:
            layer = nn.Linear(fan_in, fan_out, bias=not input_bias, init=init, rng=rng)
        layers += [layer, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


#: ``--model NAME`` for each built-in model.
BUILTIN = {"mlp": mlp}
