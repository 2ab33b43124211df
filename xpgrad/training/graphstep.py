"""The device-resident training step: each step of an epoch is the same kernels on the same arrays,
so that on a GPU a CUDA graph can record it once and replay it for every step.

Everything that changes from step to step lives in device memory, as with
PyTorch's ``capturable=True`` optimizers (:class:`EpochArrays`):

* the epoch's batch order, drawn on the host as in the eager step and copied
  in once per epoch;
* per step of the epoch, the learning rate and Adam's bias corrections,
  computed on the host exactly as the eager step computes them, also copied
  in once per epoch (:meth:`xpgrad.optim.Optimizer.schedule_row`);
* a step counter, which the loss kernel advances, and the sums of the loss
  and of correct predictions, read by the host only at the logging interval.

On the CPU the same step runs on NumPy 0-d arrays through
:mod:`xpgrad.generic`, and computes exactly what the eager step computes, bit
for bit (``tests/test_graphstep.py``).

Kernels per step, for the default 784-100-10 MLP with Adam (with
``xpgrad.kernels``; the gemms are one cuBLAS kernel each at batch 128):

==========================================  =====
gather the batch (inputs and labels)        1
layer 1: x @ W1; + b1 and ReLU              1 + 1
layer 2: h @ W2                             1
loss: + b2, cross-entropy forward and
backward, loss and correct sums, step += 1  1
layer 2 backward: gW2, gb2, g @ W2.T        1 + 1 + 1
ReLU backward                               1
layer 1 backward: gW1, gb1                  1 + 1
Adam, lr and bias corrections from memory   1
total                                       12
==========================================  =====

Each hidden layer more adds six (two gemms forward and backward, bias + ReLU,
ReLU backward, the bias gradient, the gemm for the weight gradient).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy

from .. import backend
from ..backend import gemm, get_ops
from ..errors import one_line


def unsupported(config) -> str | None:
    """Why the device-resident step cannot train ``config``, or None when it can."""
    if config.head != "cross_entropy":
        return f"the {config.head} loss head is not part of the graph step (only cross_entropy is)"
    if config.input_bias:
        return "the notebook's bias column is not part of the graph step"
    return None


class GraphStepFailed(RuntimeError):
    """The first device-resident step on a GPU failed before it changed the parameters."""


class EpochArrays:
    """What changes from step to step, in device memory: batch order, schedule, counters."""

    def __init__(self, xp, dtype, n: int, steps: int, shuffled: bool):
        self.order = xp.zeros(n, dtype=numpy.int64) if shuffled else None
        self.schedule = xp.zeros((steps, 3), dtype=numpy.float64)
        self.step = xp.zeros((), dtype=numpy.int64)
        self.loss_sum = xp.zeros((), dtype=dtype)
        self.correct = xp.zeros((), dtype=numpy.int64)

    def begin_epoch(self, order, schedule) -> None:
        """Copy in the epoch's host ``order`` (or None) and ``schedule``, and zero the counters."""
        if self.order is not None:
            backend.copy_from_host(self.order, order)
        backend.copy_from_host(self.schedule, schedule)
        for counter in (self.step, self.loss_sum, self.correct):
            counter.fill(0)


