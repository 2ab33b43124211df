"""What every benchmark shares: timing summaries, markdown tables, JSON files, machine facts.

Timing here is wall-clock (``time.perf_counter``) around whole calls; GPU
scripts time with CUDA events themselves and only use :func:`summarize`.
The machines these run on are shared and noisy, so every number is a median
over repeats, reported with its spread (min-max).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import sys
import time

import numpy

#: Environment variables that pin OpenBLAS to an older kernel or cache size.
#: They are unset for benchmarks (see bench/README.md), never in tests or CI.
OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---------------------------------------------------------------------------
# Timing


def summarize(seconds) -> dict:
    """Median, min, max and count of a list of timings (seconds)."""
    seconds = [float(s) for s in seconds]
    return {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "n": len(seconds),
        "all": seconds,
    }


def time_calls(fn, repeats: int, warmup: int = 1, number: int = 1) -> dict:
    """Call ``fn`` ``warmup`` times untimed, then time ``repeats`` batches of ``number`` calls.

    Each repeat's time is divided by ``number`` (seconds per call); returns :func:`summarize`.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return summarize(times)


def calls_for(fn, target_seconds: float = 0.05, cap: int = 100000) -> int:
    """How many calls of ``fn`` take about ``target_seconds`` (at least 1), from one trial call."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return int(max(1, min(cap, target_seconds / once)))


# ---------------------------------------------------------------------------
# Formatting


def fmt_time(seconds: float) -> str:
    """A duration with a unit that keeps 3 significant digits."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_spread(s: dict) -> str:
    """``median (min–max)`` of a :func:`summarize` dict."""
    return f"{fmt_time(s['median'])} ({fmt_time(s['min'])}–{fmt_time(s['max'])})"


def markdown_table(headers, rows) -> str:
    """A GitHub markdown table; cells are converted with ``str``."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ---------------------------------------------------------------------------
# Machine facts


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> dict:
    """The BLAS NumPy calls, as threadpoolctl sees it (which kernel OpenBLAS picked, threads)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"error": "threadpoolctl not installed (pip install threadpoolctl)"}
    for pool in threadpool_info():
        if pool.get("user_api") == "blas" and "numpy" in pool.get("filepath", ""):
            keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
            return {k: pool.get(k) for k in keys}
    return {"error": "no BLAS found for numpy"}


def blas_words(info: dict | None = None) -> str:
    info = blas_info() if info is None else info
    if "error" in info:
        return info["error"]
    return f"{info['internal_api']} {info['version']} ({info['architecture']} kernel, {info['num_threads']} threads)"


def gpu_facts() -> dict | None:
    """The first GPU's name and memory, or None without a usable GPU."""
    from xpgrad import backend

    ok, reason = backend.gpu_status()
    if not ok:
        return None
    cupy = backend.cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "cupy": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "driver": cupy.cuda.runtime.driverGetVersion(),
    }


