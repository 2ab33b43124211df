"""Epoch time as the work grows: batch {128, 1024, 8192} x hidden width {100, 1024}, default recipe otherwise.

On the GPU, per shape and in turns (:mod:`bench.turns`): xpgrad with CUDA
graphs, xpgrad eager, PyTorch eager and ``torch.compile(mode="reduce-overhead")``
(its warm-up bounded by ``--compile-limit``, and by what is left of
``--budget``: shapes it cannot afford keep a null and a note). Next to them,
xpgrad on this project's CPU at hidden 100, read from the newest committed
``bench/results/scaling-cpu-*.json`` and labelled as measured on another
machine. That file is made on the CPU machine with::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python -m bench.scaling --device cpu --hidden 100

On the GPU::

    PYTHONPATH=. python -m bench.scaling [--data-dir .cache/gpu-data/fashion-mnist] [--budget 120]
"""

from __future__ import annotations

import glob
import json
import os
import sys

from bench import common, turns
from bench.cpu_epoch import get_dataset
from bench.gpu_epoch import build_impls
from xpgrad.training import Config

BATCHES = (128, 1024, 8192)
WIDTHS = (100, 1024)
GPU_IMPLS = ("xpgrad_graph", "xpgrad_eager", "torch_eager", "torch_compile")
CPU_IMPLS = ("xpgrad_eager",)
SECONDS_PER_SHAPE = 6.0  # the timed epochs of one shape without compiling, about, on an H100/H200


def parse_args(argv):
    p = common.gpu_parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--data-dir", default=None,
                   help="a Fashion-MNIST folder (default: where xpgrad finds it, else random data of MNIST shape)")
    p.add_argument("--hidden", default=None, help="comma-separated widths (default: 100,1024 on cuda, 100 on cpu)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    p.add_argument("--compile-limit", type=float, default=60.0, help="seconds for one torch.compile warm-up")
    p.add_argument("--cpu-json", default=None,
                   help="the CPU figures (default: the newest bench/results/scaling-cpu-*.json)")
    args = p.parse_args(argv)
    args.widths = [int(w) for w in (args.hidden or ("100,1024" if args.device == "cuda" else "100")).split(",")]
    args.batch_sizes = [int(b) for b in args.batches.split(",")]
    return args


def key(batch: int, width: int) -> str:
    return f"batch {batch}, hidden {width}"


def measure_shape(batch, width, dataset, device, names, repeats, deadline, compile_limit, reserve) -> dict:
    """Every implementation at one shape, in turns; the per-implementation epoch summaries and notes.

    A compile starts only while ``reserve`` seconds are left for the timed epochs of this and later shapes.
    """
    config = Config.from_recipe("default", dataset=common.config_dataset(dataset.name), batch_size=batch, hidden=(width,))
    impls, reasons = build_impls(names, config, dataset, device)
    records = turns.run_in_turns(impls, repeats, deadline, compile_limit, reserve)
    epochs = turns.epoch_summaries(records)
    out = {"steps_per_epoch": impls["xpgrad_eager"].steps_per_epoch, "epochs": epochs, "notes": {},
           "warmup_seconds": {n: r["warmup_seconds"] for n, r in records.items()}}
    for name in names:
        if name not in epochs:
            out["notes"][name] = reasons.get(name) or records.get(name, {}).get("note") or "no timed epoch"
    del impls, records
    turns.free_device_memory()
    return out


def read_cpu(path: str | None) -> dict | None:
    """The committed CPU figures (another machine): their JSON, or None when there is none."""
    if path is None:
        found = sorted(glob.glob(os.path.join(common.RESULTS_DIR, "scaling-cpu-*.json")))
        path = found[-1] if found else None
    if path is None or not os.path.exists(path):
        return None
    with open(path) as f:
        return {**json.load(f), "path": os.path.relpath(path)}


def report(shapes: dict, names, cpu: dict | None) -> None:
    headers = ["shape", "steps"] + names + ["xpgrad graph / PyTorch eager"]
    if cpu:
        headers.insert(2 + len(names), "xpgrad CPU (another machine)")
    rows = []
    for label, s in shapes.items():
        e = s["epochs"]
        row = [label, s["steps_per_epoch"]] + [common.fmt_spread(e[n]) if n in e else "n/a" for n in names]
        if cpu:
            c = cpu["shapes"].get(label, {}).get("epochs", {}).get("xpgrad_eager")
            row.append(common.fmt_spread(c) if c else "n/a")
        both = "xpgrad_graph" in e and "torch_eager" in e
        row.append(f"{e['xpgrad_graph']['median'] / e['torch_eager']['median']:.3f}x" if both else "n/a")
        rows.append(row)
    print(common.markdown_table(headers, rows))
    if cpu:
        m = cpu["machine"]
        print(f"\nnote: the CPU column was measured on another machine: {m['cpu']}, {m['cores']} cores, "
              f"{m['date']} ({cpu['path']})")
    for label, s in shapes.items():
        for name, why in s["notes"].items():
            print(f"note: {label}: {name}: {why}")


def main(argv=None) -> int:
    args = parse_args(argv)
    on_gpu = args.device == "cuda"
    if on_gpu:
        code = common.exit_code_without_gpu(args)
        if code is not None:
            return code
    common.warn_openblas_pins()
    deadline = turns.Deadline(args.budget)
    facts = common.machine_facts(gpu=on_gpu)
    print(f"machine: {common.machine_line(facts)}\n")
    dataset = get_dataset("fashion-mnist" if args.data_dir else "auto", args.data_dir)
    names = list(GPU_IMPLS if on_gpu else CPU_IMPLS)
    todo = [(b, w) for w in args.widths for b in args.batch_sizes]
    shapes = {}
    for i, (batch, width) in enumerate(todo):
        reserve = SECONDS_PER_SHAPE * (len(todo) - i)
        shapes[key(batch, width)] = measure_shape(batch, width, dataset, args.device, names, args.repeats,
                                                  deadline, args.compile_limit, reserve)
    print(f"data: {dataset.name}, default recipe (Adam, cosine), float32; epoch wall time, median (min–max) "
          f"of {args.repeats} after 1 each, in turns\n")
    cpu = read_cpu(args.cpu_json) if on_gpu else None
    report(shapes, names, cpu)
    where = facts["gpu"]["name"] if on_gpu else f"cpu-{facts['host']}"
    reference = None if cpu is None else {k: cpu[k] for k in ("path", "machine", "shapes")}
    payload = {"machine": facts, "setup": {"data": dataset.name, "repeats": args.repeats, "device": args.device},
               "shapes": shapes, "cpu_reference": reference}
    print(f"\nwrote {', '.join(common.write_results('scaling', payload, args.json, where=where))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
