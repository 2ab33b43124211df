"""One training step, measured apart from the epoch: its time on a fixed batch, and its kernels.

Both measure the Trainer's one training step (``Trainer._step_function``:
gather, forward, loss, backward, update), eagerly or as the CUDA graph
``Trainer(graph="on")`` records of it. Kernels per step are counted two
ways (GPU only):

* in a captured CUDA graph: its KERNEL nodes, read from CuPy's verbose DOT
  dump of the graph (``Graph.debug_dot_str``);
* while a step runs eagerly: the CUDA kernels CUPTI records through
  ``torch.profiler``, which sees CuPy's launches as well as PyTorch's.
"""

from __future__ import annotations

import collections
import re
import time

import numpy

from bench import common
from xpgrad.training.batches import Batches


def graph_nodes(graph) -> dict:
    """Node types of a captured ``cupy.cuda.Graph``, read from its verbose DOT dump."""
    from xpgrad import backend

    runtime = backend.cupy.cuda.runtime
    dot = graph.debug_dot_str(runtime.cudaGraphDebugDotFlagsVerbose)
    if isinstance(dot, bytes):
        dot = dot.decode(errors="replace")
    return count_nodes(dot)


def count_nodes(dot: str) -> dict:
    """``{"kernels": n, "node_types": {...}, "dot_head": ...}`` from a CUDA graph's verbose DOT text."""
    types = collections.Counter(re.findall(r'label="\{?\s*([A-Z][A-Z_]*)', dot))
    return {"kernels": types.get("KERNEL", 0), "node_types": dict(types), "dot_head": dot[:1500]}


def profiled_kernels(step, steps: int = 10) -> dict:
    """CUDA kernels per call of ``step`` as torch.profiler (CUPTI) records them, by name."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    common.synchronize_all()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        common.synchronize_all()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = [n for n in names if not n.lower().startswith(("memcpy", "memset"))]
    return {"kernels": len(kernels) / steps, "other_gpu_ops": (len(names) - len(kernels)) / steps,
            "by_name": {k: v / steps for k, v in collections.Counter(kernels).most_common(40)}}


# ---------------------------------------------------------------------------
# Fixed-batch steps of the implementations in bench.gpu_epoch


def xpgrad_fixed_step(trainer):
    """The Trainer's training step (``trainer._step_function``: gather the batch on the device, forward,
    loss with the loss and hit sums, ``loss.backward()``, ``optimizer.step()``) on one fixed batch, rows
    0..B-1 of the training data every time, gathered through a batch order of its own."""
    b, n = trainer.batch_size, trainer.n_train
    batches = Batches(trainer.x_train, trainer.t_train, b, trainer.device, trainer.inputs)
    order = numpy.arange(n, dtype=numpy.int64) % b  # every batch of this "epoch" is rows 0..b-1
    per_epoch = n // b
    step, done = trainer._step_function(batches.batch(b)), [0]
    batches.begin_epoch(order)

    def fixed_step():
        if done[0] == per_epoch:  # the batch counter reached the order's end: start it again
            batches.begin_epoch(order)
            done[0] = 0
        step()
        done[0] += 1

    return fixed_step


def wall_step_time(fn, sync, repeats: int) -> dict:
    """Seconds per call of ``fn`` on the wall clock, the device idle before and after each batch of calls."""
    for _ in range(5):
        fn()
    sync()
    number = common.calls_for(lambda: (fn(), sync()), 0.02, cap=500)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        times.append((time.perf_counter() - start) / number)
    return {**common.summarize(times), "number": number}


def fixed_steps(impls, records, repeats, notes) -> dict:
    """Fixed-batch step times of the eager implementations (after the epochs: they move the weights)."""
    out = {}
    for name, make in (("xpgrad_eager", lambda i: xpgrad_fixed_step(i.trainer)),
                       ("torch_eager", lambda i: i.fixed_step())):
        if name in impls and records[name]["status"] == "ok":
            try:
                out[name] = wall_step_time(make(impls[name]), impls[name].sync, repeats)
            except Exception as exc:
                notes.append(f"{name} fixed-batch step: not measured ({common.one_line(exc)})")
    return out


def count_kernels(impls, records, on_gpu, notes) -> dict:
    """Kernels per step: the xpgrad graph's nodes; eager xpgrad and PyTorch through the profiler."""
    counts = {}
    if not on_gpu:
        notes.append("kernels_per_step: counted on a GPU only (graph nodes, CUPTI)")
        return counts
    live = lambda n: n in impls and records[n]["status"] == "ok"  # noqa: E731
    if live("xpgrad_graph"):
        try:
            graphs = impls["xpgrad_graph"].trainer.captured_graphs()
            counts["xpgrad_graph (graph nodes)"] = graph_nodes(graphs[0])
        except Exception as exc:
            notes.append(f"kernels_per_step.xpgrad_graph: not counted ({common.one_line(exc)})")
    # Profiling last: a profiler that fails half-way can leave every later op slower.
    for name, make in (("xpgrad_eager", lambda i: xpgrad_fixed_step(i.trainer)),
                       ("torch_eager", lambda i: i.fixed_step())):
        if live(name):
            try:
                counts[f"{name} (profiler)"] = profiled_kernels(make(impls[name]))
            except Exception as exc:
                notes.append(f"kernels_per_step.{name}: not counted ({common.one_line(exc)})")
    return counts