def machine_facts(gpu: bool = False) -> dict:
    facts = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "blas": blas_info(),
        "openblas_pins": {k: os.environ[k] for k in OPENBLAS_PINS if k in os.environ},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    try:  # the installed version, without importing torch (slow, and memory the RSS bench would see)
        facts["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        facts["torch"] = None
    if gpu:
        facts["gpu"] = gpu_facts()
    return facts


def machine_line(facts: dict) -> str:
    line = (f"{facts['cpu']}, {facts['cores']} cores, numpy {facts['numpy']}, "
            f"BLAS {blas_words(facts['blas'])}, torch {facts.get('torch')}")
    if facts.get("gpu"):
        line += f", GPU {facts['gpu']['name']} (CuPy {facts['gpu']['cupy']})"
    return line


def warn_openblas_pins() -> None:
    """Say so when OpenBLAS is pinned to another kernel: the numbers would not be representative."""
    pins = {k: os.environ[k] for k in OPENBLAS_PINS if k in os.environ}
    if pins:
        words = ", ".join(f"{k}={v}" for k, v in pins.items())
        print(f"warning: {words} is set and slows NumPy's BLAS; run with "
              f"`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...` (see bench/README.md)", file=sys.stderr)


# ---------------------------------------------------------------------------
# Command line and results


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed repeats per case (default {repeats})")
    p.add_argument("--json", default=None, help="where to write the results (default bench/results/<name>-<host>-<date>.json)")
    return p


def default_json_path(name: str, where: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in where)
    return os.path.join(RESULTS_DIR, f"{name}-{safe}-{datetime.date.today().isoformat()}.json")


def write_results(name: str, payload: dict, path: str | None = None, where: str | None = None) -> list[str]:
    """Write ``payload`` as JSON to ``path`` (or the default) and to ``$OUT`` when set; return the paths."""
    path = path or default_json_path(name, where or socket.gethostname())
    paths = [path]
    out = os.environ.get("OUT")
    if out:
        paths.append(os.path.join(out, os.path.basename(path)))
    text = json.dumps({"benchmark": name, **payload}, indent=1, default=_jsonable)
    for p in paths:
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        with open(p, "w") as f:
            f.write(text + "\n")
    return paths


def _jsonable(obj):
    if isinstance(obj, numpy.generic):
        return obj.item()
    if isinstance(obj, numpy.ndarray):
        return obj.tolist()
    return str(obj)


# ---------------------------------------------------------------------------
# GPU timing (CuPy and PyTorch kernels, with CUDA events)


def no_gpu_reason() -> str | None:
    """None when CuPy sees a usable GPU, else a one-line reason."""
    from xpgrad import backend

    ok, reason = backend.gpu_status()
    return None if ok else reason


def gpu_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """:func:`parser` plus ``--require-gpu``, for the GPU-only benchmarks."""
    p = parser(description, repeats)
    p.add_argument("--require-gpu", action="store_true", help="exit 2 instead of 0 when there is no usable GPU")
    return p


def exit_code_without_gpu(args) -> int | None:
    """Print "no GPU: <reason>" and return the exit code when no GPU is usable; None when one is."""
    reason = no_gpu_reason()
    if reason is None:
        return None
    print(f"no GPU: {reason}")
    return 2 if args.require_gpu else 0


def synchronize_all() -> None:
    from xpgrad import backend

    backend.cupy.cuda.Device().synchronize()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def cuda_events(lib: str, stream=None):
    """(record_start, record_end, elapsed_seconds) with CuPy's or PyTorch's CUDA events."""
    if lib == "torch":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        return start.record, end.record, lambda: (end.synchronize(), start.elapsed_time(end) / 1e3)[1]
    from xpgrad import backend

    cupy = backend.cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    return (lambda: start.record(stream), lambda: end.record(stream),
            lambda: (end.synchronize(), cupy.cuda.get_elapsed_time(start, end) / 1e3)[1])


def cuda_time(fn, repeats: int, *, lib: str = "cupy", warmup: int = 3, target_seconds: float = 2e-3,
              max_number: int = 2000, stream=None) -> dict:
    """Seconds per call of ``fn`` on the GPU, timed with CUDA events of ``lib`` ("cupy" or "torch").

    ``warmup`` untimed calls first (they include compilation), then enough calls
    per repeat to fill about ``target_seconds`` of GPU time, ``repeats`` times.
    ``stream`` is the CuPy stream the events are recorded on (default: current).
    """
    for _ in range(warmup):
        fn()
    synchronize_all()
    start, end, elapsed = cuda_events(lib, stream)
    start()
    fn()
    end()
    once = max(elapsed(), 1e-7)
    number = int(max(1, min(max_number, target_seconds / once)))
    times = []
    for _ in range(repeats):
        start()
        for _ in range(number):
            fn()
        end()
        times.append(elapsed() / number)
    return {**summarize(times), "number": number}


@contextlib.contextmanager
def xpgrad_fused(enabled: bool):
    """Run xpgrad's GPU ops with the fused kernels (True) or the generic ``xp`` code (False)."""
    from xpgrad import backend

    with backend.use_fused(enabled):
        yield



def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line, cut at ``limit`` characters."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:limit]


def config_dataset(name: str) -> str:
    """The ``Config.dataset`` for data called ``name``: its own name when it is a registered
    dataset, else ``idx`` (arrays of one's own, which is what random benchmark data is)."""
    from xpgrad.data import DATASETS

    return name if name in DATASETS else "idx"
