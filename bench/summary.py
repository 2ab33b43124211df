"""The GPU check's records: ``results.json`` (everything) and ``summary.json`` (the figures the targets are read from).

``bench/gpu_check.sh`` calls this last, with the folder its benchmarks wrote
their JSON into (``<step>.json``) and one line per step
(``name status seconds note``)::

    python -m bench.summary --work DIR --results OUT/results.json --summary OUT/summary.json

``summary.json`` has exactly the schema of issue 10: every figure is a
number or ``null``, and every ``null`` is explained by a note that starts
with its path or a parent's, several separated by commas
(``epoch_ms.jax_scan, step_us.jax_scan: ...``). :func:`validate` checks both;
the command exits 1 (after writing) when the summary breaks the schema.

A step's JSON that cannot be read (cut short by a kill, not JSON, not an
object) or lacks what the summary reads loses only that step's figures:
they are null, with a note saying so, and results.json lists the file under
``unreadable``.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import subprocess
import sys

from xpgrad.files import atomic_write

IMPLS = ("xpgrad_graph", "xpgrad_eager", "torch_eager", "torch_graph", "torch_compile", "jax_jit", "jax_scan")
SCHEMA = {
    "device": str, "date": str, "commit": str,
    "epoch_ms": dict.fromkeys(IMPLS, float),
    "step_us": dict.fromkeys(IMPLS, float),
    "kernels_per_step": {"xpgrad_graph": int, "torch_eager": int},
    "row_kernels_copy_share_min": float,
    "e2e_seconds": {"xpgrad": float, "torch": float},
    "e2e_test_accuracy": {"xpgrad": float, "torch": float},
    "graph_vs_eager_max_rel_param_diff": float,
    "notes": list,
}
ROW_KERNELS = ("lsm", "xent", "log_softmax", "softmax", "cross")  # gpu_kernels' names for the row kernels
LARGE_ROWS = 10**6


def _type_ok(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def validate(summary: dict) -> list[str]:
    """Every way ``summary`` breaks the schema (an empty list when it keeps it)."""
    problems, nulls = [], []

    def walk(value, schema, path):
        if isinstance(schema, dict):
            if not isinstance(value, dict):
                problems.append(f"{path or 'summary'}: expected an object, got {type(value).__name__}")
                return
            if set(value) != set(schema):
                problems.append(f"{path or 'summary'}: keys {sorted(value)} differ from {sorted(schema)}")
            for key in schema.keys() & value.keys():
                walk(value[key], schema[key], f"{path}.{key}" if path else key)
        elif value is None and schema in (float, int):
            nulls.append(path)
        elif not _type_ok(value, schema):
            problems.append(f"{path}: expected {schema.__name__} or null, got {value!r}")

    walk(summary, SCHEMA, "")
    notes = summary.get("notes") if isinstance(summary.get("notes"), list) else []
    problems += [f"notes: {n!r} is not a string" for n in notes if not isinstance(n, str)]
    heads = [n.split(":", 1)[0] for n in notes if isinstance(n, str) and ":" in n]
    explained = [item.strip() for head in heads for item in head.split(",")]
    for path in nulls:
        if not any(path == item or path.startswith(item + ".") for item in explained):
            problems.append(f"{path} is null without a note that starts with its path (or a parent's)")
    return problems


# ---------------------------------------------------------------------------
# Reading the benchmarks' JSON


def row_kernel_share(kernels: dict | None) -> tuple[float | None, str | None]:
    """The smallest copy-bandwidth share of the fused row kernels at >= 1e6 rows, from bench.gpu_kernels."""
    if not kernels:
        return None, "no bench.gpu_kernels results"
    shares = [r["copy_share"]["fused"] for r in kernels.get("results", [])
              if r.get("rows", 0) >= LARGE_ROWS and any(k in r.get("kernel", "") for k in ROW_KERNELS)
              and "fused" in r.get("copy_share", {})]
    if not shares:
        return None, "bench.gpu_kernels measured no row kernel at >= 1e6 rows"
    return min(shares), None


def commit_id() -> tuple[str, str | None]:
    """``$XPGRAD_COMMIT``, else ``git describe --always --dirty``; else "unknown" and why."""
    if os.environ.get("XPGRAD_COMMIT"):
        return os.environ["XPGRAD_COMMIT"], None
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip(), None
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown", "commit: no git checkout here; pass XPGRAD_COMMIT=<hash> to bench/gpu_check.sh"


def device_name(results: dict) -> str:
    for label in ("gpu_epoch", "gpu_kernels", "e2e"):
        gpu = (results.get(label) or {}).get("machine", {}).get("gpu")
        if gpu:
            return gpu["name"]
    return "unknown"


def _step_words(results: dict, label: str) -> str:
    unreadable = results.get("unreadable", {}).get(label)
    if unreadable:
        return f"the {label} step's JSON could not be read ({unreadable})"
    for step in results.get("steps", []):
        if step["step"] == label:
            if step["status"] == "skipped":
                return f"the {label} step was skipped ({step['note']})"
            return f"the {label} step ended {step['status']} after {step['seconds']} s"
    return f"the {label} step did not run"


def _note_list(notes) -> list:
    if not isinstance(notes, list):
        raise TypeError(f"notes are a {type(notes).__name__}, not a list")
    return notes


def _section(results: dict, label: str, fill, notes: list) -> None:
    """``fill(results[label])``; a JSON that lacks what ``fill`` reads counts as unreadable, and ``fill({})``
    then writes the nulls, with notes that say why."""
    start = len(notes)
    try:
        fill(results.get(label) or {})
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        del notes[start:]
        what = f"no {exc} in it" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        results.setdefault("unreadable", {})[label] = what[:300]
        fill({})


def build_summary(results: dict, date: str | None = None, commit: str | None = None) -> dict:
    """``summary.json`` from ``results`` (a step label -> benchmark JSON dict, plus ``steps``)."""
    notes = []
    if commit is None:
        commit, why = commit_id()
        notes += [why] if why else []
    summary = {"device": device_name(results),
               "date": date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "commit": commit}
    epoch_keys = ("epoch_ms", "step_us", "kernels_per_step", "graph_vs_eager_max_rel_param_diff")

    def fill_epoch(result):
        epoch = result.get("summary")
        if epoch:
            summary.update({key: epoch[key] for key in epoch_keys})
            notes.extend(_note_list(epoch["notes"]))
            return
        summary.update(epoch_ms=dict.fromkeys(IMPLS), step_us=dict.fromkeys(IMPLS),
                       kernels_per_step={"xpgrad_graph": None, "torch_eager": None},
                       graph_vs_eager_max_rel_param_diff=None)
        notes.append(f"{', '.join(epoch_keys)}: {_step_words(results, 'gpu_epoch')}")

    def fill_kernels(result):
        share, why = row_kernel_share(result)
        summary["row_kernels_copy_share_min"] = share
        if why:
            notes.append(f"row_kernels_copy_share_min: {why} ({_step_words(results, 'gpu_kernels')})")

    def fill_e2e(e2e):
        summary["e2e_seconds"], summary["e2e_test_accuracy"] = {}, {}
        for who in ("xpgrad", "torch"):
            run = e2e.get(who) or {}
            summary["e2e_seconds"][who] = run.get("seconds")
            summary["e2e_test_accuracy"][who] = run.get("test_accuracy")
            if run.get("seconds") is None or run.get("test_accuracy") is None:
                notes.append(f"e2e_seconds.{who}, e2e_test_accuracy.{who}: "
                             f"{run.get('note') or _step_words(results, 'e2e')}")
        notes.extend(_note_list(e2e.get("notes", [])))

    _section(results, "gpu_epoch", fill_epoch, notes)
    _section(results, "gpu_kernels", fill_kernels, notes)
    _section(results, "e2e", fill_e2e, notes)
    summary["notes"] = notes
    return {key: summary[key] for key in SCHEMA}


def read_work(work: str) -> dict:
    """Every ``<label>.json`` in ``work``, and the steps from ``steps.txt``, as one dict."""
    results = {"steps": [], "unreadable": {}}
    steps = os.path.join(work, "steps.txt")
    if os.path.exists(steps):
        for line in open(steps):
            if line.strip():
                name, status, seconds, note = (line.strip().split(maxsplit=3) + [""] * 4)[:4]
                results["steps"].append({"step": name, "status": status, "seconds": int(seconds), "note": note})
    for path in sorted(glob.glob(os.path.join(work, "*.json"))):
        label = os.path.basename(path)[:-5]
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f)
            if not isinstance(value, dict):
                raise ValueError(f"a JSON {type(value).__name__}, not an object")
        except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            results["unreadable"][label] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"bench.summary: {os.path.basename(path)} cannot be read ({results['unreadable'][label]}); "
                  "its figures are null", file=sys.stderr)
            continue
        results[label] = value
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="the folder with <step>.json files and steps.txt")
    p.add_argument("--results", required=True, help="where to write results.json")
    p.add_argument("--summary", required=True, help="where to write summary.json")
    args = p.parse_args(argv)
    results = read_work(args.work)
    summary = build_summary(results)
    for path, payload in ((args.results, results), (args.summary, summary)):
        with atomic_write(path, "w") as f:
            f.write(json.dumps(payload, indent=1) + "\n")
    problems = validate(summary)
    for problem in problems:
        print(f"summary.json breaks the schema: {problem}", file=sys.stderr)
    print(f"wrote {args.results}, {args.summary}" + (f" ({len(problems)} schema problems)" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
