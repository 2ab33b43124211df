"""A GPU training epoch of the default recipe: xpgrad against what a PyTorch or JAX user would reach for.

The work is the default recipe (784-100-10, He init, standardized inputs,
Adam lr 2e-3 with a cosine decay, batch 128, float32) over 60 000 samples,
one epoch at a time, for seven implementations in turns, from the same
initial weights and batch order (:mod:`bench.turns`):

==================  ==========================================================
``xpgrad_graph``    ``Trainer(graph="on")``: each step replayed as a CUDA graph
``xpgrad_eager``    ``Trainer(graph="off")`` (today's Trainer where there is no option)
``torch_eager``     PyTorch eager, ``torch.optim.Adam``
``torch_graph``     the step captured in ``torch.cuda.graph``, capturable Adam
``torch_compile``   ``torch.compile(mode="reduce-overhead")``; warm-up bounded, reported
``jax_jit``         a ``jax.jit`` step in a Python loop
``jax_scan``        the whole epoch as one ``jax.lax.scan``
==================  ==========================================================

Reported: epoch time (wall clock from an idle device to an idle device,
median and spread over the timed epochs), step time as epoch time / steps
for every implementation alike, fixed-batch step times of the eager ones,
warm-up (compile or capture) seconds, kernels per step (the xpgrad graph's
KERNEL nodes; eager steps through torch.profiler), and each implementation's
parameters after the first epoch against xpgrad eager (max relative
difference, per array against its own scale). The ``summary`` section of the
JSON holds the figures ``bench/summary.py`` puts into ``summary.json``.

Without a usable GPU it prints "no GPU: reason" and exits 0 (2 with
``--require-gpu``). ``--device cpu --smoke`` runs every implementation's code
path on the CPU at a tiny size and, with ``--check``, exits 1 when any
implementation failed (an error, not a known reason such as "JAX is not
installed") or its parameters differ from xpgrad eager's by more than
``--tolerance``. Run from the repository root::

    PYTHONPATH=. python -m bench.gpu_epoch [--data-dir .cache/gpu-data/fashion-mnist] [--budget 150]
    PYTHONPATH=. python -m bench.gpu_epoch --device cpu --smoke --check
"""

from __future__ import annotations

import sys

import numpy

from bench import common, turns
from bench.cpu_epoch import get_dataset
from bench.steps import compare_gemm_settings, count_kernels, describe_nodes, fixed_steps
from xpgrad.data import Dataset
from xpgrad.training import Config, Trainer

IMPLS = ("xpgrad_graph", "xpgrad_eager", "torch_eager", "torch_graph", "torch_compile", "jax_jit", "jax_scan")
KERNEL_KEYS = ("xpgrad_graph", "torch_eager")
TARGET_GRAPH_VS_TORCH_EAGER = 0.1  # xpgrad graph epoch <= 0.1x PyTorch eager
TARGET_KERNELS = 14
SMOKE_SAMPLES = 1000


def parse_args(argv):
    p = common.gpu_parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--data-dir", default=None,
                   help="a Fashion-MNIST folder (default: where xpgrad finds it, else random data of MNIST shape)")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_SAMPLES} random samples, 1 timed epoch")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset (xpgrad_eager always runs)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run; later work is cut")
    p.add_argument("--compile-limit", type=float, default=90.0, help="seconds for a warm-up that compiles")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if an implementation failed or its parameters differ beyond --tolerance")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max relative parameter difference for --check")
    args = p.parse_args(argv)
    unknown = set(args.impls.split(",")) - set(IMPLS)
    if unknown:
        p.error(f"unknown implementation(s) {', '.join(sorted(unknown))}; choose from {', '.join(IMPLS)}")
    return args


def smoke_dataset(n=SMOKE_SAMPLES) -> Dataset:
    """Random MNIST-shaped data, ``n`` training samples (the partial last batch included)."""
    rng = numpy.random.default_rng(0)
    u8 = lambda *shape: rng.integers(0, 256, size=shape, dtype=numpy.uint8)  # noqa: E731
    return Dataset("random-small", u8(n, 28, 28), u8(n) % 10, u8(200, 28, 28), u8(200) % 10, "random-small")


