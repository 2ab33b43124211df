"""Softmax -> Log backward in isolation: the notebook's Jacobian chain against the fused ops.

For (N, C) logits and the notebook's upstream gradient ``-onehot`` this times
only the backward pass of:

* the notebook's ``Softmax`` + ``Log`` (``xpgrad.notebook``), which builds the
  (N, C, C) Jacobian ``s_i s_j`` and multiplies by it;
* xpgrad's unfused ``Softmax`` + ``Log`` (``xpgrad.ops``), the Jacobian
  contracted by hand in O(N*C);
* ``xpgrad.ops.LogSoftmax`` backward (``gy - softmax * sum_row(gy)``);
* ``xpgrad.ops.SoftmaxCrossEntropy`` backward (``(softmax - onehot) / N``),
  which is the same gradient up to the 1/N of a mean loss.

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.softmax_log
"""

from __future__ import annotations

import numpy

from bench import common
from xpgrad import generic, notebook, ops

SIZES = (128, 60000)
C = 10
DTYPES = ("float32", "float64")
TARGET_SPEEDUP = 100.0  # fused >= 100x the notebook's chain at N = 60 000


def cases(n: int, dtype: str):
    """(name, backward call) for one shape, forwards already run; also checks the gradients agree."""
    rng = numpy.random.default_rng(n)
    x = rng.standard_normal((n, C)).astype(dtype) * 3
    t = rng.integers(0, C, size=n)
    onehot = numpy.zeros((n, C), dtype=dtype)
    onehot[numpy.arange(n), t] = 1
    gy = -onehot

    nb_softmax, nb_log = notebook.Softmax(), notebook.Log()
    nb_log.forward(nb_softmax.forward(x))
    softmax, log = ops.Softmax(), ops.Log()
    log.forward(softmax.forward(x))
    log_softmax = ops.LogSoftmax()
    log_softmax.forward(x)
    xent = ops.SoftmaxCrossEntropy()
    xent.forward(x, t.astype(numpy.int32))

    calls = [
        ("notebook Softmax+Log (Jacobian)", lambda: nb_softmax.backward(nb_log.backward(gy))),
        ("xpgrad Softmax+Log (contracted)", lambda: softmax.backward(log.backward(gy))),
        ("xpgrad LogSoftmax (fused op)", lambda: log_softmax.backward(gy)),
        ("xpgrad SoftmaxCrossEntropy (fused op)", lambda: xent.backward()),
    ]
    reference = calls[0][1]()
    # The notebook's log(s + 1e-12) differs from the exact log-softmax by about
    # 1e-12 / s, so the fused gradients agree only to that where s is tiny.
    s_min = float(numpy.exp(x - generic.logsumexp(x.astype(numpy.float64))).min())
    tol = max(1e-4 if dtype == "float32" else 1e-10, 2e-12 / s_min)
    for name, call in calls[1:]:
        g = call() * (n if "CrossEntropy" in name else 1)
        err = float(numpy.abs(g - reference).max())
        assert err <= tol, f"{name} differs from the notebook's gradient by {err:g} at N={n} {dtype}"
    return calls


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], repeats=9)
    args = p.parse_args(argv)
    common.warn_openblas_pins()
    facts = common.machine_facts()
    print(f"machine: {common.machine_line(facts)}\n")

    rows, results, targets = [], [], {}
    for n in SIZES:
        for dtype in DTYPES:
            calls = cases(n, dtype)
            timed = []
            for name, call in calls:
                number = common.calls_for(call, 0.05)
                timed.append((name, common.time_calls(call, args.repeats, warmup=1, number=number)))
            base = timed[0][1]["median"]
            for name, s in timed:
                speedup = base / s["median"]
                rows.append([n, dtype, name, common.fmt_spread(s), f"{speedup:.1f}x"])
                results.append({"n": n, "c": C, "dtype": dtype, "implementation": name, "seconds": s,
                                "speedup_over_notebook": speedup})
                if n == 60000 and "fused" in name:
                    targets[f"{name} {dtype}"] = {"target": TARGET_SPEEDUP, "value": speedup,
                                                  "met": speedup >= TARGET_SPEEDUP}

    print(common.markdown_table(
        ["N", "dtype", "backward of", "time, median (min–max)", "speed-up over the notebook"], rows))
    print()
    for name, tgt in targets.items():
        print(f"target: {name} >= {TARGET_SPEEDUP:g}x the notebook at N = 60 000: "
              f"{tgt['value']:.1f}x -> {common.verdict(tgt['met'])}")

    paths = common.write_results("softmax_log", {
        "machine": facts, "setup": {"sizes": SIZES, "classes": C, "repeats": args.repeats},
        "results": results, "targets": targets,
    }, args.json)
    print(f"\nwrote {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
