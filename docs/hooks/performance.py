"""MkDocs hook: the Performance page's tables and plots, made from bench/results/ when the site is built.

The benchmarks write their numbers as JSON into ``bench/results/`` (see bench/README.md); this reads
every file there, so a new result shows on the next build, and neither a table nor a plot can
disagree with the data. In the page, ``<!-- bench: NAME -->`` becomes the table ``NAME`` (one of
:data:`TABLES`); the plots are PNG files made with matplotlib and added to the site as
``img/bench-*.png``, which the page shows like any image.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "bench", "results")
BATCHES, WIDTHS = (128, 1024, 8192), (100, 1024)


def _load(pattern: str) -> list[tuple[str, dict]]:
    """(path relative to bench/results, data) of each JSON file matching ``pattern``, by name."""
    found = []
    for path in sorted(glob.glob(os.path.join(RESULTS, pattern))):
        with open(path) as f:
            found.append((os.path.relpath(path, RESULTS), json.load(f)))
    return found


def _label(path: str) -> str:
    """``cpu_epoch-1thread-vm-2026-12-05-one-engine-after-1.json`` -> ``2026-12-05 one-engine after 1``."""
    stem = os.path.basename(os.path.dirname(path)) if path.endswith("results.json") else os.path.basename(path)[:-5]
    match = re.search(r"(\d{4}-\d{2}-\d{2})(.*)", stem)
    return (match.group(1) + match.group(2).replace("-", " ")) if match else stem


def _ms(stats) -> str:
    return f"{stats['median'] * 1e3:.0f} ms ({stats['min'] * 1e3:.0f}–{stats['max'] * 1e3:.0f})" if stats else "—"


def _time(stats) -> str:
    """``median (min–max)`` of timing stats, in the unit that suits the median: seconds with two decimals, or
    milliseconds or microseconds with three significant digits."""
    if not stats:
        return "—"
    if stats["median"] >= 1:
        return f"{stats['median']:.2f} s ({stats['min']:.2f}–{stats['max']:.2f})"
    scale, unit = (1e-3, "ms") if stats["median"] >= 1e-3 else (1e-6, "µs")
    return f"{stats['median'] / scale:.3g} {unit} ({stats['min'] / scale:.3g}–{stats['max'] / scale:.3g})"


def _summary(values) -> dict:
    """Median, min and max of ``values`` (the median of an even count is the mean of the middle two)."""
    values = sorted(values)
    half = len(values) // 2
    median = values[half] if len(values) % 2 else (values[half - 1] + values[half]) / 2
    return {"median": median, "min": values[0], "max": values[-1]}


def _model(sizes) -> str:
    """``[784, 100, 10]`` -> ``784-100-10``."""
    return "-".join(str(s) for s in sizes)


DEFAULT_MODEL = "784-100-10"


def _ratio(values) -> str:
    values = sorted(values)
    return f"{values[len(values) // 2]:.2f}× ({values[0]:.2f}–{values[-1]:.2f})" if values else "—"


# ---------------------------------------------------------------------------
# What the JSON says


def cpu_epochs() -> list[dict]:
    """``bench.cpu_epoch`` runs: the epoch of xpgrad and of PyTorch eager, and their paired ratios."""
    rows = []
    for path, d in _load("cpu_epoch-*.json"):
        r = d["results"]
        rows.append({"run": _label(path), "file": path, "cpu": d["machine"]["cpu"], "threads": d["setup"]["threads"],
                     "model": _model(d["setup"].get("sizes", (784, 100, 10))), "floor": r["gemm_floor"],
                     "date": d["machine"]["date"], "xpgrad": r["xpgrad"], "torch": r["torch"],
                     "vs_torch": r["xpgrad_vs_torch_paired"], "vs_floor": r["xpgrad_vs_floor_paired"]})
    return sorted(rows, key=lambda r: r["date"])


def gpu_epochs() -> list[dict]:
    """``bench.gpu_epoch`` runs (inside a GPU check's results.json): each implementation against PyTorch eager."""
    rows = []
    for path, d in _load("*/results.json"):
        for key in ("gpu_epoch", "gpu_epoch_alt"):
            if key not in d:
                continue
            g = d[key]
            baseline = next(k for k in ("torch_eager", "torch") if k in g["epochs"])
            for impl, stats in g["epochs"].items():
                if impl == baseline or not stats:
                    continue
                paired = [a / b for a, b in zip(stats.get("all", []), g["epochs"][baseline].get("all", []))]  # in turns
                rows.append({"run": _label(path) + (" (alternative kernels)" if key.endswith("alt") else ""),
                             "date": g["machine"]["date"], "file": path, "gpu": g["machine"]["gpu"]["name"],
                             "impl": impl, "epoch": stats,
                             "torch": g["epochs"][baseline],
                             "vs_torch": paired or [stats["median"] / g["epochs"][baseline]["median"]]})
    return sorted(rows, key=lambda r: r["date"])


def scaling() -> dict:
    """``bench.scaling``: {(device, implementation): {(batch, hidden): epoch stats}}, from every file that has it."""
    found = {}
    sources = _load("scaling-*.json") + [(p, d["scaling"]) for p, d in _load("*/results.json") if "scaling" in d]
    for path, d in sources:
        device = d["machine"].get("gpu", {}).get("name") if d["setup"].get("device", "cpu") != "cpu" else "CPU"
        device = f"{device or 'GPU'}, {_label(path)}"
        for shape, entry in d["shapes"].items():
            batch, hidden = map(int, re.findall(r"\d+", shape))
            for impl, stats in entry["epochs"].items():
                if stats:
                    found.setdefault((device, impl), {})[(batch, hidden)] = stats
    return found


def tensor_epochs() -> list[dict]:
    """``bench.tensor_epoch`` runs since the one engine: a loop of one's own against the Trainer and PyTorch."""
    rows = []
    for path, d in _load("tensor_epoch-*.json"):
        e = d["results"]["epochs"]
        if "loop" in e:
            rows.append({"run": _label(path), "file": path, "optimizer": d["setup"]["optimizer"], **e,
                         "paired": d["results"]["paired"], "equal": d["results"]["loop_equals_trainer"],
                         "date": d["machine"]["date"]})
    return sorted(rows, key=lambda r: r["date"])


def breakdowns() -> list[dict]:
    """``bench.breakdown`` runs: a CPU step against its floor (its matrix products alone), and per part."""
    rows = []
    for path, d in _load("breakdown-*.json"):
        r = d["results"]
        rows.append({"run": d["setup"].get("label") or _label(path), "file": path, "date": d["machine"]["date"],
                     "model": _model((784, *d["setup"]["hidden"], 10)), "threads": d["setup"]["threads"],
                     "optimizer": d["setup"]["optimizer"], "batch": d["setup"]["batch"], "steps": r["steps"],
                     "epoch": r["epoch"], "floor": r["floor"], "ratio": r["ratio"]["all"], "parts": r["per_step_us"]})
    return sorted(rows, key=lambda r: r["date"])


def cnn_epochs() -> list[dict]:
    """``bench.cnn_epoch`` runs: the built-in cnn's epoch against PyTorch eager, where its time goes, its peak RSS."""
    rows = []
    for path, d in _load("cnn_epoch-*.json"):
        e = d["results"]["epochs"]
        rows.append({"run": _label(path), "file": path, "date": d["machine"]["date"], "device": d["setup"]["device"],
                     "threads": d["setup"]["threads"], "channels": d["setup"]["channels"],
                     "parameters": d["setup"]["parameters"], "xpgrad": e["xpgrad"], "torch": e["torch"],
                     "vs_torch": d["results"]["paired_ratio_to_reference"]["torch"],
                     "target": d.get("targets", {}).get("xpgrad_vs_torch_eager"),
                     "breakdown": d.get("breakdown"), "input_gradient": d.get("input_gradient", {}),
                     "rss": d.get("peak_rss_mb")})
    return sorted(rows, key=lambda r: r["date"])


def rss_runs() -> list[dict]:
    """Peak RSS of 1-epoch training runs: ``bench.rss`` (the default recipe), and ``bench.cnn_epoch --rss``."""
    rows = []
    for path, d in _load("rss-*.json"):
        r = d["results"]
        rows.append({"run": _label(path), "file": path, "date": d["machine"]["date"], "command": d["setup"]["run"],
                     "peak": r["training_peak_mb"], "import": r["import_only_peak_mb"],
                     "target": d["targets"]["peak_rss_mb"]["target"], "met": d["targets"]["peak_rss_mb"]["met"]})
    for row in cnn_epochs():
        if row["rss"]:
            rows.append({"run": row["run"], "file": row["file"], "date": row["date"],
                         "command": "xpgrad train --model cnn --recipe cnn --dataset fashion-mnist --epochs 1 --device cpu --quiet",
                         "peak": row["rss"], "import": None, "target": row["rss"]["target"], "met": row["rss"]["met"]})
    return sorted(rows, key=lambda r: r["date"])


def _hidden_batch(spec: str) -> tuple[str, int]:
    """``bench.distributed``'s model key, ``1024x1024:256`` -> (``784-1024-1024-10``, 256)."""
    hidden, batch = spec.split(":")
    return _model((784, *hidden.split("x"), 10)), int(batch)


def distributed() -> list[dict]:
    """``bench.distributed`` runs: K ranks against one process, each model, with the collectives' cost."""
    rows = []
    for path, d in _load("distributed-*.json"):
        ranks = d["ranks"]
        for spec, runs in d["results"].items():
            one, many = runs["1"], runs[str(ranks)]
            alone = [s for r in one for s in r["epoch_seconds"]]
            parallel = [s for r in many for s in r["epoch_seconds"]]
            model, batch = _hidden_batch(spec)
            ours = _summary([s for r in many for s in r["allreduce_seconds"]])
            plain = _summary([s for r in many for s in r["mpi4py_allreduce_seconds"]])
            size = many[0]["buffer_bytes"]
            rows.append({"run": _label(path), "file": path, "date": d["machine"]["date"], "model": model,
                         "batch": batch, "ranks": ranks, "parameters": one[0]["parameters"],
                         "one": _summary(alone), "many": _summary(parallel),
                         # paired by rank of time, as bench.distributed prints it: fastest with fastest
                         "speedup": [a / b for a, b in zip(sorted(alone), sorted(parallel))],
                         "share": _summary([s for r in many for s in r["allreduce_share"]]),
                         "allreduce": ours, "mpi4py": plain, "bytes": size})
    return sorted(rows, key=lambda r: (r["date"], -r["parameters"]))


# ---------------------------------------------------------------------------
# Tables


def cpu_epoch_table() -> str:
    rows = ["| run | model | threads | xpgrad epoch | PyTorch eager epoch | xpgrad ÷ PyTorch (paired) | xpgrad ÷ GEMM floor (paired) |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['run']} | {r['model']} | {r['threads']} | {_ms(r['xpgrad'])} | {_ms(r['torch'])} | {_ratio(r['vs_torch'])} | "
             f"{_ratio(r['vs_floor'])} |" for r in cpu_epochs()]
    return "\n".join(rows)


def gpu_epoch_table() -> str:
    rows = ["| run | GPU | implementation | epoch | PyTorch eager epoch | ÷ PyTorch eager (paired) |", "|---|---|---|---|---|---|"]
    rows += [f"| {r['run']} | {r['gpu']} | {r['impl']} | {_ms(r['epoch'])} | {_ms(r['torch'])} | {_ratio(r['vs_torch'])} |"
             for r in gpu_epochs()]
    return "\n".join(rows)


def scaling_table() -> str:
    series = scaling()
    names = sorted(series)
    rows = ["| batch | hidden | " + " | ".join(f"{impl} ({device})" for device, impl in names) + " |",
            "|---|---|" + "---|" * len(names)]
    for hidden in WIDTHS:
        for batch in BATCHES:
            cells = [_ms(series[n].get((batch, hidden))) if (batch, hidden) in series[n] else "not measured" for n in names]
            rows.append(f"| {batch} | {hidden} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def tensor_epoch_table() -> str:
    rows = ["| run | optimizer | Trainer | loop of one's own | PyTorch eager | loop ÷ Trainer (paired) | loop ÷ PyTorch (paired) | same losses |",
            "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {r['run']} | {r['optimizer']} | {_ms(r['trainer'])} | {_ms(r['loop'])} | {_ms(r['torch'])} | "
             f"{_ratio(r['paired']['trainer'])} | {_ratio(r['paired']['torch'])} | {'yes' if r['equal'] else 'no'} |"
             for r in tensor_epochs()]
    return "\n".join(rows)


def cpu_threads_table() -> str:
    """1 against all threads: the latest run of the default model at each thread count."""
    latest = {}
    for r in cpu_epochs():
        if r["model"] == DEFAULT_MODEL:
            latest[r["threads"]] = r  # sorted by date: the last one wins
    rows = ["| threads | xpgrad epoch | PyTorch eager epoch | xpgrad ÷ PyTorch (paired) | xpgrad ÷ GEMM floor (paired) | GEMM floor | run |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {t} | {_ms(r['xpgrad'])} | {_ms(r['torch'])} | {_ratio(r['vs_torch'])} | {_ratio(r['vs_floor'])} | "
             f"{_ms(r['floor'])} | {r['run']} |" for t, r in sorted(latest.items())]
    return "\n".join(rows)


def cpu_models_table() -> str:
    """The CPU epoch of MLPs other than the default one (``bench.cpu_epoch --hidden``)."""
    rows = ["| model | threads | xpgrad epoch | PyTorch eager epoch | xpgrad ÷ PyTorch (paired) | xpgrad ÷ GEMM floor (paired) | run |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['model']} | {r['threads']} | {_ms(r['xpgrad'])} | {_ms(r['torch'])} | {_ratio(r['vs_torch'])} | "
             f"{_ratio(r['vs_floor'])} | {r['run']} |" for r in cpu_epochs() if r["model"] != DEFAULT_MODEL]
    return "\n".join(rows)


def breakdown_table() -> str:
    rows = ["| run | model, batch, optimizer, threads | epoch | floor: the products alone | epoch ÷ floor (paired) |",
            "|---|---|---|---|---|"]
    rows += [f"| {r['run']} ({r['date'][:10]}) | {r['model']}, {r['batch']}, {r['optimizer']}, {r['threads']} | "
             f"{_ms(r['epoch'])} | {_ms(r['floor'])} | {_ratio(r['ratio'])} |" for r in breakdowns()]
    return "\n".join(rows)


def breakdown_parts_table() -> str:
    runs = breakdowns()
    parts = list(dict.fromkeys(p for r in runs for p in r["parts"]))
    rows = ["| per step, µs | " + " | ".join(r["run"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
    rows += [f"| {part} | " + " | ".join(f"{r['parts'].get(part, 0):.0f}" for r in runs) + " |" for part in parts]
    rows.append("| **the step** (one instrumented epoch) | "
                + " | ".join(f"**{sum(r['parts'].values()):.0f}**" for r in runs) + " |")
    rows.append("| everything but the products | "
                + " | ".join(f"{sum(v for p, v in r['parts'].items() if p != 'products'):.0f}" for r in runs) + " |")
    rows.append("| the floor (the products alone, back to back) | "
                + " | ".join(f"{r['floor']['median'] / r['steps'] * 1e6:.0f}" for r in runs) + " |")
    return "\n".join(rows)


def cnn_epoch_table() -> str:
    rows = ["| run | device, threads | model | xpgrad epoch | PyTorch eager epoch | xpgrad ÷ PyTorch (paired) | target |",
            "|---|---|---|---|---|---|---|"]
    for r in cnn_epochs():
        target = r["target"]
        verdict = f"≤ {target['target']}×: {'met' if target['met'] else 'missed'}" if target else ""
        rows.append(f"| {r['run']} | {r['device']}, {r['threads']} | cnn, channels {', '.join(map(str, r['channels']))} "
                    f"({r['parameters']:,} parameters) | {_time(r['xpgrad'])} | {_time(r['torch'])} | "
                    f"{_ratio(r['vs_torch'])} | {verdict} |")
    return "\n".join(rows)


def cnn_parts_table() -> str:
    """Where the latest cnn epoch's time goes: the parts of 1 % or more, the smaller ones together, the rest."""
    runs = [r for r in cnn_epochs() if r["breakdown"]]
    if not runs:
        return "No `bench.cnn_epoch` result has a breakdown yet."
    b = runs[-1]["breakdown"]
    total, rate = b["epoch_seconds"], b["sgemm_floor_flops"]
    parts = sorted(b["parts"].items(), key=lambda kv: -kv[1]["seconds"])
    rows = [f"| part ({runs[-1]['run']}) | seconds | share of the epoch | GFLOP/s | against the floor |", "|---|---|---|---|---|"]
    small = [p for _, p in parts if p["seconds"] < 0.01 * total]
    for name, p in parts:
        if p["seconds"] >= 0.01 * total:
            speed = (f"{p['flops'] / p['seconds'] / 1e9:.0f} | {p['seconds'] / p['floor_seconds']:.1f}×"
                     if p.get("floor_seconds") else " | ")
            rows.append(f"| {name} ({p['calls']:.0f} calls) | {p['seconds']:.2f} | {p['seconds'] / total:.0%} | {speed} |")
    if small:
        seconds = sum(p["seconds"] for p in small)
        rows.append(f"| {len(small)} smaller parts (the Linear layers' products, the last partial batch's) | "
                    f"{seconds:.2f} | {seconds / total:.0%} | | |")
    rows.append(f"| the rest (the tape, Python, elementwise operations) | {b['rest_seconds']:.2f} | "
                f"{b['rest_seconds'] / total:.0%} | | |")
    rows.append(f"| **the epoch** (its matrix products {b['gemm_seconds']:.2f} s, their floor {b['gemm_floor_seconds']:.2f} s "
                f"at {rate / 1e9:.0f} GFLOP/s) | **{total:.2f}** | 100% | | |")
    return "\n".join(rows)


def cnn_input_gradient_table() -> str:
    runs = [r for r in cnn_epochs() if r["input_gradient"]]
    rows = ["| the second convolution's input gradient, batch 128 | time per step, median (min–max) | run |", "|---|---|---|"]
    rows += [f"| {way} | {_time(stats)} | {r['run']} |" for r in runs for way, stats in r["input_gradient"].items()]
    return "\n".join(rows)


def rss_table() -> str:
    rows = ["| run | command | peak RSS, MB | a bare `import xpgrad`, MB | target |", "|---|---|---|---|---|"]
    for r in rss_runs():
        mb = lambda s: f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f})" if s else ""  # noqa: E731
        rows.append(f"| {r['run']} | `{r['command']}` | {mb(r['peak'])} | {mb(r['import'])} | "
                    f"≤ {r['target']:.0f} MB: {'met' if r['met'] else 'missed'} |")
    return "\n".join(rows)


def _speedup(r) -> str:
    """The ratio of the median epochs, and the spread of the epochs paired by rank of time."""
    return f"{r['one']['median'] / r['many']['median']:.2f}× ({min(r['speedup']):.2f}–{max(r['speedup']):.2f})"


def distributed_table() -> str:
    rows = ["| run | model, batch | parameters | 1 process | 2 ranks | speedup (paired) | the step's collectives | "
            "one allreduce of the gradients: xpgrad / plain mpi4py |", "|---|---|---|---|---|---|---|---|"]
    for r in distributed():
        gbs = lambda s: f"{r['bytes'] / s['median'] / 1e9:.1f} GB/s"  # noqa: E731
        rows.append(f"| {r['run']} | {r['model']}, {r['batch']} | {r['parameters'] / 1e6:.2f} M | {_time(r['one'])} | "
                    f"{_time(r['many'])} | {_speedup(r)} | {r['share']['median']:.1%} of the epoch | "
                    f"{r['allreduce']['median'] * 1e6:.0f} µs ({gbs(r['allreduce'])}) / "
                    f"{r['mpi4py']['median'] * 1e6:.0f} µs ({gbs(r['mpi4py'])}) |")
    return "\n".join(rows)


TABLES = {"cpu-epoch": cpu_epoch_table, "gpu-epoch": gpu_epoch_table, "scaling": scaling_table,
          "tensor-epoch": tensor_epoch_table, "cpu-threads": cpu_threads_table, "cpu-models": cpu_models_table,
          "breakdown": breakdown_table, "breakdown-parts": breakdown_parts_table, "cnn-epoch": cnn_epoch_table,
          "cnn-parts": cnn_parts_table, "cnn-input-gradient": cnn_input_gradient_table, "rss": rss_table,
          "distributed": distributed_table}


# ---------------------------------------------------------------------------
# Plots


def _ratio_plot(ax, rows, title):
    labels = [r["run"] + (f", {r['impl']}" if "impl" in r else f", {r['threads']} thread{'s' * (r['threads'] > 1)}")
              for r in rows]
    medians = [sorted(r["vs_torch"])[len(r["vs_torch"]) // 2] for r in rows]
    low = [m - min(r["vs_torch"]) for m, r in zip(medians, rows)]
    high = [max(r["vs_torch"]) - m for m, r in zip(medians, rows)]
    ax.barh(range(len(rows)), medians, xerr=[low, high], color="#3f7fbf", capsize=3)
    ax.axvline(1.0, color="#444", linewidth=1)
    ax.set(yticks=range(len(rows)), title=title, xlabel="epoch time ÷ PyTorch eager's (paired median, min–max)")
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()


def plots() -> dict[str, bytes]:
    """The PNG files, by their path in the site."""
    import matplotlib  # noqa: PLC0415 - the docs extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    made = {}

    def save(fig, name):
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        made[f"img/bench-{name}.png"] = buffer.getvalue()

    for name, rows, title in (("cpu-epoch", cpu_epochs(), "CPU: xpgrad's epoch against PyTorch eager's"),
                              ("gpu-epoch", gpu_epochs(), "GPU: xpgrad's epoch against PyTorch eager's")):
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.4))
        _ratio_plot(ax, rows, title)
        save(fig, name)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (device, impl), points in sorted(scaling().items()):
        for hidden, style in zip(WIDTHS, ("-o", "--s")):
            xs = [b for b in BATCHES if (b, hidden) in points]
            if xs:
                ax.plot(xs, [points[(b, hidden)]["median"] for b in xs], style, label=f"{impl}, hidden {hidden} ({device})")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="epoch time, s (median)",
           title="One epoch of Fashion-MNIST across batch sizes and widths")
    ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, "scaling")

    runs = breakdowns()
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(runs) + 1.6))
    parts = list(dict.fromkeys(p for r in runs for p in r["parts"]))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(runs):
        left = 0.0
        for j, part in enumerate(parts):
            width = r["parts"].get(part, 0.0)
            ax.barh(i, width, left=left, color=colors[j % len(colors)], label=part if i == 0 else None)
            left += width
        floor = r["floor"]["median"] / r["steps"] * 1e6
        ax.plot([floor, floor], [i - 0.4, i + 0.4], color="#222", linewidth=2, label="floor" if i == 0 else None)
    ax.set(yticks=range(len(runs)), xlabel="µs per step (one instrumented epoch); black: the floor",
           title="CPU: where a step's time goes, against its floor")
    ax.set_yticklabels([f"{r['run']} ({r['model']}, {r['threads']} thread{'s' * (r['threads'] > 1)})" for r in runs],
                       fontsize=8)
    ax.invert_yaxis()
    if runs:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save(fig, "breakdown")

    rows = distributed()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.4))
    medians = [r["one"]["median"] / r["many"]["median"] for r in rows]
    low = [max(0.0, m - min(r["speedup"])) for m, r in zip(medians, rows)]
    high = [max(0.0, max(r["speedup"]) - m) for m, r in zip(medians, rows)]
    ax.barh(range(len(rows)), medians, xerr=[low, high], color="#3f7fbf", capsize=3)
    for x in (1.0, 2.0):
        ax.axvline(x, color="#444", linewidth=1, linestyle="-" if x == 1 else "--")
    ax.set(yticks=range(len(rows)), xlabel="speedup: one process's epoch ÷ 2 ranks' (median, min–max)",
           title="CPU data parallelism: 2 ranks against one process")
    ax.set_yticklabels([f"{r['model']}, batch {r['batch']} ({r['run']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    save(fig, "distributed")
    return made


# ---------------------------------------------------------------------------
# The hook


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File  # noqa: PLC0415

    for path, content in plots().items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, **kwargs):
    return re.sub(r"<!-- bench: ([\w-]+) -->", lambda m: TABLES[m.group(1)](), markdown)
