"""A GPU training epoch and step: xpgrad-cupy fused vs generic vs PyTorch CUDA eager, and a CUDA graph.

The work is the CPU benchmark's (784-100-10, float32, batch 128, 60 000
samples, SGD), on one GPU:

* epoch: ``Trainer.train_epoch`` with the fused kernels, with
  ``XPGRAD_FUSED=0``, and PyTorch eager running the same loop from the same
  weights and batch order; timed with CUDA events, after a warm-up epoch each
  (which includes compiling the kernels);
* step: one training step on a fixed batch (gather, forward, loss, backward,
  update, loss and accuracy sums) as xpgrad eager (fused, generic), PyTorch
  eager, and the fused step captured once as a CUDA graph with CuPy stream
  capture and replayed with ``graph.launch``;
* launches per step: kernel nodes in the captured graph (from its DOT dump),
  and, as a cross-check, CUDA kernels that ``torch.profiler`` (CUPTI) records
  while the eager step runs, which sees CuPy's launches as well as PyTorch's.

Exits 0 with a "no GPU: reason" line where CuPy sees no usable GPU (2 with
``--require-gpu``). Run from
the repository root::

    PYTHONPATH=. python -m bench.gpu_epoch [--data-dir .cache/gpu-data/fashion-mnist]
"""

from __future__ import annotations

import collections
import re
import sys

import numpy

from bench import common
from bench.cpu_epoch import BATCH, LR, TorchEpoch, get_dataset
from xpgrad.training import Config, Trainer

TARGET_EPOCH_VS_TORCH = 1.0  # fused epoch <= PyTorch CUDA eager
TARGET_GRAPH_VS_TORCH = 0.5  # CUDA-graph step <= 0.5x PyTorch eager step
GRAPH_CHECK_STEPS = 5


class XpgradStep:
    """What one iteration of ``Trainer.train_epoch`` does on the GPU, for the rows ``idx``."""

    def __init__(self, trainer: Trainer, idx):
        xp = trainer.xp
        self.trainer, self.idx = trainer, idx
        self.loss_sum = xp.zeros((), dtype=trainer.dtype)
        self.correct = xp.zeros((), dtype=xp.int64)

    def __call__(self):
        tr = self.trainer
        x, t = tr.x_train[self.idx], tr.t_train[self.idx]
        loss, correct = tr.step(x, t)
        self.loss_sum += loss * t.shape[0]
        self.correct += correct


def make_trainer(dataset) -> Trainer:
    config = Config.from_recipe("default", optimizer="sgd", lr=LR, schedule="constant", epochs=1000)
    return Trainer(config, dataset, device="cuda", progress=False)


# ---------------------------------------------------------------------------
# CUDA graphs


def capture(step):
    """Capture one call of ``step`` as a CUDA graph on a new stream (after warm-up calls on it); (graph, stream)."""
    from xpgrad import backend

    stream = backend.cupy.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(3):  # compile kernels and fill the memory pool's arena for this stream
            step()
    stream.synchronize()
    return backend.capture_graph(step, stream), stream


def graph_nodes(graph) -> dict:
    """Node types of a captured graph, read from its verbose DOT dump."""
    from xpgrad import backend

    runtime = backend.cupy.cuda.runtime
    dot = graph.debug_dot_str(runtime.cudaGraphDebugDotFlagsVerbose)
    if isinstance(dot, bytes):
        dot = dot.decode(errors="replace")
    types = collections.Counter(re.findall(r'label="\{?\s*([A-Z][A-Z_]*)', dot))
    return {"kernels": types.get("KERNEL"), "node_types": dict(types), "dot_head": dot[:1500]}


def graph_matches_eager(trainer, eager_step, graph, stream) -> float:
    """Largest parameter difference after the same steps run eagerly and as graph replays."""
    params = trainer.model.params
    start = {k: v.copy() for k, v in params.items()}
    for _ in range(GRAPH_CHECK_STEPS):
        eager_step()
    eager = {k: v.copy() for k, v in params.items()}
    for k, v in params.items():
        v[...] = start[k]
    common.synchronize_all()
    for _ in range(GRAPH_CHECK_STEPS):
        graph.launch(stream)
    stream.synchronize()
    return max(float(abs(params[k] - eager[k]).max()) for k in params)


