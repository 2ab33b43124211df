"""One training step, measured apart from the epoch: its time on a fixed batch, and its kernels.

Both measure the Trainer's one training step (``Trainer._step_function``:
gather, forward, loss, backward, update), eagerly or as the CUDA graph
``Trainer(graph="on")`` records of it. Kernels per step are counted two
ways (GPU only), each kernel put down to its owner by name
(:func:`kernel_owner`: xpgrad's, cuBLAS's, cuBLAS's split-K reductions,
CuPy's):

* in a captured CUDA graph: its nodes in order, kernels by name, read from
  CuPy's verbose DOT dump of the graph (``Graph.debug_dot_str``), memory
  nodes (MEMSET, MEMCPY, MEM_ALLOC, MEM_FREE) apart;
* while a step runs eagerly: the CUDA kernels CUPTI records through
  ``torch.profiler``, which sees CuPy's launches as well as PyTorch's.

:func:`compare_gemm_settings` records the graph step under each cuBLAS
setting of :data:`GEMM_SETTINGS` and reports its nodes and replay time.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import time

import numpy

from bench import common
from xpgrad.training.batches import Batches

OWNERS = ("xpgrad", "cublas", "cublas_reduce", "cupy", "other")
_CUBLAS_WORDS = ("gemm", "gemv", "cutlass", "cublas", "xmma", "nvjet", "splitk")
_NODE = re.compile(r'"[^"]+"\s*\[[^\]]*?label="\{?\s*([A-Z][A-Z_]*)(.*?)"\s*\]', re.S)
_KERNEL_NAME = re.compile(r"\{ID \|[^|]*\|\s*(.+?)\s*(?:\\<\\<\\<|\})", re.S)
#: cuBLAS settings (xpgrad.backend.graph's environment) the graph step is recorded under, for comparison: a
#: workspace too small for split-K partials, and an explicit GemmEx algorithm (documented as ignored from Ampere on).
GEMM_SETTINGS = {
    "default": {},
    "workspace 16 KiB": {"XPGRAD_CUBLAS_WORKSPACE": "16384"},
    "GemmEx algo 0": {"XPGRAD_GEMM_ALGO": "0"},
}


def kernel_owner(name: str) -> str:
    """Whose kernel ``name`` is: one of :data:`OWNERS` ("cublas_reduce" is cuBLAS's split-K reduction).

    Takes a graph node's kernel name (``xpgrad_gather_batch_float32_int32``, a
    mangled cutlass or cuBLAS name, ``cupy_add``) as well as a name of
    tests/launch_count.py's log (``xpgrad_...``, ``cublas gemm``, ``cupy add``).
    """
    low = name.lower()
    if low.startswith("xpgrad_"):
        return "xpgrad"
    if "splitkreduce" in low:
        return "cublas_reduce"
    if low.startswith("cupy"):
        return "cupy"
    return "cublas" if any(word in low for word in _CUBLAS_WORDS) else "other"


def xpgrad_kernel(name: str) -> str:
    """An xpgrad kernel's name without its dtype binding: ``xpgrad_gather_batch_float32_int32`` -> ``xpgrad_gather_batch``."""
    return re.sub(r"(_(float|int)(16|32|64))+$", "", name)


def graph_nodes(graph) -> dict:
    """:func:`count_nodes` of a captured ``cupy.cuda.Graph``, read from its verbose DOT dump."""
    from xpgrad import backend

    runtime = backend.cupy.cuda.runtime
    dot = graph.debug_dot_str(runtime.cudaGraphDebugDotFlagsVerbose)
    if isinstance(dot, bytes):
        dot = dot.decode(errors="replace")
    return count_nodes(dot)