def build_impls(names, config, dataset, device, trainer_class=Trainer):
    """The selected implementations (xpgrad eager first: the others copy its setup); (impls, reasons)."""
    from bench.jax_epoch import JaxEpochs
    from bench.torch_variants import TorchEpochs

    eager = turns.XpgradEpochs("xpgrad_eager", config, dataset, device, graph="off", trainer_class=trainer_class)
    setup = turns.setup_from(eager.trainer)
    makers = {
        "xpgrad_graph": lambda: turns.XpgradEpochs("xpgrad_graph", config, dataset, device, "on", trainer_class),
        "xpgrad_eager": lambda: eager,
        "torch_eager": lambda: TorchEpochs(setup, "eager"),
        "torch_graph": lambda: TorchEpochs(setup, "graph"),
        "torch_compile": lambda: TorchEpochs(setup, "compile"),
        "jax_jit": lambda: JaxEpochs(setup, "jit"),
        "jax_scan": lambda: JaxEpochs(setup, "scan"),
    }
    impls, reasons = {}, {}
    for name in IMPLS:
        if name not in names and name != "xpgrad_eager":
            reasons[name] = "not selected (--impls)"
            continue
        try:
            impls[name] = makers[name]()
        except turns.Unavailable as exc:
            reasons[name] = str(exc)
        except ImportError as exc:
            reasons[name] = f"cannot import: {exc}"
        except Exception as exc:  # report it and go on with the others
            reasons[name] = f"error while building it: {common.one_line(exc)}"
    return impls, reasons


# ---------------------------------------------------------------------------
# Summary, report, targets


def null_reason(name, records, reasons) -> str:
    """Why ``name`` has no epoch time."""
    record = records.get(name)
    if record is None:
        return reasons.get(name, "not built")
    return record["note"] or record.get("rounds_note") or "no timed epoch"


def summary_fields(records, reasons, steps, kernels, diffs, notes) -> dict:
    """The part of ``summary.json`` this benchmark measures, nulls explained in ``notes``."""
    epochs = turns.epoch_summaries(records)
    out = {"epoch_ms": {}, "step_us": {}, "kernels_per_step": {}, "notes": list(notes)}
    for name in IMPLS:
        median = epochs[name]["median"] if name in epochs else None
        out["epoch_ms"][name] = None if median is None else median * 1e3
        out["step_us"][name] = None if median is None else median / steps * 1e6
        if median is None:
            out["notes"].append(f"epoch_ms.{name}, step_us.{name}: {null_reason(name, records, reasons)}")
    out["notes"].append(f"step time (step_us) is epoch time / {steps} steps for every implementation")
    for name, key in zip(KERNEL_KEYS, ("xpgrad_graph (graph nodes)", "torch_eager (profiler)")):
        count = kernels.get(key, {}).get("kernels")
        out["kernels_per_step"][name] = None if count is None else int(round(count))
        if count is None and not any(f"kernels_per_step.{name}" in n or n.startswith("kernels_per_step:")
                                     for n in out["notes"]):
            out["notes"].append(f"kernels_per_step.{name}: not counted ({null_reason(name, records, reasons)})")
    graph_nodes = kernels.get("xpgrad_graph (graph nodes)")
    if graph_nodes and "nodes" in graph_nodes:
        out["notes"].append(f"kernels_per_step.xpgrad_graph: {describe_nodes(graph_nodes)}")
    diff = diffs.get("xpgrad_graph")
    out["graph_vs_eager_max_rel_param_diff"] = diff
    if diff is None:
        out["notes"].append(f"graph_vs_eager_max_rel_param_diff: xpgrad_graph has no first epoch "
                            f"({null_reason('xpgrad_graph', records, reasons)})")
    return out


def _ratio_words(records, name, reference, epochs) -> str:
    if name not in epochs or reference not in epochs:
        return "n/a"
    paired = turns.paired_ratios(records, name, reference)
    words = f"{epochs[name]['median'] / epochs[reference]['median']:.3f}x"
    return words + (f" (paired {min(paired):.3f}–{max(paired):.3f})" if paired else "")


def report(records, reasons, steps, diffs, fixed, kernels) -> None:
    """Print the epoch, step and kernel tables."""
    epochs = turns.epoch_summaries(records)
    rows = []
    for name in IMPLS:
        r, s = records.get(name), epochs.get(name)
        if s is None:
            rows.append([name, f"not measured: {null_reason(name, records, reasons)}", "", "", "", "", ""])
            continue
        warm = r["warmup_seconds"]
        rows.append([name, common.fmt_spread(s), common.fmt_time(s["median"] / steps),
                     _ratio_words(records, name, "torch_eager", epochs),
                     "" if warm is None or warm < 1e-3 else common.fmt_time(warm),
                     f"{r['first']['train_loss']:.5f}", f"{diffs[name]:.1e}" if name in diffs else "n/a"])
    print(common.markdown_table(
        ["implementation", "epoch, median (min–max)", f"step (epoch / {steps})", "x PyTorch eager",
         "warm-up (compile, capture)", "first-epoch train loss", "params vs xpgrad eager after epoch 1"], rows))
    if fixed:
        print()
        print(common.markdown_table(["step on a fixed batch", "median (min–max)"],
                                    [[name, common.fmt_spread(s)] for name, s in fixed.items()]))
    if kernels:
        print()
        print(common.markdown_table(["kernels per step", "count", "by owner"],
                                    [[name, f"{k['kernels']:g}", _owner_words(k)] for name, k in kernels.items()]))


