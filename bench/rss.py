"""Peak resident memory (RSS) of a 1-epoch CPU training run on MNIST-sized data.

Each run is a fresh child process, so its peak is its own: the real CLI
(``python -m xpgrad.cli train --dataset fashion-mnist --epochs 1 --device cpu
--quiet``) when Fashion-MNIST is on disk, else the same default recipe through
``Trainer`` on random data of MNIST shape. The peak is the child's
``ru_maxrss`` from ``getrusage(RUSAGE_CHILDREN)``, read in a small launcher
process; a bare interpreter that only imports xpgrad is measured the same way,
for scale.

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.rss
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from bench import common
from xpgrad.data import SYSTEM_DATA_DIR

TARGET_MB = 350.0  # issue 21 (it was 600 before the images stayed uint8)
MB = 1e6

_RANDOM_RUN = """
import numpy
from xpgrad.data import Dataset
from xpgrad.training import Config, Trainer, run
rng = numpy.random.default_rng(0)
data = Dataset("random", rng.integers(0, 256, (60000, 28, 28), dtype=numpy.uint8),
               rng.integers(0, 10, 60000, dtype=numpy.uint8),
               rng.integers(0, 256, (10000, 28, 28), dtype=numpy.uint8),
               rng.integers(0, 10, 10000, dtype=numpy.uint8), "random")
run(Trainer(Config.from_recipe("default", epochs=1), data, device="cpu", progress=False), {out!r}, log=lambda *a: None)
"""


# Linux charges a child, at fork and again at exec, with the peak of the
# process it was forked from; so each run is started from this small launcher
# rather than from the benchmark (which holds NumPy and the dataset), and the
# launcher reports getrusage(RUSAGE_CHILDREN) once its only child has exited.
_LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - start)
"""


def peak_rss(argv) -> dict:
    """Run ``argv`` to completion in a fresh launcher; its peak RSS in bytes, seconds and exit status."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True, check=True)
    code, maxrss, seconds = done.stdout.split()
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return {"peak_rss_bytes": int(maxrss) * scale, "seconds": float(seconds), "returncode": int(code)}


def training_argv(out: str, data_dir: str | None) -> tuple[str, list[str]]:
    if data_dir:
        return "xpgrad train --dataset fashion-mnist --epochs 1 --device cpu --quiet", [
            sys.executable, "-m", "xpgrad.cli", "train", "--dataset", "fashion-mnist", "--epochs", "1",
            "--device", "cpu", "--quiet", "--data-dir", data_dir, "--out", out]
    return "Trainer, default recipe, 1 epoch, random MNIST-shaped data", [
        sys.executable, "-c", _RANDOM_RUN.format(out=out)]


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--data-dir", default=os.path.join(SYSTEM_DATA_DIR, "fashion-mnist"),
                   help="Fashion-MNIST folder for the CLI run (random data when it does not exist)")
    args = p.parse_args(argv)
    common.warn_openblas_pins()
    facts = common.machine_facts()
    print(f"machine: {common.machine_line(facts)}\n")
    data_dir = args.data_dir if os.path.isdir(args.data_dir) else None
    if data_dir is None:
        print(f"({args.data_dir} not found: training on random data of MNIST shape)")

    runs, baselines = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="xpgrad-rss-") as out:
            what, cmd = training_argv(out, data_dir)
            r = peak_rss(cmd)
            if r["returncode"] != 0:
                print(f"training run failed (exit {r['returncode']}): {' '.join(cmd)}")
                return 1
            runs.append(r)
        baselines.append(peak_rss([sys.executable, "-c", "import xpgrad.training, xpgrad.cli"]))

    peak = common.summarize([r["peak_rss_bytes"] / MB for r in runs])
    base = common.summarize([r["peak_rss_bytes"] / MB for r in baselines])
    print(common.markdown_table(
        ["process", "peak RSS, MB, median (min–max)", "wall time, median"],
        [[what, f"{peak['median']:.0f} ({peak['min']:.0f}–{peak['max']:.0f})",
          common.fmt_time(common.summarize([r["seconds"] for r in runs])["median"])],
         ["python -c 'import xpgrad.training, xpgrad.cli'", f"{base['median']:.0f} ({base['min']:.0f}–{base['max']:.0f})",
          common.fmt_time(common.summarize([r["seconds"] for r in baselines])["median"])]]))
    met = peak["median"] <= TARGET_MB
    print(f"target: peak RSS <= {TARGET_MB:.0f} MB: {peak['median']:.0f} MB -> {common.verdict(met)}")

    paths = common.write_results("rss", {
        "machine": facts, "setup": {"run": what, "data_dir": data_dir, "repeats": args.repeats},
        "results": {"training_peak_mb": peak, "import_only_peak_mb": base},
        "targets": {"peak_rss_mb": {"target": TARGET_MB, "value": peak["median"], "met": met}},
    }, args.json)
    print(f"\nwrote {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