# ---------------------------------------------------------------------------
# Kernel launches seen by the profiler


def profiled_kernels(step, torch, steps: int = 10) -> dict:
    """CUDA kernels per call of ``step`` as torch.profiler (CUPTI) records them, by name."""
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


def _try(what: str, fn, notes: list):
    try:
        return fn()
    except Exception as exc:  # report, do not abort the other measurements
        notes.append(f"{what}: not measured ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})")
        return None


# ---------------------------------------------------------------------------


def time_epochs(trainers, torch_epoch, repeats):
    """Per implementation, the epoch times (CUDA events) after one warm-up epoch each, in turns."""
    runs = {name: [] for name in [*trainers, *(["torch"] if torch_epoch else [])]}

    def one(name):
        lib = "torch" if name == "torch" else "cupy"
        start, end, elapsed = common.cuda_events(lib)
        start()
        if name == "torch":
            stats = torch_epoch()
        else:
            with common.xpgrad_fused(name == "fused"):
                stats = trainers[name].train_epoch()
        end()
        return {**stats, "event_seconds": elapsed()}

    first = {name: one(name) for name in runs}
    for _ in range(repeats):
        for name in runs:
            runs[name].append(one(name))
    return first, runs


def main(argv=None) -> int:
    p = common.gpu_parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--data-dir", default=None, help="a Fashion-MNIST folder (default: random data of MNIST shape)")
    args = p.parse_args(argv)
    code = common.exit_code_without_gpu(args)
    if code is not None:
        return code
    from xpgrad import backend

    cp = backend.cupy
    try:
        import torch

        torch = torch if torch.cuda.is_available() else None
    except ImportError:
        torch = None
    notes = [] if torch else ["PyTorch with CUDA is not available: PyTorch rows left out"]
    facts = common.machine_facts(gpu=True)
    print(f"machine: {common.machine_line(facts)}\n")

    dataset = get_dataset("fashion-mnist", args.data_dir) if args.data_dir else get_dataset("random")
    trainers = {"fused": make_trainer(dataset), "generic": make_trainer(dataset)}
    torch_epoch = TorchEpoch(trainers["fused"]) if torch else None

    # -- epochs --------------------------------------------------------------
    first, runs = time_epochs(trainers, torch_epoch, args.repeats)
    epochs = {name: common.summarize([r["event_seconds"] for r in rs]) for name, rs in runs.items()}

    # -- steps ---------------------------------------------------------------
    idx = cp.asarray(numpy.random.default_rng(2).permutation(trainers["fused"].n_train)[:BATCH])
    steps = {name: XpgradStep(tr, idx) for name, tr in trainers.items()}
    step_times, launches = {}, {}
    for name, step in steps.items():
        with common.xpgrad_fused(name == "fused"):
            step_times[name] = common.cuda_time(step, args.repeats * 3, warmup=5, target_seconds=20e-3)
    if torch:
        idx_t = torch.from_dlpack(idx)
        torch_step = lambda: torch_epoch.step(idx_t)  # noqa: E731
        step_times["torch"] = common.cuda_time(torch_step, args.repeats * 3, lib="torch", warmup=5, target_seconds=20e-3)
        # Profiling last: a profiler that fails half-way can leave every later op slower.
        for name, step in steps.items():
            with common.xpgrad_fused(name == "fused"):
                launches[f"{name} (profiler)"] = _try(f"{name} profiler count", lambda: profiled_kernels(step, torch), notes)
        launches["torch (profiler)"] = _try("torch profiler count", lambda: profiled_kernels(torch_step, torch), notes)

    graph_info = {}
    for name in ("fused", "generic"):
        with common.xpgrad_fused(name == "fused"):
            captured = _try(f"{name} CUDA graph capture", lambda: capture(steps[name]), notes)
            if captured is None:
                continue
            graph, stream = captured
            launches[f"{name} (graph nodes)"] = _try(f"{name} graph node count", lambda: graph_nodes(graph), notes)
            if name == "fused":
                step_times["fused, CUDA graph"] = common.cuda_time(
                    lambda: graph.launch(stream), args.repeats * 3, warmup=5, target_seconds=20e-3, stream=stream)
                graph_info["max_param_difference_vs_eager"] = _try(
                    "graph vs eager check", lambda: graph_matches_eager(trainers[name], steps[name], graph, stream), notes)

    # -- report --------------------------------------------------------------
    print(f"data: {dataset.name}, 60 000 samples, batch {BATCH}, float32, SGD lr {LR}; "
          f"{args.repeats} timed epochs after 1 warm-up each, in turns\n")
    t_epoch = epochs.get("torch", {}).get("median")
    print(common.markdown_table(
        ["epoch", "median (min–max)", "x PyTorch eager", "last train loss"],
        [[name, common.fmt_spread(s), f"{s['median'] / t_epoch:.2f}x" if t_epoch else "n/a",
          f"{runs[name][-1]['train_loss']:.4f}"] for name, s in epochs.items()]))
    print()
    t_step = step_times.get("torch", {}).get("median")
    print(common.markdown_table(
        ["step (fixed batch)", "median (min–max)", "x PyTorch eager", "kernels per step"],
        [[name, common.fmt_spread(s), f"{s['median'] / t_step:.2f}x" if t_step else "n/a",
          _launch_words(launches, name.split(",")[0])] for name, s in step_times.items()]))
    print("\nfirst-epoch train loss (same weights, same batch order): "
          + ", ".join(f"{k} {v['train_loss']:.5f}" for k, v in first.items()))
    if "max_param_difference_vs_eager" in graph_info:
        print(f"CUDA graph vs eager after {GRAPH_CHECK_STEPS} steps: max |param difference| "
              f"{graph_info['max_param_difference_vs_eager']}")
    for note in notes:
        print(f"note: {note}")

    targets = {}
    if t_epoch:
        v = epochs["fused"]["median"] / t_epoch
        targets["fused_epoch_vs_torch"] = {"target": TARGET_EPOCH_VS_TORCH, "value": v, "met": v <= TARGET_EPOCH_VS_TORCH}
        print(f"target: fused epoch <= PyTorch CUDA eager: {v:.2f}x -> {common.verdict(v <= TARGET_EPOCH_VS_TORCH)}")
        if "fused, CUDA graph" in step_times:
            v = step_times["fused, CUDA graph"]["median"] / t_step
            targets["graph_step_vs_torch"] = {"target": TARGET_GRAPH_VS_TORCH, "value": v, "met": v <= TARGET_GRAPH_VS_TORCH}
            print(f"target: CUDA-graph step <= {TARGET_GRAPH_VS_TORCH}x PyTorch eager step: {v:.2f}x "
                  f"-> {common.verdict(v <= TARGET_GRAPH_VS_TORCH)}")

    paths = common.write_results("gpu_epoch", {
        "machine": facts, "setup": {"data": dataset.name, "batch": BATCH, "lr": LR, "repeats": args.repeats},
        "first_epoch": first, "epochs": epochs, "epoch_runs": runs, "steps": step_times,
        "launches": launches, "graph": graph_info, "notes": notes, "targets": targets,
    }, args.json, where=facts["gpu"]["name"])
    print(f"\nwrote {', '.join(paths)}")
    return 0


def _launch_words(launches: dict, name: str) -> str:
    words = []
    for key, how in ((f"{name} (graph nodes)", "graph"), (f"{name} (profiler)", "profiler")):
        info = launches.get(key)
        if info and info.get("kernels") is not None:
            words.append(f"{info['kernels']:g} ({how})")
    return ", ".join(words) or "not measured"


if __name__ == "__main__":
    sys.exit(main())