def _owner_words(counted: dict) -> str:
    return ", ".join(f"{owner} {n:g}" for owner, n in counted.get("by_owner", {}).items() if n)


def report_gemm_settings(settings: dict) -> None:
    """Print the graph step under each cuBLAS setting: its nodes and replay time."""
    if not settings:
        return
    rows = [[label, " ".join(f"{k}={v}" for k, v in r["env"].items()) or "(none)", r["nodes"]["kernels"],
             _owner_words(r["nodes"]), ", ".join(f"{k} {n}" for k, n in r["nodes"]["node_types"].items()
                                                 if k != "KERNEL") or "none", common.fmt_spread(r["step"])]
            for label, r in settings.items()]
    print()
    print(common.markdown_table(["cuBLAS setting", "environment", "kernel nodes", "by owner", "other nodes",
                                 "graph step on a fixed batch"], rows))
    for label, r in settings.items():
        print(f"note: graph nodes, {label}: {describe_nodes(r['nodes'])}")


def targets(summary) -> dict:
    """Print and return the issue's GPU targets (value None where a figure is missing)."""
    e, s, k = summary["epoch_ms"], summary["step_us"], summary["kernels_per_step"]

    def ratio(a, b):
        return None if a is None or b is None else a / b

    checks = {
        "graph_epoch_vs_torch_eager": (ratio(e["xpgrad_graph"], e["torch_eager"]), TARGET_GRAPH_VS_TORCH_EAGER,
                                       "xpgrad graph epoch <= 0.1x PyTorch eager epoch"),
        "graph_step_vs_torch_compile": (ratio(s["xpgrad_graph"], s["torch_compile"]), 1.0,
                                        "xpgrad graph step <= torch.compile reduce-overhead step"),
        "graph_step_vs_torch_graph": (ratio(s["xpgrad_graph"], s["torch_graph"]), 1.0,
                                      "xpgrad graph step <= PyTorch CUDA-graph step"),
        "graph_epoch_vs_jax_scan (stretch)": (ratio(e["xpgrad_graph"], e["jax_scan"]), 1.0,
                                              "xpgrad graph epoch <= JAX lax.scan epoch (stretch)"),
        "kernels_per_step": (k["xpgrad_graph"], TARGET_KERNELS, f"at most {TARGET_KERNELS} kernels per step"),
    }
    out = {}
    for key, (value, limit, words) in checks.items():
        met = None if value is None else value <= limit
        out[key] = {"target": limit, "value": value, "met": met}
        shown = "not measured" if value is None else (f"{value:g}" if key == "kernels_per_step" else f"{value:.3f}x")
        print(f"target: {words}: {shown} -> {'n/a' if met is None else common.verdict(met)}")
    return out


def measure(args, dataset, config, trainer_class, deadline, save) -> dict:
    """Build, warm up and time every implementation, then the extras; everything the report needs.

    ``save(m)`` is called with the epochs' results before the extras (profiling can hang, and a
    killed run then still leaves its epoch figures), and the caller saves the final ``m`` again.
    """
    on_gpu = args.device == "cuda"
    impls, reasons = build_impls(args.impls.split(","), config, dataset, args.device, trainer_class)
    m = {"impls": impls, "reasons": reasons, "steps": impls["xpgrad_eager"].steps_per_epoch,
         "repeats": 1 if args.smoke else args.repeats, "n_train": impls["xpgrad_eager"].trainer.n_train,
         "fixed": {}, "kernels": {}}
    records = m["records"] = turns.run_in_turns(impls, m["repeats"], deadline, args.compile_limit)
    diffs = m["diffs"] = turns.parity(records)
    notes = [] if on_gpu else ["device: measured on the CPU (code-path check), not GPU figures"]
    skips = getattr(impls.get("torch_compile"), "info", dict)().get("cudagraph_skips")
    if on_gpu and skips:
        notes.append(f"torch_compile ran {skips} of its graphs without CUDA graphs (Inductor's cudagraph_skips)")
    notes += [f"{n}: {r['rounds_note']}" for n, r in records.items() if r.get("rounds_note") and r["epochs"]]
    m["summary"] = summary_fields(records, reasons, m["steps"], {}, diffs,
                                  notes + ["kernels_per_step: the run ended before they were counted"])
    save(m)
    if deadline.allows(10):
        m["fixed"] = fixed_steps(impls, records, 3 if args.smoke else args.repeats, notes)
    if deadline.allows(10):
        m["kernels"] = count_kernels(impls, records, on_gpu, notes)
    else:
        notes.append("kernels_per_step: not counted, the time budget ran out")
    m["summary"] = summary_fields(records, reasons, m["steps"], m["kernels"], diffs, notes)
    save(m)
    m["gemm_settings"] = {}
    if on_gpu and "xpgrad_graph" in impls and deadline.allows(30):  # last: the summary's figures are saved
        m["gemm_settings"] = compare_gemm_settings(
            lambda: trainer_class(config, dataset, device=args.device, progress=False, graph="on"), 3, notes)
    elif on_gpu:
        notes.append("gemm settings: not compared (no xpgrad_graph, or the time budget ran out)")
    m["summary"] = summary_fields(records, reasons, m["steps"], m["kernels"], diffs, notes)
    return m


