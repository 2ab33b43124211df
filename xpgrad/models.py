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


def cnn(input_shape=(1, 28, 28), num_classes: int = 10, hidden=(128,), *, init: str = "he", input_bias: bool = False,
        channels=(16, 32), dropout: float = 0.25) -> nn.Sequential:
    """A LeNet-style network: per width in ``channels``, Conv2d 5x5 -> MaxPool2d 2 -> ReLU; then Flatten,
    Linear -> ReLU per width in ``hidden``, Dropout(``dropout``) and Linear to the classes.

    ``cnn()`` on (1, 28, 28) images has 80,202 parameters: conv 1->16 (24x24,
    pooled to 12x12), conv 16->32 (8x8, pooled to 4x4), Linear 512->128, Linear
    128->10. Each pool comes before its ReLU: the same values and gradients as
    ReLU then pool (a ReLU is nondecreasing, so it commutes with a maximum, and
    both route a window's gradient to its first maximum or nowhere) for a
    quarter of the ReLU's work. ``init`` draws the convolutions' and Linears'
    weights (He by default); ``input_bias`` is the mlp's notebook layout and is
    refused here.
    """
    if input_bias:
        raise ValueError("the cnn has no notebook layout: input_bias=True is for the mlp")
    c, h, w = input_shape
    layers = []
    for width in channels:
        h, w = (h - 4) // 2, (w - 4) // 2
        if h < 1 or w < 1:
            raise ValueError(f"images of {input_shape[1]}x{input_shape[2]} are too small for the cnn's "
                             f"{len(channels)} blocks of a 5x5 convolution and a 2x2 pool")
        layers += [nn.Conv2d(c, width, 5, init=init), nn.MaxPool2d(2), nn.ReLU()]
        c = width
    layers.append(nn.Flatten())
    sizes = (c * h * w, *hidden)
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out, init=init), nn.ReLU()]
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(sizes[-1], num_classes, init=init))


#: ``--model NAME`` for each built-in model.
BUILTIN = {"mlp": mlp, "cnn": cnn}
