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


# ---------------------------------------------------------------------------
# Tables


def cpu_epoch_table() -> str:
    rows = ["| run | threads | xpgrad epoch | PyTorch eager epoch | xpgrad ÷ PyTorch (paired) | xpgrad ÷ GEMM floor (paired) |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {r['run']} | {r['threads']} | {_ms(r['xpgrad'])} | {_ms(r['torch'])} | {_ratio(r['vs_torch'])} | "
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


TABLES = {"cpu-epoch": cpu_epoch_table, "gpu-epoch": gpu_epoch_table, "scaling": scaling_table,
          "tensor-epoch": tensor_epoch_table}


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