class ResidentStep:
    """One training step on batches of ``rows`` rows, on arrays allocated once, here.

    It calls only the functions of :func:`xpgrad.backend.get_ops` and
    :func:`xpgrad.backend.gemm`, each once per use, with arguments that do
    not change from step to step.
    """

    def __init__(self, model, optimizer, arrays: EpochArrays, data, rows: int, batch_size: int):
        xp, dtype, sizes = model.xp, model.dtype, model.sizes
        self.ops, self.xp, self.arrays = get_ops(xp), xp, arrays
        self.optimizer, self.batch_size, self.data, self.rows = optimizer, batch_size, data, rows
        self.flat_grads = {"all": model.grad_buffer}
        with model.device:
            if arrays.order is None:  # the full batch: the data itself
                self.x, self.t = data
            else:
                self.x = xp.empty((rows, sizes[0]), dtype=dtype)
                self.t = xp.zeros(rows, dtype=data[1].dtype)
            self.h = [xp.empty((rows, width), dtype=dtype) for width in sizes[1:-1]]
            self.z = xp.empty((rows, sizes[-1]), dtype=dtype)
            self.g = [xp.empty((rows, width), dtype=dtype) for width in sizes[1:]]
            self.work = self.ops.softmax_cross_entropy_step_work(self.z)
        layers = range(1, model.num_layers + 1)
        self.W = [model.params[f"W{i}"] for i in layers]
        self.b = [model.params[f"b{i}"] for i in layers]
        self.gW = [model.grads[f"W{i}"] for i in layers]
        self.gb = [model.grads[f"b{i}"] for i in layers]

    def __call__(self) -> None:
        ops, xp, arrays = self.ops, self.xp, self.arrays
        if arrays.order is not None:
            ops.gather_batch(*self.data, arrays.order, arrays.step, self.batch_size, self.x, self.t)
        h = self.x
        for W, b, out in zip(self.W, self.b, self.h):
            gemm(xp, h, W, out)
            h = ops.bias_relu_forward(out, b)
        gemm(xp, h, self.W[-1], self.z)
        ops.softmax_cross_entropy_step(self.z, self.b[-1], self.t, self.g[-1], arrays.loss_sum, arrays.correct,
                                       arrays.step, work=self.work)
        for i in reversed(range(len(self.W))):
            g = self.g[i]
            gemm(xp, (self.h[i - 1] if i else self.x).T, g, self.gW[i])
            ops.bias_grad(g, self.gb[i])
            if i:
                gemm(xp, g, self.W[i].T, self.g[i - 1])
                ops.relu_backward(self.h[i - 1], self.g[i - 1], out=self.g[i - 1])
        self.optimizer.step_resident(self.flat_grads, arrays.schedule, arrays.step)


class GraphRunner:
    """Runs an epoch's device-resident steps: a full-batch step, and one for a partial last batch.

    With ``capture`` (on a GPU), each step runs once eagerly on a stream of its
    own (compiling its kernels), is then recorded as a CUDA graph, and is
    replayed from then on. If a recording fails, a warning says why, and the
    steps go on eagerly: the same kernels, launched one by one.
    """

    def __init__(self, trainer, capture: bool):
        n, b, steps = trainer.n_train, trainer.batch_size, trainer.steps_per_epoch
        model = trainer.model
        with trainer.device:
            self.arrays = EpochArrays(trainer.xp, trainer.dtype, n, steps, shuffled=b < n)
        data = (trainer.x_train, trainer.t_train)
        self.steps = [ResidentStep(model, trainer.optimizer, self.arrays, data, min(b, n), b)]
        last = n - (steps - 1) * b
        if last != b and b < n:
            self.steps.append(ResidentStep(model, trainer.optimizer, self.arrays, data, last, b))
        self.full_steps = steps - (len(self.steps) - 1)
        self.graphs = [None] * len(self.steps)
        self.capture, self.failed = capture, None
        if capture and not get_ops(trainer.xp).CAPTURE_SAFE:
            self._give_up("the generic kernels read the step counter on the host, which a CUDA graph cannot record")
        self.stream = backend.capture_stream() if capture else None
        self._kept = []  # memory allocated while recording, held while the graphs live
        self._started = False

    @contextlib.contextmanager
    def epoch(self, order, schedule):
        """Around an epoch: the capture stream made current, the epoch's arrays copied in, and the step
        counter checked at the end (it must have counted every step)."""
        with self.stream if self.stream is not None else contextlib.nullcontext():
            self.arrays.begin_epoch(order, schedule)
            yield self.arrays
            counted = int(self.arrays.step)
        if counted != len(schedule):
            raise RuntimeError(f"the device step counter reads {counted} after {len(schedule)} steps")

    def run(self, k: int) -> None:
        """Run step ``k`` of the epoch: replay its graph, or run it eagerly (and record it, once)."""
        i = 0 if k < self.full_steps else 1
        if self.graphs[i] is not None:
            self.graphs[i].launch(self.stream)
            return
        if self.capture and not self._started:
            try:
                self.steps[i]()
            except Exception as exc:  # compile or launch errors: nothing was updated yet
                raise GraphStepFailed(one_line(exc)) from exc
        else:
            self.steps[i]()
        self._started = True
        if self.capture and self.failed is None:
            self._record(i)

    def _record(self, i: int) -> None:
        try:
            self.graphs[i] = backend.capture_graph(self.steps[i], self.stream, keep=self._kept)
        except Exception as exc:
            self._give_up(f"recording the training step as a CUDA graph failed ({one_line(exc)})")

    def _give_up(self, reason: str) -> None:
        """Run every step eagerly from now on, and say why (once)."""
        self.failed, self.graphs = reason, [None] * len(self.steps)
        warnings.warn(f"{reason}; training goes on without graphs", RuntimeWarning, stacklevel=3)