def count_nodes(dot: str) -> dict:
    """A CUDA graph's nodes from its verbose DOT text: ``kernels`` (KERNEL nodes), ``node_types`` (every type),
    ``nodes`` ([type, kernel name or ""] in the dump's order), ``by_owner`` (kernels per :data:`OWNERS`)."""
    nodes = []
    for kind, rest in _NODE.findall(dot):
        name = _KERNEL_NAME.search(rest) if kind == "KERNEL" else None
        nodes.append([kind, name.group(1) if name else ""])
    types = collections.Counter(kind for kind, _ in nodes)
    owners = collections.Counter(kernel_owner(name) for kind, name in nodes if kind == "KERNEL")
    return {"kernels": types.get("KERNEL", 0), "node_types": dict(types), "nodes": nodes,
            "by_owner": {owner: owners.get(owner, 0) for owner in OWNERS}, "dot_head": dot[:1500]}


def describe_nodes(counted: dict) -> str:
    """One line: the kernels by owner, the other nodes, and the kernel names in order."""
    owners, types = counted["by_owner"], counted["node_types"]
    words = ", ".join(f"{n} {owner}" for owner, n in owners.items() if n)
    others = ", ".join(f"{kind} {n}" for kind, n in sorted(types.items()) if kind != "KERNEL") or "none"
    names = " ".join(name or kind for kind, name in counted["nodes"])
    return f"{counted['kernels']} kernel nodes ({words or 'none'}); other nodes: {others}; in order: {names}"


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
    owners = collections.Counter(kernel_owner(n) for n in kernels)
    return {"kernels": len(kernels) / steps, "other_gpu_ops": (len(names) - len(kernels)) / steps,
            "by_owner": {owner: owners.get(owner, 0) / steps for owner in OWNERS},
            "by_name": {k: v / steps for k, v in collections.Counter(kernels).most_common(40)}}


# ---------------------------------------------------------------------------
# Fixed-batch steps of the implementations in bench.gpu_epoch


def xpgrad_fixed_step(trainer):
    """The Trainer's training step (``trainer._step_function``: gather the batch on the device, forward,
    loss with the loss and hit sums, ``loss.backward()``, ``optimizer.step()``) on one fixed batch, rows
    0..B-1 of the training data every time, gathered through a batch order of its own."""
    batches = Batches(trainer.x_train, trainer.t_train, trainer.batch_size, trainer.device, trainer.inputs)
    return _on_rows_0_to_b(trainer._step_function(batches.batch(trainer.batch_size)), batches, trainer)


def graph_fixed_step(trainer):
    """The Trainer's full-batch graph step (``Trainer(graph="on")``; recorded on the first call, replayed after)
    on rows 0..B-1 every time, through the trainer's own batch order."""
    return _on_rows_0_to_b(trainer._training_steps()[0], trainer.batches, trainer)


def _on_rows_0_to_b(step, batches, trainer):
    """``step`` with ``batches`` on an order whose every batch is rows 0..B-1, started again at its end."""
    b, n = trainer.batch_size, trainer.n_train
    order = numpy.arange(n, dtype=numpy.int64) % b  # every batch of this "epoch" is rows 0..b-1
    per_epoch, done = n // b, [0]
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


@contextlib.contextmanager
def _environment(values: dict):
    """``os.environ`` updated with ``values`` inside the block, as it was after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def compare_gemm_settings(make_trainer, repeats, notes) -> dict:
    """The graph step recorded under each of :data:`GEMM_SETTINGS` (``make_trainer()`` builds a
    ``Trainer(graph="on")`` on the GPU): its nodes (:func:`count_nodes`) and its replay time on a fixed batch."""
    out = {}
    for label, env in GEMM_SETTINGS.items():
        try:
            with _environment(env):  # read while the step is recorded, which the first call does
                trainer = make_trainer()
                step = graph_fixed_step(trainer)
                step()
            graphs = trainer.captured_graphs()
            if not graphs:
                raise RuntimeError("the trainer recorded no graph")
            out[label] = {"env": env, "nodes": graph_nodes(graphs[0]),
                          "step": wall_step_time(step, trainer.device.synchronize, repeats)}
        except Exception as exc:
            notes.append(f"gemm setting {label!r}: not measured ({common.one_line(exc)})")
    return out
