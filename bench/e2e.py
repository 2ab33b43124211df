"""End to end: the wall time and test accuracy of ``xpgrad train`` on Fashion-MNIST next to ``bench/torch_train.py``.

Both train the default recipe for 15 epochs on the same files, evaluating the
test set after every epoch, each in a fresh process; the time is the
process's wall time, from start to exit (imports, reading the data, training,
and for xpgrad its per-epoch checkpoints and the final plot). xpgrad runs
with a warm kernel cache: a one-epoch run first compiles whatever the
benchmarks before it did not, and is not timed. Where this tree's
``xpgrad train`` has ``--graph``, it runs with ``--graph on``.

    PYTHONPATH=. python -m bench.e2e --data-dir .cache/gpu-data/fashion-mnist [--out DIR]

``--device cpu --epochs 1`` checks the code path without a GPU. Exits 1 when either run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench import common, turns

TARGET_SECONDS, TARGET_ACCURACY = 3.0, 0.89


def has_graph_option() -> bool:
    """Whether this tree's ``xpgrad train`` takes ``--graph``."""
    from xpgrad.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and "train" in action.choices:
            return any("--graph" in a.option_strings for a in action.choices["train"]._actions)
    return False


def xpgrad_command(args, out: str, epochs: int | None, graph: bool) -> list[str]:
    cmd = [sys.executable, "-m", "xpgrad.cli", "train", "--dataset", "fashion-mnist", "--device", args.device,
           "--out", out, "--quiet"]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--epochs", str(epochs)] if epochs else []
    return cmd + (["--graph", "on"] if graph else [])


def torch_command(args, json_path: str) -> list[str]:
    cmd = [sys.executable, "-m", "bench.torch_train", "--dataset", "fashion-mnist", "--device", args.device,
           "--json", json_path]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    return cmd + (["--epochs", str(args.epochs)] if args.epochs else [])


def timed_run(cmd: list[str], timeout: float) -> dict:
    """Run ``cmd``; its wall seconds, exit code and output's last lines."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        code, out = None, f"{partial}\ntimed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    print(out, end="" if out.endswith("\n") else "\n")
    return {"command": " ".join(cmd), "seconds": seconds, "exit": code, "tail": out.splitlines()[-3:]}


def run_metrics(out_dir: str) -> tuple[float | None, float | None]:
    """(last test accuracy, sum of epoch seconds) from a run folder's metrics.jsonl; Nones without one."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None, None
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return (rows[-1]["test_accuracy"], sum(r["seconds"] for r in rows)) if rows else (None, None)


def finish(run: dict, accuracy, train_seconds) -> dict:
    """A run's record: ``seconds`` and ``test_accuracy`` kept only when it succeeded, else a ``note``."""
    if run["exit"] != 0 or accuracy is None:
        why = "timed out" if run["exit"] is None else f"exit {run['exit']}"
        note = f"not measured ({why}: {' / '.join(run['tail'])})"
        return {**run, "seconds": None, "test_accuracy": None, "note": note}
    return {**run, "test_accuracy": accuracy, "train_seconds": train_seconds}


def main(argv=None) -> int:
    p = common.gpu_parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--data-dir", default=None, help="the Fashion-MNIST folder (default: where xpgrad finds it)")
    p.add_argument("--out", default=None, help="keep xpgrad's run folder here (default: a temporary folder)")
    p.add_argument("--epochs", type=int, default=None,
                   help="fewer epochs, for a quick check (default: the recipe's 15)")
    p.add_argument("--budget", type=float, default=300.0, help="seconds for all runs")
    args = p.parse_args(argv)
    if args.device == "cuda":
        code = common.exit_code_without_gpu(args)
        if code is not None:
            return code
    deadline = turns.Deadline(args.budget)
    facts = common.machine_facts(gpu=args.device == "cuda")
    print(f"machine: {common.machine_line(facts)}\n")
    graph, notes = has_graph_option(), []
    if not graph:
        notes.append("xpgrad train has no --graph option on this tree: ran as it is (eager)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or os.path.join(tmp, "train-fashion")
        warm = timed_run(xpgrad_command(args, os.path.join(tmp, "warm"), 1, graph), deadline.left() / 3)
        run = timed_run(xpgrad_command(args, out, args.epochs, graph), deadline.left() / 2)
        xpgrad = finish(run, *run_metrics(out))
        torch_json = os.path.join(tmp, "torch.json")
        run = timed_run(torch_command(args, torch_json), max(deadline.left() - 2, 1))
        facts_torch = json.load(open(torch_json)) if os.path.exists(torch_json) else {}
        torch = finish(run, facts_torch.get("test_accuracy"), facts_torch.get("train_seconds"))
    report(xpgrad, torch, notes)
    where = facts["gpu"]["name"] if facts.get("gpu") else f"cpu-{facts['host']}"
    payload = {"machine": facts, "setup": {"device": args.device, "epochs": args.epochs or 15, "graph": graph},
               "warmup": warm, "xpgrad": xpgrad, "torch": torch, "notes": notes}
    print(f"\nwrote {', '.join(common.write_results('e2e', payload, args.json, where=where))}")
    return 0 if xpgrad["seconds"] is not None and torch["seconds"] is not None else 1


def report(xpgrad: dict, torch: dict, notes: list) -> None:
    rows = []
    for name, r in (("xpgrad train", xpgrad), ("bench/torch_train.py", torch)):
        if r["seconds"] is None:
            rows.append([name, r["note"], ""])
        else:
            rows.append([name, common.fmt_time(r["seconds"]), f"{100 * r['test_accuracy']:.2f}%"])
    print(common.markdown_table(["end to end (Fashion-MNIST, default recipe)", "wall time", "test accuracy"], rows))
    if xpgrad["seconds"] is not None:
        met = xpgrad["seconds"] <= TARGET_SECONDS and xpgrad["test_accuracy"] >= TARGET_ACCURACY
        print(f"target: xpgrad end to end <= {TARGET_SECONDS:g} s with >= {100 * TARGET_ACCURACY:g}% test accuracy: "
              f"{xpgrad['seconds']:.2f} s, {100 * xpgrad['test_accuracy']:.2f}% -> {common.verdict(met)}")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    sys.exit(main())
