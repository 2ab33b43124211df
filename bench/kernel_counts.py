"""Kernels per training step, counted two ways (GPU only).

* In a captured CUDA graph: its KERNEL nodes, read from CuPy's verbose DOT dump
  of the graph (``Graph.debug_dot_str``).
* While a step runs eagerly: the CUDA kernels CUPTI records through
  ``torch.profiler``, which sees CuPy's launches as well as PyTorch's.
"""

from __future__ import annotations

import collections
import re

from bench import common


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