def check_failures(m: dict, tolerance: float) -> dict:
    """Implementations that failed (an error) or whose parameters left xpgrad eager's by more than ``tolerance``."""
    failed = {n: f"{d:.1e}" for n, d in m["diffs"].items() if d > tolerance}
    failed.update({n: r["note"] for n, r in m["records"].items() if r["status"] == "failed"})
    failed.update({n: why for n, why in m["reasons"].items() if why.startswith("error while building")})
    return failed


def payload(facts, args, dataset, config, m, goals) -> dict:
    """The JSON this benchmark writes."""
    setup = {"data": dataset.name, "config": config.to_dict(), "repeats": m["repeats"],
             "steps_per_epoch": m["steps"], "device": args.device, "smoke": args.smoke}
    return {"machine": facts, "setup": setup,
            "records": {n: {k: v for k, v in r.items() if k != "params_after_first"}
                        for n, r in m["records"].items()},
            "info": {n: getattr(i, "info", dict)() for n, i in m["impls"].items()}, "unavailable": m["reasons"],
            "param_diff_vs_xpgrad_eager": m["diffs"], "fixed_steps": m["fixed"], "kernels": m["kernels"],
            "gemm_settings": m.get("gemm_settings", {}),
            "summary": m["summary"], "targets": goals}


def main(argv=None, trainer_class=Trainer) -> int:
    """Run the benchmark; ``trainer_class`` lets tests stand in for a Trainer with graphs."""
    args = parse_args(argv)
    on_gpu = args.device == "cuda"
    if on_gpu:
        code = common.exit_code_without_gpu(args)
        if code is not None:
            return code
    deadline = turns.Deadline(args.budget)
    facts = common.machine_facts(gpu=on_gpu)
    print(f"machine: {common.machine_line(facts)}\n")
    if args.smoke:
        dataset = smoke_dataset()
    else:
        dataset = get_dataset("fashion-mnist" if args.data_dir else "auto", args.data_dir)
    config = Config.from_recipe("default", dataset=common.config_dataset(dataset.name))
    where = facts["gpu"]["name"] if on_gpu else f"cpu-{facts['host']}"

    def save(m, goals=None):
        return common.write_results("gpu_epoch", payload(facts, args, dataset, config, m, goals or {}),
                                    args.json, where=where)

    m = measure(args, dataset, config, trainer_class, deadline, save)
    print(f"data: {dataset.name}, {m['n_train']} samples, default recipe (Adam, cosine, batch {config.batch_size}, "
          f"hidden {config.hidden}), float32; {m['repeats']} timed epochs after 1 each, in turns\n")
    report(m["records"], m["reasons"], m["steps"], m["diffs"], m["fixed"], m["kernels"])
    report_gemm_settings(m["gemm_settings"])
    print()
    for note in m["summary"]["notes"]:
        print(f"note: {note}")
    goals = targets(m["summary"]) if on_gpu else {}
    failed = check_failures(m, args.tolerance)
    if args.check:
        verdict = "yes" if not failed else "FAILED: " + "; ".join(f"{n} ({w})" for n, w in failed.items())
        print(f"check: every implementation ran, its parameters within {args.tolerance:g} of xpgrad eager "
              f"after epoch 1: {verdict}")
    print(f"\nwrote {', '.join(save(m, goals))}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
