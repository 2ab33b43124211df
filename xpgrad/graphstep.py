"""The graph step: a training step recorded once as a CUDA graph, and replayed.

    x, t = cupy.empty((128, 784), "float32"), cupy.empty(128, "int64")   # fixed input buffers

    def train_step():
        loss = functional.cross_entropy(model(Tensor(x)), t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    step = xpgrad.graph_step(train_step, "cuda")
    for xb, tb in batches:
        x[...], t[...] = xb, tb          # refill the buffers the recording read
        loss = step()                    # the same arrays every time, refreshed by each replay

On a GPU, the first call runs ``fn`` eagerly on a stream of its own (which
compiles its kernels and fills the memory pool), then records it as a CUDA
graph without running it; every later call replays the graph on the current
stream, ordered after whatever was queued there (such as the refills). A
replay launches the recorded kernels with no Python, no host sync and no
allocation, on the addresses recorded: so ``fn`` must read its inputs from
fixed buffers, and everything that changes from step to step must live in
device memory, as the optimizers' learning rate and step count do.

On the CPU there is nothing to record: each call runs ``fn`` as it is, so
the results are those of calling it, bit for bit.

A step that cannot be recorded (it reads a value on the host, calls a
batched matrix product, or runs the generic code with ``XPGRAD_FUSED=0``,
which reads its counters on the host) raises :class:`GraphCaptureError`
naming the op; with ``fallback=True`` it warns once instead and runs eagerly
from then on.
"""

from __future__ import annotations

import warnings

from . import backend
from .backend import graph as _graph
from .errors import GraphCaptureError


class GraphStep:
    """``fn`` (no arguments) recorded on its first call on a GPU and replayed after: see the module docstring.

    ``result``: what the recorded call returned (arrays that each replay
    refreshes). ``graph``: the recorded ``cupy.cuda.Graph``, None until then
    and on the CPU. ``failed``: why the step runs eagerly after a fallback.
    """

    def __init__(self, fn, device, *, fallback: bool = False, record: bool | None = None):
        self.fn = fn
        self.device = backend.get_device(device)
        self.fallback = fallback
        # record=True lets tests record on the CPU with a stand-in for CUDA graph capture.
        self.record = self.device.is_gpu if record is None else record
        self.graph = self.result = self.failed = None
        self._stream = None
        self._kept = []  # memory allocated while recording, held as long as the graph

    def __call__(self):
        if self.graph is not None:
            _graph.launch(self.graph)
            return self.result
        if not self.record or self.failed is not None:
            return self.fn()
        if not backend.get_ops(self.device.xp).CAPTURE_SAFE:
            self._give_up(GraphCaptureError(
                "the generic code (XPGRAD_FUSED=0) reads its counters on the host, which a CUDA graph cannot record"))
            return self.fn()
        if self._stream is None:
            self._stream = backend.capture_stream()
        with _graph.on_stream(self._stream):  # compiles the kernels and fills this stream's memory pool
            result = self.fn()
        returned = []
        try:
            self.graph = backend.capture_graph(lambda: returned.append(self.fn()), self._stream, keep=self._kept)
        except GraphCaptureError as exc:
            self._give_up(exc)
        except Exception as exc:  # the driver refused the recording
            self._give_up(GraphCaptureError(f"recording the step as a CUDA graph failed ({exc})"))
        else:
            self.result = returned[0] if returned else None
        return result

    def _give_up(self, exc: GraphCaptureError) -> None:
        """Run eagerly from now on and warn once, or raise, as ``fallback`` says."""
        self.graph, self._kept = None, []
        if not self.fallback:
            raise exc
        self.failed = str(exc)
        warnings.warn(f"{exc}; training goes on without CUDA graphs", RuntimeWarning, stacklevel=3)


def graph_step(fn, device, *, fallback: bool = False) -> GraphStep:
    """``fn`` as a :class:`GraphStep` for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a Device):
    recorded as a CUDA graph on its first call on a GPU and replayed after; called as it is on the CPU."""
    return GraphStep(fn, device, fallback=fallback)
